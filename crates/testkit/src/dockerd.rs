//! A Docker daemon of the test's own (Debian `docker.io`, dockerd 20.10 with its own containerd),
//! so `docker push` and `docker manifest push` are the real clients. Everything the daemon keeps
//! is under one temp dir: `--data-root`, `--exec-root` (containerd's state and sockets),
//! `--pidfile`, its own `--config-file` and the API socket (`-H unix://…`), which the CLI reaches
//! through `DOCKER_HOST`; the CLI's own files (`docker manifest` lists) go to `DOCKER_CONFIG`
//! there too. No network
//! is set up (`--bridge=none --iptables=false`) and images use the `vfs` storage driver, which
//! needs nothing from the kernel but plain directories; nothing here runs a container.
//!
//! Registries on 127.0.0.0/8 are insecure by default for dockerd (plain http allowed), so the
//! loopback Envoy needs no `--insecure-registry`; [`Dockerd::insecure_registries`] shows it.
//!
//! Stopping is by PID: SIGTERM, which makes dockerd stop its containerd and unmount its data
//! root; if it does not exit in time it is killed, and so is its containerd (by the PID in
//! containerd's PID file, checked against its command line), and what dockerd mounted under the
//! temp dir is unmounted.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bounded::{assert_success, run_bounded};
use crate::process::ManagedChild;
use crate::{env_path, is_executable, which};

/// dockerd starts in about a second here; a debug-built stack beside it on 2 loaded cores gets
/// slack.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// SIGTERM to exit: dockerd stops its containerd first (about a second).
const STOP_GRACE: Duration = Duration::from_secs(15);
/// One CLI command (a push of a few MB on loopback takes well under a second).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// dockerd: `$DOCKERD_BIN`, else `/usr/sbin/dockerd` (Debian `docker.io`), else `dockerd` on `PATH`.
pub fn dockerd_bin() -> PathBuf {
    client_bin("DOCKERD_BIN", "dockerd", "/usr/sbin/dockerd")
}

/// The docker CLI: `$DOCKER_BIN`, else `/usr/bin/docker` (Debian `docker.io`, the daemon's own
/// version), else `docker` on `PATH`.
pub fn docker_bin() -> PathBuf {
    client_bin("DOCKER_BIN", "docker", "/usr/bin/docker")
}

/// Finds a client program the way the kit finds Envoy, failing with the command that installs it.
pub(crate) fn client_bin(var: &str, name: &str, default: &str) -> PathBuf {
    if let Some(path) = env_path(var) {
        assert!(
            is_executable(&path),
            "{var}={} is not an executable file. Run `scripts/setup` (it installs docker.io, \
             podman and buildah), or fix {var}.",
            path.display()
        );
        return path;
    }
    let default = PathBuf::from(default);
    if is_executable(&default) {
        return default;
    }
    which(name).unwrap_or_else(|| {
        panic!(
            "`{name}` not found (looked at {} and PATH). Run `scripts/setup` from the repository \
             root: it installs Debian's docker.io, podman and buildah.",
            default.display()
        )
    })
}

/// How to start a [`Dockerd`].
#[derive(Clone, Debug, Default)]
pub struct DockerdOptions {
    /// The daemon's extra environment (e.g. `DOCKER_ALLOW_SCHEMA1_PUSH_DONOTUSE`). Inherited
    /// `DOCKER_*` variables are removed, so only these count.
    pub env: Vec<(String, String)>,
}

/// A running dockerd on its own socket, ready (`GET /_ping` answered). Stopped by PID on drop.
pub struct Dockerd {
    child: ManagedChild,
    socket: PathBuf,
    data_root: PathBuf,
    exec_root: PathBuf,
    config_dir: PathBuf,
    // Last: removed once the daemon is gone.
    dir: TempDir,
}

impl Dockerd {
    /// A daemon with default options.
    pub async fn start() -> Dockerd {
        Dockerd::start_with(DockerdOptions::default()).await
    }

    /// Starts dockerd under a fresh temp dir and waits (at most 30 s) until its API answers.
    /// Panics with its log if it exits or never answers.
    pub async fn start_with(options: DockerdOptions) -> Dockerd {
        // Short: the API socket and containerd's sockets live under it, and a Unix socket path
        // holds at most 107 bytes.
        let dir = crate::process::temp_dir("rg-dockerd-");
        let socket = dir.path().join("docker.sock");
        let data_root = dir.path().join("data");
        let exec_root = dir.path().join("exec");
        let config_dir = dir.path().join("cli");
        std::fs::create_dir_all(&config_dir).expect("temp dir is writable");
        // An empty daemon config of its own: settings in the host's /etc/docker/daemon.json that
        // repeat a flag make dockerd refuse to start, and any other would change what is tested.
        let daemon_json = dir.path().join("daemon.json");
        std::fs::write(&daemon_json, "{}\n").expect("temp dir is writable");
        let mut cmd = Command::new(dockerd_bin());
        cmd.arg("--config-file")
            .arg(&daemon_json)
            .arg("--storage-driver")
            .arg("vfs")
            .arg("--iptables=false")
            .arg("--ip6tables=false")
            .arg("--bridge=none")
            .arg("--data-root")
            .arg(&data_root)
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(dir.path().join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--log-level")
            .arg("warn");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("DOCKER_") {
                cmd.env_remove(name);
            }
        }
        cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
        let child = ManagedChild::spawn("dockerd", cmd, dir.path());
        let mut daemon = Dockerd {
            child,
            socket,
            data_root,
            exec_root,
            config_dir,
            dir,
        };
        daemon.wait_ready().await;
        daemon
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Err(exited) = self.child.check_running("start-up") {
                panic!("dockerd did not start: {exited}");
            }
            let Err(last) = ping(&self.socket).await else {
                return;
            };
            if Instant::now() >= deadline {
                panic!(
                    "dockerd did not answer /_ping within {START_TIMEOUT:?} (last: {last})\n{}",
                    self.child.describe()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `unix://<socket>`, the value of `DOCKER_HOST` for this daemon.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// What the daemon logged so far (it logs to stderr, at `warn`).
    pub fn log(&self) -> String {
        self.child.stderr()
    }

    /// The temp dir holding everything of this daemon.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the docker CLI against this daemon (`DOCKER_HOST`, `DOCKER_CONFIG` set, other
    /// `DOCKER_*` variables removed), killed after 60 s (the test then fails).
    pub async fn docker<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let mut cmd = Command::new(docker_bin());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("DOCKER_") {
                cmd.env_remove(name);
            }
        }
        cmd.env("DOCKER_HOST", self.host())
            .env("DOCKER_CONFIG", &self.config_dir)
            .args(args);
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        run_bounded(cmd, CLIENT_TIMEOUT, &format!("docker {}", shown.join(" "))).await
    }

    /// `docker import <tar> <reference>`: a one-layer image from a root filesystem archive (see
    /// `rootfs_tar`). Panics if docker refuses.
    pub async fn import(&self, tar: &Path, reference: &str) {
        let tar = tar.display().to_string();
        let out = self.docker(&["import", tar.as_str(), reference]).await;
        assert_success(&out, &format!("docker import {tar} {reference}"));
    }

    /// The `Insecure Registries:` that `docker info` lists (dockerd's default is `127.0.0.0/8`).
    pub async fn insecure_registries(&self) -> Vec<String> {
        let out = self
            .docker(&[
                "info",
                "--format",
                "{{range .RegistryConfig.InsecureRegistryCIDRs}}{{.}}\n{{end}}",
            ])
            .await;
        assert_success(&out, "docker info");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Stops the daemon by PID (see the module doc). Idempotent; also run on drop.
    pub fn stop(&mut self) {
        if self.child.exited().is_none() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.pid().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            // Killed (SIGKILL) if it does not exit in time; what it leaves is cleaned below.
            let _ = self.child.wait_exit(STOP_GRACE);
        }
        self.child.kill();
        self.kill_own_containerd();
        self.unmount_leftovers();
    }

    /// dockerd stops its containerd on a graceful exit; a killed dockerd leaves it running.
    fn kill_own_containerd(&self) {
        let pid_file = self.exec_root.join("containerd").join("containerd.pid");
        let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            return;
        };
        // The PID may have been reused since: only a containerd started for this exec root.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("containerd") && cmdline.contains(&*self.exec_root.to_string_lossy()) {
            crate::process::sigkill(pid);
        }
    }

    /// dockerd bind-mounts its data root onto itself and unmounts it on a graceful exit; after a
    /// kill the mount (and any other under the temp dir) would outlive the test.
    fn unmount_leftovers(&self) {
        let roots = [&self.data_root, &self.exec_root];
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .filter(|point| roots.iter().any(|r| Path::new(point).starts_with(r)))
            .collect();
        // Deepest first.
        ours.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in ours {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(point)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // The child's own drop, right after, prints dockerd's log if the test is panicking.
        self.stop();
    }
}

/// `GET /_ping` on the daemon's socket: `Ok` once it answers 200.
async fn ping(socket: &Path) -> Result<(), String> {
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect {}: {e}", socket.display()))?;
    stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut reply))
        .await
        .map_err(|_| "no answer within 2s".to_owned())?
        .map_err(|e| format!("read: {e}"))?;
    let reply = String::from_utf8_lossy(&reply);
    if reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(reply.lines().next().unwrap_or("empty reply").to_owned())
    }
}
