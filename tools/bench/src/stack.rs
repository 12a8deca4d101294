//! The real processes: distribution, the sidecar, the do-nothing ext_proc server and Envoys, all
//! on 127.0.0.1 with kernel-picked or freshly probed ports, started the way the test kit
//! (`registry-gateway-testkit`) starts them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use registry_gateway_testkit::Conn;
use registry_gateway_testkit::{
    EnvoyOptions, ManagedChild, disable_route_ext_proc, distribution_config, free_port,
    listening_addr, loopback, render_envoy_config,
};

/// External and built binaries.
#[derive(Clone, Debug)]
pub(crate) struct Bins {
    pub(crate) envoy: PathBuf,
    pub(crate) registry: PathBuf,
    pub(crate) skopeo: PathBuf,
    pub(crate) gateway: PathBuf,
    pub(crate) load: PathBuf,
}

fn poll<T>(
    what: &str,
    timeout: Duration,
    proc: &mut ManagedChild,
    mut probe: impl FnMut(&mut ManagedChild) -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        proc.check_running(what)?;
        if let Some(v) = probe(proc) {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                proc.describe()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------

/// `docker-registry serve` (CNCF distribution 2.8) with filesystem storage.
pub(crate) struct Registry {
    pub(crate) proc: ManagedChild,
    pub(crate) addr: SocketAddr,
    pub(crate) storage: PathBuf,
}

impl Registry {
    pub(crate) fn start(bins: &Bins, run_dir: &Path, storage: &Path) -> Result<Registry, String> {
        std::fs::create_dir_all(storage).map_err(|e| format!("{}: {e}", storage.display()))?;
        let config = distribution_config(storage, true, "registry-gateway-bench-not-secret");
        let config_path = run_dir.join("registry.yml");
        std::fs::write(&config_path, config).map_err(|e| format!("registry.yml: {e}"))?;
        let mut cmd = Command::new(&bins.registry);
        cmd.arg("serve").arg(&config_path);
        let mut proc = ManagedChild::try_spawn("registry", cmd, run_dir)?;
        let addr = poll(
            "the registry's listening address",
            Duration::from_secs(15),
            &mut proc,
            |p| listening_addr(&p.stderr()),
        )?;
        let mut conn = Conn::new(addr);
        poll(
            "GET /v2/ on the registry",
            Duration::from_secs(15),
            &mut proc,
            |_| answers_ok(&mut conn, "/v2/"),
        )?;
        Ok(Registry {
            proc,
            addr,
            storage: storage.to_owned(),
        })
    }

    /// Lines of the access log so far.
    pub(crate) fn access_log(&self) -> Vec<String> {
        self.proc.stdout().lines().map(str::to_owned).collect()
    }

    /// Access-log lines from index `from` on that are `GET <path>` (query ignored).
    pub(crate) fn count_gets(&self, from: usize, path: &str) -> usize {
        self.access_log()
            .iter()
            .skip(from)
            .filter(|line| {
                let Some(request) = line.split('"').nth(1) else {
                    return false;
                };
                let mut parts = request.split(' ');
                parts.next() == Some("GET")
                    && parts
                        .next()
                        .is_some_and(|t| t.split('?').next() == Some(path))
            })
            .count()
    }
}

// ---------------------------------------------------------------------------------------------

/// `registry-gateway serve`.
pub(crate) struct Gateway {
    pub(crate) proc: ManagedChild,
    pub(crate) grpc: SocketAddr,
    pub(crate) admin: SocketAddr,
}

impl Gateway {
    /// `name` names its log files; `extra` are further `serve` flags (e.g. `--state redis://…`).
    pub(crate) fn start(
        bins: &Bins,
        run_dir: &Path,
        name: &str,
        config: &Path,
        registry: SocketAddr,
        log: &str,
        extra: &[String],
    ) -> Result<Gateway, String> {
        let mut last = String::new();
        for _attempt in 0..3 {
            let grpc = loopback(free_port());
            let admin = loopback(free_port());
            let mut cmd = Command::new(&bins.gateway);
            cmd.arg("serve")
                .arg("--config")
                .arg(config)
                .arg("--grpc-listen")
                .arg(grpc.to_string())
                .arg("--admin-listen")
                .arg(admin.to_string())
                .arg("--registry-url")
                .arg(format!("http://{registry}"))
                .arg("--registry-insecure")
                .args(["--log", log])
                .args(extra);
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("REGISTRY_GATEWAY_") {
                    cmd.env_remove(name);
                }
            }
            let mut proc = ManagedChild::try_spawn(name, cmd, run_dir)?;
            let mut conn = Conn::new(admin);
            let ready = poll(
                "the sidecar's /readyz",
                Duration::from_secs(15),
                &mut proc,
                |_| answers_ok(&mut conn, "/readyz"),
            );
            match ready {
                Ok(()) => return Ok(Gateway { proc, grpc, admin }),
                Err(e) if e.to_lowercase().contains("address already in use") => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// The sum of every sample of a metric family member, e.g.
    /// `registry_gateway_registry_tag_list_requests_total` (all label sets).
    pub(crate) fn metric(&self, name: &str) -> Result<f64, String> {
        Ok(self.samples(name)?.values().sum())
    }

    /// Every sample of a metric family member by its label set as exposed (`op="decide",
    /// result="ok"`; empty without labels).
    pub(crate) fn samples(&self, name: &str) -> Result<BTreeMap<String, f64>, String> {
        let reply = Conn::new(self.admin)
            .get("/metrics")
            .map_err(|e| format!("GET /metrics: {e}"))?;
        let text = reply.text();
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                let (metric, labels) = match key.split_once('{') {
                    Some((m, rest)) => (m, rest.trim_end_matches('}')),
                    None => (key, ""),
                };
                (metric == name).then(|| Some((labels.to_owned(), value.parse::<f64>().ok()?)))?
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------

/// `extproc-load noop`: answers CONTINUE to every ext_proc phase.
pub(crate) struct NoopExtProc {
    pub(crate) proc: ManagedChild,
    pub(crate) addr: SocketAddr,
}

impl NoopExtProc {
    /// `name` names its log files; `extra` are further `noop` flags (`--mode-override …`).
    pub(crate) fn start(
        bins: &Bins,
        run_dir: &Path,
        name: &str,
        max_seconds: u64,
        extra: &[&str],
    ) -> Result<NoopExtProc, String> {
        let mut cmd = Command::new(&bins.load);
        cmd.args(["noop", "--listen", "127.0.0.1:0", "--max-seconds"])
            .arg(max_seconds.to_string())
            .args(extra);
        let mut proc = ManagedChild::try_spawn(name, cmd, run_dir)?;
        let addr = poll(
            "the do-nothing ext_proc server's address",
            Duration::from_secs(10),
            &mut proc,
            |p| {
                p.stdout()
                    .lines()
                    .find_map(|l| l.strip_prefix("listening on ")?.trim().parse().ok())
            },
        )?;
        Ok(NoopExtProc { proc, addr })
    }
}

// ---------------------------------------------------------------------------------------------

/// What the "Envoy alone" configuration removes from `envoy/envoy.yaml`.
pub(crate) const ENVOY_ALONE_DIFF: &str = "the `typed_per_filter_config` (envoy.filters.http.ext_proc FilterConfig{disabled: false}) of the route named `manifest-write` is removed; the ext_proc filter stays in the chain, declared `disabled: true`, so no request is sent to a processor; everything else (routes, 5 MiB manifest-route buffer, normalisation, access log, timeouts) is identical";

/// `envoy/envoy.yaml` with the harness's substitutions (the kit's [`render_envoy_config`]: admin
/// and the one listener on 127.0.0.1:0, clusters `registry` and `registry-gateway` pointed at
/// `registry` and `processor`), and, when `ext_proc` is false, the manifest route's ext_proc
/// FilterConfig removed ([`ENVOY_ALONE_DIFF`]).
pub(crate) fn envoy_config(
    template: &Path,
    registry: SocketAddr,
    processor: SocketAddr,
    tweak: Tweak,
) -> Result<Value, String> {
    let options = EnvoyOptions {
        registry_addr: registry,
        gateway_addr: processor,
    };
    let mut config = render_envoy_config(template, &options).map_err(|e| e.to_string())?;
    match tweak {
        Tweak::None => {}
        Tweak::Alone => {
            let removed = disable_route_ext_proc(&mut config, "manifest-write");
            if removed != 1 {
                return Err(format!(
                    "{}: expected one route `manifest-write` enabling ext_proc, found {removed}",
                    template.display()
                ));
            }
        }
        Tweak::AllowModeOverride => {
            let set = allow_mode_override(&mut config);
            if set != 1 {
                return Err(format!(
                    "{}: expected one envoy.filters.http.ext_proc filter, found {set}",
                    template.display()
                ));
            }
        }
    }
    Ok(config)
}

/// What the benchmark changes in a shipped Envoy file beyond addresses and ports.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Tweak {
    /// Nothing: the file as shipped.
    None,
    /// "Envoy alone" ([`ENVOY_ALONE_DIFF`]).
    Alone,
    /// The mode_override probe ([`MODE_OVERRIDE_DIFF`]).
    AllowModeOverride,
}

/// What the mode_override probe's Envoys change in `envoy/envoy.yaml`.
pub(crate) const MODE_OVERRIDE_DIFF: &str = "`allow_mode_override: true` set again on the envoy.filters.http.ext_proc filter's typed_config (the shipped file sets it too, with `allowed_override_modes` listing exactly the response-headers skip the probe sends), so the probe does not depend on it; everything else identical";

/// Sets `allow_mode_override: true` on every ext_proc filter config; returns how many.
fn allow_mode_override(config: &mut Value) -> usize {
    match config {
        Value::Object(map) => {
            let here = map.get("name").and_then(Value::as_str)
                == Some("envoy.filters.http.ext_proc")
                && map.contains_key("typed_config");
            if here {
                map["typed_config"]["allow_mode_override"] = Value::Bool(true);
                return 1;
            }
            map.values_mut().map(allow_mode_override).sum()
        }
        Value::Array(items) => items.iter_mut().map(allow_mode_override).sum(),
        _ => 0,
    }
}

/// Envoy 1.40: `--disable-hot-restart --concurrency 1`, the given config as JSON.
pub(crate) struct Envoy {
    pub(crate) proc: ManagedChild,
    pub(crate) addr: SocketAddr,
    pub(crate) admin: SocketAddr,
}

impl Envoy {
    pub(crate) fn start(
        bins: &Bins,
        run_dir: &Path,
        name: &str,
        config: &Value,
    ) -> Result<Envoy, String> {
        let config_path = run_dir.join(format!("{name}.json"));
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(config).expect("JSON value serialises"),
        )
        .map_err(|e| format!("{}: {e}", config_path.display()))?;
        let admin_path = run_dir.join(format!("{name}.admin-address"));
        let _ = std::fs::remove_file(&admin_path);
        let mut cmd = Command::new(&bins.envoy);
        cmd.arg("--config-path")
            .arg(&config_path)
            .arg("--disable-hot-restart")
            .args(["--concurrency", "1"])
            .args(["--log-level", "warn"])
            .arg("--admin-address-path")
            .arg(&admin_path);
        let mut proc = ManagedChild::try_spawn(name, cmd, run_dir)?;
        let timeout = Duration::from_secs(30);
        let admin: SocketAddr = poll("Envoy's admin address", timeout, &mut proc, |_| {
            std::fs::read_to_string(&admin_path)
                .ok()?
                .trim()
                .parse()
                .ok()
        })?;
        let mut admin_conn = Conn::new(admin);
        poll("Envoy's /ready", timeout, &mut proc, |_| {
            answers_ok(&mut admin_conn, "/ready")
        })?;
        let addr = poll("Envoy's listener address", timeout, &mut proc, |_| {
            let reply = admin_conn.get("/listeners?format=json").ok()?;
            let v: Value = serde_json::from_slice(&reply.body).ok()?;
            let port = v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
                .as_u64()?;
            let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
            Some(loopback(port))
        })?;
        let mut conn = Conn::new(addr);
        poll("GET /v2/ through Envoy", timeout, &mut proc, |_| {
            answers_ok(&mut conn, "/v2/")
        })?;
        Ok(Envoy { proc, addr, admin })
    }

    /// A counter from the admin `/stats`, e.g. `http.registry.ext_proc.streams_started`.
    pub(crate) fn stat(&self, name: &str) -> Option<u64> {
        let reply = Conn::new(self.admin)
            .get(&format!("/stats?filter=^{name}$"))
            .ok()?;
        reply.text().lines().find_map(|line| {
            let (stat, value) = line.split_once(": ")?;
            (stat == name).then(|| value.trim().parse().ok())?
        })
    }
}

/// `Some` once a GET of `path` answers 200, for the readiness checks `poll` repeats.
fn answers_ok(conn: &mut Conn, path: &str) -> Option<()> {
    conn.get(path).ok().filter(|r| r.status == 200).map(|_| ())
}
