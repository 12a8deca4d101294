//! `extproc-load`: a gRPC load generator for `envoy.service.ext_proc.v3.ExternalProcessor`, and
//! the do-nothing processor it is compared against (figure P3 of `scripts/bench`, issue 6).
//!
//! - `extproc-load noop --listen 127.0.0.1:0` serves ext_proc and answers CONTINUE to every
//!   phase, built exactly like the sidecar's adapter (one spawned task per stream, an mpsc
//!   channel of 4 replies, the same message size limits, tokio's default multi-thread runtime), so
//!   the difference between the two is the decision work. Prints `listening on <addr>` and serves
//!   until killed or until `--max-seconds` have passed. `--mode-override request-headers` (or
//!   `request-body`) attaches a `mode_override` skipping the response-headers phase to that reply,
//!   for the mode_override probe (P7).
//! - `extproc-load load --target <addr> ...` drives ext_proc streams the way Envoy does for a
//!   manifest `PUT` on the route `envoy/envoy.yaml` enables: request headers, the whole manifest
//!   (BUFFERED, `end_of_stream`), the registry's `201` response headers, each answered before the
//!   next is sent, then a half-close and a wait for the server to end the stream. A decision is
//!   one such stream. `--concurrency` streams are kept in flight over `--connections` HTTP/2
//!   connections, for `--warmup-seconds` (not counted) then `--seconds`. Prints one JSON object:
//!   decisions per second, errors, and latency quantiles of whole streams; `--samples-out` writes
//!   every latency (nanoseconds, little-endian u64) for plotting.
//!
//! Loopback only: both commands refuse any address outside 127.0.0.0/8.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Phase;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, HeadersResponse, HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
    TrailersResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

/// Same as the sidecar (`registry_gateway::app::GRPC_MAX_MESSAGE_BYTES`).
const MAX_MESSAGE_BYTES: usize = registry_gateway::app::GRPC_MAX_MESSAGE_BYTES;
/// Hard ceilings, so a mistyped argument cannot make an unbounded run.
const MAX_RUN_SECONDS: f64 = 600.0;
const MAX_CONCURRENCY: usize = 4096;
/// One stream may take this long before it counts as an error.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Parser)]
#[command(about = "ext_proc load generator and do-nothing ext_proc server (scripts/bench, P3)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve ext_proc, answering CONTINUE to everything.
    Noop {
        /// Where to listen (loopback only; port 0 picks one).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Exit after this many seconds even if nobody stops the server.
        #[arg(long, default_value_t = 900)]
        max_seconds: u64,
        /// TCP_NODELAY on accepted connections. `false` reproduces a tonic server fed a plain
        /// `TcpListenerStream` (tonic then sets no socket options), for comparison.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        nodelay: bool,
        /// Attach `mode_override` (the configured mode with `response_header_mode: SKIP`) to the
        /// reply of this phase, for the mode_override probe of `scripts/bench`: does Envoy then
        /// skip the response-headers message?
        #[arg(long, value_enum, default_value_t = OverrideOn::Never)]
        mode_override: OverrideOn,
    },
    /// Drive ext_proc streams against a server and report decisions per second and latency.
    Load(LoadArgs),
}

/// Which reply of the do-nothing server carries `mode_override`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum OverrideOn {
    Never,
    RequestHeaders,
    RequestBody,
}

#[derive(Parser, Clone)]
struct LoadArgs {
    /// The ext_proc server (loopback only).
    #[arg(long)]
    target: SocketAddr,
    /// Measured duration.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Unmeasured run first (connections up, caches warm).
    #[arg(long, default_value_t = 0.5)]
    warmup_seconds: f64,
    /// Streams in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the streams share (Envoy opens one per worker thread).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Runtime worker threads of the generator (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Repository named in the request path.
    #[arg(long, default_value = "bench/p3")]
    repository: String,
    /// Tags cycled through (`t0`..): after the first round each names an existing tag.
    #[arg(long, default_value_t = 64)]
    tags: usize,
    /// Layers in the pushed manifest.
    #[arg(long, default_value_t = 3)]
    layers: usize,
    /// Write every measured latency here (nanoseconds, u64 little-endian).
    #[arg(long)]
    samples_out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Noop {
            listen,
            max_seconds,
            nodelay,
            mode_override,
        } => run_noop(listen, max_seconds, nodelay, mode_override),
        Cmd::Load(args) => run_load(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("extproc-load: {e}");
            ExitCode::from(1)
        }
    }
}

fn require_loopback(addr: SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "{addr} is not a loopback address; this tool only talks to 127.0.0.0/8"
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// The do-nothing processor.

fn run_noop(
    listen: SocketAddr,
    max_seconds: u64,
    nodelay: bool,
    mode_override: OverrideOn,
) -> Result<(), String> {
    require_loopback(listen)?;
    // tokio's default multi-thread runtime, as `registry-gateway serve` builds it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("bind {listen}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("listening on {addr}");
        let service = ExternalProcessorServer::new(Noop { mode_override })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(nodelay)),
                tokio::time::sleep(Duration::from_secs(max_seconds)),
            )
            .await
            .map_err(|e| format!("server: {e}"))
    })
}

struct Noop {
    mode_override: OverrideOn,
}

#[tonic::async_trait]
impl ExternalProcessor for Noop {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let mode_override = self.mode_override;
        tokio::spawn(async move {
            // Ends when Envoy (or the generator) closes its side, cleanly or not.
            while let Ok(Some(message)) = inbound.message().await {
                let Some(phase) = message.request else {
                    return;
                };
                let overridden = matches!(
                    (mode_override, &phase),
                    (OverrideOn::RequestHeaders, Phase::RequestHeaders(_))
                        | (OverrideOn::RequestBody, Phase::RequestBody(_))
                );
                let mut reply = continue_reply(phase);
                if overridden {
                    reply.mode_override = Some(registry_gateway::extproc::skip_response_headers());
                }
                if tx.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// CONTINUE in the reply type of the phase.
fn continue_reply(phase: Phase) -> ProcessingResponse {
    let response = match phase {
        Phase::RequestHeaders(_) => Reply::RequestHeaders(HeadersResponse::default()),
        Phase::ResponseHeaders(_) => Reply::ResponseHeaders(HeadersResponse::default()),
        Phase::RequestBody(_) => Reply::RequestBody(BodyResponse::default()),
        Phase::ResponseBody(_) => Reply::ResponseBody(BodyResponse::default()),
        Phase::RequestTrailers(_) => Reply::RequestTrailers(TrailersResponse::default()),
        Phase::ResponseTrailers(_) => Reply::ResponseTrailers(TrailersResponse::default()),
    };
    ProcessingResponse {
        response: Some(response),
        ..ProcessingResponse::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The generator.

fn run_load(args: LoadArgs) -> Result<(), String> {
    require_loopback(args.target)?;
    if !(args.seconds > 0.0 && args.warmup_seconds >= 0.0)
        || args.seconds + args.warmup_seconds > MAX_RUN_SECONDS
    {
        return Err(format!(
            "--seconds must be > 0 and --seconds + --warmup-seconds at most {MAX_RUN_SECONDS}"
        ));
    }
    if args.concurrency == 0 || args.concurrency > MAX_CONCURRENCY {
        return Err(format!("--concurrency must be 1..={MAX_CONCURRENCY}"));
    }
    if args.connections == 0 || args.connections > args.concurrency {
        return Err("--connections must be 1..=--concurrency".to_owned());
    }
    if args.tags == 0 {
        return Err("--tags must be at least 1".to_owned());
    }
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("runtime: {e}"))?;
    let report = runtime.block_on(load(args.clone()))?;
    if let Some(path) = &args.samples_out {
        let mut bytes = Vec::with_capacity(report.samples.len() * 8);
        for s in &report.samples {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        std::fs::write(path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    println!("{}", report.json(&args));
    Ok(())
}

/// Messages of one stream, built once and cloned per stream.
struct Script {
    /// Request headers, one per tag.
    request_headers: Vec<ProcessingRequest>,
    body: ProcessingRequest,
    response_headers: ProcessingRequest,
}

fn header(key: &str, value: &str) -> HeaderValue {
    // Envoy sends values in `raw_value` and leaves `value` empty.
    HeaderValue {
        key: key.to_owned(),
        raw_value: value.as_bytes().to_vec(),
        ..HeaderValue::default()
    }
}

fn headers_message(
    headers: Vec<HeaderValue>,
    end_of_stream: bool,
    request: bool,
) -> ProcessingRequest {
    let h = HttpHeaders {
        headers: Some(HeaderMap { headers }),
        end_of_stream,
        ..HttpHeaders::default()
    };
    ProcessingRequest {
        request: Some(if request {
            Phase::RequestHeaders(h)
        } else {
            Phase::ResponseHeaders(h)
        }),
        ..ProcessingRequest::default()
    }
}

/// An OCI image manifest with `layers` layers of 4 KiB, compact JSON like skopeo writes it.
fn manifest(layers: usize) -> Vec<u8> {
    let digest = |i: usize| {
        format!(
            "sha256:{:064x}",
            (i as u128 + 7) * 0x9E37_79B9_7F4A_7C15_u128
        )
    };
    let layers: Vec<serde_json::Value> = (0..layers)
        .map(|i| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest(i + 1),
                "size": 4096,
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(0),
            "size": 412,
        },
        "layers": layers,
    }))
    .expect("JSON value serialises")
}

impl Script {
    fn new(args: &LoadArgs) -> Self {
        let body = manifest(args.layers);
        let length = body.len().to_string();
        let request_headers = (0..args.tags)
            .map(|i| {
                // What Envoy sends for a skopeo manifest PUT (envoy/envoy.yaml's manifest route).
                headers_message(
                    vec![
                        header(":authority", "127.0.0.1:5000"),
                        header(":path", &format!("/v2/{}/manifests/t{i}", args.repository)),
                        header(":method", "PUT"),
                        header(":scheme", "http"),
                        header("user-agent", "skopeo/1.9.3"),
                        header("content-length", &length),
                        header("content-type", OCI_MANIFEST),
                        header("accept-encoding", "gzip"),
                        header("x-forwarded-proto", "http"),
                        header("x-request-id", "5d5e1c3a-62a4-4b83-9a55-6f1f3c2b9e10"),
                    ],
                    false,
                    true,
                )
            })
            .collect();
        let body = ProcessingRequest {
            request: Some(Phase::RequestBody(HttpBody {
                body,
                end_of_stream: true,
                ..HttpBody::default()
            })),
            ..ProcessingRequest::default()
        };
        let response_headers = headers_message(
            vec![
                header(":status", "201"),
                header("content-length", "0"),
                header(
                    "docker-content-digest",
                    "sha256:5d5e1c3a62a44b839a556f1f3c2b9e105d5e1c3a62a44b839a556f1f3c2b9e10",
                ),
                header("docker-distribution-api-version", "registry/2.0"),
                header(
                    "location",
                    "http://127.0.0.1:5000/v2/bench/p3/manifests/sha256:5d5e",
                ),
                header("date", "Sat, 01 Jan 2025 00:00:00 GMT"),
                header("x-envoy-upstream-service-time", "2"),
            ],
            true,
            false,
        );
        Self {
            request_headers,
            body,
            response_headers,
        }
    }
}

struct Report {
    /// Decisions inside the measured window.
    decisions: u64,
    /// Every completed decision, warm-up and the window's edges included (for CPU per decision).
    decisions_total: u64,
    /// The whole run, warm-up included.
    elapsed_total: Duration,
    errors: u64,
    first_error: Option<String>,
    measured: Duration,
    samples: Vec<u64>,
}

impl Report {
    /// Nothing counted yet.
    fn empty(measured: Duration) -> Report {
        Report {
            decisions: 0,
            decisions_total: 0,
            elapsed_total: Duration::ZERO,
            errors: 0,
            first_error: None,
            measured,
            samples: Vec::new(),
        }
    }

    fn json(&self, args: &LoadArgs) -> String {
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let q = |p: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            sorted[rank - 1] as f64 / 1000.0
        };
        let mean = if sorted.is_empty() {
            0.0
        } else {
            sorted.iter().map(|&s| s as f64).sum::<f64>() / sorted.len() as f64 / 1000.0
        };
        serde_json::json!({
            "target": args.target.to_string(),
            "concurrency": args.concurrency,
            "connections": args.connections,
            "threads": args.threads,
            "decisions": self.decisions,
            "decisions_total": self.decisions_total,
            "elapsed_total_seconds": self.elapsed_total.as_secs_f64(),
            "generator_cpu_seconds": generator_cpu_seconds(),
            "errors": self.errors,
            "first_error": self.first_error,
            "seconds": self.measured.as_secs_f64(),
            "rate": self.decisions as f64 / self.measured.as_secs_f64(),
            "latency_us": {
                "mean": mean, "p50": q(0.50), "p90": q(0.90), "p99": q(0.99),
                "p999": q(0.999), "max": q(1.0),
            },
        })
        .to_string()
    }
}

async fn load(args: LoadArgs) -> Result<Report, String> {
    let script = Arc::new(Script::new(&args));
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let endpoint = Endpoint::from_shared(format!("http://{}", args.target))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connecting to {}: {e}", args.target))?;
        channels.push(channel);
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup_seconds);
    let end = measure_from + Duration::from_secs_f64(args.seconds);
    let mut workers = Vec::with_capacity(args.concurrency);
    for w in 0..args.concurrency {
        let channel = channels[w % channels.len()].clone();
        let script = script.clone();
        workers.push(tokio::spawn(worker(
            w,
            args.concurrency,
            channel,
            script,
            measure_from,
            end,
        )));
    }
    let mut report = Report::empty(end.saturating_duration_since(measure_from));
    for worker in workers {
        let part = worker.await.map_err(|e| format!("worker: {e}"))?;
        report.decisions += part.decisions;
        report.decisions_total += part.decisions_total;
        report.errors += part.errors;
        if report.first_error.is_none() {
            report.first_error = part.first_error;
        }
        report.samples.extend(part.samples);
    }
    report.elapsed_total = start.elapsed();
    Ok(report)
}

async fn worker(
    index: usize,
    stride: usize,
    channel: Channel,
    script: Arc<Script>,
    measure_from: Instant,
    end: Instant,
) -> Report {
    let mut client = ExternalProcessorClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut report = Report::empty(Duration::ZERO);
    let mut n = index;
    loop {
        let began = Instant::now();
        if began >= end {
            return report;
        }
        let headers = &script.request_headers[n % script.request_headers.len()];
        n += stride;
        let result =
            tokio::time::timeout(STREAM_TIMEOUT, one_stream(&mut client, headers, &script))
                .await
                .unwrap_or_else(|_| Err(format!("no end of stream within {STREAM_TIMEOUT:?}")));
        let finished = Instant::now();
        if result.is_ok() {
            report.decisions_total += 1;
        }
        // Count what finished inside the measured window.
        if began < measure_from || finished > end {
            continue;
        }
        match result {
            Ok(()) => {
                report.decisions += 1;
                report
                    .samples
                    .push(u64::try_from((finished - began).as_nanos()).unwrap_or(u64::MAX));
            }
            Err(e) => {
                report.errors += 1;
                if report.first_error.is_none() {
                    report.first_error = Some(e);
                }
            }
        }
    }
}

/// CPU time (user + system) of this process so far, from /proc/self/stat (USER_HZ = 100).
fn generator_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// One manifest PUT's conversation; `Err` says what went wrong.
async fn one_stream(
    client: &mut ExternalProcessorClient<Channel>,
    request_headers: &ProcessingRequest,
    script: &Script,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(request_headers.clone())
        .await
        .map_err(|_| "send: stream gone".to_owned())?;
    let mut inbound = client
        .process(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("open: {s}"))?
        .into_inner();
    expect(&mut inbound, "request headers").await?;
    tx.send(script.body.clone())
        .await
        .map_err(|_| "send: stream gone".to_owned())?;
    expect(&mut inbound, "request body").await?;
    tx.send(script.response_headers.clone())
        .await
        .map_err(|_| "send: stream gone".to_owned())?;
    expect(&mut inbound, "response headers").await?;
    // Half-close, as Envoy does with ext_proc_graceful_grpc_close, and wait for the server's end.
    drop(tx);
    match inbound.message().await {
        Ok(None) => Ok(()),
        Ok(Some(extra)) => Err(format!("unexpected extra reply: {:?}", extra.response)),
        Err(s) => Err(format!("end of stream: {s}")),
    }
}

async fn expect(inbound: &mut Streaming<ProcessingResponse>, phase: &str) -> Result<(), String> {
    match inbound.message().await {
        Ok(Some(ProcessingResponse {
            response: Some(Reply::ImmediateResponse(r)),
            ..
        })) => Err(format!(
            "the server answered {phase} with an immediate response {:?}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        )),
        Ok(Some(ProcessingResponse {
            response: Some(_), ..
        })) => Ok(()),
        Ok(Some(_)) => Err(format!("empty reply to {phase}")),
        Ok(None) => Err(format!("stream ended before the reply to {phase}")),
        Err(s) => Err(format!("reply to {phase}: {s}")),
    }
}
