//! The sidecar under test (`registry-gateway serve`), alone or wired into a full stack.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::ManagedChild;
use crate::{
    Envoy, EnvoyOptions, Registry, RegistryClient, RegistryOptions, free_port, gateway_bin,
    loopback, repo_root,
};

/// Start-up includes loading the config and binding both listeners; a debug build on a loaded
/// 2-core machine gets some slack.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// SIGTERM drains in-flight decisions; they are bounded by the sidecar's own 2.5 s deadline
/// (its `--shutdown-grace` is 10 s at most by default).
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Attempts with fresh ports when a port picked by [`free_port`] was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;

/// How to start the sidecar.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// `--config`: a policy YAML file, or a ConfigMap-like directory.
    pub config: PathBuf,
    /// `--registry-url`: where the sidecar lists tags.
    pub registry_url: String,
    /// Adds `--registry-plain-http-credentials`: the sidecar sends its credentials over plain
    /// http only with it. [`GatewayOptions::new`] sets it for `http://` URLs, which every test
    /// registry (on loopback) has.
    pub plain_http: bool,
    /// Appended after the standard flags (credentials, deadlines, ...).
    pub extra_args: Vec<String>,
    /// Extra environment for the child only (the test process's environment is never changed).
    /// Inherited `REGISTRY_GATEWAY_*` variables are removed, so only these and the flags count.
    pub env: Vec<(String, String)>,
}

impl GatewayOptions {
    /// `--config <config> --registry-url <registry_url>`, plus
    /// `--registry-plain-http-credentials` for an `http://` URL; nothing else.
    pub fn new(config: &Path, registry_url: &str) -> GatewayOptions {
        GatewayOptions {
            config: config.to_owned(),
            registry_url: registry_url.to_owned(),
            plain_http: registry_url.starts_with("http://"),
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// A running `registry-gateway serve` (the binary built by this package), with
/// `--grpc-listen 127.0.0.1:<p> --admin-listen 127.0.0.1:<q>`, ready (`/readyz` answered 200).
/// stdout and stderr go to files ([`Gateway::log`]). Killed on drop; [`Gateway::stop`] is the
/// graceful way.
pub struct Gateway {
    // Field order matters: the process is killed (and its logs shown) before the dir is removed.
    child: ManagedChild,
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    options: GatewayOptions,
    _dir: TempDir,
}

impl Gateway {
    /// Starts the sidecar on fresh loopback ports and waits (at most 15 s) for
    /// `GET /readyz` → 200 on its admin port. Panics with its log if it exits or never gets
    /// ready.
    pub async fn start(options: GatewayOptions) -> Gateway {
        Gateway::start_on(options, None).await
    }

    /// Like [`Gateway::start`], with the gRPC listener on `grpc_port` if given (to restart a
    /// sidecar behind an Envoy that already points at that port).
    pub async fn start_on(options: GatewayOptions, grpc_port: Option<u16>) -> Gateway {
        let dir = crate::process::temp_dir("rg-gateway-");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let grpc_addr = loopback(grpc_port.unwrap_or_else(free_port));
            let admin_addr = loopback(free_port());
            let mut cmd = Command::new(gateway_bin());
            cmd.arg("serve")
                .arg("--config")
                .arg(&options.config)
                .arg("--grpc-listen")
                .arg(grpc_addr.to_string())
                .arg("--admin-listen")
                .arg(admin_addr.to_string())
                .arg("--registry-url")
                .arg(&options.registry_url);
            if options.plain_http {
                cmd.arg("--registry-plain-http-credentials");
            }
            cmd.args(&options.extra_args);
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("REGISTRY_GATEWAY_") {
                    cmd.env_remove(name);
                }
            }
            cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
            let command_line = format!("{cmd:?}");
            let mut child = ManagedChild::spawn("registry-gateway", cmd, dir.path());
            match wait_ready(&mut child, admin_addr).await {
                Ok(()) => {
                    return Gateway {
                        child,
                        grpc_addr,
                        admin_addr,
                        options,
                        _dir: dir,
                    };
                }
                Err(Exit::PortTaken) if attempt < PORT_ATTEMPTS && grpc_port.is_none() => {
                    continue;
                }
                Err(Exit::PortTaken | Exit::Exited) => panic!(
                    "registry-gateway exited during start-up ({command_line})\n{}",
                    child.describe()
                ),
                Err(Exit::NotReady(last)) => panic!(
                    "registry-gateway not ready within {START_TIMEOUT:?} (last /readyz: {last})\n{}",
                    child.describe()
                ),
            }
        }
    }

    /// The ext_proc gRPC listener, `127.0.0.1:<port>`.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// `http://127.0.0.1:<admin port>` (`/metrics`, `/healthz`, `/readyz`, `/status`).
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// A client for the admin port.
    pub fn admin(&self) -> RegistryClient {
        RegistryClient::new(&self.admin_url())
    }

    /// The options it was started with.
    pub fn options(&self) -> &GatewayOptions {
        &self.options
    }

    /// stderr so far (where the sidecar logs).
    pub fn log(&self) -> String {
        self.child.stderr()
    }

    /// stdout so far.
    pub fn stdout(&self) -> String {
        self.child.stdout()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// `Some(status)` if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.exited()
    }

    /// Graceful stop: SIGTERM, then wait up to 10 s for the exit (panics, after a kill, if it does
    /// not come). Returns the exit status. The handle stays usable for its logs.
    pub async fn stop(&mut self) -> ExitStatus {
        self.child.terminate(STOP_GRACE).await
    }

    /// SIGKILL now (a crashed sidecar).
    pub fn kill(&mut self) {
        self.child.kill();
    }
}

enum Exit {
    /// Exited, saying an address was in use: retry with other ports.
    PortTaken,
    Exited,
    NotReady(String),
}

async fn wait_ready(child: &mut ManagedChild, admin_addr: SocketAddr) -> Result<(), Exit> {
    let admin = RegistryClient::new(&format!("http://{admin_addr}"));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if child.exited().is_some() {
            let log = child.stderr().to_lowercase();
            return Err(
                if log.contains("address already in use") || log.contains("addrinuse") {
                    Exit::PortTaken
                } else {
                    Exit::Exited
                },
            );
        }
        let last = match admin.get("/readyz").await {
            Ok(reply) if reply.status == 200 => return Ok(()),
            Ok(reply) => format!("HTTP {}: {}", reply.status, reply.text()),
            Err(err) => err.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(Exit::NotReady(last));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How to start a [`Stack`].
#[derive(Clone, Debug)]
pub struct StackOptions {
    /// The policy YAML, written to `<config dir>/config.yaml` before the sidecar starts.
    pub config_yaml: String,
    pub registry: RegistryOptions,
    /// With an htpasswd registry: write its credentials as a mounted Secret would be
    /// (`username`, `password` files) and pass `--registry-credentials-dir` to the sidecar.
    /// Default true; set false to pass credentials another way (flags, environment).
    pub credentials_dir: bool,
    /// Appended to the sidecar's command line.
    pub gateway_extra_args: Vec<String>,
    /// The sidecar's extra environment.
    pub gateway_env: Vec<(String, String)>,
}

impl StackOptions {
    /// An open registry and no extra sidecar flags.
    pub fn new(config_yaml: &str) -> StackOptions {
        StackOptions {
            config_yaml: config_yaml.to_owned(),
            registry: RegistryOptions::default(),
            credentials_dir: true,
            gateway_extra_args: Vec::new(),
            gateway_env: Vec::new(),
        }
    }

    /// A registry with htpasswd auth for `user`, whose credentials the sidecar reads from a
    /// mounted Secret ([`StackOptions::credentials_dir`]).
    pub fn with_htpasswd(config_yaml: &str, user: &str, password: &str) -> StackOptions {
        StackOptions {
            registry: RegistryOptions::with_htpasswd(user, password),
            ..StackOptions::new(config_yaml)
        }
    }
}

/// The sidecar topology of the README: client → Envoy (`envoy/envoy.yaml`) → registry, Envoy calling the
/// sidecar for manifest writes, the sidecar listing tags from the registry directly. The policy is
/// `config.yaml` in a directory of its own (as a mounted ConfigMap would be), passed as
/// `--config <dir>/config.yaml`; [`Stack::write_config`] replaces it by rename, the way editors and
/// `kubectl cp` do.
///
/// Dropping it stops Envoy, then the sidecar, then the registry (all by PID).
pub struct Stack {
    // Field order is drop order: front to back, then the files.
    pub envoy: Envoy,
    pub gateway: Gateway,
    pub registry: Registry,
    config_dir: TempDir,
    secret_dir: Option<TempDir>,
}

impl Stack {
    /// Registry (open), sidecar with `config_yaml`, Envoy; each ready before the next starts.
    pub async fn start(config_yaml: &str) -> Stack {
        Stack::start_with(StackOptions::new(config_yaml)).await
    }

    /// [`Stack::start`] with registry auth, extra sidecar flags or environment.
    pub async fn start_with(options: StackOptions) -> Stack {
        let config_dir = crate::process::temp_dir("rg-config-");
        let config_path = config_dir.path().join("config.yaml");
        std::fs::write(&config_path, &options.config_yaml).expect("temp dir is writable");

        let registry = Registry::start(options.registry.clone()).await;
        let mut gateway_options = GatewayOptions::new(&config_path, &registry.url());
        // A separate directory, like a Secret mounted next to the ConfigMap.
        let mut secret_dir = None;
        if let (true, Some((user, password))) = (options.credentials_dir, registry.credentials()) {
            let dir = crate::process::temp_dir("rg-secret-");
            write_credentials_dir(dir.path(), user, password, false);
            gateway_options.extra_args.extend([
                "--registry-credentials-dir".to_owned(),
                dir.path().display().to_string(),
            ]);
            secret_dir = Some(dir);
        }
        gateway_options
            .extra_args
            .extend(options.gateway_extra_args.iter().cloned());
        gateway_options.env = options.gateway_env.clone();
        let gateway = Gateway::start(gateway_options).await;
        let envoy = Envoy::start_between(registry.addr(), gateway.grpc_addr()).await;
        Stack {
            envoy,
            gateway,
            registry,
            config_dir,
            secret_dir,
        }
    }

    /// Another Envoy in front of this stack's registry and sidecar, running the shipped file at
    /// `config` (relative to the repository root, e.g. `envoy/ext-authz.yaml`), addresses
    /// substituted as for [`Stack::envoy`].
    pub async fn start_envoy(&self, config: &str) -> Envoy {
        let options = EnvoyOptions {
            registry_addr: self.registry.addr(),
            gateway_addr: self.gateway.grpc_addr(),
        };
        Envoy::start_with_config(&repo_root().join(config), options).await
    }

    /// `http://127.0.0.1:<envoy port>`: where clients push.
    pub fn envoy_url(&self) -> String {
        self.envoy.url()
    }

    /// `127.0.0.1:<envoy port>`, for skopeo references: `format!("{}/repo:tag", stack.envoy_host())`.
    pub fn envoy_host(&self) -> String {
        self.envoy.host()
    }

    /// `http://127.0.0.1:<registry port>`: the registry directly, bypassing Envoy and the sidecar.
    pub fn registry_url(&self) -> String {
        self.registry.url()
    }

    /// A raw client through Envoy, with the registry's credentials if it has any.
    pub fn client(&self) -> RegistryClient {
        let client = self.envoy.client();
        match self.registry.credentials() {
            Some((user, password)) => client.with_basic_auth(user, password),
            None => client,
        }
    }

    /// A raw client to the registry directly (for set-up and checks that must not be gated).
    pub fn registry_client(&self) -> RegistryClient {
        self.registry.client()
    }

    /// The policy file the sidecar was started with.
    pub fn config_path(&self) -> PathBuf {
        self.config_dir.path().join("config.yaml")
    }

    /// The directory holding it.
    pub fn config_dir(&self) -> &Path {
        self.config_dir.path()
    }

    /// The registry credentials directory given to the sidecar (`username`, `password`), if the
    /// registry has htpasswd auth and [`StackOptions::credentials_dir`] was left on. Rewrite its
    /// files to test credential rotation.
    pub fn credentials_dir(&self) -> Option<&Path> {
        self.secret_dir.as_ref().map(TempDir::path)
    }

    /// Replaces the policy atomically: writes `.config.yaml.tmp` in the same directory, then
    /// renames it over `config.yaml` (what `mv new.yaml config.yaml` does).
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.config_dir.path().join(".config.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("config dir is writable");
        std::fs::rename(&tmp, self.config_path()).expect("rename within the config dir");
    }

    /// Stops the sidecar gracefully (SIGTERM) and returns its exit status; Envoy keeps running
    /// and, with no sidecar, fails manifest writes closed.
    pub async fn stop_gateway(&mut self) -> ExitStatus {
        self.gateway.stop().await
    }

    /// Starts a new sidecar with the same options on the same gRPC port, replacing (and killing,
    /// if still running) the old one; Envoy reconnects by itself.
    pub async fn restart_gateway(&mut self) {
        let options = self.gateway.options().clone();
        let port = self.gateway.grpc_addr().port();
        self.gateway.kill();
        self.gateway = Gateway::start_on(options, Some(port)).await;
    }
}

/// Writes a credentials directory as a mounted Kubernetes Secret would be (`username`,
/// `password`, `insecure` files) into `dir`, and returns `dir`.
pub fn write_credentials_dir(dir: &Path, user: &str, password: &str, insecure: bool) -> PathBuf {
    std::fs::create_dir_all(dir).expect("credentials dir is writable");
    std::fs::write(dir.join("username"), user).expect("credentials dir is writable");
    std::fs::write(dir.join("password"), password).expect("credentials dir is writable");
    std::fs::write(
        dir.join("insecure"),
        if insecure { "true" } else { "false" },
    )
    .expect("credentials dir is writable");
    dir.to_owned()
}
