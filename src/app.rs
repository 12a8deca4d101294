//! Wiring: load the policy (fail fast), start the reload task, bind, serve, drain.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use tokio::net::TcpListener;

use crate::admin::{self, AdminState};
use crate::check::{CheckOptions, Checker};
use crate::cli::{ClientCheck, OnRegistryError, ServeArgs};
use crate::extauthz::ExtAuthzService;
use crate::extproc::ExtProcService;
use crate::metrics::Metrics;
use crate::preflight::{PolicyService, REFLECTION_DESCRIPTOR_SET, pb::policy_server::PolicyServer};
use crate::registry::RegistryClient;
use crate::reload::{self, ReloadOptions};
use envoy_types::ext_authz::v3::pb::AuthorizationServer;

/// gRPC messages carry a manifest of up to 4 MiB plus headers; Envoy buffers up to 5 MiB on the
/// manifest route. tonic's default 4 MiB limit would turn a legal manifest into a 500.
pub const GRPC_MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// `$server::new($service)` with the gRPC message limits above, reported serving to the health
/// service. A macro because the generated servers set their limits with inherent methods, not
/// through a trait.
macro_rules! limited_server {
    ($health:expr, $server:ident, $service:expr) => {{
        let server = $server::new($service)
            .max_decoding_message_size(GRPC_MAX_MESSAGE_BYTES)
            .max_encoding_message_size(GRPC_MAX_MESSAGE_BYTES);
        report_serving(&$health, &server).await;
        server
    }};
}

/// Marks `S` serving in `grpc.health.v1`; the server is passed only to name its type.
async fn report_serving<S: tonic::server::NamedService>(
    health: &tonic_health::server::HealthReporter,
    _server: &S,
) {
    health.set_serving::<S>().await;
}

/// Why `serve` could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(#[from] crate::policy::LoadError),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("registry client")]
    Registry(#[from] crate::registry::Error),
    #[error("shared state: {0}")]
    State(#[from] crate::shared::StateError),
    #[error("gRPC reflection")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("admin server failed: {0}")]
    Admin(std::io::Error),
}

/// Runs the sidecar until SIGTERM or SIGINT, then drains in-flight decisions.
pub async fn run(args: ServeArgs) -> Result<(), AppError> {
    let app = build(&args).await?;
    let listeners = Listeners::bind(&args).await?;
    app.serve(listeners, wait_for_signal()).await
}

/// The two sockets `serve` answers on.
pub struct Listeners {
    /// ext_proc, ext_authz, the Policy API, health and reflection.
    pub grpc: TcpListener,
    /// `/metrics`, `/healthz`, `/readyz`, `/status`.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds `--grpc-listen` and `--admin-listen`.
    pub async fn bind(args: &ServeArgs) -> Result<Self, AppError> {
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Bind { what, addr, source })
        };
        Ok(Self {
            grpc: bind("the gRPC listener", args.grpc_listen).await?,
            admin: bind("the admin listener", args.admin_listen).await?,
        })
    }
}

/// A sidecar built and not yet serving: the policy loaded (and watched), the registry client,
/// the tag books (in memory or in the shared store), the request path.
pub struct App {
    checker: Arc<Checker<RegistryClient>>,
    metrics: Arc<Metrics>,
    admin_state: Arc<AdminState>,
    reload_handle: reload::ReloadHandle,
    grace: Duration,
    registry_url: reqwest::Url,
}

/// Loads and checks everything `serve` needs, failing fast on a bad configuration, registry
/// settings or an unreachable state store.
pub async fn build(args: &ServeArgs) -> Result<App, AppError> {
    let metrics = Arc::new(Metrics::new());
    let initial = reload::load_initial(&args.config)?;
    tracing::info!(
        config = %args.config.display(),
        version = initial.version,
        hash = %initial.hash,
        rules = initial.policy.rules().len(),
        "configuration loaded"
    );
    let (policy, reload_status, reload_handle) = reload::spawn(
        args.config.clone(),
        initial,
        metrics.clone(),
        ReloadOptions::default(),
    );

    let registry = RegistryClient::new(args.registry.registry_config())?;
    registry.report_tokens(&metrics);
    let options = CheckOptions {
        tag_cache_ttl: args.tag_cache_ttl,
        decision_timeout: args.decision_timeout,
        allow_on_registry_error: args.on_registry_error == OnRegistryError::Allow,
        reservation_ttl: args.reservation_ttl,
        client_check: args.client_check == ClientCheck::Registry,
        client_check_ttl: args.client_check_ttl,
    };
    let read_secret = |path: &Option<std::path::PathBuf>| -> Result<Option<String>, AppError> {
        path.as_ref()
            .map(|p| {
                std::fs::read_to_string(p)
                    .map(|text| text.trim_end_matches(['\r', '\n']).to_owned())
                    // An empty Secret key means "none", not an empty password.
                    .map(|text| (!text.is_empty()).then_some(text))
                    .map_err(|source| crate::shared::StateError::Credentials {
                        path: p.display().to_string(),
                        source,
                    })
            })
            .transpose()
            .map(Option::flatten)
            .map_err(AppError::from)
    };
    let state_url = crate::shared::StateUrl::parse(
        &args.state,
        read_secret(&args.state_username_file)?.as_deref(),
        read_secret(&args.state_password_file)?.as_deref(),
    )?;
    let shared = crate::shared::SharedBooks::connect(
        &state_url,
        crate::shared::SharedOptions {
            lease: args.state_lease,
            timeout: args.state_timeout,
        },
        metrics.clone(),
    )
    .await?;
    tracing::info!(state = ?state_url, "tag books");
    if let Some(shared) = &shared {
        shared.spawn_identity_watch();
    }
    let checker = Arc::new(
        Checker::new(registry, policy.clone(), options, metrics.clone()).with_shared(shared),
    );

    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        policy: policy.clone(),
        reload_status,
        conflicts: checker.conflicts(),
        ready: Default::default(),
    });
    Ok(App {
        checker,
        metrics,
        admin_state,
        reload_handle,
        grace: args.shutdown_grace,
        registry_url: args.registry.registry_url.clone(),
    })
}

impl App {
    /// Serves on `listeners` until `shutdown` completes (a signal, or a test's trigger), then
    /// reports every service not serving, finishes in-flight decisions within the grace period,
    /// and returns.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown_signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let App {
            checker,
            metrics,
            admin_state,
            reload_handle,
            grace,
            registry_url,
        } = self;
        let grpc_addr = listeners.grpc.local_addr().ok();
        let admin_addr = listeners.admin.local_addr().ok();
        let grpc_listener = listeners.grpc;
        let admin_listener = listeners.admin;

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let extproc = limited_server!(
            health_reporter,
            ExternalProcessorServer,
            ExtProcService::new(checker.clone(), metrics.clone())
        );
        let extauthz = limited_server!(
            health_reporter,
            AuthorizationServer,
            ExtAuthzService::new(checker.clone())
        );
        let preflight = limited_server!(
            health_reporter,
            PolicyServer,
            PolicyService::new(checker.clone())
        );
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(REFLECTION_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;

        let shutdown = Shutdown::new();
        let grpc_shutdown = shutdown.clone();
        let grpc = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(extproc)
            .add_service(extauthz)
            .add_service(preflight)
            .add_service(reflection)
            // Without TCP_NODELAY, Nagle's algorithm holds each small ext_proc reply until Envoy's
            // delayed ACK: about 40 ms on every manifest decision.
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                async move {
                    grpc_shutdown.wait().await;
                },
            );

        let admin_shutdown = shutdown.clone();
        let admin = axum::serve(admin_listener, admin::router(admin_state.clone()))
            .with_graceful_shutdown(async move { admin_shutdown.wait().await });

        let sweeper = {
            let checker = checker.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    checker.sweep();
                }
            })
        };

        let reviewer = tokio::spawn(checker.clone().review_on_reload());

        admin_state.ready.store(true, Ordering::Release);
        tracing::info!(grpc = ?grpc_addr, admin = ?admin_addr, registry = %registry_url, "serving");

        let signal_task = {
            let shutdown = shutdown.clone();
            let admin_state = admin_state.clone();
            let health_reporter = health_reporter.clone();
            tokio::spawn(async move {
                shutdown_signal.await;
                tracing::info!("shutting down: finishing in-flight decisions");
                admin_state.ready.store(false, Ordering::Release);
                health_reporter
                    .set_not_serving::<ExternalProcessorServer<ExtProcService<RegistryClient>>>()
                    .await;
                health_reporter
                    .set_not_serving::<AuthorizationServer<ExtAuthzService<RegistryClient>>>()
                    .await;
                health_reporter
                    .set_not_serving::<PolicyServer<PolicyService<RegistryClient>>>()
                    .await;
                shutdown.trigger();
            })
        };

        let servers = async {
            let (grpc, admin) = tokio::join!(grpc, async { admin.await });
            grpc?;
            admin.map_err(AppError::Admin)?;
            Ok::<(), AppError>(())
        };
        tokio::pin!(servers);
        let result = tokio::select! {
            result = &mut servers => result,
            () = async {
                shutdown.wait().await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace = ?grace, "in-flight decisions did not finish within the grace period");
                Ok(())
            }
        };
        signal_task.abort();
        sweeper.abort();
        reviewer.abort();
        drop(reload_handle);
        tracing::info!("stopped");
        result
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A one-shot broadcast: `trigger` once, `wait` anywhere.
#[derive(Clone)]
struct Shutdown(tokio::sync::watch::Sender<bool>);

impl Shutdown {
    fn new() -> Self {
        Self(tokio::sync::watch::channel(false).0)
    }

    fn trigger(&self) {
        self.0.send_replace(true);
    }

    async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::cli::{Cli, Command};

    /// The service starts in-process on listeners the caller bound, answers, and stops when the
    /// caller's shutdown future completes, as mini-redis's `server::run(listener, shutdown)`.
    #[tokio::test]
    async fn build_then_serve_answers_and_stops_on_the_given_shutdown() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, "tag_count_limit: 3\n").expect("config");
        let cli = Cli::try_parse_from([
            "registry-gateway",
            "serve",
            "--config",
            config.to_str().expect("utf-8 path"),
            "--registry-url",
            "http://127.0.0.1:9",
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--shutdown-grace",
            "1s",
        ])
        .expect("arguments");
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let app = build(&args).await.expect("built");
        let listeners = Listeners::bind(&args).await.expect("bound");
        let admin = listeners.admin.local_addr().expect("admin address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(app.serve(listeners, async {
            let _ = stopped.await;
        }));
        let mut stream = tokio::net::TcpStream::connect(admin)
            .await
            .expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("request");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.expect("reply");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        stop.send(()).expect("still serving");
        let result = tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("stopped in time")
            .expect("task");
        assert!(result.is_ok(), "{result:?}");
    }
}
