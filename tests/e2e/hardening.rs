//! The shipped Envoy config (`envoy/envoy.yaml`) under a burst of thousands of concurrent
//! requests, against clients that trickle a manifest, and with HTTP/2 request trailers: every
//! part real (Envoy 1.40, distribution, the sidecar), figures printed for docs/RELIABILITY.md.
//!
//! Run with `--nocapture` to see the figures.

use crate::support;

mod h2;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

use support::{
    Envoy, EnvoyOptions, Layout, OCI_MANIFEST, Stack, envoy_config_path, oci_image_layout,
    substituted_config,
};

/// Room for every tag the tests push: only Envoy may refuse anything here.
const LIMITS: &str = "max_image_size: 1GB\ntag_count_limit: 100000\n";
/// Concurrent requests of each kind in the burst.
const BURST: usize = 2_000;
/// Repositories the burst's manifest PUTs are spread over.
const BURST_REPOS: usize = 10;
/// New tags per repository: each is pushed by ten of the concurrent PUTs (as CI jobs pushing
/// `latest` do), so the registry stores 200 tags rather than 2,000, which keeps its share of the
/// two cores (and the clean-up of its storage) small.
const TAGS_PER_REPO: usize = 20;

// --- HTTP/1.1 over raw sockets ---------------------------------------------------------------

/// What came back on one connection.
#[derive(Debug)]
struct Answer {
    /// 0 when the connection ended without a status line.
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Who produced a 5xx. The router adds `x-envoy-upstream-service-time` to every answer that
    /// came from the registry; the sidecar's own refusals carry an OCI error body without the
    /// `detail.envoy` that Envoy's 503 for an unreachable sidecar (local_reply_config) adds.
    /// Anything else is Envoy's own: circuit-breaker overflow ("upstream connect error ...
    /// overflow"), overload ("envoy overloaded"), timeouts.
    fn made_by(&self) -> &'static str {
        if self.header("x-envoy-upstream-service-time").is_some() {
            return "registry";
        }
        let json: Option<Value> = serde_json::from_slice(&self.body).ok();
        let oci = json
            .as_ref()
            .and_then(|j| j.pointer("/errors/0/code"))
            .is_some();
        let envoy_detail = json
            .as_ref()
            .and_then(|j| j.pointer("/errors/0/detail/envoy"))
            .is_some();
        if oci && !envoy_detail {
            "sidecar"
        } else {
            "envoy"
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The status and what Envoy said about it: the response details of its ext_proc failure
    /// reply, or the start of its plain-text body ("upstream connect error ... overflow").
    fn kind(&self) -> String {
        let json: Option<Value> = serde_json::from_slice(&self.body).ok();
        let detail = json
            .as_ref()
            .and_then(|j| j.pointer("/errors/0/detail/envoy"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let what = detail.unwrap_or_else(|| self.text().chars().take(100).collect());
        format!("{} {}", self.status, what.trim())
    }
}

/// Parses an HTTP/1.1 answer read to EOF (the request said `connection: close`).
fn parse_answer(raw: &[u8]) -> Answer {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Answer {
            status: 0,
            headers: Vec::new(),
            body: raw.to_vec(),
        };
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&raw[..eol])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 || raw.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[(eol + 4 + size).min(raw.len())..];
    }
    out
}

fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut bytes = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
         content-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Reads a connection to EOF, bounded by `timeout`.
async fn read_to_end(sock: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(timeout, sock.read_to_end(&mut raw)).await;
    raw
}

// --- The burst -------------------------------------------------------------------------------

/// Counts of one burst, by status and by who made each 5xx.
#[derive(Default, Debug)]
struct Tally {
    total: usize,
    by_status: BTreeMap<u16, usize>,
    envoy_5xx: usize,
    registry_5xx: usize,
    sidecar_5xx: usize,
    /// Envoy's own 5xx answers by kind (status and Envoy's response details or body).
    envoy_kinds: BTreeMap<String, usize>,
    /// A few of the sidecar's 5xx answers.
    samples: Vec<String>,
    elapsed: Duration,
}

impl Tally {
    fn add(&mut self, answer: &Answer) {
        self.total += 1;
        *self.by_status.entry(answer.status).or_default() += 1;
        if answer.status >= 500 || answer.status == 0 {
            match answer.made_by() {
                "registry" => self.registry_5xx += 1,
                "sidecar" => {
                    self.sidecar_5xx += 1;
                    if self.samples.len() < 3 {
                        self.samples.push(format!(
                            "sidecar {} {}",
                            answer.status,
                            answer.text().trim()
                        ));
                    }
                }
                _ => {
                    self.envoy_5xx += 1;
                    *self.envoy_kinds.entry(answer.kind()).or_default() += 1;
                }
            }
        }
    }
}

/// One request of the burst: method, path, content type, body.
type Planned = (&'static str, String, &'static str, Arc<Vec<u8>>);

/// Opens one connection per planned request (in batches, so that the kernel's accept queue is
/// never the bottleneck), waits until all are open, then sends every request at once and reads
/// every answer.
async fn burst(addr: SocketAddr, planned: Vec<Planned>) -> Tally {
    let mut socks = Vec::with_capacity(planned.len());
    for batch in planned.chunks(500) {
        let connects = batch.iter().map(|_| TcpStream::connect(addr));
        for sock in futures_join_all(connects).await {
            let sock = sock.expect("connect to Envoy");
            sock.set_nodelay(true).expect("TCP_NODELAY");
            socks.push(sock);
        }
    }
    let barrier = Arc::new(Barrier::new(planned.len()));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(planned.len());
    for (mut sock, (method, path, content_type, body)) in socks.into_iter().zip(planned) {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let bytes = request_bytes(addr, method, &path, content_type, &body);
            barrier.wait().await;
            if sock.write_all(&bytes).await.is_err() {
                return parse_answer(&[]);
            }
            parse_answer(&read_to_end(&mut sock, Duration::from_secs(60)).await)
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        tally.add(&task.await.expect("request task"));
    }
    tally.elapsed = started.elapsed();
    tally
}

/// Awaits every future, concurrently (spawned), in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("task"));
    }
    out
}

/// Uploads the layout's blobs into each repository through Envoy, pushes one tag there, and
/// uploads one more blob to pull; returns its digest.
async fn seed(stack: &Stack, layout: &Layout, repos: &[String]) -> String {
    let client = stack.client();
    for repo in repos {
        client.upload_layout_blobs(repo, layout).await;
    }
    // One tag per repository first, so that the sidecar's tag books are warm: the burst then
    // measures Envoy, not how fast the registry lists tags to a cold sidecar.
    for repo in repos {
        let reply = client
            .put_manifest(repo, "warm", OCI_MANIFEST, &layout.manifest)
            .await;
        assert_eq!(reply.status, 201, "warming {repo}: {}", reply.text());
    }
    client
        .upload_blob(&repos[0], &support::random_bytes(4096, 99))
        .await
}

/// 2,000 manifest PUTs of 200 new tags (spread over ten repositories) and 2,000 GETs of a 4 KiB
/// blob.
fn burst_plan(layout: &Layout, repos: &[String], blob: &str, round: &str) -> Vec<Planned> {
    let manifest = Arc::new(layout.manifest.clone());
    let empty = Arc::new(Vec::new());
    let mut planned = Vec::with_capacity(2 * BURST);
    for i in 0..BURST {
        let repo = &repos[i % repos.len()];
        planned.push((
            "PUT",
            format!(
                "/v2/{repo}/manifests/{round}-{}",
                i / repos.len() % TAGS_PER_REPO
            ),
            OCI_MANIFEST,
            manifest.clone(),
        ));
        planned.push((
            "GET",
            format!("/v2/{}/blobs/{blob}", repos[0]),
            "application/octet-stream",
            empty.clone(),
        ));
    }
    planned
}

/// The rendered shipped config with `edit` applied, written where Envoy can read it.
fn edited_config(
    dir: &Path,
    options: &EnvoyOptions,
    edit: impl FnOnce(&mut Value),
) -> std::path::PathBuf {
    let mut config = substituted_config(&envoy_config_path(), options);
    edit(&mut config);
    let path = dir.join("envoy.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("JSON")).expect("write config");
    path
}

fn options_of(stack: &Stack) -> EnvoyOptions {
    EnvoyOptions {
        registry_addr: stack.registry.addr(),
        gateway_addr: stack.gateway.grpc_addr(),
    }
}

fn report(what: &str, tally: &Tally) {
    eprintln!(
        "{what}: {} requests in {:.1}s, statuses {:?}; 5xx made by Envoy: {}, by the registry: {}, \
         by the sidecar: {}{}",
        tally.total,
        tally.elapsed.as_secs_f64(),
        tally.by_status,
        tally.envoy_5xx,
        tally.registry_5xx,
        tally.sidecar_5xx,
        if tally.envoy_kinds.is_empty() && tally.samples.is_empty() {
            String::new()
        } else {
            format!(
                "; Envoy's: {:?}; the sidecar's, e.g.: {:?}",
                tally.envoy_kinds, tally.samples
            )
        }
    );
}

/// The stack, the layout, the repositories and the blob of a burst, ready.
async fn burst_stack() -> (Stack, tempfile::TempDir, Layout, Vec<String>, String) {
    let stack = Stack::start(LIMITS).await;
    // Storing 2,000 manifests costs distribution several times the CPU that Envoy and the
    // sidecar use together (17s against 5s, measured). In production the registry has CPUs of
    // its own; on one shared 2-core machine it would starve the sidecar into missing Envoy's
    // 1s connect and 5s message timeouts, which would measure the machine, not the config.
    // So the registry yields the CPU to them (nice 10).
    let renice = std::process::Command::new("renice")
        .args(["-n", "10", "-p", &stack.registry.pid().to_string()])
        .output()
        .expect("renice (util-linux) runs");
    assert!(renice.status.success(), "renice: {renice:?}");
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = oci_image_layout(dir.path(), &[1024], 5);
    let repos: Vec<String> = (0..BURST_REPOS).map(|i| format!("burst/app{i}")).collect();
    let blob = seed(&stack, &layout, &repos).await;
    (stack, dir, layout, repos, blob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_2000_manifest_puts_and_2000_blob_gets_gets_no_5xx_from_envoy() {
    let started = Instant::now();
    let (stack, _dir, layout, repos, blob) = burst_stack().await;
    // Envoy's heap as the overload manager's fixed_heap monitor sees it, sampled through the
    // burst: the figure that sizes max_heap_size_bytes (docs/deploy.md).
    let peak_heap = Arc::new(AtomicU64::new(0));
    let sampler = {
        let admin = support::RegistryClient::new(&stack.envoy.admin_url());
        let peak_heap = peak_heap.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(reply) = admin.get("/stats?filter=^server.memory_heap_size$").await {
                    let value = reply
                        .text()
                        .rsplit(": ")
                        .next()
                        .and_then(|v| v.trim().parse().ok());
                    peak_heap.fetch_max(value.unwrap_or(0), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let shipped = burst(
        stack.envoy.addr(),
        burst_plan(&layout, &repos, &blob, "shipped"),
    )
    .await;
    sampler.abort();
    report("envoy/envoy.yaml", &shipped);
    for name in [
        "cluster.registry.upstream_rq_pending_overflow",
        "cluster.registry.upstream_cx_overflow",
        "cluster.registry-gateway.upstream_rq_pending_overflow",
        "http.registry.downstream_rq_overload_close",
        "overload.envoy.overload_actions.stop_accepting_requests.active",
        "http.registry.ext_proc.message_timeouts",
        "cluster.registry-gateway.upstream_cx_total",
    ] {
        eprintln!("  {name}: {:?}", stack.envoy.stat(name).await);
    }
    for (what, pid) in [
        ("Envoy", stack.envoy.pid()),
        ("sidecar", stack.gateway.pid()),
        ("registry", stack.registry.pid()),
        ("this test", std::process::id()),
    ] {
        eprintln!(
            "  CPU seconds used by {what}: {:.1}",
            support::cpu_seconds(pid).unwrap_or(0.0)
        );
    }
    let metrics = stack
        .gateway
        .admin()
        .request("GET", "/metrics", &[], None)
        .await
        .text();
    for line in metrics.lines().filter(|l| {
        l.starts_with("registry_gateway_decision_duration_seconds_") && !l.contains("_bucket")
    }) {
        eprintln!("  sidecar {line}");
    }
    eprintln!(
        "  Envoy's peak heap: {} MiB",
        peak_heap.load(Ordering::Relaxed) / (1024 * 1024)
    );
    eprintln!(
        "  whole test so far: {:.1}s",
        started.elapsed().as_secs_f64()
    );

    assert_eq!(shipped.total, 2 * BURST);
    // Envoy's own 5xx from its limits (circuit-breaker overflow, overload, connection ceilings,
    // resets) must be zero, always. Its timeouts (the sidecar not connecting within 1s or not
    // answering a message within 5s) measure CPU scheduling as much as the config: they are zero
    // on this test's own 2 cores, but when other work keeps more than twice as many runnable
    // tasks as cores (the 1-minute load average), they are reported, not failed.
    let timeouts: usize = shipped
        .envoy_kinds
        .iter()
        .filter(|(kind, _)| kind.contains("timeout"))
        .map(|(_, n)| n)
        .sum();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            l.split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let starved = load > 2.0 * cores as f64;
    assert_eq!(
        shipped.envoy_5xx - timeouts,
        0,
        "Envoy made up 5xx answers under the burst: {shipped:?}"
    );
    if starved && timeouts > 0 {
        eprintln!(
            "  NOTE: {timeouts} timeouts of Envoy's with a load average of {load} on {cores} cores: \
             the machine, not the config (not failed)"
        );
    } else {
        assert_eq!(
            timeouts, 0,
            "Envoy timed out on the sidecar under the burst (load average {load}): {shipped:?}"
        );
        assert_eq!(
            shipped.by_status.get(&201),
            Some(&BURST),
            "every manifest PUT stored: {shipped:?}"
        );
    }
    assert_eq!(
        shipped.by_status.get(&200),
        Some(&BURST),
        "every blob GET answered: {shipped:?}"
    );
}

/// The same burst through Envoy's default circuit breakers (the shipped file without its
/// `circuit_breakers`): the 503s the sizing prevents, so the test above is known to see them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_burst_through_envoys_default_circuit_breakers_gets_503s_from_envoy() {
    let (stack, _dir, layout, repos, blob) = burst_stack().await;
    let defaults_dir = tempfile::tempdir().expect("temp dir");
    let defaults = edited_config(defaults_dir.path(), &options_of(&stack), |config| {
        for cluster in config["static_resources"]["clusters"]
            .as_array_mut()
            .expect("clusters")
        {
            cluster
                .as_object_mut()
                .expect("cluster")
                .remove("circuit_breakers");
        }
    });
    let envoy = Envoy::start_with_config(&defaults, options_of(&stack)).await;
    let before = burst(envoy.addr(), burst_plan(&layout, &repos, &blob, "defaults")).await;
    report(
        "envoy/envoy.yaml with Envoy's default circuit breakers",
        &before,
    );
    assert!(
        before.envoy_5xx > 0,
        "with Envoy's default circuit breakers the same burst should overflow: {before:?}"
    );
}

// --- Request trailers ------------------------------------------------------------------------

/// A manifest PUT over HTTP/2 whose body is followed by trailers, as gRPC-style and some
/// streaming clients send.
async fn put_with_trailers(
    addr: SocketAddr,
    repo: &str,
    tag: &str,
    manifest: &[u8],
) -> h2::H2Answer {
    let authority = addr.to_string();
    let path = format!("/v2/{repo}/manifests/{tag}");
    h2::request(
        addr,
        &[
            (":method", "PUT"),
            (":scheme", "http"),
            (":authority", &authority),
            (":path", &path),
            ("content-type", OCI_MANIFEST),
        ],
        manifest,
        &[("x-checksum", "sha256")],
        Duration::from_secs(15),
    )
    .await
}

/// An image of one 1 KiB layer (`seed` tells images apart) with its blobs uploaded to `repo`, so
/// that only its manifest remains to be PUT; the directory holds the layout.
async fn image_with_blobs_in(
    client: &support::RegistryClient,
    repo: &str,
    seed: u64,
) -> (tempfile::TempDir, Layout) {
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = oci_image_layout(dir.path(), &[1024], seed);
    client.upload_layout_blobs(repo, &layout).await;
    (dir, layout)
}

/// The fake processor's record of the PUT of `tag`, printed with what the client got.
fn seen_put(
    fake: &support::FakeExtProc,
    tag: &str,
    client_got: Option<u16>,
) -> support::SeenStream {
    let put = fake
        .streams()
        .into_iter()
        .find(|s| s.path.ends_with(&format!("/{tag}")))
        .expect("the PUT's stream");
    eprintln!(
        "{tag}: client got {client_got:?}; processor saw {} body message(s), {} bytes, end_of_stream {}, other phases {:?}",
        put.body_messages,
        put.body.len(),
        put.body_end_of_stream,
        put.unexpected
    );
    put
}

/// What Envoy 1.40 hands the processor, with a recording stand-in for the sidecar: with
/// `request_trailer_mode: SKIP` (the shipped setting) the whole buffered body in one message,
/// `end_of_stream: false` (the stream ends with the trailers, which are not sent); with `SEND`
/// the same body message, then a `request_trailers` message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sends_a_body_followed_by_trailers_whole_but_not_as_the_end_of_the_stream() {
    let registry = support::Registry::start(support::RegistryOptions::default()).await;
    let fake = support::FakeExtProc::start().await;
    let options = EnvoyOptions {
        registry_addr: registry.addr(),
        gateway_addr: fake.addr(),
    };
    let (_dir, layout) = image_with_blobs_in(&registry.client(), "trailers/app", 4).await;

    let envoy = Envoy::start(options).await;
    let skip = put_with_trailers(envoy.addr(), "trailers/app", "skip", &layout.manifest).await;
    let put = seen_put(&fake, "skip", skip.status());
    assert_eq!(
        skip.status(),
        Some(201),
        "the fake lets it through: {}",
        skip.text()
    );
    assert_eq!(put.body_messages, 1);
    assert_eq!(
        put.body, layout.manifest,
        "the whole manifest, in one message"
    );
    assert!(
        !put.body_end_of_stream,
        "the body does not end the stream: trailers do"
    );
    assert!(
        put.unexpected.is_empty(),
        "no trailers message with SKIP: {:?}",
        put.unexpected
    );
    drop(envoy);

    let send_dir = tempfile::tempdir().expect("temp dir");
    let send = edited_config(send_dir.path(), &options, |config| {
        let filters = hcm_mut(config)["http_filters"]
            .as_array_mut()
            .expect("filters");
        filters[0]["typed_config"]["processing_mode"]["request_trailer_mode"] = Value::from("SEND");
    });
    let envoy = Envoy::start_with_config(&send, options).await;
    let answer = put_with_trailers(envoy.addr(), "trailers/app", "send", &layout.manifest).await;
    let put = seen_put(&fake, "send", answer.status());
    assert_eq!(put.body, layout.manifest);
    assert!(!put.body_end_of_stream);
    assert!(
        put.unexpected.iter().any(|p| p.contains("RequestTrailers")),
        "with SEND a trailers message follows the body: {:?}",
        put.unexpected
    );
}

/// Fails while the sidecar reads `end_of_stream: false` on a BUFFERED body as "cut by Envoy's
/// buffer limit" (413 MANIFEST_INVALID): Envoy never delivers a partial body in BUFFERED mode
/// (it answers 413 itself), so a body followed by trailers is the whole manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_put_with_trailers_over_http2_is_stored() {
    let stack = Stack::start(LIMITS).await;
    let (_dir, layout) = image_with_blobs_in(&stack.client(), "trailers/app", 3).await;
    let answer =
        put_with_trailers(stack.envoy.addr(), "trailers/app", "v1", &layout.manifest).await;
    assert_eq!(answer.status(), Some(201), "{}", answer.text());
    assert_eq!(
        stack.client().get_manifest("trailers/app", "v1").await.body,
        layout.manifest
    );
}

/// A manifest near distribution's 4 MiB cap over HTTP/2, through flow-control windows of 1 MiB
/// per stream (the listener's `initial_stream_window_size`): Envoy keeps reading into the 5 MiB
/// buffer of the manifest route, so the whole manifest reaches the sidecar and the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_of_nearly_4_mib_over_http2_is_stored() {
    let stack = Stack::start(LIMITS).await;
    let (_dir, layout) = image_with_blobs_in(&stack.client(), "big/app", 6).await;
    let mut manifest: Value = serde_json::from_slice(&layout.manifest).expect("manifest JSON");
    let pad = 4 * 1024 * 1024 - 64 * 1024 - layout.manifest.len();
    manifest["annotations"] = serde_json::json!({ "org.example.pad": "x".repeat(pad) });
    let body = serde_json::to_vec(&manifest).expect("JSON");
    assert!(body.len() > 3 * 1024 * 1024 + 512 * 1024 && body.len() < 4 * 1024 * 1024);
    let authority = stack.envoy.addr().to_string();
    let answer = h2::request(
        stack.envoy.addr(),
        &[
            (":method", "PUT"),
            (":scheme", "http"),
            (":authority", &authority),
            (":path", "/v2/big/app/manifests/v1"),
            ("content-type", OCI_MANIFEST),
        ],
        &body,
        &[],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(answer.status(), Some(201), "{}", answer.text());
    assert_eq!(
        stack.client().get_manifest("big/app", "v1").await.body,
        body
    );
}

// --- Slow clients ----------------------------------------------------------------------------

/// The route of the rendered config named `name`.
fn route_mut<'a>(config: &'a mut Value, name: &str) -> &'a mut Value {
    config
        .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0/routes")
        .and_then(Value::as_array_mut)
        .and_then(|routes| routes.iter_mut().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no route {name} in the rendered config"))
}

fn hcm_mut(config: &mut Value) -> &mut Value {
    config
        .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config")
        .expect("the listener's connection manager")
}

/// What a trickling client saw.
struct Trickled {
    /// Whether Envoy answered (or closed) before the last byte was sent.
    cut: bool,
    answer: Answer,
    /// From the first trickled byte to the end of the answer.
    took: Duration,
    /// Kept open by the client, so that only Envoy can close it.
    _sock: TcpStream,
}

/// Connects to `addr`, writes `head` at once, then trickles `bytes` 300 ms apart for at most
/// 10 s, and reads the answer for up to `read_for`.
async fn trickle(addr: SocketAddr, head: &str, bytes: &[u8], read_for: Duration) -> Trickled {
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    sock.write_all(head.as_bytes()).await.expect("write head");
    let started = Instant::now();
    let cut = trickle_bytes(
        &mut sock,
        bytes,
        Duration::from_millis(300),
        Duration::from_secs(10),
    )
    .await;
    let answer = parse_answer(&read_to_end(&mut sock, read_for).await);
    Trickled {
        cut,
        answer,
        took: started.elapsed(),
        _sock: sock,
    }
}

/// Writes `bytes` one at a time, `every` apart, until all are sent or `until` passes; returns
/// whether the peer answered (or closed) before the last byte was sent.
async fn trickle_bytes(
    sock: &mut TcpStream,
    bytes: &[u8],
    every: Duration,
    until: Duration,
) -> bool {
    let deadline = Instant::now() + until;
    for (i, byte) in bytes.iter().enumerate() {
        if Instant::now() >= deadline {
            return false;
        }
        if sock.write_all(&[*byte]).await.is_err() {
            return true;
        }
        if i + 1 == bytes.len() {
            return false;
        }
        // An answer (408) and a close mean the deadline fired.
        let mut peek = [0u8; 1];
        if let Ok(Ok(_)) = tokio::time::timeout(every, sock.peek(&mut peek)).await {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_a_manifest_is_cut_off_by_the_deadline_and_its_connection_closed() {
    // The shipped file bounds manifest writes and header reception; a blob upload has no deadline.
    let shipped = substituted_config(
        &envoy_config_path(),
        &EnvoyOptions {
            registry_addr: "127.0.0.1:5000".parse().expect("address"),
            gateway_addr: "127.0.0.1:50051".parse().expect("address"),
        },
    );
    let mut probe = shipped.clone();
    for route in ["manifest-write", "harbor-api-write"] {
        let deadline =
            &route_mut(&mut probe, route)["route"]["max_stream_duration"]["max_stream_duration"];
        assert!(
            deadline.is_string(),
            "{route}: the shipped file sets a whole-stream deadline"
        );
    }
    assert!(
        route_mut(&mut probe, "pass-through")["route"]
            .get("max_stream_duration")
            .is_none(),
        "blob uploads have no whole-stream deadline"
    );
    assert!(hcm_mut(&mut probe)["request_headers_timeout"].is_string());
    assert!(
        hcm_mut(&mut probe)["common_http_protocol_options"]
            .get("max_stream_duration")
            .is_none()
            && hcm_mut(&mut probe).get("request_timeout").is_none(),
        "no connection-wide deadline that would cut blob uploads"
    );

    // The same file with a 2s manifest deadline and a 1s header deadline, so the test is quick.
    let stack = Stack::start(LIMITS).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = edited_config(dir.path(), &options_of(&stack), |config| {
        route_mut(config, "manifest-write")["route"]["max_stream_duration"]["max_stream_duration"] =
            Value::from("2s");
        hcm_mut(config)["request_headers_timeout"] = Value::from("1s");
    });
    let envoy = Envoy::start_with_config(&config, options_of(&stack)).await;
    let addr = envoy.addr();
    let active = "http.registry.downstream_cx_active";
    let before = envoy.stat(active).await.unwrap_or(0);

    // A manifest PUT announcing 1,000 bytes and sending one every 300 ms.
    let head = format!(
        "PUT /v2/slow/app/manifests/v1 HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {OCI_MANIFEST}\r\n\
         content-length: 1000\r\n\r\n"
    );
    let manifest = trickle(addr, &head, &[b'{'; 1000], Duration::from_secs(5)).await;
    let (cut, answer, took) = (manifest.cut, &manifest.answer, manifest.took);
    eprintln!(
        "trickled manifest: cut={cut} after {took:?}: {} {}",
        answer.status,
        answer.text()
    );
    assert!(cut, "the trickling client was never cut off");
    assert_eq!(answer.status, 408, "{}", answer.text());
    assert!(
        took < Duration::from_secs(5),
        "cut after {took:?}, the deadline is 2s"
    );
    assert_eq!(
        envoy
            .stat("http.registry.downstream_rq_max_duration_reached")
            .await,
        Some(1)
    );

    // Headers that never end: cut after the 1s header deadline.
    let head = format!("PUT /v2/slow/app/manifests/v2 HTTP/1.1\r\nhost: {addr}\r\n");
    let headers = trickle(
        addr,
        &head,
        b"x-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        Duration::from_secs(5),
    )
    .await;
    let (cut, answer, took) = (headers.cut, &headers.answer, headers.took);
    eprintln!(
        "trickled headers: cut={cut} after {took:?}: {}",
        answer.status
    );
    assert!(cut, "the client trickling its headers was never cut off");
    assert_eq!(answer.status, 408);

    // Both connections are gone from Envoy, buffers and all.
    support::eventually(
        Duration::from_secs(5),
        "Envoy closed both connections",
        || async {
            match envoy.stat(active).await {
                Some(now) if now <= before => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;

    // A blob upload moving as slowly, for longer than the manifest deadline, is not cut.
    let client = envoy.client();
    let started_upload = client
        .request("POST", "/v2/slow/app/blobs/uploads/", &[], None)
        .await;
    assert_eq!(started_upload.status, 202, "{}", started_upload.text());
    let location = started_upload
        .header("location")
        .expect("upload location")
        .to_owned();
    let target = location
        .strip_prefix(&envoy.url())
        .map(str::to_owned)
        .unwrap_or(location);
    let data = b"a slow blob, 16";
    let head = format!(
        "PATCH {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
         content-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
        data.len()
    );
    let blob = trickle(addr, &head, data, Duration::from_secs(10)).await;
    let (cut, answer, took) = (blob.cut, &blob.answer, blob.took);
    eprintln!("trickled blob: cut={cut} after {took:?}: {}", answer.status);
    assert!(!cut && took > Duration::from_secs(2));
    assert_eq!(answer.status, 202, "{}", answer.text());
}
