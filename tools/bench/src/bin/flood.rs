//! `flood`: the sidecar's memory under a flood of distinct repository names, and the exactness of
//! honest pushes meanwhile.
//!
//! Starts a real docker-registry and `registry-gateway serve` on loopback (through the test
//! kit), then drives the sidecar's ext_proc gRPC directly, as Envoy does for a manifest `PUT`:
//! request headers, the whole manifest, the registry's response headers, each answered before
//! the next. `--names` streams each push a new tag to a distinct, random, valid repository name
//! (up to 255 characters); every one of them makes the sidecar read the registry's tag list (a
//! 404: a new repository) and, with `--client-check registry`, ask the registry about the client.
//!
//! Meanwhile honest pushes go to `--honest-repos` repositories under a rule with
//! `tag_count_limit: --honest-limit`, spread over the whole flood, each really stored in the
//! registry when the sidecar lets it through: `2 × limit` new tags per repository, then one
//! re-push of the first. Exactly `limit` new tags and the re-push must be admitted, and the
//! registry must hold exactly `limit` tags, however often the flood made the sidecar forget the
//! repository (it then reads the tag list again).
//!
//! The sidecar's `VmHWM` and `VmRSS` (`/proc/<pid>/status`) are sampled every 100 ms. Prints one
//! JSON object; exits non-zero when a bound given by `--max-peak-rss-mib` or
//! `--max-growth-mib` is exceeded, when an honest count is off, or when a flood push fails.
//! Loopback only, bounded by `--names` and `--max-seconds`.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Phase;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
};
use registry_gateway_testkit::{
    Gateway, GatewayOptions, Layout, OCI_MANIFEST, Registry, RegistryOptions, oci_image_layout,
    status_kib,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

const MAX_MESSAGE_BYTES: usize = registry_gateway::app::GRPC_MAX_MESSAGE_BYTES;
const MAX_NAMES: u64 = 5_000_000;
const MAX_CONCURRENCY: usize = 1024;
/// The distribution grammar's limit on a repository name.
const MAX_NAME_LEN: usize = 255;
/// One stream may take this long before it counts as an error.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

#[derive(Parser, Clone, Debug)]
#[command(about = "Distinct-name flood against the sidecar's ext_proc: peak RSS and honest counts")]
struct Args {
    /// Flood pushes, each to a repository name not used before.
    #[arg(long, default_value_t = 1_000_000)]
    names: u64,
    /// Flood streams in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections they share (Envoy opens one per worker).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Repositories receiving honest pushes.
    #[arg(long, default_value_t = 8)]
    honest_repos: usize,
    /// `tag_count_limit` of the honest repositories' rule.
    #[arg(long, default_value_t = 3)]
    honest_limit: usize,
    /// The sidecar's `--client-check` (`registry` asks the registry about every client).
    #[arg(long, default_value = "registry")]
    client_check: String,
    /// Fail when the sidecar's peak RSS (VmHWM) exceeds this many MiB.
    #[arg(long)]
    max_peak_rss_mib: Option<f64>,
    /// Fail when the sidecar's RSS grows by more than this many MiB between half-way through the
    /// flood and its end.
    #[arg(long)]
    max_growth_mib: Option<f64>,
    /// Give up after this long.
    #[arg(long, default_value_t = 3600)]
    max_seconds: u64,
    /// Seed of the random names.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("flood: runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) => {
            println!("{}", report.json);
            if report.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                for failure in &report.failures {
                    eprintln!("flood: FAILED: {failure}");
                }
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("flood: {e}");
            ExitCode::from(2)
        }
    }
}

struct Report {
    json: serde_json::Value,
    failures: Vec<String>,
}

fn config_yaml(limit: usize) -> String {
    format!(
        "max_image_size: 1GB\ntag_count_limit: 1000\nrules:\n  - path: ^honest/\n    limit: {{max_image_size: 1GB, tag_count_limit: {limit}}}\n"
    )
}

async fn run(args: Args) -> Result<Report, String> {
    if args.names == 0 || args.names > MAX_NAMES {
        return Err(format!("--names must be 1..={MAX_NAMES}"));
    }
    if args.concurrency == 0 || args.concurrency > MAX_CONCURRENCY {
        return Err(format!("--concurrency must be 1..={MAX_CONCURRENCY}"));
    }
    if args.connections == 0 || args.connections > args.concurrency {
        return Err("--connections must be 1..=--concurrency".to_owned());
    }
    // The configuration and the image layout, removed at the end.
    let dir = tempfile::Builder::new()
        .prefix("rg-flood-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, config_yaml(args.honest_limit)).map_err(|e| e.to_string())?;
    let registry = Registry::start(RegistryOptions::open()).await;
    let mut options = GatewayOptions::new(&config, &registry.url());
    options.extra_args = vec![
        "--client-check".into(),
        args.client_check.clone(),
        // One log line per decision would be a million lines; the counts are in /metrics.
        "--log".into(),
        "warn".into(),
    ];
    let gateway = Gateway::start(options).await;
    let pid = gateway.pid();

    let layout_dir = dir.path().join("layout");
    let layout = oci_image_layout(&layout_dir, &[2048], args.seed);
    let honest = Honest::prepare(&registry, &layout, &args).await;

    let channels = connect(gateway.grpc_addr(), args.connections).await?;
    let sampler = Sampler::start(pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_seconds);
    let flood = Arc::new(Flood::new(&args));
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let channel = channels[w % channels.len()].clone();
            tokio::spawn(flood.clone().work(channel, deadline))
        })
        .collect();
    let honest_task = tokio::spawn(honest.run(
        channels[0].clone(),
        registry.client(),
        flood.clone(),
        sampler.clone(),
        args.names,
    ));
    for worker in workers {
        worker.await.map_err(|e| format!("flood worker: {e}"))?;
    }
    let elapsed = started.elapsed();
    let honest = honest_task
        .await
        .map_err(|e| format!("honest pushes: {e}"))?;
    sampler.sample();
    let metrics = gateway
        .admin()
        .get("/metrics")
        .await
        .map(|r| r.text())
        .unwrap_or_default();

    let done = flood.done.load(Ordering::Relaxed);
    let mut failures = honest.failures(&registry).await;
    let errors = flood.errors.load(Ordering::Relaxed);
    if errors > 0 {
        failures.push(format!(
            "{errors} flood pushes failed; first: {}",
            flood
                .first_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default()
        ));
    }
    if done < args.names {
        failures.push(format!(
            "only {done} of {} names within {}s",
            args.names, args.max_seconds
        ));
    }
    let peak_kib = sampler.peak_hwm_kib();
    let half_kib = sampler.half_rss_kib();
    let end_kib = sampler.last_rss_kib();
    let growth_kib = end_kib.saturating_sub(half_kib);
    if let Some(max) = args.max_peak_rss_mib
        && peak_kib as f64 / 1024.0 > max
    {
        failures.push(format!(
            "peak RSS {:.1} MiB over {max} MiB",
            peak_kib as f64 / 1024.0
        ));
    }
    if let Some(max) = args.max_growth_mib
        && growth_kib as f64 / 1024.0 > max
    {
        failures.push(format!(
            "RSS grew {:.1} MiB in the second half of the flood, over {max} MiB",
            growth_kib as f64 / 1024.0
        ));
    }
    let mib = |kib: u64| (kib as f64 / 1024.0 * 10.0).round() / 10.0;
    let json = serde_json::json!({
        "names": done,
        "seconds": (elapsed.as_secs_f64() * 10.0).round() / 10.0,
        "decisions_per_second": (done as f64 / elapsed.as_secs_f64()).round(),
        "flood_unavailable": flood.refused.load(Ordering::Relaxed),
        "flood_errors": errors,
        "client_check": args.client_check,
        "concurrency": args.concurrency,
        "peak_rss_mib": mib(peak_kib),
        "rss_half_way_mib": mib(half_kib),
        "rss_end_mib": mib(end_kib),
        "rss_growth_second_half_mib": mib(growth_kib),
        "honest": honest.json(),
        "sidecar_metrics": pick_metrics(&metrics),
        "failures": failures,
    });
    drop(gateway);
    drop(registry);
    Ok(Report { json, failures })
}

async fn connect(addr: std::net::SocketAddr, connections: usize) -> Result<Vec<Channel>, String> {
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// The sidecar's counters worth reading beside the figure.
fn pick_metrics(text: &str) -> serde_json::Value {
    let wanted = [
        "registry_gateway_tag_books ",
        "registry_gateway_tag_book_evictions_total ",
        "registry_gateway_registry_tokens ",
        "registry_gateway_registry_token_evictions_total ",
        "registry_gateway_registry_tag_list_requests_total",
        "registry_gateway_client_checks_total",
        "registry_gateway_decisions_total",
    ];
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && wanted.iter().any(|w| l.starts_with(w)))
        .collect();
    serde_json::json!(lines)
}

// ---------------------------------------------------------------------------------------------
// Names.

/// splitmix64: reproducible from `--seed`, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const SEPARATORS: &[&str] = &["/", "/", "/", ".", "_", "__", "-", "--"];

/// A repository name of the distribution grammar, `path-component ('/' path-component)*` with
/// components `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, of random length up to 255 characters, made
/// distinct by `index` (base 36) as its last component.
fn flood_name(index: u64, rng: &mut Rng) -> String {
    let mut suffix = Vec::new();
    let mut n = index;
    loop {
        suffix.push(ALNUM[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    suffix.reverse();
    let budget = MAX_NAME_LEN - suffix.len() - 1;
    let len = 1 + rng.below(budget as u64) as usize;
    let mut name = String::with_capacity(MAX_NAME_LEN);
    name.push(ALNUM[rng.below(26) as usize] as char);
    while name.len() < len {
        let separator = SEPARATORS[rng.below(SEPARATORS.len() as u64) as usize];
        // A separator needs an alphanumeric on both sides and room for it.
        if rng.below(8) == 0 && name.len() + separator.len() < len {
            name.push_str(separator);
        }
        name.push(ALNUM[rng.below(36) as usize] as char);
    }
    if name.starts_with("honest") {
        name.replace_range(0..1, "x");
    }
    name.push('/');
    name.push_str(std::str::from_utf8(&suffix).expect("ASCII"));
    name
}

// ---------------------------------------------------------------------------------------------
// One ext_proc stream.

fn header(key: &str, value: &str) -> HeaderValue {
    // Envoy sends values in `raw_value` and leaves `value` empty.
    HeaderValue {
        key: key.to_owned(),
        raw_value: value.as_bytes().to_vec(),
        ..HeaderValue::default()
    }
}

fn request_headers(repository: &str, reference: &str, length: usize) -> ProcessingRequest {
    let headers = vec![
        header(":authority", "127.0.0.1:5000"),
        header(":path", &format!("/v2/{repository}/manifests/{reference}")),
        header(":method", "PUT"),
        header(":scheme", "http"),
        header("user-agent", "flood"),
        header("content-length", &length.to_string()),
        header("content-type", OCI_MANIFEST),
    ];
    ProcessingRequest {
        request: Some(Phase::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap { headers }),
            end_of_stream: false,
            ..HttpHeaders::default()
        })),
        ..ProcessingRequest::default()
    }
}

fn body(manifest: &[u8]) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Phase::RequestBody(HttpBody {
            body: manifest.to_vec(),
            end_of_stream: true,
            ..HttpBody::default()
        })),
        ..ProcessingRequest::default()
    }
}

fn response_headers(status: u16) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Phase::ResponseHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: vec![
                    header(":status", &status.to_string()),
                    header("content-length", "0"),
                ],
            }),
            end_of_stream: true,
            ..HttpHeaders::default()
        })),
        ..ProcessingRequest::default()
    }
}

/// What the sidecar answered to a phase.
enum Verdict {
    Continue,
    /// An immediate response: its HTTP status.
    Refused(i32),
}

/// One request's conversation with the sidecar.
struct Exchange {
    tx: mpsc::Sender<ProcessingRequest>,
    inbound: Streaming<ProcessingResponse>,
}

impl Exchange {
    async fn open(
        client: &mut ExternalProcessorClient<Channel>,
        first: ProcessingRequest,
    ) -> Result<(Exchange, Verdict), String> {
        let (tx, rx) = mpsc::channel(4);
        tx.send(first)
            .await
            .map_err(|_| "send: stream gone".to_owned())?;
        let inbound = client
            .process(ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("open: {s}"))?
            .into_inner();
        let mut exchange = Exchange { tx, inbound };
        let verdict = exchange.reply("request headers").await?;
        Ok((exchange, verdict))
    }

    async fn send(&mut self, message: ProcessingRequest, phase: &str) -> Result<Verdict, String> {
        self.tx
            .send(message)
            .await
            .map_err(|_| format!("send {phase}: stream gone"))?;
        self.reply(phase).await
    }

    async fn reply(&mut self, phase: &str) -> Result<Verdict, String> {
        match self.inbound.message().await {
            Ok(Some(ProcessingResponse {
                response: Some(Reply::ImmediateResponse(r)),
                ..
            })) => Ok(Verdict::Refused(r.status.map_or(0, |s| s.code))),
            Ok(Some(ProcessingResponse {
                response: Some(_), ..
            })) => Ok(Verdict::Continue),
            Ok(Some(_)) => Err(format!("empty reply to {phase}")),
            Ok(None) => Err(format!("stream ended before the reply to {phase}")),
            Err(s) => Err(format!("reply to {phase}: {s}")),
        }
    }

    /// Half-closes, as Envoy does, and waits for the sidecar to end the stream.
    async fn finish(self) -> Result<(), String> {
        let Exchange { tx, mut inbound } = self;
        drop(tx);
        match inbound.message().await {
            Ok(None) => Ok(()),
            Ok(Some(extra)) => Err(format!("unexpected extra reply: {:?}", extra.response)),
            Err(s) => Err(format!("end of stream: {s}")),
        }
    }
}

fn client(channel: Channel) -> ExternalProcessorClient<Channel> {
    ExternalProcessorClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

// ---------------------------------------------------------------------------------------------
// The flood.

struct Flood {
    names: u64,
    seed: u64,
    next: AtomicU64,
    done: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<String>,
    manifest: Vec<u8>,
}

impl Flood {
    fn new(args: &Args) -> Flood {
        // Layer digests the registry never sees: the flood's manifests are judged, not stored.
        let layer = |i: u32| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{i:064x}","size":4096}}"#
            )
        };
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{:064x}","size":412}},"layers":[{},{}]}}"#,
            7,
            layer(1),
            layer(2)
        );
        Flood {
            names: args.names,
            seed: args.seed,
            next: AtomicU64::new(0),
            done: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: std::sync::Mutex::new(String::new()),
            manifest: manifest.into_bytes(),
        }
    }

    async fn work(self: Arc<Self>, channel: Channel, deadline: Instant) {
        let mut client = client(channel);
        loop {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            if index >= self.names || Instant::now() >= deadline {
                return;
            }
            let mut rng = Rng(self.seed ^ index.wrapping_mul(0xA24B_AED4_963E_E407));
            let name = flood_name(index, &mut rng);
            let result = tokio::time::timeout(STREAM_TIMEOUT, self.push(&mut client, &name))
                .await
                .unwrap_or_else(|_| Err(format!("no end of stream within {STREAM_TIMEOUT:?}")));
            match result {
                Ok(true) => {}
                Ok(false) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    if self.errors.fetch_add(1, Ordering::Relaxed) == 0
                        && let Ok(mut first) = self.first_error.lock()
                    {
                        *first = format!("{name}: {e}");
                    }
                }
            }
            self.done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `true` when the push was let through (and its 201 reported), `false` when it was refused
    /// with 503 because the registry did not answer the sidecar in time.
    async fn push(
        &self,
        client: &mut ExternalProcessorClient<Channel>,
        name: &str,
    ) -> Result<bool, String> {
        let (mut exchange, verdict) =
            Exchange::open(client, request_headers(name, "v1", self.manifest.len())).await?;
        if let Verdict::Refused(status) = verdict {
            return Err(format!("request headers refused with {status}"));
        }
        match exchange.send(body(&self.manifest), "body").await? {
            // The registry did not answer in time: the push is refused, as it should be.
            Verdict::Refused(503) => return Ok(false),
            Verdict::Refused(status) => {
                return Err(format!("a valid name's push refused with {status}"));
            }
            Verdict::Continue => {}
        }
        exchange.send(response_headers(201), "response").await?;
        exchange.finish().await?;
        Ok(true)
    }
}

// ---------------------------------------------------------------------------------------------
// Honest pushes.

struct Honest {
    repos: Vec<String>,
    limit: usize,
    manifest: Vec<u8>,
    /// Per repository: (tag, admitted, registry status) in order.
    outcomes: Vec<Vec<(String, bool, u16)>>,
    errors: Vec<String>,
    /// Pushes tried again after a 503.
    retries: usize,
}

const HONEST_TRIES: usize = 5;
const UNAVAILABLE: &str = "refused with 503";

impl Honest {
    /// Uploads the image's blobs into every honest repository, so admitted manifests are stored.
    async fn prepare(registry: &Registry, layout: &Layout, args: &Args) -> Honest {
        let client = registry.client();
        let repos: Vec<String> = (0..args.honest_repos)
            .map(|r| format!("honest/r{r}"))
            .collect();
        for repo in &repos {
            client.upload_layout_blobs(repo, layout).await;
        }
        Honest {
            outcomes: vec![Vec::new(); repos.len()],
            repos,
            limit: args.honest_limit,
            manifest: layout.manifest.clone(),
            errors: Vec::new(),
            retries: 0,
        }
    }

    /// Every repository gets `2 × limit` new tags and then a re-push of its first, round-robin,
    /// each push when the flood has reached its share of the names.
    async fn run(
        mut self,
        channel: Channel,
        registry: registry_gateway_testkit::RegistryClient,
        flood: Arc<Flood>,
        sampler: Arc<Sampler>,
        names: u64,
    ) -> Honest {
        let mut client = client(channel);
        let mut plan = Vec::new();
        for attempt in 0..=2 * self.limit {
            let tag = if attempt == 2 * self.limit {
                "h0".to_owned()
            } else {
                format!("h{attempt}")
            };
            for r in 0..self.repos.len() {
                plan.push((r, tag.clone()));
            }
        }
        let total = plan.len() as u64;
        for (k, (r, tag)) in plan.into_iter().enumerate() {
            let due = (k as u64 + 1) * names / (total + 1);
            while flood.done.load(Ordering::Relaxed) < due
                && flood.next.load(Ordering::Relaxed) < names
            {
                sampler.note_progress(flood.done.load(Ordering::Relaxed), names);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let repo = self.repos[r].clone();
            // A client retries a 503 (the registry did not answer the sidecar in time).
            let mut result = Ok(Err(String::new()));
            for _ in 0..HONEST_TRIES {
                result = tokio::time::timeout(
                    STREAM_TIMEOUT,
                    self.push(&mut client, &registry, &repo, &tag),
                )
                .await;
                if !matches!(&result, Ok(Err(e)) if e == UNAVAILABLE) {
                    break;
                }
                self.retries += 1;
            }
            match result {
                Ok(Ok((admitted, status))) => self.outcomes[r].push((tag, admitted, status)),
                Ok(Err(e)) => self.errors.push(format!("{repo}:{tag}: {e}")),
                Err(_) => self
                    .errors
                    .push(format!("{repo}:{tag}: no end within {STREAM_TIMEOUT:?}")),
            }
        }
        while flood.next.load(Ordering::Relaxed) < names {
            sampler.note_progress(flood.done.load(Ordering::Relaxed), names);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self
    }

    /// As Envoy and the registry would: the sidecar judges, an admitted manifest is PUT to the
    /// registry, and the registry's status goes back as the response headers.
    async fn push(
        &self,
        client: &mut ExternalProcessorClient<Channel>,
        registry: &registry_gateway_testkit::RegistryClient,
        repo: &str,
        tag: &str,
    ) -> Result<(bool, u16), String> {
        let (mut exchange, verdict) =
            Exchange::open(client, request_headers(repo, tag, self.manifest.len())).await?;
        if let Verdict::Refused(status) = verdict {
            return Err(format!("request headers refused with {status}"));
        }
        match exchange.send(body(&self.manifest), "body").await? {
            Verdict::Refused(403) => Ok((false, 0)),
            Verdict::Refused(503) => Err(UNAVAILABLE.to_owned()),
            Verdict::Refused(status) => Err(format!("refused with {status}, not 403")),
            Verdict::Continue => {
                let stored = registry
                    .put_manifest(repo, tag, OCI_MANIFEST, &self.manifest)
                    .await;
                exchange
                    .send(response_headers(stored.status), "response")
                    .await?;
                exchange.finish().await?;
                Ok((true, stored.status))
            }
        }
    }

    async fn failures(&self, registry: &Registry) -> Vec<String> {
        let mut failures = self.errors.clone();
        let client = registry.client();
        for (repo, outcomes) in self.repos.iter().zip(&self.outcomes) {
            let new_admitted = outcomes
                .iter()
                .take(2 * self.limit)
                .filter(|(_, admitted, _)| *admitted)
                .count();
            if new_admitted != self.limit {
                failures.push(format!(
                    "{repo}: {new_admitted} new tags admitted, not {}: {outcomes:?}",
                    self.limit
                ));
            }
            if let Some((tag, admitted, _)) = outcomes.get(2 * self.limit)
                && !admitted
            {
                failures.push(format!("{repo}: the re-push of {tag} was refused"));
            }
            if let Some((tag, _, status)) = outcomes.iter().find(|(_, a, s)| *a && *s != 201) {
                failures.push(format!("{repo}: the registry answered {status} to {tag}"));
            }
            let tags = client.list_tags(repo).await;
            if tags.len() != self.limit {
                failures.push(format!(
                    "{repo}: the registry holds {} tags, not {}: {tags:?}",
                    tags.len(),
                    self.limit
                ));
            }
        }
        failures
    }

    fn json(&self) -> serde_json::Value {
        let pushes: usize = self.outcomes.iter().map(Vec::len).sum();
        let admitted: usize = self
            .outcomes
            .iter()
            .map(|o| o.iter().filter(|(_, a, _)| *a).count())
            .sum();
        serde_json::json!({
            "repositories": self.repos.len(),
            "tag_count_limit": self.limit,
            "pushes": pushes,
            "admitted": admitted,
            "expected_admitted": self.repos.len() * (self.limit + 1),
            "errors": self.errors.len(),
            "retries_after_503": self.retries,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// RSS.

struct Sampler {
    pid: u32,
    peak_hwm: AtomicU64,
    last_rss: AtomicU64,
    half_rss: AtomicU64,
    progress: AtomicUsize,
}

impl Sampler {
    fn start(pid: u32) -> Arc<Sampler> {
        let sampler = Arc::new(Sampler {
            pid,
            peak_hwm: AtomicU64::new(0),
            last_rss: AtomicU64::new(0),
            half_rss: AtomicU64::new(0),
            progress: AtomicUsize::new(0),
        });
        sampler.sample();
        let weak = Arc::downgrade(&sampler);
        tokio::spawn(async move {
            while let Some(sampler) = weak.upgrade() {
                sampler.sample();
                drop(sampler);
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        });
        sampler
    }

    fn sample(&self) {
        if let Some(hwm) = status_kib(self.pid, "VmHWM") {
            self.peak_hwm.fetch_max(hwm, Ordering::Relaxed);
        }
        if let Some(rss) = status_kib(self.pid, "VmRSS") {
            self.last_rss.store(rss, Ordering::Relaxed);
        }
    }

    /// Prints a line per tenth of the flood, and keeps the RSS half-way.
    fn note_progress(&self, done: u64, names: u64) {
        let tenth = (done * 10 / names.max(1)) as usize;
        if self.progress.fetch_max(tenth, Ordering::Relaxed) < tenth {
            self.sample();
            let rss = self.last_rss.load(Ordering::Relaxed);
            if tenth >= 5 && self.half_rss.load(Ordering::Relaxed) == 0 {
                self.half_rss.store(rss, Ordering::Relaxed);
            }
            eprintln!(
                "flood: {done}/{names} names, sidecar RSS {:.1} MiB, peak {:.1} MiB",
                rss as f64 / 1024.0,
                self.peak_hwm.load(Ordering::Relaxed) as f64 / 1024.0
            );
        }
    }

    fn peak_hwm_kib(&self) -> u64 {
        self.peak_hwm.load(Ordering::Relaxed)
    }

    fn last_rss_kib(&self) -> u64 {
        self.last_rss.load(Ordering::Relaxed)
    }

    fn half_rss_kib(&self) -> u64 {
        self.half_rss.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component_ok(c: &str) -> bool {
        let re = regex_lite(c);
        re && !c.is_empty()
    }

    /// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` without a regex crate.
    fn regex_lite(c: &str) -> bool {
        let bytes = c.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !bytes.first().copied().is_some_and(alnum) || !bytes.last().copied().is_some_and(alnum) {
            return false;
        }
        let mut i = 0;
        while i < bytes.len() {
            if alnum(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let sep = &c[start..i];
            if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
                return false;
            }
        }
        true
    }

    #[test]
    fn flood_names_are_distinct_valid_and_at_most_255_characters() {
        let mut seen = std::collections::HashSet::new();
        let mut longest = 0;
        for index in 0..20_000u64 {
            let mut rng = Rng(1 ^ index.wrapping_mul(0xA24B_AED4_963E_E407));
            let name = flood_name(index, &mut rng);
            assert!(name.len() <= MAX_NAME_LEN, "{name}");
            assert!(name.split('/').all(component_ok), "{name}");
            assert!(!name.starts_with("honest"), "{name}");
            longest = longest.max(name.len());
            assert!(seen.insert(name));
        }
        assert!(longest > 240, "names reach the limit: {longest}");
    }
}
