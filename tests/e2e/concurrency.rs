//! Exact tag limits under concurrency, end to end (issue 4, docs/concurrency.md): a real
//! distribution 2.8.2 registry, the `registry-gateway` binary and Envoy 1.40 running the shipped
//! `envoy/envoy.yaml`, all on loopback. Every push goes through Envoy; tags are seeded straight
//! into the registry (behind the gateway's back) so each repository starts cold in the sidecar and
//! its first decision has to read the tag list.
//!
//! What is proved here, through the real stack:
//! - N concurrent pushes of distinct new tags with room for k admit exactly k, and the registry
//!   then holds exactly the limit: with a raw HTTP client (30 pushes, 20 rounds) and with real
//!   skopeo processes (10 pushes, 5 rounds); and again with a registry that answers manifest
//!   PUTs 1 s late (a relay in Envoy's `registry` cluster delays them), so that the refusals are
//!   provably decided against reservations, not stored tags (30 raw pushes × 5 rounds, 10 skopeo
//!   × 3 rounds);
//! - the concurrent decisions of a cold repository share one tag-list fetch;
//! - a push the registry refuses (missing blob) releases its slot;
//! - concurrent pushes of one new tag take one slot and all succeed;
//! - a delete through Envoy frees a slot for the very next push;
//! - a client that goes away mid-push (before the body is complete, or while the registry has not
//!   answered) leaves no slot taken.
//!
//! Two tests guard against bugs found here: a push stored by the registry whose answer is lost
//! must not let the next push overshoot the limit, and refused pushes that reserved nothing must
//! not count as released reservations.

use crate::support;
use support::Scrape;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Barrier, watch};
use tokio::task::JoinSet;

use support::{
    Envoy, Gateway, GatewayOptions, HttpReply, Layout, OCI_MANIFEST, Registry, RegistryClient,
    RegistryOptions, Stack, StackOptions, eventually, oci_image_layout, sha256_digest, skopeo_copy,
};

/// The tag limit of every repository in these tests.
const LIMIT: usize = 5;
/// Global limits only: every repository gets `LIMIT` tags.
const CONFIG: &str = "max_image_size: 100MB\ntag_count_limit: 5\n";
/// Allowed decisions are logged at debug; keep them, for the failure output and bug reports.
const GATEWAY_LOG: &str = "info,registry_gateway=debug";
/// Bound for waits on asynchronous effects (a stream ending, a metric moving). Generous: other
/// test processes share the 2 cores.
const WAIT: Duration = Duration::from_secs(15);
/// How late the "slow registry" answers manifest PUTs (a [`HoleProxy`] holds them): long enough
/// that a whole batch of concurrent pushes is decided while the admitted ones are still on their
/// way, even on a loaded machine.
const SLOW_REGISTRY: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// Set-up helpers
// ---------------------------------------------------------------------------------------------

/// Registry, sidecar (limit 5, debug decisions) and Envoy.
async fn start_stack() -> Stack {
    let mut options = StackOptions::new(CONFIG);
    options.gateway_extra_args = vec!["--log".to_owned(), GATEWAY_LOG.to_owned()];
    Stack::start_with(options).await
}

/// A plain stack ([`start_stack`]) and a small image ([`small_image`]).
async fn plain_stack(seed: u64) -> (Stack, tempfile::TempDir, Layout) {
    let stack = start_stack().await;
    let (dir, layout) = small_image(seed);
    (stack, dir, layout)
}

/// A small single-image layout (two layers) in a fresh temp dir.
fn small_image(seed: u64) -> (tempfile::TempDir, Layout) {
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = oci_image_layout(dir.path(), &[2048, 512], seed);
    (dir, layout)
}

/// Pushes `tags` of the layout's manifest straight to the registry, bypassing Envoy and the
/// sidecar (the blobs must be there already). The sidecar does not see them.
async fn seed_tags(direct: &RegistryClient, repo: &str, layout: &Layout, tags: &[String]) {
    for tag in tags {
        let reply = direct
            .put_manifest(repo, tag, OCI_MANIFEST, &layout.manifest)
            .await;
        assert_eq!(reply.status, 201, "seeding {repo}:{tag}: {}", reply.text());
    }
}

/// `s0`, `s1`, ... : the seeded tags.
fn seeds(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("s{i}")).collect()
}

/// Uploads the layout's blobs into `repo` through `client` and seeds `seeded` tags (`s0`, ...)
/// straight into the registry through `direct`.
async fn prepare_repo(
    client: &RegistryClient,
    direct: &RegistryClient,
    repo: &str,
    layout: &Layout,
    seeded: usize,
) {
    client.upload_layout_blobs(repo, layout).await;
    seed_tags(direct, repo, layout, &seeds(seeded)).await;
}

/// The tags of a repository seeded to limit minus one once `tag` joined them, sorted.
fn seeds_and(tag: &str) -> Vec<String> {
    let mut tags = seeds(LIMIT - 1);
    tags.push(tag.to_owned());
    sorted(tags)
}

/// The layout's image manifest with its first layer swapped for a blob nobody uploaded: the
/// registry refuses it (`400 MANIFEST_BLOB_UNKNOWN`).
fn missing_blob_manifest(layout: &Layout) -> Vec<u8> {
    let missing = sha256_digest(b"registry-gateway: a blob that was never uploaded");
    let mut bad: Value = serde_json::from_slice(&layout.manifest).expect("manifest JSON");
    bad["layers"][0]["digest"] = json!(missing);
    serde_json::to_vec(&bad).expect("serialises")
}

/// `n` variants of the manifest (`build-0`, ...), as racing CI builds of one tag would push, and
/// their pushes as the tag `same`.
fn same_tag_builds(manifest: &[u8], n: usize) -> (Vec<Vec<u8>>, Batch) {
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| variant(manifest, &format!("build-{i}")))
        .collect();
    let pushes = bodies
        .iter()
        .map(|b| ("same".to_owned(), b.clone()))
        .collect();
    (bodies, pushes)
}

/// PUTs the layout's manifest as `repo:tag` through `client` and asserts it was admitted (201);
/// `what` names the push in the failure, with the gateway's log.
async fn put_admitted(
    client: &RegistryClient,
    gateway: &Gateway,
    repo: &str,
    tag: &str,
    layout: &Layout,
    what: &str,
) {
    let reply = client
        .put_manifest(repo, tag, OCI_MANIFEST, &layout.manifest)
        .await;
    assert_eq!(
        reply.status,
        201,
        "{what}: {}\ngateway log:\n{}",
        reply.text(),
        gateway.log()
    );
}

/// Asserts every attempt of a batch was admitted (201); `context` prefixes the failure.
fn assert_all_admitted(attempts: &[Attempt], gateway: &Gateway, context: &str) {
    for attempt in attempts {
        assert_eq!(
            attempt.reply.status,
            201,
            "{context}{}\ngateway log:\n{}",
            attempt.reply.text(),
            gateway.log()
        );
    }
}

/// Waits (bounded) until exactly one reservation more than at `before` is held in doubt.
async fn wait_one_in_doubt(gateway: &Gateway, before: &Scrape, what: &str) {
    let admin = gateway.admin();
    eventually(WAIT, what, || async {
        let now = Scrape::take(&admin).await;
        let doubted = now.reservations("in_doubt") - before.reservations("in_doubt");
        if doubted == 1 { Ok(()) } else { Err(doubted) }
    })
    .await;
}

/// The image manifest with an annotation: same blobs, a digest of its own (so a delete by digest
/// removes only the tags pointing at this variant).
fn variant(manifest: &[u8], name: &str) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(manifest).expect("manifest JSON");
    value["annotations"] = json!({ "org.example.variant": name });
    serde_json::to_vec(&value).expect("serialises")
}

/// The registry's tags of `repo`, sorted.
async fn registry_tags(stack: &Stack, repo: &str) -> Vec<String> {
    let mut tags = stack.registry_client().list_tags(repo).await;
    tags.sort();
    tags
}

fn sorted(mut tags: Vec<String>) -> Vec<String> {
    tags.sort();
    tags
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

const TAG_LIST_FETCHES: &str = "registry_gateway_registry_tag_list_requests_total";
const RESERVATIONS: &str = "registry_gateway_tag_reservations_total";
const DECISIONS: &str = "registry_gateway_decisions_total";

/// The figures these tests read from a [`Scrape`].
trait Figures {
    fn fetches(&self) -> u64;
    fn reservations(&self, result: &str) -> u64;
    fn decisions(&self, outcome: &str, reason: &str) -> u64;
}

impl Figures for Scrape {
    fn fetches(&self) -> u64 {
        self.get(TAG_LIST_FETCHES, &[("result", "ok")])
    }

    fn reservations(&self, result: &str) -> u64 {
        self.get(RESERVATIONS, &[("result", result)])
    }

    fn decisions(&self, outcome: &str, reason: &str) -> u64 {
        self.get(
            DECISIONS,
            &[
                ("transport", "ext_proc"),
                ("outcome", outcome),
                ("reason", reason),
            ],
        )
    }
}

/// Counter deltas between two scrapes, for the assertions and the report.
#[derive(Debug, PartialEq, Eq)]
struct Delta {
    fetches: u64,
    allowed: u64,
    denied_tag_limit: u64,
    committed: u64,
    released: u64,
    /// Slots of pushes whose outcome is unknown, held until a tag-list read shows it.
    in_doubt: u64,
}

impl Delta {
    fn between(before: &Scrape, after: &Scrape) -> Delta {
        Delta {
            fetches: after.fetches() - before.fetches(),
            allowed: after.decisions("allow", "none") - before.decisions("allow", "none"),
            denied_tag_limit: after.decisions("deny", "tag_limit")
                - before.decisions("deny", "tag_limit"),
            committed: after.reservations("committed") - before.reservations("committed"),
            released: after.reservations("released") - before.reservations("released"),
            in_doubt: after.reservations("in_doubt") - before.reservations("in_doubt"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrent pushes and their checks
// ---------------------------------------------------------------------------------------------

/// The `(tag, manifest)` PUTs of a concurrent batch.
type Batch = Vec<(String, Vec<u8>)>;

/// One manifest PUT of a concurrent batch.
struct Attempt {
    tag: String,
    reply: HttpReply,
    sent: Instant,
    done: Instant,
}

/// Opens `n` keep-alive connections to Envoy (n concurrent `GET /v2/`), so that a following
/// batch of `n` PUTs does not spend its first milliseconds connecting.
async fn warm_connections(client: &RegistryClient, n: usize) {
    let barrier = Arc::new(Barrier::new(n));
    let mut set = JoinSet::new();
    for _ in 0..n {
        let client = client.clone();
        let barrier = barrier.clone();
        set.spawn(async move {
            barrier.wait().await;
            client.request("GET", "/v2/", &[], None).await.status
        });
    }
    for status in set.join_all().await {
        assert_eq!(status, 200, "GET /v2/ through Envoy");
    }
}

/// Sends every `(tag, manifest)` PUT to `repo` at once (each in its own task, released together
/// by a barrier) and returns the answers.
async fn put_concurrently(client: &RegistryClient, repo: &str, pushes: Batch) -> Vec<Attempt> {
    let barrier = Arc::new(Barrier::new(pushes.len()));
    let mut set = JoinSet::new();
    for (tag, body) in pushes {
        let client = client.clone();
        let barrier = barrier.clone();
        let repo = repo.to_owned();
        set.spawn(async move {
            barrier.wait().await;
            let sent = Instant::now();
            let reply = client.put_manifest(&repo, &tag, OCI_MANIFEST, &body).await;
            Attempt {
                tag,
                reply,
                sent,
                done: Instant::now(),
            }
        });
    }
    set.join_all().await
}

/// The most requests of the batch that were outstanding at one instant (client side).
fn peak_in_flight(attempts: &[Attempt]) -> usize {
    peak(attempts.iter().map(|a| (a.sent, a.done)))
}

/// The most `(start, end)` spans open at one instant; an end and a start at the same instant do
/// not overlap.
fn peak<T: Ord>(spans: impl Iterator<Item = (T, T)>) -> usize {
    let mut events: Vec<(T, i32)> = spans
        .flat_map(|(start, end)| [(start, 1), (end, -1)])
        .collect();
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in events {
        now += step;
        most = most.max(now);
    }
    usize::try_from(most).expect("non-negative")
}

/// A manifest PUT as Envoy's access log shows it.
struct EnvoyPut {
    /// Milliseconds of the day at which Envoy received it.
    start: u64,
    /// Until the last byte of the answer, in milliseconds.
    duration: u64,
    status: u16,
}

/// Manifest PUTs of `repo` in Envoy's access log, from lines like
/// `[2026-01-01T10:00:00.123Z] "PUT /v2/<repo>/manifests/<ref> HTTP/1.1" 201 - via_upstream ... 12ms`.
fn envoy_manifest_puts(access_log: &str, repo: &str) -> Vec<EnvoyPut> {
    let needle = format!("\"PUT /v2/{repo}/manifests/");
    access_log
        .lines()
        .filter(|line| line.contains(&needle))
        .filter_map(|line| {
            let stamp = line.strip_prefix('[')?.split(']').next()?;
            let time = stamp.split('T').nth(1)?.trim_end_matches('Z');
            let mut parts = time.split(':');
            let hours: u64 = parts.next()?.parse().ok()?;
            let minutes: u64 = parts.next()?.parse().ok()?;
            let seconds: f64 = parts.next()?.parse().ok()?;
            let start = (hours * 3600 + minutes * 60) * 1000 + (seconds * 1000.0).round() as u64;
            let duration = line.rsplit(' ').next()?.strip_suffix("ms")?.parse().ok()?;
            let status = line
                .split('"')
                .nth(2)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some(EnvoyPut {
                start,
                duration,
                status,
            })
        })
        .collect()
}

/// A refusal of `repo:tag` for the tag limit: 403, OCI `DENIED`, the sidecar's message, and a
/// count of exactly the limit (never more: confirmed tags plus reservations never exceed it).
fn assert_tag_limit_denial(reply: &HttpReply, repo: &str, tag: &str) {
    assert_eq!(reply.status, 403, "{repo}:{tag}: {}", reply.text());
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{repo}:{tag}"
    );
    let body = reply.json();
    let error = &body["errors"][0];
    assert_eq!(error["code"], "DENIED", "{body}");
    let message = error["message"].as_str().unwrap_or_default();
    let expected = format!(
        "push to {repo}:{tag} refused: repository {repo} already has {LIMIT} tags and the limit"
    );
    assert!(message.starts_with(&expected), "{repo}:{tag}: {message}");
    assert!(
        message.contains(&format!(
            "is {LIMIT} tags, so the new tag {tag} cannot be created"
        )),
        "{message}"
    );
    assert_eq!(error["detail"]["tag_count"], LIMIT, "{body}");
    assert_eq!(error["detail"]["tag_count_limit"], LIMIT, "{body}");
    assert_eq!(error["detail"]["new_tags"], json!([tag]), "{body}");
}

/// Splits a batch into admitted (201) and refused (403, checked to be tag-limit denials) tags;
/// any other answer fails the test.
fn split_outcomes(attempts: &[Attempt], repo: &str, gateway: &Gateway) -> (Vec<String>, usize) {
    let mut admitted = Vec::new();
    let mut refused = 0;
    for attempt in attempts {
        match attempt.reply.status {
            201 => admitted.push(attempt.tag.clone()),
            403 => {
                assert_tag_limit_denial(&attempt.reply, repo, &attempt.tag);
                refused += 1;
            }
            other => panic!(
                "{repo}:{} answered {other}: {}\ngateway log:\n{}",
                attempt.tag,
                attempt.reply.text(),
                gateway.log()
            ),
        }
    }
    (sorted(admitted), refused)
}

// ---------------------------------------------------------------------------------------------
// 1. Distinct new tags, concurrently, near the limit
// ---------------------------------------------------------------------------------------------

/// Concurrent raw PUTs per round.
const RAW_PUSHES: usize = 30;

/// One round of [`RAW_PUSHES`] concurrent manifest PUTs of distinct new tags into `repo` (seeded
/// with 3 tags straight into the registry) through `envoy`: exactly 2 are admitted (201), 28
/// refused with the tag-limit message, the registry lists exactly 5 tags, and the 30 decisions
/// shared one tag-list fetch. `delay` is how much later than usual the registry answers manifest
/// PUTs (none for a plain stack). Returns the round's report line.
async fn raw_round(stack: &RoundStack, layout: &Layout, repo: &str) -> String {
    let (envoy, gateway, registry) = stack.parts();
    let client = envoy.client();
    let admin = gateway.admin();
    prepare_repo(&client, &registry.client(), repo, layout, SEEDED).await;
    warm_connections(&client, RAW_PUSHES).await;

    let before = Scrape::take(&admin).await;
    let pushes = (0..RAW_PUSHES)
        .map(|i| (format!("n{i:02}"), layout.manifest.clone()))
        .collect();
    let attempts = put_concurrently(&client, repo, pushes).await;
    let after = Scrape::take(&admin).await;

    // Before anything else lists the tags: the registry saw exactly one tag-list request, the
    // sidecar's.
    let tag_lists = registry.count_requests("GET", &format!("/v2/{repo}/tags/list"));
    let (admitted, refused) = split_outcomes(&attempts, repo, gateway);
    assert_eq!(refused, RAW_PUSHES - (LIMIT - SEEDED), "{repo}");
    // 30 decisions on a repository the sidecar had never seen: one fetch, shared.
    let listed = assert_round_filled(stack, repo, &admitted, RAW_PUSHES, &before, &after).await;
    assert_eq!(listed.len(), LIMIT, "{repo}");
    // One client check (the same anonymous client for all 30) and one full read, both shared.
    assert_eq!(tag_lists, 2, "{repo}: tag-list requests at the registry");
    let peak = peak_in_flight(&attempts);
    assert!(
        peak >= 2,
        "{repo}: the PUTs did not overlap at all (peak {peak}); nothing concurrent was tested"
    );
    let first = attempts.iter().map(|a| a.sent).min().expect("attempts");
    let last = attempts.iter().map(|a| a.done).max().expect("attempts");
    let mut line = format!(
        "admitted {admitted:?}, refused {refused}, registry {} tags, peak in flight {peak}/{RAW_PUSHES}, batch {} ms",
        listed.len(),
        (last - first).as_millis()
    );
    if let Some(delay) = stack.delay() {
        // A refusal answered before `first admitted PUT sent + delay` was decided before either
        // admitted tag could be committed (the registry had not even received them): the count
        // of 5 it was refused at held two reservations.
        let first_admitted = attempts
            .iter()
            .filter(|a| a.reply.status == 201)
            .map(|a| a.sent)
            .min()
            .expect("two admitted");
        let pending = attempts
            .iter()
            .filter(|a| a.reply.status == 403 && a.done < first_admitted + delay)
            .count();
        assert!(
            pending >= 1,
            "{repo}: no refusal was decided while the admitted pushes were pending; nothing \
             concurrent was tested"
        );
        line.push_str(&format!(
            ", {pending} refusals decided while both admitted pushes held only reservations"
        ));
    }
    line
}

/// Limit 5, repository at 3 tags, 30 concurrent PUTs of distinct new tags through Envoy from a
/// raw HTTP client: exactly 2 are admitted (201), 28 refused with the tag-limit message, the
/// registry lists exactly 5 tags, and the 30 decisions shared one tag-list fetch. 20 rounds, a
/// fresh repository each, one stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_concurrent_new_tags_at_three_of_five_admit_exactly_two_raw_http() {
    run_rounds(Pusher::RawHttp, 20, None, 1, "conc/r").await;
}

/// Who pushes in a round: [`raw_round`] or [`skopeo_round`].
#[derive(Clone, Copy)]
enum Pusher {
    RawHttp,
    Skopeo,
}

/// `rounds` rounds of `pusher` on one stack (with a registry answering manifest PUTs `delay` late,
/// if any), a fresh repository `<prefix><round>` each; prints one line per round and the time
/// all rounds took (shown with `--nocapture`).
async fn run_rounds(
    pusher: Pusher,
    rounds: usize,
    delay: Option<Duration>,
    seed: u64,
    prefix: &str,
) {
    let started = Instant::now();
    let stack = RoundStack::start(delay).await;
    let (_dir, layout) = small_image(seed);
    let mut report = Vec::new();
    for round in 0..rounds {
        let repo = format!("{prefix}{round}");
        let line = match pusher {
            Pusher::RawHttp => raw_round(&stack, &layout, &repo).await,
            Pusher::Skopeo => skopeo_round(&stack, &layout, &repo).await,
        };
        report.push(format!("round {round:2}: {line}"));
    }
    eprintln!(
        "{}\n{} rounds in {:.1} s",
        report.join("\n"),
        report.len(),
        started.elapsed().as_secs_f64()
    );
}

/// The stack a batch of rounds runs on: the plain one, or one whose registry answers manifest
/// PUTs late (a [`HoleProxy`] holds them).
enum RoundStack {
    Plain(Stack),
    Slow(ProxiedStack, Duration),
}

impl RoundStack {
    async fn start(delay: Option<Duration>) -> RoundStack {
        match delay {
            None => RoundStack::Plain(start_stack().await),
            Some(delay) => RoundStack::Slow(
                ProxiedStack::start("/manifests/", Hole::Delay(delay)).await,
                delay,
            ),
        }
    }

    fn parts(&self) -> (&Envoy, &Gateway, &Registry) {
        match self {
            RoundStack::Plain(s) => (&s.envoy, &s.gateway, &s.registry),
            RoundStack::Slow(s, _) => (&s.envoy, &s.gateway, &s.registry),
        }
    }

    /// How much later than usual the registry answers manifest PUTs.
    fn delay(&self) -> Option<Duration> {
        match self {
            RoundStack::Plain(_) => None,
            RoundStack::Slow(_, delay) => Some(*delay),
        }
    }
}

/// Tags seeded into each round's repository, behind the sidecar's back.
const SEEDED: usize = 3;

/// The checks every round shares, after `pushes` concurrent pushes of distinct new tags into a
/// repository seeded with [`SEEDED`] tags: exactly the room left was `admitted`, the registry
/// lists the seeds and those, and the decisions shared one tag-list fetch. Returns the
/// registry's tags.
async fn assert_round_filled(
    stack: &RoundStack,
    repo: &str,
    admitted: &[String],
    pushes: usize,
    before: &Scrape,
    after: &Scrape,
) -> Vec<String> {
    let (_, gateway, registry) = stack.parts();
    let listed = sorted(registry.client().list_tags(repo).await);
    let mut expected = seeds(SEEDED);
    expected.extend(admitted.iter().cloned());
    assert_eq!(
        admitted.len(),
        LIMIT - SEEDED,
        "{repo}: admitted {admitted:?}, registry lists {listed:?}\ngateway log:\n{}",
        gateway.log()
    );
    assert_eq!(listed, sorted(expected), "{repo}: registry tags");
    assert_eq!(
        Delta::between(before, after),
        Delta {
            fetches: 1,
            allowed: 2,
            denied_tag_limit: (pushes - 2) as u64,
            committed: 2,
            released: 0,
            in_doubt: 0,
        },
        "{repo}"
    );
    listed
}

/// The same 30 raw PUTs against a registry that answers manifest PUTs 1 s late (a relay delays
/// them): the two admitted pushes sit at the registry, holding reservations only, while the 28
/// others are decided, so every refusal is counted against reservations rather than stored
/// tags. 5 rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_concurrent_new_tags_into_a_slow_registry_admit_exactly_two_raw_http() {
    run_rounds(Pusher::RawHttp, 5, Some(SLOW_REGISTRY), 10, "conc/slowraw").await;
}

/// One round of [`SKOPEO_COPIES`] concurrent `skopeo copy` processes of distinct new tags into
/// `repo` (seeded with 3 tags straight into the registry) through `envoy`: exactly 2 succeed, the
/// others fail with the sidecar's `denied:` message, the registry lists exactly 5 tags, and the
/// sidecar read the tag list once.
async fn skopeo_round(stack: &RoundStack, layout: &Layout, repo: &str) -> String {
    let (envoy, gateway, registry) = stack.parts();
    let admin = gateway.admin();
    // The blobs exist, so each skopeo checks them (HEAD) and then PUTs its manifest.
    prepare_repo(&envoy.client(), &registry.client(), repo, layout, SEEDED).await;

    let before = Scrape::take(&admin).await;
    let started = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..SKOPEO_COPIES {
        let tag = format!("t{i}");
        let target = format!("{}/{repo}:{tag}", envoy.host());
        let dir = layout.dir.clone();
        set.spawn(async move { (tag, skopeo_copy(&dir, &target, &[]).await) });
    }
    let outputs = set.join_all().await;
    let time = started.elapsed();
    let after = Scrape::take(&admin).await;

    let mut admitted = Vec::new();
    for (tag, output) in &outputs {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            admitted.push(tag.clone());
        } else {
            // skopeo prints the OCI error of a 4xx: `denied: <the sidecar's message>`.
            let expected = format!(
                "denied: push to {repo}:{tag} refused: repository {repo} already has {LIMIT} tags"
            );
            assert!(
                stderr.contains(&expected),
                "{repo}: skopeo {tag} failed otherwise than by the tag limit: {stderr}\ngateway log:\n{}",
                gateway.log()
            );
        }
    }
    let admitted = sorted(admitted);
    assert_round_filled(stack, repo, &admitted, SKOPEO_COPIES, &before, &after).await;

    // How concurrent skopeo's manifest PUTs really were, from Envoy's access log. One PUT per
    // process: skopeo does not retry a refusal.
    let puts = eventually(WAIT, "Envoy logging the round's manifest PUTs", || async {
        let puts = envoy_manifest_puts(&envoy.access_log(), repo);
        if puts.len() >= SKOPEO_COPIES {
            Ok(puts)
        } else {
            Err(puts.len())
        }
    })
    .await;
    assert_eq!(puts.len(), SKOPEO_COPIES, "{repo}: manifest PUTs at Envoy");
    let refused_while_pending = match stack.delay() {
        None => 0,
        Some(delay) => {
            let first_admitted = puts
                .iter()
                .filter(|p| p.status == 201)
                .map(|p| p.start)
                .min()
                .expect("two admitted");
            let deadline = first_admitted + u64::try_from(delay.as_millis()).expect("ms");
            // 2 ms for the log's millisecond rounding.
            puts.iter()
                .filter(|d| d.status == 403 && d.start + d.duration + 2 < deadline)
                .count()
        }
    };
    let peak = peak(puts.iter().map(|p| (p.start, p.start + p.duration)));
    let mut line = format!(
        "admitted {admitted:?}, {SKOPEO_COPIES} skopeo processes in {} ms, at most {peak} manifest PUTs in flight at Envoy",
        time.as_millis()
    );
    if stack.delay().is_some() {
        assert!(
            refused_while_pending >= 1,
            "{repo}: no refusal was decided before the admitted manifests could reach the \
             registry ({} ms, peak {peak}); nothing concurrent was tested",
            time.as_millis()
        );
        line.push_str(&format!(
            ", {refused_while_pending} refusals decided while both admitted pushes held only reservations"
        ));
    }
    line
}

/// Concurrent skopeo processes per round. 10, not 30: each is a whole Go process, and the
/// machine has 2 cores shared with other tests.
const SKOPEO_COPIES: usize = 10;

/// The same with the real client: limit 5, repository at 3 tags, 10 concurrent `skopeo copy`
/// processes of distinct new tags through Envoy, 5 rounds (50 processes in all). Exactly 2 copies
/// succeed each round, the 8 others fail with the sidecar's `denied:` message, and the registry
/// lists exactly 5 tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_skopeo_copies_at_three_of_five_admit_exactly_two() {
    run_rounds(Pusher::Skopeo, 5, None, 2, "conc/s").await;
}

/// skopeo's manifest PUTs against a fast local registry barely overlap (the processes start a few
/// milliseconds apart and each PUT takes a few). Here the registry takes 1 s longer to answer
/// each manifest PUT (a relay delays them, as a registry on slow object storage would), so every
/// admitted push holds its slot as a reservation for a second while the other skopeo processes
/// are decided. Same figures: 10 processes, repository at 3 of 5, exactly 2 admitted, 3 rounds;
/// and in every round some refusals were decided before either admitted manifest could have
/// reached the registry, i.e. against two reservations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_skopeo_copies_into_a_slow_registry_admit_exactly_two() {
    run_rounds(Pusher::Skopeo, 3, Some(SLOW_REGISTRY), 9, "conc/slow").await;
}

// ---------------------------------------------------------------------------------------------
// 2. A push the registry refuses releases its slot
// ---------------------------------------------------------------------------------------------

/// At limit minus one, a manifest referencing a blob that was never uploaded is admitted by the
/// sidecar (it fits) but refused by distribution (`400 MANIFEST_BLOB_UNKNOWN`): its reservation is
/// released on that answer, so the next good push of a new tag is admitted at once. Three bad
/// pushes in a row leave nothing behind either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_the_registry_refuses_releases_its_slot() {
    let (stack, _dir, layout) = plain_stack(3).await;
    let client = stack.client();
    let direct = stack.registry_client();
    let admin = stack.gateway.admin();
    let repo = "conc/refused";
    prepare_repo(&client, &direct, repo, &layout, LIMIT - 1).await;
    let bad = missing_blob_manifest(&layout);

    for i in 0..3 {
        let tag = format!("bad{i}");
        let before = Scrape::take(&admin).await;
        let reply = client.put_manifest(repo, &tag, OCI_MANIFEST, &bad).await;
        let after = Scrape::take(&admin).await;
        assert_eq!(reply.status, 400, "{tag}: {}", reply.text());
        assert_eq!(
            reply.json()["errors"][0]["code"],
            "MANIFEST_BLOB_UNKNOWN",
            "{}",
            reply.text()
        );
        // The registry itself answered: the sidecar admitted the push and Envoy forwarded it.
        let at_registry: Vec<u16> = stack
            .registry
            .requests()
            .into_iter()
            .filter(|r| r.method == "PUT" && r.path() == format!("/v2/{repo}/manifests/{tag}"))
            .map(|r| r.status)
            .collect();
        assert_eq!(at_registry, vec![400], "{tag} reached the registry once");
        let delta = Delta::between(&before, &after);
        assert_eq!(
            delta,
            Delta {
                fetches: u64::from(i == 0),
                allowed: 1,
                denied_tag_limit: 0,
                committed: 0,
                released: 1,
                in_doubt: 0,
            },
            "{tag}"
        );
    }

    // No waiting: the slot is free the moment the registry's 400 passed through Envoy.
    let what = "the next good push must be admitted at once";
    put_admitted(&client, &stack.gateway, repo, "good", &layout, what).await;
    assert_eq!(registry_tags(&stack, repo).await, seeds_and("good"));

    // And the count is exact again: at the limit, a further new tag is refused.
    let extra = client
        .put_manifest(repo, "extra", OCI_MANIFEST, &layout.manifest)
        .await;
    assert_tag_limit_denial(&extra, repo, "extra");
}

// ---------------------------------------------------------------------------------------------
// 3. Concurrent pushes of the same new tag share one slot
// ---------------------------------------------------------------------------------------------

/// At limit minus one, 20 concurrent PUTs of the same new tag (20 different manifests, as racing
/// CI builds would push) all succeed, and the tag count rises by exactly one. 3 rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_pushes_of_one_new_tag_at_limit_minus_one_all_succeed() {
    const ROUNDS: usize = 3;
    const PUSHES: usize = 20;
    let (stack, _dir, layout) = plain_stack(4).await;
    let client = stack.client();
    let direct = stack.registry_client();
    let admin = stack.gateway.admin();
    let mut report = Vec::new();

    for round in 0..ROUNDS {
        let repo = format!("conc/same{round}");
        prepare_repo(&client, &direct, &repo, &layout, LIMIT - 1).await;
        warm_connections(&client, PUSHES).await;

        let before = Scrape::take(&admin).await;
        let (bodies, pushes) = same_tag_builds(&layout.manifest, PUSHES);
        let attempts = put_concurrently(&client, &repo, pushes).await;
        let after = Scrape::take(&admin).await;

        let context = format!("round {round}: a concurrent push of the same new tag was refused: ");
        assert_all_admitted(&attempts, &stack.gateway, &context);
        assert_eq!(
            registry_tags(&stack, &repo).await,
            seeds_and("same"),
            "round {round}: the count rose by exactly one"
        );
        // The tag names one of the 20 manifests (the registry's last write wins).
        let pulled = direct.get_manifest(&repo, "same").await;
        assert_eq!(pulled.status, 200);
        assert!(bodies.contains(&pulled.body), "round {round}");

        let delta = Delta::between(&before, &after);
        assert_eq!(delta.fetches, 1, "round {round}: {delta:?}");
        assert_eq!(delta.allowed, PUSHES as u64, "round {round}: {delta:?}");
        assert_eq!(delta.released, 0, "round {round}: {delta:?}");
        // Pushes decided before the first 201 hold a share of the slot and commit it; later
        // ones find the tag confirmed and reserve nothing.
        assert!(
            (1..=PUSHES as u64).contains(&delta.committed),
            "round {round}: {delta:?}"
        );

        // At the limit now: moving an existing tag is fine, a new tag is refused.
        let moved = client
            .put_manifest(&repo, "s0", OCI_MANIFEST, &bodies[0])
            .await;
        assert_eq!(moved.status, 201, "round {round}: {}", moved.text());
        let other = client
            .put_manifest(&repo, "other", OCI_MANIFEST, &layout.manifest)
            .await;
        assert_tag_limit_denial(&other, &repo, "other");
        report.push(format!(
            "round {round}: {PUSHES}/{PUSHES} admitted, peak in flight {}, committed {} released {}",
            peak_in_flight(&attempts),
            delta.committed,
            delta.released
        ));
    }
    eprintln!("{}", report.join("\n"));
}

/// The same at a registry that answers manifest PUTs 1 s late: all 20 pushes of the one new tag
/// are decided and pending together, and while they wait a push of another new tag is refused at
/// a count of exactly 5 (4 tags + one shared slot, not 4 + 20). Then all 20 succeed and the
/// count has risen by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_pending_pushes_of_one_new_tag_hold_one_slot() {
    const PUSHES: usize = 20;
    let stack = ProxiedStack::start("/manifests/", Hole::Delay(SLOW_REGISTRY)).await;
    let (_dir, layout) = small_image(11);
    let client = stack.envoy.client();
    let admin = stack.gateway.admin();
    let repo = "conc/samepending";
    prepare_repo(&client, &stack.registry.client(), repo, &layout, LIMIT - 1).await;
    warm_connections(&client, PUSHES).await;

    let before = Scrape::take(&admin).await;
    let (_, pushes) = same_tag_builds(&layout.manifest, PUSHES);
    let batch = {
        let client = client.clone();
        tokio::spawn(async move { put_concurrently(&client, repo, pushes).await })
    };
    eventually(WAIT, "all 20 pushes admitted", || async {
        let delta = Delta::between(&before, &Scrape::take(&admin).await);
        if delta.allowed == PUSHES as u64 {
            Ok(())
        } else {
            Err(delta)
        }
    })
    .await;
    let other = client
        .put_manifest(repo, "other", OCI_MANIFEST, &layout.manifest)
        .await;
    let during = Delta::between(&before, &Scrape::take(&admin).await);
    assert_eq!(
        during.committed, 0,
        "the probe must run while all 20 are still pending at the registry: {during:?}"
    );
    assert_tag_limit_denial(&other, repo, "other");

    let attempts = batch.await.expect("batch task");
    assert_all_admitted(&attempts, &stack.gateway, "");
    assert_eq!(stack.tags(repo).await, seeds_and("same"));
    let delta = Delta::between(&before, &Scrape::take(&admin).await);
    assert_eq!(
        delta,
        Delta {
            fetches: 1,
            allowed: PUSHES as u64,
            denied_tag_limit: 1,
            // Every one of the 20 held a share of the slot and committed it.
            committed: PUSHES as u64,
            released: 0,
            in_doubt: 0,
        }
    );
    eprintln!(
        "20 pending pushes of one tag: probe refused at tag_count {}, then {} x 201, peak in flight {}",
        other.json()["errors"][0]["detail"]["tag_count"],
        attempts.len(),
        peak_in_flight(&attempts)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. A delete frees a slot at once
// ---------------------------------------------------------------------------------------------

/// Fill a repository to the limit through Envoy (each tag its own manifest), then delete one
/// manifest by digest through Envoy (distribution 2.8 deletes by digest and removes the tags
/// pointing at it): a new tag is admitted immediately, with no cache expiry in between (the tag
/// cache TTL is 5 minutes). The sidecar re-reads the tag list once for it (a delete by digest
/// removes tags it cannot name). A delete by tag, which distribution 2.8 refuses, frees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_through_envoy_frees_a_slot_at_once() {
    let (stack, _dir, layout) = plain_stack(5).await;
    let client = stack.client();
    let repo = "conc/delete";
    client.upload_layout_blobs(repo, &layout).await;

    let mut digests = Vec::new();
    for i in 0..LIMIT {
        let body = variant(&layout.manifest, &format!("t{i}"));
        let reply = client
            .put_manifest(repo, &format!("t{i}"), OCI_MANIFEST, &body)
            .await;
        assert_eq!(reply.status, 201, "t{i}: {}", reply.text());
        digests.push(sha256_digest(&body));
    }
    let full = client
        .put_manifest(repo, "t5", OCI_MANIFEST, &layout.manifest)
        .await;
    assert_tag_limit_denial(&full, repo, "t5");

    // Delete by tag: distribution 2.8 does not support it.
    let by_tag = client.delete_manifest(repo, "t4").await;
    assert_eq!(
        by_tag.status,
        400,
        "distribution 2.8 refuses a delete by tag: {}",
        by_tag.text()
    );
    assert_eq!(by_tag.json()["errors"][0]["code"], "DIGEST_INVALID");
    assert_eq!(registry_tags(&stack, repo).await.len(), LIMIT);
    let still_full = client
        .put_manifest(repo, "t5", OCI_MANIFEST, &layout.manifest)
        .await;
    assert_tag_limit_denial(&still_full, repo, "t5");

    // Delete t2's manifest by digest, then push a new tag right away.
    let admin = stack.gateway.admin();
    let before = Scrape::take(&admin).await;
    let deleted = client.delete_manifest(repo, &digests[2]).await;
    assert_eq!(deleted.status, 202, "{}", deleted.text());
    let pushed = client
        .put_manifest(repo, "t5", OCI_MANIFEST, &layout.manifest)
        .await;
    let after = Scrape::take(&admin).await;
    assert_eq!(
        pushed.status,
        201,
        "a new tag right after the delete: {}\ngateway log:\n{}",
        pushed.text(),
        stack.gateway.log()
    );
    let delta = Delta::between(&before, &after);
    assert_eq!(
        delta.fetches, 1,
        "the delete by digest made the next decision read the tag list: {delta:?}"
    );
    assert_eq!(
        registry_tags(&stack, repo).await,
        ["t0", "t1", "t3", "t4", "t5"]
    );
    // Each delete leaves its decision line at info, with the registry's answer.
    let log = stack.gateway.log();
    for (reference, status) in [("t4", 400), (digests[2].as_str(), 202)] {
        let wanted = format!("reference={reference} status={status}");
        assert!(
            log.lines().any(|l| l.contains(" INFO ")
                && l.contains("decision")
                && l.contains(&format!("repository={repo}"))
                && l.contains(&wanted)
                && l.contains("reason=\"delete\"")),
            "a decision line for the delete of {reference}:\n{log}"
        );
    }

    // Exact again: the next new tag is refused.
    let over = client
        .put_manifest(repo, "t6", OCI_MANIFEST, &layout.manifest)
        .await;
    assert_tag_limit_denial(&over, repo, "t6");
}

// ---------------------------------------------------------------------------------------------
// 5. A client that goes away mid-push leaves no slot taken
// ---------------------------------------------------------------------------------------------

/// What [`HoleProxy`] does to the one request it watches for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hole {
    /// The request never reaches the registry and is never answered: a hung upstream.
    Swallow,
    /// The request reaches the registry (which stores the manifest); its answer is dropped.
    DropAnswer,
    /// Every matching request is held this long, then passed on: a slow registry.
    Delay(Duration),
}

/// A TCP relay standing in for the registry in Envoy's `registry` cluster. Everything passes
/// through unchanged except requests whose bytes contain `marker` (a request line such as
/// `PUT /v2/conc/hang/manifests/stuck `), which get the [`Hole`] treatment. Envoy speaks
/// HTTP/1.1 upstream and never pipelines, so everything after the marker on that connection
/// belongs to that request and its answer.
struct HoleProxy {
    addr: SocketAddr,
    /// Counts uses of the hole: requests swallowed, answers dropped, or requests delayed.
    holed: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl HoleProxy {
    async fn start(upstream: SocketAddr, marker: &str, hole: Hole) -> HoleProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let (holed_tx, holed) = watch::channel(0usize);
        let holed_tx = Arc::new(holed_tx);
        let marker = marker.as_bytes().to_vec();
        let task = tokio::spawn(async move {
            // Dropped (aborting every relay) when the proxy is dropped.
            let mut relays = JoinSet::new();
            while let Ok((downstream, _)) = listener.accept().await {
                relays.spawn(relay(
                    downstream,
                    upstream,
                    marker.clone(),
                    hole,
                    holed_tx.clone(),
                ));
                while relays.try_join_next().is_some() {}
            }
        });
        HoleProxy { addr, holed, task }
    }

    /// Waits (bounded) until the hole was used `n` times in all.
    async fn wait_holed(&self, n: usize) {
        let mut holed = self.holed.clone();
        tokio::time::timeout(WAIT, holed.wait_for(|&k| k >= n))
            .await
            .unwrap_or_else(|_| {
                panic!("the watched request did not reach the proxy within {WAIT:?}")
            })
            .expect("proxy running");
    }
}

impl Drop for HoleProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    downstream: TcpStream,
    upstream: SocketAddr,
    marker: Vec<u8>,
    hole: Hole,
    holed: Arc<watch::Sender<usize>>,
) {
    let Ok(upstream) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut down_read, mut down_write) = downstream.into_split();
    let (mut up_read, mut up_write) = upstream.into_split();
    let hit = AtomicBool::new(false);
    let requests = async {
        let mut buf = vec![0u8; 64 * 1024];
        // The last bytes seen, so a marker split across two reads is still found.
        let mut window: Vec<u8> = Vec::new();
        loop {
            let n = match down_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !hit.load(Ordering::SeqCst) {
                window.extend_from_slice(&buf[..n]);
                if window.windows(marker.len()).any(|w| w == marker.as_slice()) {
                    match hole {
                        Hole::Swallow => {
                            hit.store(true, Ordering::SeqCst);
                            holed.send_modify(|k| *k += 1);
                        }
                        Hole::DropAnswer => hit.store(true, Ordering::SeqCst),
                        Hole::Delay(delay) => {
                            tokio::time::sleep(delay).await;
                            holed.send_modify(|k| *k += 1);
                            window.clear();
                        }
                    }
                }
                let keep = marker.len();
                if window.len() > keep {
                    window.drain(..window.len() - keep);
                }
            }
            if hole == Hole::Swallow && hit.load(Ordering::SeqCst) {
                continue;
            }
            if up_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = up_write.shutdown().await;
    };
    let answers = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut dropped = false;
        loop {
            let n = match up_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if hit.load(Ordering::SeqCst) {
                if !dropped {
                    dropped = true;
                    holed.send_modify(|k| *k += 1);
                }
                continue;
            }
            if down_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = down_write.shutdown().await;
    };
    tokio::join!(requests, answers);
}

/// Registry ← [`HoleProxy`] ← Envoy (shipped config), the sidecar listing tags from the registry
/// directly. Field order is drop order: Envoy first.
struct ProxiedStack {
    envoy: Envoy,
    gateway: Gateway,
    proxy: HoleProxy,
    registry: Registry,
    _config: tempfile::TempDir,
}

impl ProxiedStack {
    async fn start(marker: &str, hole: Hole) -> ProxiedStack {
        let config = tempfile::tempdir().expect("temp dir");
        let config_path = config.path().join("config.yaml");
        std::fs::write(&config_path, CONFIG).expect("temp dir is writable");
        let registry = Registry::start(RegistryOptions::default()).await;
        let proxy = HoleProxy::start(registry.addr(), marker, hole).await;
        let mut options = GatewayOptions::new(&config_path, &registry.url());
        options.extra_args = vec!["--log".to_owned(), GATEWAY_LOG.to_owned()];
        let gateway = Gateway::start(options).await;
        let envoy = Envoy::start_between(proxy.addr, gateway.grpc_addr()).await;
        ProxiedStack {
            envoy,
            gateway,
            proxy,
            registry,
            _config: config,
        }
    }

    /// [`ProxiedStack::start`] and a small image ([`small_image`]).
    async fn with_image(
        marker: &str,
        hole: Hole,
        seed: u64,
    ) -> (ProxiedStack, tempfile::TempDir, Layout) {
        let stack = ProxiedStack::start(marker, hole).await;
        let (dir, layout) = small_image(seed);
        (stack, dir, layout)
    }

    /// Prepares `repo` at limit minus one ([`prepare_repo`], blobs through Envoy) and returns a
    /// scrape of the sidecar's metrics taken then.
    async fn at_limit_minus_one(&self, repo: &str, layout: &Layout) -> Scrape {
        let (client, direct) = (self.envoy.client(), self.registry.client());
        prepare_repo(&client, &direct, repo, layout, LIMIT - 1).await;
        Scrape::take(&self.gateway.admin()).await
    }

    /// Sends the whole manifest PUT of `repo:tag` to Envoy and waits until the proxy's hole was
    /// used for it; the request stays open until the stream is dropped.
    async fn put_into_hole(&self, repo: &str, tag: &str, layout: &Layout) -> TcpStream {
        let manifest = &layout.manifest;
        let stream = start_put(self.envoy.addr(), repo, tag, manifest, manifest.len()).await;
        self.proxy.wait_holed(1).await;
        stream
    }

    async fn tags(&self, repo: &str) -> Vec<String> {
        sorted(self.registry.client().list_tags(repo).await)
    }
}

/// Opens a connection to Envoy and writes a manifest PUT whose head announces the whole `body`,
/// followed by its first `send` bytes. The request stays open until the stream is dropped.
async fn start_put(addr: SocketAddr, repo: &str, tag: &str, body: &[u8], send: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect to Envoy");
    let head = format!(
        "PUT /v2/{repo}/manifests/{tag} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {OCI_MANIFEST}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("write request head");
    stream
        .write_all(&body[..send])
        .await
        .expect("write request body");
    stream.flush().await.expect("flush");
    stream
}

async fn envoy_stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(name).await.unwrap_or(0)
}

/// Two ways a client goes away mid-push, each at limit minus one:
/// - it sends the headers and half the manifest, then disconnects: Envoy opened the ext_proc
///   stream (request headers) but never delivered a body, so nothing was decided or reserved;
/// - it sends the whole manifest, the sidecar admits it (reserving the last slot, which a
///   concurrent push then cannot get), the registry never answers (the proxy swallows the
///   request), and the client gives up: the ext_proc stream ends without response headers and
///   the reservation is released.
///
/// Either way the next push of a new tag is admitted at once, and the repository ends at exactly
/// the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_mid_push_leaves_no_slot_taken() {
    let (stack, _dir, layout) =
        ProxiedStack::with_image("PUT /v2/conc/hang/manifests/stuck ", Hole::Swallow, 6).await;
    let client = stack.envoy.client();
    let admin = stack.gateway.admin();

    // --- Headers and half a body, then gone. ---
    let repo = "conc/partial";
    let before = stack.at_limit_minus_one(repo, &layout).await;
    let started = envoy_stat(&stack.envoy, "http.registry.ext_proc.streams_started").await;
    let closed = envoy_stat(&stack.envoy, "http.registry.ext_proc.streams_closed").await;
    let half = layout.manifest.len() / 2;
    let partial = start_put(stack.envoy.addr(), repo, "partial", &layout.manifest, half).await;
    eventually(WAIT, "Envoy opening the ext_proc stream", || async {
        let now = envoy_stat(&stack.envoy, "http.registry.ext_proc.streams_started").await;
        if now > started { Ok(now) } else { Err(now) }
    })
    .await;
    drop(partial);
    eventually(
        WAIT,
        "the ext_proc stream of the abandoned PUT ending",
        || async {
            let now = envoy_stat(&stack.envoy, "http.registry.ext_proc.streams_closed").await;
            if now > closed { Ok(now) } else { Err(now) }
        },
    )
    .await;
    let what = "the push after an abandoned half-sent one";
    put_admitted(&client, &stack.gateway, repo, "next", &layout, what).await;
    let after = Scrape::take(&admin).await;
    let delta = Delta::between(&before, &after);
    // Only `next` was decided: the half-sent manifest never reached a decision.
    assert_eq!(delta.allowed, 1, "{delta:?}");
    assert_eq!(delta.released, 0, "{delta:?}");
    assert_eq!(stack.tags(repo).await, seeds_and("next"));

    // --- Whole manifest admitted, the registry never answers, the client gives up. ---
    let repo = "conc/hang";
    let before = stack.at_limit_minus_one(repo, &layout).await;
    // Admitted by the sidecar and forwarded by Envoy: it reaches the (silent) upstream.
    let stuck = stack.put_into_hole(repo, "stuck", &layout).await;
    let held = Scrape::take(&admin).await;
    assert_eq!(Delta::between(&before, &held).allowed, 1);
    // Its reservation holds the last slot while it hangs.
    let probe = client
        .put_manifest(repo, "probe", OCI_MANIFEST, &layout.manifest)
        .await;
    assert_tag_limit_denial(&probe, repo, "probe");

    let gave_up = Instant::now();
    drop(stuck);
    // The registry may still be storing what the client sent: the slot is held in doubt...
    let what = "the hung push's reservation being held in doubt";
    wait_one_in_doubt(&stack.gateway, &before, what).await;
    let release_time = gave_up.elapsed();
    // ...until a tag-list read made a grace period later shows it never landed.
    tokio::time::sleep(registry_gateway::check::DOUBT_GRACE).await;
    let what = "the push after an abandoned hung one";
    put_admitted(&client, &stack.gateway, repo, "next", &layout, what).await;
    assert_eq!(
        stack.tags(repo).await,
        seeds_and("next"),
        "`stuck` never stored"
    );
    let over = client
        .put_manifest(repo, "over", OCI_MANIFEST, &layout.manifest)
        .await;
    assert_tag_limit_denial(&over, repo, "over");
    let after = Scrape::take(&admin).await;
    let delta = Delta::between(&before, &after);
    assert_eq!(delta.in_doubt, 1, "{delta:?}");
    assert_eq!(delta.committed, 1, "{delta:?}");

    let access = eventually(
        WAIT,
        "Envoy's access log line of the abandoned PUT",
        || async {
            let log = stack.envoy.access_log();
            match log
                .lines()
                .find(|l| l.contains(&format!("PUT /v2/{repo}/manifests/stuck ")))
            {
                Some(line) => Ok(line.to_owned()),
                None => Err(()),
            }
        },
    )
    .await;
    eprintln!(
        "abandoned push held in doubt {} ms after the client went away\nEnvoy: {access}",
        release_time.as_millis()
    );
}

/// A push whose registry answer is lost: the registry stored the manifest (201), but the answer
/// never reached Envoy before the client gave up (here the proxy drops it; in production an
/// Envoy route timeout on a slow registry, or a client that disconnects at the wrong moment).
/// The ext_proc stream ends without response headers, so the sidecar releases the slot, yet the
/// tag exists. The next new tag must still be refused: the registry is at the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_answer_is_lost_does_not_let_the_next_push_overshoot() {
    let (stack, _dir, layout) =
        ProxiedStack::with_image("PUT /v2/conc/lost/manifests/lost ", Hole::DropAnswer, 7).await;
    let client = stack.envoy.client();
    let repo = "conc/lost";
    let before = stack.at_limit_minus_one(repo, &layout).await;

    let lost = stack.put_into_hole(repo, "lost", &layout).await;
    assert_eq!(
        stack.tags(repo).await,
        seeds_and("lost"),
        "the registry stored the push whose answer was lost"
    );
    drop(lost);
    wait_one_in_doubt(
        &stack.gateway,
        &before,
        "the stream of the lost answer ending",
    )
    .await;
    // Held in doubt, then read: refused before and after the grace period alike.
    let during = client
        .put_manifest(repo, "during", OCI_MANIFEST, &layout.manifest)
        .await;
    assert_tag_limit_denial(&during, repo, "during");
    tokio::time::sleep(registry_gateway::check::DOUBT_GRACE).await;

    let after = client
        .put_manifest(repo, "after", OCI_MANIFEST, &layout.manifest)
        .await;
    let tags = stack.tags(repo).await;
    assert!(
        tags.len() <= LIMIT,
        "overshoot: the registry holds {} tags {tags:?} with a limit of {LIMIT}; PUT {repo}:after \
         answered {} {}\ngateway log:\n{}",
        tags.len(),
        after.status,
        after.text(),
        stack.gateway.log()
    );
    assert_tag_limit_denial(&after, repo, "after");
}

/// `registry_gateway_tag_reservations_total{result="released"}` counts slots given back. A push
/// that reserved no slot (a manifest pushed by digest, or an existing tag moved) and that the
/// registry refuses gives nothing back, so it must not count a release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_push_that_reserved_nothing_counts_no_release() {
    let (stack, _dir, layout) = plain_stack(8).await;
    let client = stack.client();
    let admin = stack.gateway.admin();
    let repo = "conc/metrics";
    client.upload_layout_blobs(repo, &layout).await;
    let pushed = client
        .put_manifest(repo, "a", OCI_MANIFEST, &layout.manifest)
        .await;
    assert_eq!(pushed.status, 201, "{}", pushed.text());

    let bad = missing_blob_manifest(&layout);
    let bad_digest = sha256_digest(&bad);

    let before = Scrape::take(&admin).await;
    // By digest: no tag, nothing to reserve.
    let by_digest = client
        .put_manifest(repo, &bad_digest, OCI_MANIFEST, &bad)
        .await;
    // An existing tag: it moves, nothing to reserve.
    let existing = client.put_manifest(repo, "a", OCI_MANIFEST, &bad).await;
    let after = Scrape::take(&admin).await;
    for reply in [&by_digest, &existing] {
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert_eq!(reply.json()["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN");
    }
    let delta = Delta::between(&before, &after);
    assert_eq!(delta.allowed, 2, "{delta:?}");
    assert_eq!(
        delta.released,
        0,
        "no slot was reserved, none released: {delta:?}\ngateway log:\n{}",
        stack.gateway.log()
    );
}
