//! The command line: `serve`, `check-config`, `explain` and `audit`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::registry::{Credentials, RegistryConfig};

/// Push limits (image size, tag count) for any OCI registry, decided for Envoy.
#[derive(Debug, Parser)]
#[command(name = "registry-gateway", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: ext_proc, ext_authz, the pre-flight API, health and metrics.
    Serve(Box<ServeArgs>),
    /// Validate a configuration and print the effective limits; exit non-zero on errors.
    CheckConfig {
        /// A YAML file, a ConfigMap manifest, or a ConfigMap directory.
        path: PathBuf,
    },
    /// Say which rule applies to a repository and its limits.
    Explain {
        /// A YAML file, a ConfigMap manifest, or a ConfigMap directory.
        #[arg(long, env = "REGISTRY_GATEWAY_CONFIG")]
        config: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// The repository name, such as `project-1/app`.
        repository: String,
    },
    /// Apply a configuration to the registry as it stands: walk the catalog, count every
    /// repository's tags, measure every tagged image, and list every violation. Exit 0 none,
    /// 3 violations, 1 the audit is incomplete (a registry error), 2 usage.
    Audit(Box<AuditArgs>),
}

/// What to do when the registry's tag list cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnRegistryError {
    /// Refuse the push with 503 UNAVAILABLE and a message naming the cause.
    Deny,
    /// Let the push through (size limits still apply).
    Allow,
}

/// Whom the gateway acts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClientCheck {
    /// The registry says whether it accepts the client's credentials.
    Registry,
    /// Every client that reaches Envoy (authentication happens in front of Envoy).
    Off,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings of `serve`. Every flag also reads `REGISTRY_GATEWAY_<NAME>`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration: a YAML file, a ConfigMap manifest, or a ConfigMap directory (watched).
    #[arg(long, env = "REGISTRY_GATEWAY_CONFIG")]
    pub config: PathBuf,
    /// gRPC address for ext_proc, ext_authz, the pre-flight API, health and reflection.
    #[arg(
        long,
        env = "REGISTRY_GATEWAY_GRPC_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub grpc_listen: SocketAddr,
    /// HTTP address for /metrics, /healthz, /readyz and /status.
    #[arg(
        long,
        env = "REGISTRY_GATEWAY_ADMIN_LISTEN",
        default_value = "127.0.0.1:9091"
    )]
    pub admin_listen: SocketAddr,
    /// The registry: URL, credentials, TLS, deadline and tag-list paging.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Before taking a slot or telling a repository's limits, ask the registry whether it
    /// accepts the pushing client's own credentials (one request per client and repository,
    /// cached); `off` trusts every client that reaches Envoy.
    #[arg(
        long,
        env = "REGISTRY_GATEWAY_CLIENT_CHECK",
        value_enum,
        default_value = "registry"
    )]
    pub client_check: ClientCheck,
    /// How long the registry's answer about a client's credentials is kept.
    #[arg(long, env = "REGISTRY_GATEWAY_CLIENT_CHECK_TTL", default_value = "60s", value_parser = parse_duration)]
    pub client_check_ttl: Duration,
    /// Deadline for a whole decision; keep it below Envoy's `message_timeout` (5s in envoy/).
    #[arg(long, env = "REGISTRY_GATEWAY_DECISION_TIMEOUT", default_value = "2500ms", value_parser = parse_duration)]
    pub decision_timeout: Duration,
    /// What to do when the tag list cannot be read.
    #[arg(
        long,
        env = "REGISTRY_GATEWAY_ON_REGISTRY_ERROR",
        value_enum,
        default_value = "deny"
    )]
    pub on_registry_error: OnRegistryError,
    /// How long a repository's tag list is trusted before it is read again. Pushes and deletes
    /// seen through the gateway keep it current in between.
    #[arg(long, env = "REGISTRY_GATEWAY_TAG_CACHE_TTL", default_value = "5m", value_parser = parse_duration)]
    pub tag_cache_ttl: Duration,
    /// ext_authz only (no response phase): how long an admitted new tag holds its slot before the
    /// tag list is read again to learn whether the push landed.
    #[arg(long, env = "REGISTRY_GATEWAY_RESERVATION_TTL", default_value = "30s", value_parser = parse_duration)]
    pub reservation_ttl: Duration,
    /// Where tag books live: `memory` (one replica only), `redis://[user:password@]host:port[/db]`
    /// or `rediss://…` (a standalone Redis or Valkey, TLS with `rediss`), or
    /// `redis-cluster://host:port[,host:port…]` (a Redis or Valkey Cluster). Exact at any replica
    /// count with a store.
    #[arg(
        long,
        env = "REGISTRY_GATEWAY_STATE",
        default_value = "memory",
        hide_env_values = true
    )]
    pub state: String,
    /// A file holding the store's user name (a mounted Secret); overrides the URL's.
    #[arg(long, env = "REGISTRY_GATEWAY_STATE_USERNAME_FILE")]
    pub state_username_file: Option<PathBuf>,
    /// A file holding the store's password (a mounted Secret); overrides the URL's.
    #[arg(long, env = "REGISTRY_GATEWAY_STATE_PASSWORD_FILE")]
    pub state_password_file: Option<PathBuf>,
    /// How long an unsettled reservation holds its slot in the store (a replica that died
    /// mid-push); its expiry also makes the next decision read the tag list again.
    #[arg(long, env = "REGISTRY_GATEWAY_STATE_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub state_lease: Duration,
    /// Deadline for one call to the store.
    #[arg(long, env = "REGISTRY_GATEWAY_STATE_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub state_timeout: Duration,
    /// How long SIGTERM waits for in-flight decisions before exiting.
    #[arg(long, env = "REGISTRY_GATEWAY_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Log format.
    #[arg(
        long,
        env = "REGISTRY_GATEWAY_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Log filter, as RUST_LOG (for example `info` or `registry_gateway=debug`).
    #[arg(long, env = "REGISTRY_GATEWAY_LOG", default_value = "info")]
    pub log: String,
}

/// How `serve` and `audit` reach the registry: one set of flags, flattened into both, so the
/// two commands read the registry with the same credentials, TLS rules, deadline and paging.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Where tags are listed: the registry itself, or Harbor's external URL.
    #[arg(long, env = "REGISTRY_GATEWAY_REGISTRY_URL")]
    pub registry_url: reqwest::Url,
    /// A mounted Secret with files `username`, `password` and optionally `insecure`; re-read
    /// when it changes.
    #[arg(
        long,
        env = "REGISTRY_GATEWAY_REGISTRY_CREDENTIALS_DIR",
        conflicts_with = "registry_username"
    )]
    pub registry_credentials_dir: Option<PathBuf>,
    /// Registry user name for the tag list (Basic, or for the Bearer token flow).
    #[arg(
        long,
        env = "REGISTRY_GATEWAY_REGISTRY_USERNAME",
        requires = "registry_password"
    )]
    pub registry_username: Option<String>,
    /// Registry password or robot secret. Prefer the environment variable to the flag.
    #[arg(
        long,
        env = "REGISTRY_GATEWAY_REGISTRY_PASSWORD",
        hide_env_values = true
    )]
    pub registry_password: Option<String>,
    /// Accept an invalid TLS certificate from the registry and its token realm. (A plain-http
    /// registry URL needs no flag when the gateway has no credentials.)
    #[arg(long, env = "REGISTRY_GATEWAY_REGISTRY_INSECURE")]
    pub registry_insecure: bool,
    /// Send the gateway's registry credentials over plain http (a registry URL or token realm
    /// starting with `http://`). Off: credentials go over https only.
    #[arg(long, env = "REGISTRY_GATEWAY_REGISTRY_PLAIN_HTTP_CREDENTIALS")]
    pub registry_plain_http_credentials: bool,
    /// A token realm trusted to receive the gateway's credentials besides the registry's own
    /// origin (for a token server on another host). Repeat, or separate with commas.
    #[arg(
        long,
        env = "REGISTRY_GATEWAY_REGISTRY_TOKEN_REALM",
        value_delimiter = ','
    )]
    pub registry_token_realm: Vec<reqwest::Url>,
    /// Deadline for one tag-list read (all pages and the token fetch).
    #[arg(long, env = "REGISTRY_GATEWAY_REGISTRY_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub registry_timeout: Duration,
    /// Page size for tag lists (`n`); unset asks for everything in one response.
    #[arg(long, env = "REGISTRY_GATEWAY_TAG_PAGE_SIZE")]
    pub tag_page_size: Option<u32>,
}

impl RegistryArgs {
    /// The registry client's settings these flags describe.
    pub fn registry_config(&self) -> RegistryConfig {
        let credentials = match (&self.registry_credentials_dir, &self.registry_username) {
            (Some(dir), _) => Credentials::Directory(dir.clone()),
            (None, Some(username)) => Credentials::Static {
                username: username.clone(),
                password: self.registry_password.clone().unwrap_or_default(),
            },
            (None, None) => Credentials::None,
        };
        RegistryConfig {
            base_url: self.registry_url.clone(),
            credentials,
            timeout: self.registry_timeout,
            insecure: self.registry_insecure,
            plain_http_credentials: self.registry_plain_http_credentials,
            token_realms: self.registry_token_realm.clone(),
            page_size: self.tag_page_size,
        }
    }
}

/// Requests in flight at most for `audit --concurrency`: more only queues at the registry.
pub const MAX_AUDIT_CONCURRENCY: usize = 64;

/// Settings of `audit`. The registry flags are `serve`'s, and read the same environment.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Configuration: a YAML file, a ConfigMap manifest, or a ConfigMap directory.
    #[arg(long, env = "REGISTRY_GATEWAY_CONFIG")]
    pub config: PathBuf,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Audit only the repositories whose name matches this regex (Rust `regex` syntax, not
    /// anchored: use `^team/` for a prefix).
    #[arg(long, value_name = "REGEX", value_parser = parse_repository_filter)]
    pub repository: Option<regex::Regex>,
    /// Print exactly one JSON document on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Registry requests in flight at most (1 to 64).
    #[arg(long, default_value = "8", value_parser = parse_concurrency)]
    pub concurrency: usize,
    /// Page size for the catalog (`n`); unset lets the registry choose, and every page is
    /// followed through its `Link` header either way.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub catalog_page_size: Option<u32>,
}

fn parse_repository_filter(text: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(text).map_err(|e| format!("not a valid regex: {e}"))
}

fn parse_concurrency(text: &str) -> Result<usize, String> {
    let n: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number"))?;
    if n == 0 || n > MAX_AUDIT_CONCURRENCY {
        return Err(format!(
            "must be from 1 to {MAX_AUDIT_CONCURRENCY} (requests in flight at once)"
        ));
    }
    Ok(n)
}

/// Parses `500ms`, `2s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write for example 500ms, 2s or 5m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}`; use ms, s, m or h"
            ));
        }
    };
    if !seconds.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&seconds) {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_common_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("2 days").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    fn audit_args(extra: &[&str]) -> Result<AuditArgs, clap::Error> {
        let mut argv = vec![
            "registry-gateway",
            "audit",
            "--config",
            "c.yaml",
            "--registry-url",
            "http://127.0.0.1:5000",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Audit(args) => Ok(*args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn audit_takes_serves_registry_flags_and_its_own() {
        let args = audit_args(&[
            "--registry-username",
            "robot",
            "--registry-password",
            "secret",
            "--registry-insecure",
            "--registry-timeout",
            "5s",
            "--tag-page-size",
            "100",
            "--repository",
            "^team/",
            "--json",
            "--concurrency",
            "16",
            "--catalog-page-size",
            "50",
        ])
        .expect("valid");
        assert_eq!(args.concurrency, 16);
        assert!(args.json && args.registry.registry_insecure);
        assert_eq!(args.catalog_page_size, Some(50));
        assert!(
            args.repository
                .as_ref()
                .is_some_and(|r| r.is_match("team/app"))
        );
        let config = args.registry.registry_config();
        assert_eq!(config.timeout, Duration::from_secs(5));
        assert_eq!(config.page_size, Some(100));
        assert!(matches!(
            config.credentials,
            crate::registry::Credentials::Static { .. }
        ));
        assert_eq!(audit_args(&[]).expect("defaults").concurrency, 8);
    }

    #[test]
    fn audit_refuses_a_bad_regex_and_out_of_range_concurrency() {
        let message = |extra: &[&str]| audit_args(extra).expect_err("refused").to_string();
        assert!(message(&["--repository", "team/("]).contains("not a valid regex"));
        assert!(message(&["--concurrency", "0"]).contains("must be from 1 to 64"));
        assert!(message(&["--concurrency", "65"]).contains("must be from 1 to 64"));
        assert!(message(&["--concurrency", "many"]).contains("not a whole number"));
        assert!(message(&["--catalog-page-size", "0"]).contains("catalog-page-size"));
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
