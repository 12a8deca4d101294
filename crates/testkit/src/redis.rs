//! A real Redis (Debian's `redis-server` 7) on 127.0.0.1, for `serve --state redis://…`: one
//! standalone server, or several joined into a Cluster. No persistence (`--save '' --appendonly
//! no`), so a restart is an empty dataset, as a store that lost its data is.
//!
//! The end-to-end tests start it with [`Redis::start`] (a temp dir, async waits); the benchmark
//! with [`Redis::start_in`] (its run directory, blocking waits, listed in its PID file like every
//! other child).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::free_port;
use crate::process::ManagedChild;

/// How long `redis-server` may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts with a new port when the probed one was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;

/// `redis-server` or `redis-cli` from Debian's `redis-server` / `redis-tools` packages.
pub fn redis_bin(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let path = PathBuf::from(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("`{name}` not found: scripts/setup installs Debian's redis-server and redis-tools");
}

/// One `redis-server` listening on a loopback port, killed (by PID) on drop.
pub struct Redis {
    // Field order matters: the process is killed (and its logs shown) before the dir is removed.
    child: Option<ManagedChild>,
    port: u16,
    cluster: bool,
    name: String,
    dir: PathBuf,
    _temp: Option<TempDir>,
}

impl Redis {
    /// A server in a fresh temp dir (`cluster`: with `--cluster-enabled yes`, to be joined by
    /// [`redis_cluster`]). Panics with its log if it does not answer `PING` within 10 s.
    pub async fn start(cluster: bool) -> Redis {
        let temp = crate::process::temp_dir("rg-redis-");
        let mut redis = Redis {
            child: None,
            port: 0,
            cluster,
            name: "redis-server".to_owned(),
            dir: temp.path().to_owned(),
            _temp: Some(temp),
        };
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            redis.port = free_port();
            match redis.spawn_and_wait_async().await {
                Ok(()) => return redis,
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    /// A standalone server whose logs (`<name>.stdout.log`) and working dir are `dir`, for the
    /// benchmark: blocking, `Err` instead of a panic.
    ///
    /// # Errors
    /// `redis-server` cannot be started or does not answer `PING` within 10 s (three ports tried).
    pub fn start_in(dir: &Path, name: &str) -> Result<Redis, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut redis = Redis {
            child: None,
            port: 0,
            cluster: false,
            name: name.to_owned(),
            dir: dir.to_owned(),
            _temp: None,
        };
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            redis.port = free_port();
            redis.spawn()?;
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                match redis.ready() {
                    Ok(true) => return Ok(redis),
                    Ok(false) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Ok(false) => {
                        last = redis.not_ready();
                        break;
                    }
                    Err(e) => {
                        last = e;
                        break;
                    }
                }
            }
            redis.kill();
        }
        Err(last)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(redis_bin("redis-server"));
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir);
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(self.dir.join("nodes.conf"));
        }
        self.child = Some(ManagedChild::try_spawn(&self.name, cmd, &self.dir)?);
        Ok(())
    }

    /// `Ok(true)` once it answers `PING`; `Err` (with its log) if it has exited.
    fn ready(&mut self) -> Result<bool, String> {
        let Some(child) = self.child.as_mut() else {
            return Err("redis-server is not running".to_owned());
        };
        child.check_running("start-up")?;
        Ok(self.cli(&["PING"]).as_deref() == Some("PONG"))
    }

    fn not_ready(&self) -> String {
        format!(
            "redis-server on port {} did not answer PING within {START_TIMEOUT:?}\n{}",
            self.port,
            self.child
                .as_ref()
                .map(ManagedChild::describe)
                .unwrap_or_default()
        )
    }

    async fn spawn_and_wait_async(&mut self) -> Result<(), String> {
        self.spawn()?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.ready() {
                Ok(true) => return Ok(()),
                Ok(false) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(false) => {
                    let e = self.not_ready();
                    self.kill();
                    return Err(e);
                }
                Err(e) => {
                    self.kill();
                    return Err(e);
                }
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ManagedChild::pid)
    }

    /// `redis://127.0.0.1:<port>`, the sidecar's `--state`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli -p <port> <args…>`: its trimmed stdout, `None` if it could not run.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new(redis_bin("redis-cli"))
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The server's own count of calls per command (`INFO commandstats`, e.g. `evalsha`,
    /// `script|load`), since it started. This call is itself one `info`, counted by the next one.
    ///
    /// # Errors
    /// `redis-cli` could not run or the server did not answer with command stats.
    pub fn command_calls(&self) -> Result<BTreeMap<String, u64>, String> {
        let text = self
            .cli(&["INFO", "commandstats"])
            .ok_or_else(|| format!("redis-cli -p {} INFO commandstats failed", self.port))?;
        if !text.contains("# Commandstats") {
            return Err(format!(
                "redis-cli -p {} INFO commandstats: unexpected answer {text:?}",
                self.port
            ));
        }
        Ok(parse_command_calls(&text))
    }

    /// Stops it (SIGKILL), keeping the port for [`Redis::restart_empty`].
    pub async fn stop(&mut self) {
        self.kill();
    }

    /// Stopped and started again on the same port, with an empty dataset.
    pub async fn restart_empty(&mut self) {
        self.kill();
        if let Err(e) = self.spawn_and_wait_async().await {
            panic!("restarting: {e}");
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `cmdstat_<command>:calls=<n>,usec=…` lines of `INFO commandstats` as command -> calls.
fn parse_command_calls(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// `masters` servers joined into one Cluster (no replicas), and its `redis-cluster://` URL.
/// Panics if the cluster does not reach `cluster_state:ok` within 20 s.
pub async fn redis_cluster(masters: usize) -> (Vec<Redis>, String) {
    let mut nodes = Vec::new();
    for _ in 0..masters {
        nodes.push(Redis::start(true).await);
    }
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = Command::new(redis_bin("redis-cli"))
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli --cluster create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = nodes.iter().all(|node| {
            node.cli(&["CLUSTER", "INFO"])
                .unwrap_or_default()
                .contains("cluster_state:ok")
        });
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "the cluster never came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = format!("redis-cluster://{}", addrs.join(","));
    (nodes, url)
}

#[cfg(test)]
mod tests {
    use super::parse_command_calls;

    #[test]
    fn command_stats_are_read_per_command() {
        let text = "# Commandstats\r\ncmdstat_evalsha:calls=12,usec=340,usec_per_call=28.33,rejected_calls=0,failed_calls=0\r\ncmdstat_script|load:calls=4,usec=80,usec_per_call=20.00,rejected_calls=0,failed_calls=0\r\n";
        let calls = parse_command_calls(text);
        assert_eq!(calls.get("evalsha"), Some(&12));
        assert_eq!(calls.get("script|load"), Some(&4));
        assert_eq!(calls.len(), 2);
    }
}
