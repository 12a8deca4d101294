//! Envoy 1.40 running the shipped `envoy/envoy.yaml`, with only addresses and ports substituted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::process::{ManagedChild, loopback_http_accessors};
use crate::{EnvoyOptions, RegistryClient, envoy_bin, render_envoy_config, repo_root};

/// Envoy usually starts in well under a second; a loaded 2-core CI machine gets some slack.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The shipped Envoy config, `envoy/envoy.yaml`.
pub fn envoy_config_path() -> PathBuf {
    repo_root().join("envoy").join("envoy.yaml")
}

/// A running Envoy: the shipped config with the listener and admin on `127.0.0.1:0` (Envoy picks
/// the ports; they are read back from the admin API, so parallel tests never race for ports) and
/// the two clusters pointed at `options`. Started with `--disable-hot-restart` (no shared memory,
/// so any number of Envoys run side by side in parallel test processes) and `--concurrency 1`.
/// Killed on drop.
pub struct Envoy {
    // Field order matters: the process is killed (and its logs shown) before the dir is removed.
    child: ManagedChild,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    config_path: PathBuf,
    _dir: TempDir,
}

impl Envoy {
    /// Substitutes addresses into `envoy/envoy.yaml`, writes the result into a temp dir, starts
    /// Envoy and waits (bounded) until it is ready and its listener answers HTTP. Panics with
    /// Envoy's log on failure.
    pub async fn start(options: EnvoyOptions) -> Envoy {
        Envoy::start_with_config(&envoy_config_path(), options).await
    }

    /// [`Envoy::start`] in front of the registry at `registry_addr`, sending its ext_proc streams
    /// to `gateway_addr`.
    pub async fn start_between(registry_addr: SocketAddr, gateway_addr: SocketAddr) -> Envoy {
        Envoy::start(EnvoyOptions {
            registry_addr,
            gateway_addr,
        })
        .await
    }

    /// [`Envoy::start`] with another shipped config of the same shape (one listener, clusters
    /// `registry` and `registry-gateway`), e.g. `envoy/ext-authz.yaml`.
    pub async fn start_with_config(config_file: &Path, options: EnvoyOptions) -> Envoy {
        let dir = crate::process::temp_dir("rg-envoy-");
        let config = substituted_config(config_file, &options);
        // JSON is valid YAML for Envoy; `.json` makes it parse it as JSON directly.
        let config_path = dir.path().join("envoy.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(&config).expect("JSON value serialises"),
        )
        .expect("temp dir is writable");
        let admin_path = dir.path().join("admin-address");

        let mut cmd = Command::new(envoy_bin());
        cmd.arg("--config-path")
            .arg(&config_path)
            .arg("--disable-hot-restart")
            .args(["--concurrency", "1"])
            .args(["--log-level", "info"])
            // Access log lines reach the file within 100 ms instead of Envoy's default 10 s, so
            // a test can read them right after a request.
            .args(["--file-flush-interval-msec", "100"])
            .arg("--admin-address-path")
            .arg(&admin_path);
        let mut child = ManagedChild::spawn("envoy", cmd, dir.path());

        let deadline = Instant::now() + START_TIMEOUT;
        let admin_addr: SocketAddr = loop {
            child.assert_running("start-up");
            let text = std::fs::read_to_string(&admin_path).unwrap_or_default();
            if let Ok(addr) = text.trim().parse() {
                break addr;
            }
            check_deadline(deadline, "its admin address file", &child);
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let admin = RegistryClient::new(&format!("http://{admin_addr}"));

        // /ready is 200 once the server left initialisation (clusters resolved, listener up).
        loop {
            child.assert_running("start-up");
            if matches!(admin.get("/ready").await, Ok(reply) if reply.status == 200) {
                break;
            }
            check_deadline(deadline, "/ready", &child);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let addr = loop {
            if let Some(addr) = listener_addr(&admin).await {
                break addr;
            }
            check_deadline(deadline, "its listener address", &child);
            tokio::time::sleep(Duration::from_millis(20)).await;
        };

        let envoy = Envoy {
            child,
            addr,
            admin_addr,
            config_path,
            _dir: dir,
        };
        // Any HTTP answer from the listener will do (the registry may require auth).
        let client = envoy.client();
        loop {
            if client.get("/v2/").await.is_ok() {
                break;
            }
            check_deadline(deadline, "an HTTP answer on its listener", &envoy.child);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        envoy
    }

    loopback_http_accessors!();

    /// `http://127.0.0.1:<admin port>`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// A raw API client for the listener.
    pub fn client(&self) -> RegistryClient {
        RegistryClient::new(&self.url())
    }

    /// The substituted config Envoy runs (JSON).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Envoy's own log (stderr) so far.
    pub fn log(&self) -> String {
        self.child.stderr()
    }

    /// The access log (stdout) so far: one line per request with status, response flags,
    /// response code details and route name (format in `envoy/envoy.yaml`). Flushed every 100 ms.
    pub fn access_log(&self) -> String {
        self.child.stdout()
    }

    /// A counter or gauge from the admin `/stats` endpoint by its full name, e.g.
    /// `http.registry.ext_proc.streams_started`; `None` if Envoy has no such stat (yet).
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let admin = RegistryClient::new(&self.admin_url());
        let reply = admin
            .request("GET", &format!("/stats?filter=^{name}$"), &[], None)
            .await;
        reply.text().lines().find_map(|line| {
            let (stat, value) = line.split_once(": ")?;
            if stat == name {
                value.trim().parse().ok()
            } else {
                None
            }
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}

fn check_deadline(deadline: Instant, what: &str, child: &ManagedChild) {
    if Instant::now() >= deadline {
        panic!(
            "Envoy did not provide {what} within {START_TIMEOUT:?}\n{}",
            child.describe()
        );
    }
}

async fn listener_addr(admin: &RegistryClient) -> Option<SocketAddr> {
    let reply = admin.get("/listeners?format=json").await.ok()?;
    if reply.status != 200 {
        return None;
    }
    let listeners: Value = serde_json::from_slice(&reply.body).ok()?;
    let first = listeners["listener_statuses"].as_array()?.first()?;
    let socket = &first["local_address"]["socket_address"];
    let port = u16::try_from(socket["port_value"].as_u64()?).ok()?;
    if port == 0 {
        return None;
    }
    Some(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// [`render_envoy_config`] for a test: panics with the reason if `path` cannot be rendered.
pub fn substituted_config(path: &Path, options: &EnvoyOptions) -> Value {
    render_envoy_config(path, options).unwrap_or_else(|e| panic!("{e}"))
}
