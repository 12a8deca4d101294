//! Several sidecar replicas sharing their tag books in a real Redis (Debian's `redis-server`,
//! standalone and as a 3-master Cluster, on loopback ephemeral ports), each behind its own
//! real Envoy, as pods of one Deployment are. Concurrent pushes spread over every replica must
//! admit exactly the room left, whatever replicas or Redis do meanwhile.

use crate::support;

use std::time::{Duration, Instant};

use support::{
    Envoy, Gateway, GatewayOptions, Redis, Registry, RegistryClient, RegistryOptions, Scrape,
    redis_cluster,
};

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const LIMIT: usize = 5;
const CONFIG: &str = "max_image_size: 1MB\ntag_count_limit: 5\n";

/// A registry and `replicas` pairs of sidecar + Envoy sharing `state`.
struct Pods {
    registry: Registry,
    pairs: Vec<(Gateway, Envoy)>,
    _config: tempfile::TempDir,
}

impl Pods {
    async fn start(replicas: usize, state: &str, extra: &[&str]) -> Pods {
        let registry = Registry::start(RegistryOptions::default()).await;
        let config = tempfile::tempdir().expect("temp dir");
        let config_path = config.path().join("config.yaml");
        std::fs::write(&config_path, CONFIG).expect("write config");
        let mut pairs = Vec::new();
        for _ in 0..replicas {
            let mut options = GatewayOptions::new(&config_path, &registry.url());
            options.extra_args = ["--state", state]
                .iter()
                .chain(extra)
                .map(|s| s.to_string())
                .collect();
            let gateway = Gateway::start(options).await;
            let envoy = Envoy::start_between(registry.addr(), gateway.grpc_addr()).await;
            pairs.push((gateway, envoy));
        }
        Pods {
            registry,
            pairs,
            _config: config,
        }
    }

    fn clients(&self) -> Vec<RegistryClient> {
        self.pairs.iter().map(|(_, e)| e.client()).collect()
    }
}

/// A small image's blobs in `repo`, and its manifest with a marker.
async fn image(client: &RegistryClient, repo: &str) -> impl Fn(&str) -> Vec<u8> + use<> {
    let config = client.upload_blob(repo, b"{}").await;
    let layer = client.upload_blob(repo, b"shared layer").await;
    move |marker: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":12}}],"annotations":{{"m":"{marker}"}}}}"#
        )
        .into_bytes()
    }
}

/// PUTs `body` as `repo:tag` through `client`; it must be stored (201).
async fn assert_stored(client: &RegistryClient, repo: &str, tag: &str, body: &[u8]) {
    let reply = client.put_manifest(repo, tag, OCI, body).await;
    assert_eq!(reply.status, 201, "{repo}:{tag}: {}", reply.text());
}

/// `n` concurrent pushes of new tags into `repo`, spread round-robin over `clients`; returns
/// the statuses.
async fn burst(clients: &[RegistryClient], repo: &str, n: usize, round: usize) -> Vec<u16> {
    let manifest = image(&clients[0], repo).await;
    let mut tasks = Vec::new();
    for i in 0..n {
        let client = clients[i % clients.len()].clone();
        let body = manifest(&format!("{round}-{i}"));
        let repo = repo.to_owned();
        tasks.push(tokio::spawn(async move {
            client
                .send(
                    "PUT",
                    &format!("/v2/{repo}/manifests/t{round}-{i}"),
                    &[("content-type", OCI)],
                    Some(body),
                )
                .await
                .map_or(0, |r| r.status)
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("push task"));
    }
    statuses
}

async fn assert_exact(pods: &Pods, repo: &str, statuses: &[u16], room: usize) {
    let admitted = statuses.iter().filter(|s| **s == 201).count();
    let tags = pods.registry.client().list_tags(repo).await;
    assert!(
        tags.len() <= LIMIT,
        "{repo}: overshoot, the registry holds {tags:?}"
    );
    assert_eq!(
        admitted,
        room.min(statuses.len()),
        "{repo}: statuses {statuses:?}, tags {tags:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 403),
        "{repo}: an honest push failed: {statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_one_redis_admit_exactly_the_room_left_in_every_round() {
    let redis = Redis::start(false).await;
    let pods = Pods::start(3, &redis.url(), &[]).await;
    let clients = pods.clients();
    for round in 0..6 {
        let repo = format!("shared/r{round}");
        // Some tags straight to the registry first: only its tag list tells the replicas.
        let seeded = round % 4;
        let direct = pods.registry.client();
        let manifest = image(&direct, &repo).await;
        for s in 0..seeded {
            let reply = direct
                .put_manifest(&repo, &format!("seed{s}"), OCI, &manifest(&format!("s{s}")))
                .await;
            assert_eq!(reply.status, 201);
        }
        let statuses = burst(&clients, &repo, 12, round).await;
        assert_exact(&pods, &repo, &statuses, LIMIT - seeded).await;
    }
    // One tag-list read per repository, not one per replica: six rounds, six full reads
    // (client checks ask with `n=1`).
    let full_reads = pods
        .registry
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "GET" && r.path().ends_with("/tags/list") && !r.target.contains("n=1")
        })
        .count();
    // Six by the replicas, six by this test's own checks.
    assert_eq!(full_reads, 12, "tag-list reads at the registry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_round_never_lets_the_others_overshoot() {
    let redis = Redis::start(false).await;
    let mut pods = Pods::start(3, &redis.url(), &["--state-lease", "3s"]).await;
    let clients = pods.clients();
    let repo = "shared/killed";
    let pushes = tokio::spawn({
        let clients = clients.clone();
        async move { burst(&clients, repo, 15, 0).await }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    pods.pairs[0].0.kill();
    let statuses = pushes.await.expect("pushes");
    let tags = pods.registry.client().list_tags(repo).await;
    assert!(tags.len() <= LIMIT, "overshoot: {tags:?}");
    let admitted = statuses.iter().filter(|s| **s == 201).count();
    assert!(admitted <= LIMIT, "{statuses:?}");
    // Whatever the dead replica held runs out with its lease; the room left is then taken,
    // exactly, through the survivors.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let room = LIMIT - tags.len();
    let statuses = burst(&clients[1..], repo, 8, 1).await;
    let admitted = statuses.iter().filter(|s| **s == 201).count();
    assert_eq!(admitted, room.min(8), "after the lease: {statuses:?}");
    assert_eq!(
        pods.registry.client().list_tags(repo).await.len(),
        LIMIT.min(tags.len() + 8)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_empty_rebuilds_counts_from_the_registry() {
    let mut redis = Redis::start(false).await;
    let pods = Pods::start(2, &redis.url(), &[]).await;
    let clients = pods.clients();
    let repo = "shared/restart";
    let statuses = burst(&clients, repo, 3, 0).await;
    assert_exact(&pods, repo, &statuses, LIMIT).await;
    redis.restart_empty().await;
    // The store lost every count: the next decisions read the registry's list again (3 tags),
    // so exactly 2 more fit.
    let deadline = Instant::now() + Duration::from_secs(10);
    let statuses = loop {
        let statuses = burst(&clients, repo, 1, 9).await;
        if statuses != [503] || Instant::now() > deadline {
            break statuses;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(statuses, [201], "the first push after the restart");
    let manifest = image(&clients[0], repo).await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let client = clients[i % 2].clone();
        let body = manifest(&format!("after-{i}"));
        tasks.push(tokio::spawn(async move {
            client
                .put_manifest(repo, &format!("after{i}"), OCI, &body)
                .await
                .status
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.expect("task") == 201);
    }
    assert_eq!(admitted, 1, "room after the restart");
    assert_eq!(pods.registry.client().list_tags(repo).await.len(), LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_stopped_counts_answer_503_promptly_and_sizes_are_still_judged() {
    let mut redis = Redis::start(false).await;
    let pods = Pods::start(1, &redis.url(), &[]).await;
    let client = pods.clients().remove(0);
    let repo = "shared/stopped";
    let manifest = image(&client, repo).await;
    assert_stored(&client, repo, "v1", &manifest("1")).await;
    redis.stop().await;
    let started = Instant::now();
    let reply = client.put_manifest(repo, "v2", OCI, &manifest("2")).await;
    let elapsed = started.elapsed();
    reply.assert_answer(503, "shared state store");
    assert!(
        elapsed < Duration::from_secs(4),
        "answered after {elapsed:?}"
    );
    // A push by digest needs no count: still judged on its size alone.
    let big = String::from_utf8(manifest("3"))
        .expect("utf8")
        .replace(r#""size":12"#, r#""size":2097152"#);
    let reply = client
        .put_manifest(
            repo,
            &support::sha256_digest(big.as_bytes()),
            OCI,
            big.as_bytes(),
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(pods.registry.client().list_tags(repo).await, ["v1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_master_cluster_admits_exactly_the_room_left() {
    let (_nodes, url) = redis_cluster(3).await;
    let pods = Pods::start(3, &url, &[]).await;
    let clients = pods.clients();
    for round in 0..4 {
        let repo = format!("cluster/r{round}/app");
        let statuses = burst(&clients, &repo, 12, round).await;
        assert_exact(&pods, &repo, &statuses, LIMIT).await;
    }
}

/// A rolling restart, one pod at a time, while pushes and pulls go on: each pod leaves the
/// rotation (as its endpoint leaves the Service), its sidecar gets SIGTERM and finishes what it
/// holds, and a new pod joins. No pull fails, no honest push fails, and exactly the room left is
/// admitted over the whole rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_fails_no_pull_and_admits_exactly_the_room_left() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, RwLock};

    let redis = Redis::start(false).await;
    let mut pods = Pods::start(3, &redis.url(), &[]).await;
    let repo = "shared/rollout";
    let direct = pods.registry.client();
    let manifest = image(&direct, repo).await;
    assert_stored(&direct, repo, "base", &manifest("base")).await;

    let ready: Arc<RwLock<Vec<(usize, RegistryClient)>>> = Arc::new(RwLock::new(
        pods.clients().into_iter().enumerate().collect(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (ready, stop) = (ready.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut pulls, mut pushes) = (Vec::new(), Vec::new());
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let client = {
                    let ready = ready.read().expect("rotation");
                    ready[i % ready.len()].1.clone()
                };
                pulls.push(client.get_manifest(repo, "base").await.status);
                let body = manifest(&format!("push-{i}"));
                pushes.push(
                    client
                        .put_manifest(repo, &format!("p{i}"), OCI, &body)
                        .await
                        .status,
                );
                i += 1;
            }
            (pulls, pushes)
        })
    };
    for pod in 0..pods.pairs.len() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        ready.write().expect("rotation").retain(|(p, _)| *p != pod);
        // The pod's preStop pause: requests already routed to it finish; then SIGTERM drains.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (gateway, _envoy) = &mut pods.pairs[pod];
        let status = gateway.stop().await;
        assert!(
            status.success(),
            "pod {pod}: the sidecar exited {status:?} on SIGTERM"
        );
        let options = gateway.options().clone();
        let gateway = Gateway::start(options).await;
        let envoy = Envoy::start_between(pods.registry.addr(), gateway.grpc_addr()).await;
        let client = envoy.client();
        pods.pairs[pod] = (gateway, envoy);
        ready.write().expect("rotation").push((pod, client));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (pulls, pushes) = load.await.expect("load");
    assert!(pulls.iter().all(|s| *s == 200), "a pull failed: {pulls:?}");
    assert!(
        pushes.iter().all(|s| *s == 201 || *s == 403),
        "an honest push failed: {pushes:?}"
    );
    let admitted = pushes.iter().filter(|s| **s == 201).count();
    assert_eq!(admitted, (LIMIT - 1).min(pushes.len()), "{pushes:?}");
    assert_eq!(
        pods.registry.client().list_tags(repo).await.len(),
        LIMIT.min(1 + pushes.len())
    );
}

/// With a warm cache a decision is one store call (the `decide` script). A push of a new tag
/// settles its lease with one more, off the decision's path; a push that re-writes a counted tag
/// has nothing to settle and sends nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_decision_is_one_store_round_trip() {
    let redis = Redis::start(false).await;
    let pods = Pods::start(1, &redis.url(), &[]).await;
    let client = pods.clients().remove(0);
    let repo = "shared/warm";
    let manifest = image(&client, repo).await;
    assert_stored(&client, repo, "cold", &manifest("c")).await;
    let calls = |scrape: &Scrape, op: &str| {
        scrape.get("registry_gateway_state_store_calls_total", &[("op", op)])
    };
    let admin = pods.pairs[0].0.admin();
    let before = Scrape::take(&admin).await;
    for tag in ["w1", "w2", "w3", "cold"] {
        assert_stored(&client, repo, tag, &manifest(tag)).await;
    }
    // Settlements are sent without waiting; let them land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = Scrape::take(&admin).await;
    assert_eq!(
        calls(&after, "decide") - calls(&before, "decide"),
        4,
        "{}",
        after.0
    );
    assert_eq!(
        calls(&after, "begin") - calls(&before, "begin"),
        0,
        "no tag-list read"
    );
    assert_eq!(calls(&after, "complete") - calls(&before, "complete"), 0);
    assert_eq!(
        calls(&after, "settle") - calls(&before, "settle"),
        3,
        "w1, w2 and w3 commit their leases; cold was counted already"
    );
    // That decision saw `cold` counted: the next push of it is decided on its request line,
    // while Envoy gathers the manifest, still in one store call.
    assert_eq!(
        early_decisions(&after, "used"),
        0,
        "no tag was known counted yet"
    );
    assert_stored(&client, repo, "cold", &manifest("cold again")).await;
    let last = Scrape::take(&admin).await;
    assert_eq!(early_decisions(&last, "used"), 1, "{}", last.0);
    assert_eq!(calls(&last, "decide") - calls(&after, "decide"), 1);
    assert_eq!(calls(&last, "settle") - calls(&after, "settle"), 0);
}

/// A push decided on its request line takes no slot, so it must create no tag: when this
/// replica's note that a tag is counted is out of date (another replica saw it deleted), the
/// store says so and the push is decided on its manifest, against the room really left. Here
/// the manifest comes 300 ms after the request line, and the last slot is taken through the
/// other replica meanwhile: a decision kept from the request line would have seen room for v1
/// and held no slot for it, and the repository would end with six tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tag_this_replica_wrongly_believes_counted_is_still_held_to_the_limit() {
    let redis = Redis::start(false).await;
    let pods = Pods::start(2, &redis.url(), &[]).await;
    let clients = pods.clients();
    let (a, b) = (&clients[0], &clients[1]);
    let repo = "shared/stale-hint";
    let manifest = image(a, repo).await;
    let v1 = manifest("v1");
    // Once the first push's commit has landed, the second finds v1 counted: replica A notes it.
    assert_stored(a, repo, "v1", &v1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_stored(a, repo, "v1", &v1).await;
    // Deleted through B (by digest: distribution deletes no tag by name); B's next decision
    // reads the list again. Room is left for one more tag.
    let digest = support::sha256_digest(&v1);
    let deleted = b.delete_manifest(repo, &digest).await;
    assert_eq!(deleted.status, 202, "{}", deleted.text());
    for i in 0..LIMIT - 1 {
        let tag = format!("f{i}");
        assert_stored(b, repo, &tag, &manifest(&tag)).await;
    }
    let admin = pods.pairs[0].0.admin();
    let before = Scrape::take(&admin).await;
    let slow = tokio::spawn(put_with_late_body(
        pods.pairs[0].1.addr(),
        format!("/v2/{repo}/manifests/v1"),
        v1.clone(),
        Duration::from_millis(300),
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_stored(b, repo, "last", &manifest("last")).await;
    let status = slow.await.expect("slow push");
    let after = Scrape::take(&admin).await;
    assert_eq!(status, 403, "v1 would be a sixth tag");
    assert_eq!(
        early_decisions(&after, "later") - early_decisions(&before, "later"),
        1,
        "{}",
        after.0
    );
    assert_eq!(
        early_decisions(&after, "used"),
        early_decisions(&before, "used")
    );
    let tags = pods.registry.client().list_tags(repo).await;
    assert_eq!(tags.len(), LIMIT, "{tags:?}");
}

/// What the store said on the request line stands only for the manifest the sidecar then
/// judges in full: one over the size limit is refused for its size, one that comes more than
/// 2 s after its request line is decided as it arrives, and a push under another policy than
/// the one in force on its request line is decided again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_early_decision_stands_only_for_the_manifest_it_was_started_for() {
    let redis = Redis::start(false).await;
    let pods = Pods::start(1, &redis.url(), &[]).await;
    let client = pods.clients().remove(0);
    let repo = "shared/early";
    let manifest = image(&client, repo).await;
    assert_stored(&client, repo, "v1", &manifest("a")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_stored(&client, repo, "v1", &manifest("b")).await;
    let admin = pods.pairs[0].0.admin();
    let s0 = Scrape::take(&admin).await;
    // 2 MB of layers against a 1 MB limit.
    let big = String::from_utf8(manifest("c"))
        .expect("utf-8")
        .replace(r#""size":12}"#, r#""size":2000000}"#);
    let reply = client.put_manifest(repo, "v1", OCI, big.as_bytes()).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(reply.text().contains("size"), "{}", reply.text());
    let s1 = Scrape::take(&admin).await;
    assert_eq!(
        early_decisions(&s1, "unused") - early_decisions(&s0, "unused"),
        1,
        "{}",
        s1.0
    );
    let addr = pods.pairs[0].1.addr();
    let target = format!("/v2/{repo}/manifests/v1");
    let late = Duration::from_millis(2300);
    let status = put_with_late_body(addr, target.clone(), manifest("d"), late).await;
    assert_eq!(status, 201);
    let s2 = Scrape::take(&admin).await;
    assert_eq!(
        early_decisions(&s2, "late") - early_decisions(&s1, "late"),
        1,
        "{}",
        s2.0
    );
    let status = put_with_late_body(addr, target.clone(), manifest("e"), Duration::ZERO).await;
    assert_eq!(status, 201);
    let s3 = Scrape::take(&admin).await;
    assert_eq!(
        early_decisions(&s3, "used") - early_decisions(&s2, "used"),
        1,
        "{}",
        s3.0
    );
    // The policy reloads between the request line and the manifest.
    // Past 2 s, too, a reload is what voids it.
    let wait = Duration::from_millis(3000);
    let slow = tokio::spawn(put_with_late_body(addr, target, manifest("f"), wait));
    let config = pods._config.path().join("config.yaml");
    std::fs::write(
        &config,
        CONFIG.replace("tag_count_limit: 5", "tag_count_limit: 6"),
    )
    .expect("rewrite config");
    assert_eq!(slow.await.expect("slow push"), 201);
    let s4 = Scrape::take(&admin).await;
    let version = |s: &Scrape| s.get("registry_gateway_config_version", &[]);
    assert_eq!(version(&s4), 2, "the reload landed before the manifest");
    assert_eq!(
        early_decisions(&s4, "reloaded") - early_decisions(&s3, "reloaded"),
        1,
        "{}",
        s4.0
    );
    assert_eq!(pods.registry.client().list_tags(repo).await, ["v1"]);
}

/// The sidecar's early decisions with `result`, in `scrape`.
fn early_decisions(scrape: &Scrape, result: &str) -> u64 {
    let labels = [("result", result)];
    scrape.get("registry_gateway_early_decisions_total", &labels)
}

/// A manifest `PUT` whose body follows its request line after `delay`; the answer's status.
async fn put_with_late_body(
    addr: std::net::SocketAddr,
    target: String,
    body: Vec<u8>,
    delay: Duration,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "PUT {target} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {OCI}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.expect("write head");
    tokio::time::sleep(delay).await;
    sock.write_all(&body).await.expect("write body");
    let mut reply = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        while !reply.windows(2).any(|w| w == b"\r\n") {
            let n = sock.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed before an answer");
            reply.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer within 10 s");
    let line = String::from_utf8_lossy(&reply).into_owned();
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"))
}

/// The store's own guard for the settlement a re-write skips: a delete seen while a push
/// re-writing the same tag may still land keeps the tag counted, and the tag list is read again
/// once that push's lease would have run out. Without it the count could miss a tag the
/// registry ends up holding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_racing_a_rewrite_keeps_the_tag_counted_until_the_list_is_read_again() {
    use registry_gateway::metrics::Metrics;
    use registry_gateway::policy::TagFilter;
    use registry_gateway::shared::{
        Begin, Decided, RepoKeys, Settle, SharedBooks, SharedOptions, StateUrl, Take,
    };

    let redis = Redis::start(false).await;
    let url = StateUrl::parse(&redis.url(), None, None).expect("state url");
    let options = SharedOptions {
        lease: Duration::from_secs(30),
        timeout: Duration::from_secs(2),
    };
    let books = SharedBooks::connect(&url, options, std::sync::Arc::new(Metrics::new()))
        .await
        .expect("connect")
        .expect("a store");
    let keys = RepoKeys::new("race/app", &TagFilter::default());
    let ttl = Duration::from_secs(300);
    let hold = Duration::from_millis(600);
    let tags = |names: &[&str]| names.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    // `Take::Nothing`: a probe that leaves no lease of its own to run out.
    let decide = |tag: &'static str, take: Take| {
        let (books, keys) = (books.clone(), keys.clone());
        async move {
            let lease = books.lease_id();
            books
                .decide(&keys, &tags(&[tag]), 10, ttl, hold, &lease, take)
                .await
                .expect("decide")
        }
    };
    // The list is cold: read it as a replica would. A read that fails gives the lock up at once,
    // so the next decision reads instead of waiting it out.
    let Decided::Cold(reads) = decide("x", Take::Slots).await else {
        panic!("a new repository must be read first")
    };
    let long = Duration::from_secs(60);
    assert_eq!(
        books.begin_read(&keys, long, &reads).await.expect("begin"),
        Begin::Read
    );
    assert_eq!(
        books.begin_read(&keys, long, &reads).await.expect("begin"),
        Begin::Wait,
        "one read at a time"
    );
    books.abandon_read(&keys).await.expect("abandon");
    assert_eq!(
        books.begin_read(&keys, hold, &reads).await.expect("begin"),
        Begin::Read,
        "a failed read holds no lock"
    );
    let started = SharedBooks::now_ms();
    assert!(
        books
            .complete_read(&keys, started, ttl, &tags(&["x", "y"]))
            .await
            .expect("complete")
    );
    // A push re-writing x reserves nothing: x is counted.
    let Decided::Tally { allowed, tally } = decide("x", Take::Slots).await else {
        panic!("warm")
    };
    assert!(allowed);
    assert_eq!((tally.count, tally.reserved.len()), (2, 0));
    // A delete of x and of y lands before that push does.
    books
        .settle(&keys, Settle::Remove, "", &[], &tags(&["x", "y"]))
        .await
        .expect("remove");
    let Decided::Tally { tally, .. } = decide("z", Take::Nothing).await else {
        panic!("still warm while the re-write may land")
    };
    assert_eq!(
        tally.count, 1,
        "y is gone; x stays counted while its re-write may still land"
    );
    // A tag-list read in that time, showing neither, keeps x counted all the same.
    books
        .settle(&keys, Settle::Stale, "", &[], &[])
        .await
        .expect("stale");
    let Decided::Cold(reads) = decide("z", Take::Nothing).await else {
        panic!("a stale list must be read again")
    };
    assert_eq!(
        books.begin_read(&keys, hold, &reads).await.expect("begin"),
        Begin::Read
    );
    let started = SharedBooks::now_ms();
    assert!(
        books
            .complete_read(&keys, started, ttl, &[])
            .await
            .expect("complete")
    );
    let Decided::Tally { tally, .. } = decide("z", Take::Nothing).await else {
        panic!("warm after the read")
    };
    assert_eq!(tally.count, 1, "x stays counted across the read");
    // Once the re-write's lease would have run out, the list is read again.
    tokio::time::sleep(hold + Duration::from_millis(200)).await;
    assert!(
        matches!(decide("z", Take::Nothing).await, Decided::Cold(_)),
        "the tag list must be read again after the guarded delete"
    );
}
