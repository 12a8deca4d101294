//! A real CNCF distribution 2.8 registry (`docker-registry serve`) on 127.0.0.1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{ManagedChild, loopback_http_accessors};
use crate::{RegistryClient, htpasswd_bin, registry_bin};

/// How long a registry may take to listen and answer `GET /v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How the registry is set up. `RegistryOptions::default()` is an open registry with deletes
/// enabled.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// `Some((user, password))`: HTTP Basic auth from a bcrypt htpasswd file (`auth.htpasswd`);
    /// every request without these credentials gets `401` with `WWW-Authenticate: Basic`.
    pub htpasswd: Option<(String, String)>,
    /// More users of the same htpasswd file besides `htpasswd`'s (which [`Registry::client`]
    /// uses), e.g. the sidecar's own reading account beside the pushers'. Needs `htpasswd`.
    pub htpasswd_more_users: Vec<(String, String)>,
    /// `Some(..)`: Docker token auth (`auth.token`); requests need a Bearer JWT from the issuer.
    /// Mutually exclusive with `htpasswd`.
    pub token_auth: Option<TokenAuthConfig>,
    /// `storage.delete.enabled`: without it, manifest DELETE answers `405 UNSUPPORTED`.
    pub delete_enabled: bool,
}

impl Default for RegistryOptions {
    fn default() -> RegistryOptions {
        RegistryOptions {
            htpasswd: None,
            htpasswd_more_users: Vec::new(),
            token_auth: None,
            delete_enabled: true,
        }
    }
}

impl RegistryOptions {
    /// An open registry (no auth), deletes enabled.
    pub fn open() -> RegistryOptions {
        RegistryOptions::default()
    }

    /// A registry behind htpasswd Basic auth with one user.
    pub fn with_htpasswd(user: &str, password: &str) -> RegistryOptions {
        RegistryOptions {
            htpasswd: Some((user.to_owned(), password.to_owned())),
            ..RegistryOptions::default()
        }
    }

    /// Adds another user to the htpasswd file (see [`RegistryOptions::htpasswd_more_users`]).
    pub fn and_htpasswd_user(mut self, user: &str, password: &str) -> RegistryOptions {
        self.htpasswd_more_users
            .push((user.to_owned(), password.to_owned()));
        self
    }
}

/// distribution's `auth.token` section: the registry answers `401` with
/// `WWW-Authenticate: Bearer realm="<realm>",service="<service>",scope="repository:<name>:<actions>"`
/// and accepts JWTs whose `iss` is `issuer`, `aud` is `service`, signed by a key whose certificate
/// chains to `root_cert_bundle` (PEM). [`crate::TokenIssuer::auth_config`] makes one.
#[derive(Clone, Debug)]
pub struct TokenAuthConfig {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    pub root_cert_bundle: PathBuf,
}

/// A running `docker-registry serve`, storage in a temp dir, listening on an ephemeral loopback
/// port. Killed on drop.
///
/// Logs: the registry's own log (logrus, `log.level: info`) is [`Registry::log`]; the access log
/// (one Apache combined-format line per request, written unbuffered) is [`Registry::access_log`],
/// parsed by [`Registry::requests`] and [`Registry::count_requests`], e.g. to count tag-list calls.
pub struct Registry {
    // Field order matters: the process is killed (and its logs shown) before the dir is removed.
    child: ManagedChild,
    addr: SocketAddr,
    credentials: Option<(String, String)>,
    config_path: PathBuf,
    dir: TempDir,
}

impl Registry {
    /// Writes a config into a fresh temp dir, starts the registry on `127.0.0.1:0`, reads the bound
    /// port from its log, and waits (at most 10 s) until `GET /v2/` answers (200, or 401 with
    /// auth). Panics with the registry's log if any of that fails.
    pub async fn start(options: RegistryOptions) -> Registry {
        assert!(
            options.htpasswd.is_none() || options.token_auth.is_none(),
            "distribution supports one auth method at a time"
        );
        let dir = crate::process::temp_dir("rg-registry-");
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).expect("temp dir is writable");

        assert!(
            options.htpasswd.is_some() || options.htpasswd_more_users.is_empty(),
            "more htpasswd users need a first one (`htpasswd`)"
        );
        let mut auth = String::new();
        if let Some(first) = &options.htpasswd {
            let htpasswd = dir.path().join("htpasswd");
            let users = std::iter::once(first).chain(&options.htpasswd_more_users);
            write_htpasswd(&htpasswd, users);
            auth = format!(
                "auth:\n  htpasswd:\n    realm: registry-gateway-tests\n    path: {}\n",
                htpasswd.display()
            );
        }
        if let Some(token) = &options.token_auth {
            auth = format!(
                "auth:\n  token:\n    realm: {realm:?}\n    service: {service:?}\n    issuer: {issuer:?}\n    rootcertbundle: {bundle:?}\n",
                realm = token.realm,
                service = token.service,
                issuer = token.issuer,
                bundle = token.root_cert_bundle.display().to_string(),
            );
        }

        // `http.addr` port 0: the kernel picks a free port and the registry logs
        // "listening on 127.0.0.1:<port>", so parallel tests never race for a port.
        let config = distribution_config(
            &storage,
            options.delete_enabled,
            "registry-gateway-tests-not-secret",
        ) + &auth;
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("temp dir is writable");

        let mut cmd = Command::new(registry_bin());
        cmd.arg("serve").arg(&config_path);
        let mut child = ManagedChild::spawn("registry", cmd, dir.path());

        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            child.assert_running("start-up");
            if let Some(addr) = listening_addr(&child.stderr()) {
                break addr;
            }
            if Instant::now() >= deadline {
                panic!(
                    "registry did not log its listening address within {START_TIMEOUT:?}\n{}",
                    child.describe()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };

        let registry = Registry {
            child,
            addr,
            credentials: options.htpasswd.clone(),
            config_path,
            dir,
        };
        let client = RegistryClient::new(&registry.url());
        loop {
            match client.get("/v2/").await {
                Ok(reply) if reply.status == 200 || reply.status == 401 => break,
                Ok(reply) if Instant::now() >= deadline => panic!(
                    "registry answered GET /v2/ with {}\n{}",
                    reply.status,
                    registry.child.describe()
                ),
                Err(err) if Instant::now() >= deadline => panic!(
                    "registry did not answer GET /v2/ within {START_TIMEOUT:?}: {err}\n{}",
                    registry.child.describe()
                ),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        registry
    }

    loopback_http_accessors!();

    /// The htpasswd user and password, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// A raw API client for this registry directly (not through Envoy), with its credentials.
    pub fn client(&self) -> RegistryClient {
        let client = RegistryClient::new(&self.url());
        match self.credentials() {
            Some((user, password)) => client.with_basic_auth(user, password),
            None => client,
        }
    }

    /// The generated distribution config.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The storage root (`storage.filesystem.rootdirectory`).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry's own log (stderr) so far.
    pub fn log(&self) -> String {
        self.child.stderr()
    }

    /// The access log (stdout) so far: Apache combined format, one line per request.
    pub fn access_log(&self) -> String {
        self.child.stdout()
    }

    /// Every request in the access log so far, in order.
    pub fn requests(&self) -> Vec<AccessLogEntry> {
        self.access_log()
            .lines()
            .filter_map(AccessLogEntry::parse)
            .collect()
    }

    /// How many requests with this method and path (query ignored) the registry has received,
    /// e.g. `count_requests("GET", "/v2/library/app/tags/list")`.
    pub fn count_requests(&self, method: &str, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path() == path)
            .count()
    }

    /// The process id (to stop or pause the registry in a test).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Kills the registry now (a test of "registry unreachable"); the handle stays usable for its
    /// logs.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Gives htpasswd user `user` a new password: the file is rewritten (a new file renamed
    /// over it). distribution 2.8.2 re-reads its htpasswd file once its modification time
    /// changes: the very next request is judged by the new file and the old password is
    /// refused, with no restart (tests/e2e/faults.rs checks it). If `user` is the first user,
    /// [`Registry::client`] uses the new password from now on.
    pub fn set_htpasswd_password(&mut self, user: &str, password: &str) {
        let path = self.dir.path().join("htpasswd");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("this registry has no htpasswd file: {e}"));
        let line = bcrypt_htpasswd_line(user, password);
        let prefix = format!("{user}:");
        let mut found = false;
        let rewritten: String = text
            .lines()
            .map(|old| {
                if old.starts_with(&prefix) {
                    found = true;
                    line.clone()
                } else {
                    format!("{old}\n")
                }
            })
            .collect();
        assert!(found, "no htpasswd user {user:?}");
        let tmp = self.dir.path().join(".htpasswd.tmp");
        std::fs::write(&tmp, rewritten).expect("temp dir is writable");
        std::fs::rename(&tmp, &path).expect("rename within the temp dir");
        if let Some((first, first_password)) = &mut self.credentials
            && first == user
        {
            *first_password = password.to_owned();
        }
    }
}

/// One bcrypt line per `(user, password)`.
fn write_htpasswd<'a>(path: &Path, users: impl Iterator<Item = &'a (String, String)>) {
    let text: String = users
        .map(|(user, password)| bcrypt_htpasswd_line(user, password))
        .collect();
    std::fs::write(path, text).expect("temp dir is writable");
}

/// One access-log line: `127.0.0.1 - user [time] "GET /v2/x/tags/list?n=10 HTTP/1.1" 200 57 "" "ua"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogEntry {
    pub method: String,
    /// Path with the query string, as sent.
    pub target: String,
    pub status: u16,
}

impl AccessLogEntry {
    fn parse(line: &str) -> Option<AccessLogEntry> {
        let request = line.split('"').nth(1)?;
        let mut parts = request.split(' ');
        let method = parts.next()?.to_owned();
        let target = parts.next()?.to_owned();
        let after = line.splitn(3, '"').nth(2)?;
        let status = after.split_whitespace().next()?.parse().ok()?;
        Some(AccessLogEntry {
            method,
            target,
            status,
        })
    }

    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// `level=info msg="listening on 127.0.0.1:40149" ...` → the address.
/// A distribution 2.8 configuration: filesystem storage in `storage`, deletes as `delete_enabled`
/// says, upload purging off, the access log on stdout (Apache combined, one line a request, what
/// [`Registry::requests`] and the benchmark's P5 read), and `http.addr` on `127.0.0.1:0`: the
/// kernel picks a free port and the registry logs "listening on 127.0.0.1:<port>", so parallel
/// runs never race for a port. An `auth:` section may be appended.
pub fn distribution_config(storage: &Path, delete_enabled: bool, secret: &str) -> String {
    format!(
        "version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: {delete_enabled}
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:0
  secret: {secret}
",
        storage = storage.display(),
    )
}

/// The address in distribution's "listening on 127.0.0.1:<port>" log line, once it is there.
pub fn listening_addr(log: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        let rest = line.split("msg=\"listening on ").nth(1)?;
        rest.split('"').next()?.parse().ok()
    })
}

/// `user:$2y$05$...` from `htpasswd -Bbn` (distribution accepts only bcrypt entries; Python's
/// `crypt` cannot make them, Debian's apache2-utils can).
fn bcrypt_htpasswd_line(user: &str, password: &str) -> String {
    let bin = htpasswd_bin();
    let output = Command::new(&bin)
        .args(["-B", "-b", "-n", user, password])
        .output()
        .unwrap_or_else(|e| panic!("running {} failed: {e}", bin.display()));
    assert!(
        output.status.success(),
        "htpasswd -Bbn failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = String::from_utf8(output.stdout).expect("htpasswd prints ASCII");
    format!("{}\n", line.trim())
}
