//! A child process owned by a test or the benchmark: logs in files, killed by PID on drop, and
//! listed (`PID STARTTIME NAME` per line) in a PID file when one is set, so that a wrapper script
//! (`scripts/bench`) can kill what is left if the owner itself is killed. Also `/proc` readings:
//! start time, peak RSS and its reset, CPU time.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A fresh temp dir named `<prefix>` and a random suffix, removed when dropped.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir")
}

/// How many log lines a failure report shows per stream.
const TAIL_LINES: usize = 60;

/// Live children: (pid, start time from /proc, name).
static LIVE: Mutex<Vec<(u32, String, String)>> = Mutex::new(Vec::new());
/// Where [`LIVE`] is written, if anywhere.
static PID_FILE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Lists every live [`ManagedChild`] of this process in `path` from now on (rewritten at every
/// spawn and kill); `None` stops it.
pub fn set_pid_file(path: Option<PathBuf>) {
    *PID_FILE.lock().unwrap_or_else(|p| p.into_inner()) = path;
    write_pid_file();
}

fn write_pid_file() {
    let path = PID_FILE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(path) = path else { return };
    let live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    let text: String = live
        .iter()
        .map(|(pid, start, name)| format!("{pid} {start} {name}\n"))
        .collect();
    // Best effort: the wrapper's clean-up is a backstop, not the main path.
    let _ = std::fs::write(&path, text);
}

/// SIGKILL every live [`ManagedChild`] of this process, for a watchdog thread. Checks each start
/// time so a reused PID is never hit.
pub fn kill_all_listed() {
    let live = LIVE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (pid, start, _) in live {
        if start_time(pid).as_deref() == Some(start.as_str()) {
            sigkill(pid);
        }
    }
}

/// SIGKILL to `pid` (`kill -KILL`), best effort: the process may be gone already.
pub(crate) fn sigkill(pid: u32) {
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The start time of `pid` (field 22 of /proc/<pid>/stat, clock ticks since boot): with the PID
/// it names one process even after the PID is reused.
pub fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; fields after it are not.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(str::to_owned)
}

/// A `kB` field of /proc/<pid>/status (`VmHWM`, `VmRSS`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Resets the peak RSS (`VmHWM`) of `pid` to its current RSS (`echo 5 > /proc/<pid>/clear_refs`,
/// Linux 4.0+). `false` if the kernel or permissions do not allow it.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// User plus system CPU time of `pid` so far, in seconds (fields 14 and 15 of /proc/<pid>/stat,
/// in clock ticks of 1/100 s, Linux's USER_HZ on every architecture it ships).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// A spawned process whose stdout and stderr go to `<log_dir>/<name>.stdout.log` and
/// `<name>.stderr.log`. Dropping it kills the process (SIGKILL to its PID) and reaps it; if the
/// thread is panicking, the log tails are printed first so a failed test shows what the process
/// said.
pub struct ManagedChild {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl ManagedChild {
    /// Spawns `cmd` with stdin closed and output to log files in `log_dir`. Panics with the program
    /// name if it cannot be spawned.
    pub fn spawn(name: &str, cmd: Command, log_dir: &Path) -> ManagedChild {
        ManagedChild::try_spawn(name, cmd, log_dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ManagedChild::spawn`] without the panic.
    ///
    /// # Errors
    /// A log file cannot be created or the program cannot be started; the message names both.
    pub fn try_spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<ManagedChild, String> {
        let stdout = log_dir.join(format!("{name}.stdout.log"));
        let stderr = log_dir.join(format!("{name}.stderr.log"));
        let out = File::create(&stdout).map_err(|e| format!("{}: {e}", stdout.display()))?;
        let err = File::create(&stderr).map_err(|e| format!("{}: {e}", stderr.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawning {name} ({cmd:?}) failed: {e}"))?;
        let pid = child.id();
        let start = start_time(pid).unwrap_or_default();
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((pid, start, name.to_owned()));
        write_pid_file();
        Ok(ManagedChild {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited (without blocking).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("waiting for {} failed: {e}", self.name))
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout)
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// The stdout log file.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    /// The stderr log file.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// The last lines of both logs, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "--- {name} (pid {pid}) stderr, last {n} lines ---\n{err}\n--- {name} stdout, last {n} lines ---\n{out}",
            name = self.name,
            pid = self.child.id(),
            n = TAIL_LINES,
            err = tail(&self.stderr(), TAIL_LINES),
            out = tail(&self.stdout(), TAIL_LINES),
        )
    }

    /// Panics with the logs if the process has already exited; `during` says what was going on.
    pub fn assert_running(&mut self, during: &str) {
        if let Some(status) = self.exited() {
            panic!(
                "{} exited with {status} during {during}\n{}",
                self.name,
                self.describe()
            );
        }
    }

    /// `Err` with the logs if the process has already exited; `during` says what was going on.
    ///
    /// # Errors
    /// The process has exited, or waiting for it failed.
    pub fn check_running(&mut self, during: &str) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}) during {during}\n{}",
                self.name,
                self.describe()
            )),
            Err(e) => Err(format!("waiting for {}: {e}", self.name)),
        }
    }

    /// Waits (blocking) up to `timeout` for the process to exit by itself; kills it after that.
    ///
    /// # Errors
    /// It did not exit in time (it is then killed), or waiting for it failed.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() >= deadline => {
                    self.kill();
                    return Err(format!("{} did not finish within {timeout:?}", self.name));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(format!("waiting for {}: {e}", self.name)),
            }
        }
    }

    /// Sends SIGTERM (through `kill -TERM <pid>`; no extra crates) and waits up to `grace` for the
    /// process to exit. Returns its exit status; after `grace` the process is killed and this
    /// panics, since a process that ignores SIGTERM is a bug worth a failed test.
    pub async fn terminate(&mut self, grace: Duration) -> ExitStatus {
        if let Some(status) = self.exited() {
            return status;
        }
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("`kill` is available");
        assert!(sent.success(), "kill -TERM {} failed", self.child.id());
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "{} did not exit within {grace:?} of SIGTERM\n{}",
                    self.name,
                    self.describe()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL and reap. Idempotent.
    pub fn kill(&mut self) {
        if self.exited().is_none() {
            // The process may exit between the check and the kill; both outcomes are fine.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let pid = self.child.id();
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(p, _, _)| *p != pid);
        write_pid_file();
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.describe());
        }
        self.kill();
    }
}

/// A file's text (invalid UTF-8 replaced), empty if it cannot be read.
pub(crate) fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `addr`, `url` and `host` of a process listening for HTTP on loopback, from its `addr` field,
/// written once for the registry and Envoy alike.
macro_rules! loopback_http_accessors {
    () => {
        /// The listener, `127.0.0.1:<port>`.
        pub fn addr(&self) -> std::net::SocketAddr {
            self.addr
        }

        /// `http://127.0.0.1:<port>` (no trailing slash): where clients push.
        pub fn url(&self) -> String {
            format!("http://{}", self.addr)
        }

        /// `127.0.0.1:<port>`, as skopeo references want it (`<host:port>/<name>:<tag>`).
        pub fn host(&self) -> String {
            self.addr.to_string()
        }
    };
}
pub(crate) use loopback_http_accessors;
