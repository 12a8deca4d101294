//! `registry-gateway-testkit`: the harness shared by the end-to-end tests (`tests/e2e/`) and the
//! benchmark (`tools/bench`): real processes on 127.0.0.1, no Docker, no network beyond loopback.
//!
//! The tests use it as `use registry_gateway_testkit as support;`:
//!
//! | item | what it is |
//! | --- | --- |
//! | [`Registry`] | CNCF distribution 2.8 (`docker-registry serve`), optional htpasswd / token auth, access log readable |
//! | [`Envoy`] | Envoy 1.40 running the shipped `envoy/envoy.yaml`, only addresses and ports substituted |
//! | [`render_envoy_config`] | that substitution, the one Envoy config rewrite of the repository (also the `render-envoy` binary) |
//! | [`Gateway`] | the `registry-gateway serve` binary built by the workspace ([`gateway_bin`]) |
//! | [`Stack`] | registry + gateway + Envoy wired together, with a watched config directory |
//! | [`TokenIssuer`] | a Docker-token server (Harbor's part) for a registry with `auth.token` |
//! | [`FakeExtProc`] | a recording, policy-free ext_proc server, to test the Envoy config alone |
//! | [`FaultProxy`] | an HTTP proxy in front of a registry answering chosen paths with a chosen status |
//! | [`put_manifest_many`], [`mount_layout_blobs_many`] | a registry filled fast: one manifest under many repositories and tags, blobs mounted |
//! | [`oci_image_layout`], [`oci_index_layout`] | OCI image layouts on disk with layers of exact sizes |
//! | [`skopeo_copy`], [`skopeo_copy_all`], [`skopeo_inspect_raw`], [`skopeo`] | the real client, with a deadline |
//! | [`RegistryClient`] | raw registry API calls (blob upload, manifest PUT/GET/DELETE, tag list) |
//! | [`Conn`], [`raw_http`] | blocking HTTP/1.1 over one kept-alive socket, and exact request bytes |
//! | [`ManagedChild`] | a child process with logs in files, killed by PID on drop, optionally listed in a PID file |
//! | [`SEED_LIMITS`] | what `explain` answers for the seed configuration, one row per rule and one global |
//! | [`eventually`] | bounded polling instead of sleeps |
//! | [`assert_includes`] | every expected name present, the missing ones named together |
//!
//! External binaries are found through `ENVOY_BIN`, `REGISTRY_BIN`, `SKOPEO_BIN`, `HTPASSWD_BIN`
//! (exported by `scripts/env.sh`), else in their default places (the project's `.venv`,
//! `/usr/bin`, `PATH`). A missing binary fails the test with a message to run `scripts/setup`;
//! nothing is skipped.
//!
//! Every process is killed by PID when its handle is dropped, also when a test panics; on a panic the
//! handle first prints the tail of the processes' logs to the (captured) test output.

mod bounded;
mod conn;
mod dockerd;
mod envoy;
mod envoy_config;
mod fake_extproc;
mod fault_proxy;
mod fill;
mod gateway;
mod http;
mod images;
mod metrics;
mod oci;
mod podman;
mod process;
mod redis;
mod registry;
mod seed;
mod serve;
mod tarball;
mod token;

use std::fmt::Debug;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use bounded::{assert_success, output_text, run_bounded};
pub use conn::{Conn, Reply, location_target};
pub use dockerd::{CLIENT_TIMEOUT, Dockerd, DockerdOptions, docker_bin, dockerd_bin};
pub use envoy::{Envoy, envoy_config_path, substituted_config};
pub use envoy_config::{EnvoyOptions, RenderError, disable_route_ext_proc, render_envoy_config};
pub use fake_extproc::{FAKE_DENIAL_MESSAGE, FakeExtProc, SeenStream};
pub use fault_proxy::{Fault, FaultProxy};
pub use fill::{mount_layout_blobs, mount_layout_blobs_many, put_manifest_many};
pub use gateway::{Gateway, GatewayOptions, Stack, StackOptions, write_credentials_dir};
pub use http::{HttpReply, RegistryClient, raw_http, sha256_digest};
pub use images::one_layer_image;
pub use metrics::Scrape;
pub use oci::{
    Descriptor, Layout, OCI_CONFIG, OCI_INDEX, OCI_LAYER_TAR, OCI_MANIFEST, OciImage,
    oci_image_layout, oci_index_layout, oci_index_layout_seeded, random_bytes, skopeo, skopeo_copy,
    skopeo_copy_all, skopeo_inspect_raw,
};
pub use podman::{Podman, buildah_bin, podman_bin};
pub use process::{
    ManagedChild, cpu_seconds, kill_all_listed, reset_peak_rss, set_pid_file, start_time,
    status_kib, temp_dir,
};
pub use redis::{Redis, redis_bin, redis_cluster};
pub use registry::{
    AccessLogEntry, Registry, RegistryOptions, TokenAuthConfig, distribution_config, listening_addr,
};
pub use seed::{SEED_LIMITS, SeedLimits};
pub use tarball::{random_file, rootfs_tar};
pub use token::{TOKEN_ISSUER, TOKEN_SERVICE, TokenIssuer, TokenRequest, basic_authorization};

/// The repository root (where the workspace's `Cargo.toml`, `envoy/` and `.venv/` live): two
/// levels above this crate.
pub fn repo_root() -> PathBuf {
    let kit = Path::new(env!("CARGO_MANIFEST_DIR"));
    kit.ancestors()
        .nth(2)
        .expect("the kit lives at crates/testkit inside the repository")
        .to_owned()
}

/// The `registry-gateway` binary: `$REGISTRY_GATEWAY_BIN`, else the one Cargo built next to the
/// running executable (`target/<profile>/`, the parent of a test's `deps/`), so a test or the
/// benchmark runs the binary of its own build profile.
pub fn gateway_bin() -> PathBuf {
    if let Some(path) = env_path("REGISTRY_GATEWAY_BIN") {
        return require_executable("REGISTRY_GATEWAY_BIN", path);
    }
    let exe = std::env::current_exe().expect("the running executable has a path");
    let found = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("registry-gateway"))
        .find(|p| is_executable(p));
    found.unwrap_or_else(|| {
        panic!(
            "`registry-gateway` not found next to {} or its parent: build it (`cargo build`) or \
             set REGISTRY_GATEWAY_BIN",
            exe.display()
        )
    })
}

/// Envoy 1.40: `$ENVOY_BIN`, else `.venv/lib/python3*/site-packages/envoy/_bin/envoy`, else `envoy`
/// on `PATH`.
pub fn envoy_bin() -> PathBuf {
    if let Some(path) = env_path("ENVOY_BIN") {
        return require_executable("ENVOY_BIN", path);
    }
    let lib = repo_root().join(".venv").join("lib");
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(&lib)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
                .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    if let Some(found) = candidates.into_iter().rev().find(|p| is_executable(p)) {
        return found;
    }
    if let Some(found) = which("envoy") {
        return found;
    }
    missing_binary(
        "envoy",
        &format!("{}/python3*/site-packages/envoy/_bin/envoy", lib.display()),
    )
}

/// distribution 2.8: `$REGISTRY_BIN`, else `/usr/bin/docker-registry`.
pub fn registry_bin() -> PathBuf {
    fixed_or_env(
        "REGISTRY_BIN",
        "docker-registry",
        "/usr/bin/docker-registry",
    )
}

/// skopeo: `$SKOPEO_BIN`, else `skopeo` on `PATH`.
pub fn skopeo_bin() -> PathBuf {
    fixed_or_env("SKOPEO_BIN", "skopeo", "/usr/bin/skopeo")
}

/// htpasswd (Debian `apache2-utils`): `$HTPASSWD_BIN`, else `htpasswd` on `PATH`.
pub fn htpasswd_bin() -> PathBuf {
    fixed_or_env("HTPASSWD_BIN", "htpasswd", "/usr/bin/htpasswd")
}

fn fixed_or_env(var: &str, name: &str, default: &str) -> PathBuf {
    if let Some(path) = env_path(var) {
        return require_executable(var, path);
    }
    let default = PathBuf::from(default);
    if is_executable(&default) {
        return default;
    }
    which(name).unwrap_or_else(|| missing_binary(name, &default.display().to_string()))
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn require_executable(var: &str, path: PathBuf) -> PathBuf {
    if is_executable(&path) {
        path
    } else {
        panic!(
            "{var}={} is not an executable file. Run `scripts/setup` (it installs Envoy, \
             docker-registry, skopeo and htpasswd), or fix {var}.",
            path.display()
        )
    }
}

fn missing_binary(name: &str, looked_at: &str) -> ! {
    panic!(
        "`{name}` not found (looked at {looked_at} and PATH). Run `scripts/setup` from the \
         repository root: it installs Envoy 1.40 into .venv and docker-registry, skopeo and \
         htpasswd from Debian."
    )
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A TCP port on 127.0.0.1 that was free a moment ago. Prefer letting the process bind port 0 and
/// reading the port back (the registry and Envoy helpers do); this is for processes that cannot
/// report their port, and their start-up retries on a clash.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 must work on loopback")
}

/// `127.0.0.1:<port>`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `probe` every 50 ms until it returns `Ok`, and returns that value. Panics after
/// `timeout` with `what` and the last error, so a failing test says what it was waiting for.
///
/// ```text
/// let tags = eventually(Duration::from_secs(5), "tag t1 listed", || async {
///     let tags = client.list_tags("repo").await;
///     if tags.contains(&"t1".to_owned()) { Ok(tags) } else { Err(tags) }
/// }).await;
/// ```
pub async fn eventually<T, E, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        // Each attempt is bounded too, so a hanging probe cannot outlive the deadline by much.
        let remaining = deadline.saturating_duration_since(Instant::now());
        let last =
            match tokio::time::timeout(remaining.max(Duration::from_millis(50)), probe()).await {
                Ok(Ok(value)) => return value,
                Ok(Err(err)) => format!("{err:?}"),
                Err(_) => "the probe itself did not finish in time".to_owned(),
            };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last result: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Panics unless every one of `wants` is in `have`, naming all the missing ones at once along
/// with `what` `have` is and what it holds.
pub fn assert_includes(have: &[String], wants: &[&str], what: &str) {
    let missing: Vec<&str> = wants
        .iter()
        .copied()
        .filter(|want| !have.iter().any(|h| h == want))
        .collect();
    assert!(
        missing.is_empty(),
        "{missing:?} missing from {what}: {have:?}"
    );
}
