//! Faults with real processes: the sidecar SIGKILLed during concurrent pushes, Envoy restarted
//! while pushes go on, a thousand configuration writes in ten seconds, a misbehaving registry,
//! and the registry credentials rotated during pushes. Each prints one `fault:` line with its
//! figures, the rows of docs/RELIABILITY.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support;

use support::{RegistryClient, Scrape, Stack, one_layer_image as image};

const OCI: &str = support::OCI_MANIFEST;

fn config(room: u64) -> String {
    format!(
        "max_image_size: 1GB\ntag_count_limit: 1000\nrules:\n  - path: ^faults/.*\n    limit: {{max_image_size: 1GB, tag_count_limit: {room}}}\n"
    )
}

/// Pushes every `(tag, body)` at once and returns each status (0: no HTTP answer).
async fn push_all(client: &RegistryClient, repo: &str, pushes: Vec<(String, Vec<u8>)>) -> Vec<u16> {
    let tasks: Vec<_> = pushes
        .into_iter()
        .map(|(tag, body)| {
            let client = client.clone();
            let target = format!("/v2/{repo}/manifests/{tag}");
            tokio::spawn(async move {
                let headers = [("content-type", OCI)];
                match client.send("PUT", &target, &headers, Some(body)).await {
                    Ok(reply) => reply.status,
                    Err(_) => 0,
                }
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("push task"));
    }
    statuses
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

async fn manifests(
    client: &RegistryClient,
    repo: &str,
    prefix: &str,
    n: usize,
) -> Vec<(String, Vec<u8>)> {
    // One upload of the blobs; each manifest differs by its marker only.
    let base = String::from_utf8(image(client, repo, 10, "MARKER").await).expect("utf-8");
    (0..n)
        .map(|i| {
            let tag = format!("{prefix}{i}");
            let body = base.replace("MARKER", &tag).into_bytes();
            (tag, body)
        })
        .collect()
}

#[tokio::test]
async fn a_sidecar_killed_during_concurrent_pushes_leaves_the_count_exact_after_restart() {
    const ROOM: usize = 20;
    const ROUND: usize = 30;
    let mut stack = Stack::start(&config(ROOM as u64)).await;
    let client = stack.client();
    let repo = "faults/killed";
    let first = manifests(&client, repo, "a", ROUND).await;
    let second = manifests(&client, repo, "b", ROUND).await;

    let round = tokio::spawn({
        let client = client.clone();
        async move { push_all(&client, repo, first).await }
    });
    // Killed once the round is landing: some pushes stored, others in flight.
    let registry = stack.registry_client();
    support::eventually(Duration::from_secs(10), "a first push stored", || async {
        let stored = registry.list_tags(repo).await.len();
        if stored >= 3 { Ok(()) } else { Err(stored) }
    })
    .await;
    stack.gateway.kill();
    let during = round.await.expect("round");
    // Nothing the sidecar did not admit reaches the registry: Envoy fails closed.
    assert!(
        during.iter().all(|s| [201, 403, 500, 503, 0].contains(s)),
        "{during:?}"
    );
    let stored_before = stack.registry_client().list_tags(repo).await.len();
    assert!(
        stored_before <= ROOM,
        "{stored_before} tags stored, room for {ROOM}"
    );

    let restarted = Instant::now();
    stack.restart_gateway().await;
    let after = push_all(&client, repo, second).await;
    let recovery = restarted.elapsed();
    let tags = stack.registry_client().list_tags(repo).await;
    assert_eq!(
        tags.len(),
        ROOM,
        "exactly the room, after the restart: {tags:?}"
    );
    // A first-round push admitted before the kill can land after its client was answered
    // (seen: 18 tags when every client had its answer, 20 a moment later; Envoy answers the
    // client when the stream to the dead sidecar breaks, the registry may still be storing).
    // So the first round's share is read from the final tags, not from `stored_before`.
    let (first_round, second_round) = tags.iter().partition::<Vec<_>, _>(|t| t.starts_with('a'));
    assert_eq!(count(&after, 201), second_round.len(), "{after:?}");
    assert_eq!(count(&after, 201), ROOM - first_round.len(), "{after:?}");
    assert_eq!(count(&after, 403), ROUND - count(&after, 201), "{after:?}");
    eprintln!(
        "fault: sidecar SIGKILLed mid-round: {} pushes during ({} stored at their answers, {} in the end, statuses {during:?}); after restart {} of {ROUND} admitted, {} tags stored for room {ROOM}; recovery {:.2}s",
        during.len(),
        stored_before,
        first_round.len(),
        count(&after, 201),
        tags.len(),
        recovery.as_secs_f64()
    );
}

#[tokio::test]
async fn envoy_restarted_while_pushes_go_on_admits_exactly_the_room() {
    const ROOM: usize = 30;
    let mut stack = Stack::start(&config(ROOM as u64)).await;
    let repo = "faults/envoy";
    let bodies = manifests(&stack.registry_client(), repo, "t", 2000).await;
    let front = Arc::new(std::sync::Mutex::new(stack.client()));
    let pushing = Arc::new(AtomicBool::new(true));
    let pushed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pusher = tokio::spawn({
        let (front, pushing, pushed) = (front.clone(), pushing.clone(), pushed.clone());
        async move {
            let mut statuses = Vec::new();
            for push in bodies {
                if !pushing.load(Ordering::Relaxed) {
                    break;
                }
                let client = front.lock().expect("lock").clone();
                statuses.push(push_all(&client, repo, vec![push]).await[0]);
                pushed.fetch_add(1, Ordering::Relaxed);
            }
            statuses
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted = Instant::now();
    let next = stack.start_envoy("envoy/envoy.yaml").await;
    *front.lock().expect("lock") = next.client();
    // The old Envoy goes away with pushes still arriving at it.
    stack.envoy = next;
    let at_restart = pushed.load(Ordering::Relaxed);
    support::eventually(Duration::from_secs(60), "pushes past the room", || async {
        let n = pushed.load(Ordering::Relaxed);
        if n >= (ROOM + 10).max(at_restart + 20) {
            Ok(())
        } else {
            Err(n)
        }
    })
    .await;
    pushing.store(false, Ordering::Relaxed);
    let statuses = pusher.await.expect("pusher");
    let recovery = restarted.elapsed();
    assert!(
        statuses.iter().all(|s| [201, 403, 0].contains(s)),
        "only stored, refused, or no answer from the Envoy going away: {statuses:?}"
    );
    let tags = stack.registry_client().list_tags(repo).await;
    assert_eq!(tags.len(), ROOM, "{tags:?}; statuses {statuses:?}");
    // A push cut off with the old Envoy may still have been stored: its client never heard.
    let (stored, unanswered) = (count(&statuses, 201), count(&statuses, 0));
    assert!(
        stored <= ROOM && stored + unanswered >= ROOM,
        "{statuses:?}"
    );
    assert!(
        statuses.len() > ROOM + 5,
        "pushes went on past the room: {statuses:?}"
    );
    let pulled = stack.client().get_manifest(repo, &tags[0]).await;
    assert_eq!(pulled.status, 200, "pulls through the new Envoy");
    eprintln!(
        "fault: Envoy replaced while pushes go on: {} pushes ({} stored, {} refused, {} unanswered); {} tags stored for room {ROOM}; {:.2}s from the restart to the end",
        statuses.len(),
        count(&statuses, 201),
        count(&statuses, 403),
        count(&statuses, 0),
        tags.len(),
        recovery.as_secs_f64()
    );
}

/// The hash `/status` shows for `text`, as `check-config` computes it.
fn config_hash(text: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text).expect("write");
    let out = std::process::Command::new(support::gateway_bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("check-config runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
        .split("(sha256 ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no hash in {stdout}"))
        .to_owned()
}

#[tokio::test]
async fn a_thousand_config_writes_in_ten_seconds_leave_the_last_valid_one_in_force() {
    let stack = Stack::start(&config(500)).await;
    let client = stack.client();
    let repo = "faults/reload";
    let writing = Arc::new(AtomicBool::new(true));
    let pusher = tokio::spawn({
        let client = client.clone();
        let writing = writing.clone();
        async move {
            let mut statuses = Vec::new();
            let mut n = 0;
            while writing.load(Ordering::Relaxed) {
                let tag = format!("p{n}");
                let body = image(&client, repo, 10, &tag).await;
                statuses.push(client.put_manifest(repo, &tag, OCI, &body).await.status);
                n += 1;
            }
            statuses
        }
    });
    let started = Instant::now();
    let mut last_valid = String::new();
    for i in 0..1000u64 {
        let text = if i % 10 == 4 {
            format!("tag_count_limit: {i}\nmax_image_size: 10XB\n")
        } else {
            config(500 + i % 50)
        };
        if i % 10 != 4 {
            last_valid = text.clone();
        }
        stack.write_config(&text);
        tokio::time::sleep_until((started + Duration::from_millis(10) * (i as u32 + 1)).into())
            .await;
    }
    let wrote_for = started.elapsed();
    writing.store(false, Ordering::Relaxed);
    let statuses = pusher.await.expect("pusher");
    assert!(!statuses.is_empty());
    assert!(
        statuses.iter().all(|s| *s == 201),
        "no decision failed while the configuration changed: {statuses:?}"
    );
    let want = config_hash(&last_valid);
    let admin = stack.gateway.admin();
    let status = support::eventually(
        Duration::from_secs(10),
        "the last valid configuration in force",
        || async {
            let status = admin.request("GET", "/status", &[], None).await.json();
            let hash = status["config"]["hash"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if hash == want {
                Ok(status)
            } else {
                Err(status)
            }
        },
    )
    .await;
    // The invalid writes were reported, and the last (valid) write cleared the error.
    assert!(status["last_reload_error"].is_null(), "{status}");
    // How many invalid versions were read depends on the debounce; none may stay in force.
    let invalid = Scrape::take(&admin).await.get(
        "registry_gateway_config_reloads_total",
        &[("result", "invalid")],
    );
    eprintln!(
        "fault: 1000 config writes in {:.1}s (every tenth invalid, the last valid): {} pushes meanwhile, all 201; config version {} in force is the last write, {invalid} invalid reads refused",
        wrote_for.as_secs_f64(),
        statuses.len(),
        status["config"]["version"]
    );
}

/// The registry misbehaving for the tag list (behind a fault proxy: a real registry cannot be
/// made to do this on demand; pushes still go through Envoy to the real registry). Every case:
/// a push that needs the count gets a 503 naming the cause within the decision deadline, a push
/// over the size limit is still refused (sizes need no registry), nothing is stored, and once
/// the registry behaves again the next push goes through.
#[tokio::test]
async fn a_misbehaving_registry_fails_pushes_closed_within_the_deadline_and_recovers() {
    use support::{Envoy, Fault, FaultProxy, Gateway, GatewayOptions, Registry, RegistryOptions};

    let registry = Registry::start(RegistryOptions::default()).await;
    let proxy = FaultProxy::start_with(&registry.url(), &[]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config(100)).expect("config");
    let gateway = Gateway::start(GatewayOptions::new(&config_path, &proxy.url())).await;
    let envoy = Envoy::start_between(registry.addr(), gateway.grpc_addr()).await;
    let client = envoy.client();
    let cases = [
        (
            "HTTP 500",
            Fault::Status(500),
            "the registry answered HTTP 500",
        ),
        (
            "HTTP 503",
            Fault::Status(503),
            "the registry answered HTTP 503",
        ),
        (
            "slow (30 s)",
            Fault::Slow(Duration::from_secs(30)),
            "did not answer within",
        ),
        ("connection cut mid-answer", Fault::Cut, "could not"),
        ("garbage", Fault::Garbage, "could not be read"),
        ("pages without end", Fault::EndlessPages, ""),
    ];
    for (i, (name, fault, cause)) in cases.into_iter().enumerate() {
        // A repository of its own: a cached tag list (rightly) needs no registry at all.
        let repo = format!("faults/registry-{i}");
        let repo = repo.as_str();
        let base = String::from_utf8(image(&client, repo, 10, "MARKER").await).expect("utf-8");
        let big = one_layer_big(&client, repo).await;
        let tag_list = format!("/v2/{repo}/tags/list");
        proxy.set(&[(tag_list.as_str(), fault)]);
        let tag = format!("c{i}");
        let body = base.replace("MARKER", &tag).into_bytes();
        let started = Instant::now();
        let reply = client.put_manifest(repo, &tag, OCI, &body).await;
        let answered = started.elapsed();
        assert_eq!(reply.status, 503, "{name}: {}", reply.text());
        let message = reply.json()["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.contains("could not check the push because") && message.contains(cause),
            "{name}: {message}"
        );
        assert!(
            !message.contains("127.0.0.1"),
            "{name}: no internal address: {message}"
        );
        assert!(
            answered < Duration::from_secs(6),
            "{name}: answered after {answered:?}"
        );
        let refused = client
            .put_manifest(repo, &format!("big{i}"), OCI, &big)
            .await;
        assert_eq!(
            refused.status,
            403,
            "{name}: sizes need no registry: {}",
            refused.text()
        );
        assert!(
            registry.client().list_tags(repo).await.is_empty(),
            "{name}: nothing stored"
        );
        proxy.set(&[]);
        let cleared = Instant::now();
        let ok = support::eventually(
            Duration::from_secs(10),
            "a push once the registry behaves",
            || {
                let (client, body, tag) = (client.clone(), body.clone(), tag.clone());
                async move {
                    let reply = client.put_manifest(repo, &tag, OCI, &body).await;
                    if reply.status == 201 {
                        Ok(reply.status)
                    } else {
                        Err(reply.status)
                    }
                }
            },
        )
        .await;
        assert_eq!(ok, 201);
        let recovery = cleared.elapsed();
        eprintln!(
            "fault: registry tag list {name}: push answered 503 in {:.2}s, size refusal 403, nothing stored; recovered in {:.2}s",
            answered.as_secs_f64(),
            recovery.as_secs_f64()
        );
    }
}

/// A manifest over the 1GB global limit (its layer is declared, never uploaded: the size
/// refusal comes before the registry would look).
async fn one_layer_big(client: &RegistryClient, repo: &str) -> Vec<u8> {
    let base = String::from_utf8(image(client, repo, 10, "big").await).expect("utf-8");
    base.replace("\"size\":10}", "\"size\":2147483648}")
        .into_bytes()
}

/// The sidecar's reading account (its Secret holds these), beside the pushers' own.
const READER: &str = "gateway-reader";
const OLD_PASSWORD: &str = "reader-pass-before-rotation";
const NEW_PASSWORD: &str = "reader-pass-after-rotation";
const PUSHER: &str = "ci-pusher";
const PUSHER_PASSWORD: &str = "pusher-pass-never-rotated";
/// Tag room of every repository of the rotation runs, and pushes of a new tag sent to each.
const ROTATION_ROOM: usize = 3;
const PUSHES_PER_REPO: usize = 5;
/// Concurrent pushers, and the pause each takes between pushes (so the run's length, not the
/// machine's speed, decides how many repositories it creates).
const PUSHERS: usize = 4;
const PUSH_PAUSE: Duration = Duration::from_millis(30);
/// A refusal for stale credentials is one 401 away; the registry deadline (2 s) and the decision
/// deadline (2.5 s) would only be reached by a hang.
const PROMPT: Duration = Duration::from_secs(2);
const RECOVERY_BOUND: Duration = Duration::from_secs(5);
/// How many stale-credential refusals, over how long at least, before the kubelet catches up.
const STALE_REFUSALS: usize = 10;
const KUBELET_DELAY: Duration = Duration::from_secs(2);

/// A Secret volume as the kubelet writes it: the keys live in a `..<version>` directory,
/// `..data` links to the current one and each key is a link through it (`password ->
/// ..data/password`). An update writes a new directory, renames a new link over `..data` (one
/// atomic switch of every key), then removes the old directory.
struct SecretVolume {
    dir: tempfile::TempDir,
    version: u32,
}

impl SecretVolume {
    fn new(user: &str, password: &str) -> SecretVolume {
        let mut volume = SecretVolume {
            dir: support::temp_dir("rg-secret-volume-"),
            version: 0,
        };
        volume.update(user, password);
        for key in ["username", "password"] {
            std::os::unix::fs::symlink(format!("..data/{key}"), volume.path().join(key))
                .expect("key link");
        }
        volume
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn update(&mut self, user: &str, password: &str) {
        self.version += 1;
        let version = format!("..2026_12_02_00_00_00.{}", self.version);
        let keys = self.path().join(&version);
        std::fs::create_dir(&keys).expect("secret volume is writable");
        // `kubectl create secret --from-literal` stores no final newline; `--from-file` may.
        std::fs::write(keys.join("username"), user).expect("username");
        std::fs::write(keys.join("password"), format!("{password}\n")).expect("password");
        let data = self.path().join("..data");
        let previous = std::fs::read_link(&data).ok();
        let tmp = self.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).expect("..data_tmp");
        std::fs::rename(&tmp, &data).expect("swap ..data");
        if let Some(previous) = previous {
            std::fs::remove_dir_all(self.path().join(previous)).expect("old keys removed");
        }
    }
}

/// One push of the rotation runs, as its client saw it.
#[derive(Clone, Debug)]
struct Push {
    /// Push `n` goes to repository `n / PUSHES_PER_REPO`.
    repo: usize,
    tag: String,
    sent: Instant,
    answered: Instant,
    /// 0: no HTTP answer.
    status: u16,
    /// The OCI error message, if any.
    message: String,
}

/// A pushing client for a repository, with whatever credentials the registry wants for it.
type ClientFor = Arc<dyn Fn(&str) -> RegistryClient + Send + Sync>;

/// Pushers that keep pushing new tags until stopped. Every `PUSHES_PER_REPO` pushes go to a new
/// repository, so decisions keep needing a tag-list read whatever the tag cache holds; the
/// pushes of one repository overlap, so its room is contended.
struct Pushers {
    pushing: Arc<AtomicBool>,
    pushes: Arc<std::sync::Mutex<Vec<Push>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Pushers {
    fn start(prefix: &'static str, client_for: ClientFor) -> Pushers {
        type Prepared = Arc<tokio::sync::OnceCell<(RegistryClient, String)>>;
        let pushing = Arc::new(AtomicBool::new(true));
        let pushes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let repos = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
            usize,
            Prepared,
        >::new()));
        let tasks = (0..PUSHERS)
            .map(|_| {
                let (pushing, pushes, next) = (pushing.clone(), pushes.clone(), next.clone());
                let (repos, client_for) = (repos.clone(), client_for.clone());
                tokio::spawn(async move {
                    while pushing.load(Ordering::Relaxed) {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let index = n / PUSHES_PER_REPO;
                        let repo = repo_name(prefix, index);
                        let prepared = repos
                            .lock()
                            .expect("repos")
                            .entry(index)
                            .or_default()
                            .clone();
                        // The first pusher of a repository uploads its blobs; the others wait.
                        let (client, base) = prepared
                            .get_or_init(|| async {
                                let client = tokio::task::block_in_place(|| client_for(&repo));
                                let base = image(&client, &repo, 10, "MARKER").await;
                                (client, String::from_utf8(base).expect("utf-8"))
                            })
                            .await;
                        let tag = format!("t{n}");
                        let body = base.replace("MARKER", &tag).into_bytes();
                        let target = format!("/v2/{repo}/manifests/{tag}");
                        let sent = Instant::now();
                        let reply = client
                            .send("PUT", &target, &[("content-type", OCI)], Some(body))
                            .await;
                        let answered = Instant::now();
                        let (status, message) = match reply {
                            Ok(reply) => (reply.status, oci_message(&reply.body)),
                            Err(_) => (0, String::new()),
                        };
                        pushes.lock().expect("pushes").push(Push {
                            repo: index,
                            tag,
                            sent,
                            answered,
                            status,
                            message,
                        });
                        tokio::time::sleep(PUSH_PAUSE).await;
                    }
                })
            })
            .collect();
        Pushers {
            pushing,
            pushes,
            tasks,
        }
    }

    fn so_far(&self) -> Vec<Push> {
        self.pushes.lock().expect("pushes").clone()
    }

    /// Waits (bounded) until the pushes so far satisfy `done`.
    async fn until(&self, timeout: Duration, what: &str, done: impl Fn(&[Push]) -> bool) {
        support::eventually(timeout, what, || {
            let pushes = self.so_far();
            let (finished, n) = (done(&pushes), pushes.len());
            async move {
                if finished {
                    Ok(())
                } else {
                    Err(format!("{n} pushes so far"))
                }
            }
        })
        .await;
    }

    async fn stop(self) -> Vec<Push> {
        self.pushing.store(false, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("pusher");
        }
        let mut pushes = self.pushes.lock().expect("pushes").clone();
        pushes.sort_by_key(|p| p.sent);
        pushes
    }
}

fn repo_name(prefix: &str, index: usize) -> String {
    format!("faults/{prefix}-{index}")
}

fn oci_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The moments of a rotation run.
struct Rotation {
    /// Just before the password changed where the registry checks it.
    rotated: Instant,
    /// Just before the kubelet swapped the Secret's `..data`.
    swapped: Instant,
    /// The first push decided after the swap.
    recovered: Instant,
}

/// After the Secret swap, pushes a new tag to `repo` (its blobs uploaded, its tag list never
/// read successfully, so every attempt needs a read) until one is stored; each refusal before
/// that must be the stale-credentials 503. Returns when it was stored.
async fn first_decision(client: &RegistryClient, repo: &str, base: &str) -> Instant {
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    support::eventually(
        Duration::from_secs(10),
        "a push decided after the Secret update",
        || async {
            let tag = format!("probe{}", attempt.fetch_add(1, Ordering::Relaxed));
            let body = base.replace("MARKER", &tag).into_bytes();
            let reply = client.put_manifest(repo, &tag, OCI, &body).await;
            match reply.status {
                201 => Ok(Instant::now()),
                503 if oci_message(&reply.body).contains(STALE_CAUSE) => Err(reply.status),
                _ => panic!("probe {tag}: {} {}", reply.status, reply.text()),
            }
        },
    )
    .await
}

/// What the client reads while the sidecar holds credentials the registry refuses.
const STALE_CAUSE: &str = "the registry refused the gateway's own credentials (HTTP 401)";

/// What an operator needs from a rotation, checked over every push of the run; `stored` is each
/// repository's tags in the registry at the end. Returns the figures of the `fault:` line.
fn check_rotation(
    pushes: &[Push],
    stored: &std::collections::BTreeMap<usize, Vec<String>>,
    at: &Rotation,
) -> String {
    assert!(
        pushes.iter().all(|p| [201, 403, 503].contains(&p.status)),
        "only stored, refused over the limit, or refused for the credentials: {pushes:?}"
    );
    let stale: Vec<&Push> = pushes.iter().filter(|p| p.status == 503).collect();
    for push in &stale {
        assert!(
            push.message.contains("could not check the push because")
                && push.message.contains(STALE_CAUSE)
                && !push.message.contains("127.0.0.1"),
            "the 503 names the cause: {push:?}"
        );
        assert!(
            push.answered - push.sent < PROMPT,
            "a prompt 503, not a hang: {push:?}"
        );
        assert!(
            push.answered >= at.rotated && push.sent < at.recovered,
            "a 503 only while the credentials were stale: {push:?}"
        );
    }
    assert!(
        stale.len() >= STALE_REFUSALS,
        "the stale window was exercised"
    );
    // No push stored uncounted, none stored over the room, none refused and stored anyway.
    let mut repos: std::collections::BTreeMap<usize, Vec<&Push>> = Default::default();
    for push in pushes {
        repos.entry(push.repo).or_default().push(push);
    }
    let (mut full_before, mut full_after) = (0, 0);
    for (repo, pushed) in &repos {
        let mut admitted: Vec<String> = pushed
            .iter()
            .filter(|p| p.status == 201)
            .map(|p| p.tag.clone())
            .collect();
        admitted.sort();
        let mut tags = stored.get(repo).cloned().unwrap_or_default();
        tags.sort();
        assert_eq!(tags, admitted, "repository {repo}: stored = admitted");
        assert!(tags.len() <= ROTATION_ROOM, "repository {repo}: {tags:?}");
        // A repository pushed wholly before the rotation or after the recovery was decided
        // push by push: exactly its room admitted.
        let complete = pushed.len() == PUSHES_PER_REPO;
        let before = pushed.iter().all(|p| p.answered < at.rotated);
        let after = pushed.iter().all(|p| p.sent > at.recovered);
        if complete && (before || after) {
            assert_eq!(tags.len(), ROTATION_ROOM, "repository {repo}: {pushed:?}");
            full_before += usize::from(before);
            full_after += usize::from(after);
        }
    }
    assert!(
        full_before >= 1 && full_after >= 2,
        "{full_before} repositories filled before the rotation, {full_after} after the recovery"
    );
    let slowest = stale
        .iter()
        .map(|p| p.answered - p.sent)
        .max()
        .unwrap_or_default();
    format!(
        "{} pushes to {} repositories ({} stored, {} refused over the room, {} refused 503 for the stale credentials, the slowest in {:.3}s); Secret updated {:.1}s after the password change; first push decided {:.3}s after the Secret update, no restart; every repository holds exactly the tags answered 201, at most {ROTATION_ROOM}",
        pushes.len(),
        repos.len(),
        pushes.iter().filter(|p| p.status == 201).count(),
        pushes.iter().filter(|p| p.status == 403).count(),
        stale.len(),
        slowest.as_secs_f64(),
        (at.swapped - at.rotated).as_secs_f64(),
        (at.recovered - at.swapped).as_secs_f64(),
    )
}

/// The sidecar's log, stdout included, holds none of `secrets`, raw or as a Basic header.
fn assert_no_secret_logged(gateway: &support::Gateway, secrets: &[(&str, &str)]) {
    let log = gateway.log() + &gateway.stdout();
    for (user, password) in secrets {
        assert!(!log.contains(password), "a password leaked into the log");
        let header = support::basic_authorization(user, password);
        let encoded = header.trim_start_matches("Basic ");
        assert!(
            !log.contains(encoded),
            "an Authorization header leaked into the log"
        );
    }
}

fn rotation_gateway_args(volume: &SecretVolume) -> Vec<String> {
    [
        "--registry-credentials-dir",
        &volume.path().display().to_string(),
        // Repositories whose book was read before the rotation are read again within a
        // second, besides the new ones.
        "--tag-cache-ttl",
        "1s",
        // The client's registry calls at debug: the password must stay out of those lines too.
        "--log",
        "info,registry_gateway::registry=debug",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// How many repositories have all their pushes recorded, each one satisfying `when`.
fn repos_done(pushes: &[Push], when: impl Fn(&Push) -> bool) -> usize {
    let mut repos: std::collections::BTreeMap<usize, (usize, bool)> = Default::default();
    for push in pushes {
        let (n, all) = repos.entry(push.repo).or_insert((0, true));
        *n += 1;
        *all &= when(push);
    }
    repos
        .values()
        .filter(|(n, all)| *n == PUSHES_PER_REPO && *all)
        .count()
}

/// What differs between the registry's auth methods in a rotation run.
struct RotationRun {
    /// The pushed repositories are `faults/<prefix>-<n>`, the probe `faults/<prefix>-probe`.
    prefix: &'static str,
    /// A pusher's client for a repository (through Envoy).
    push_client: ClientFor,
    /// A client reading a repository from the registry directly, for the stored tags.
    direct_client: ClientFor,
    /// The sidecar's admin port.
    admin: RegistryClient,
}

/// The run both auth methods share: pushes go on throughout; `rotate` changes the password
/// where the registry checks it (the old one must be refused at once); once enough pushes were
/// refused for the stale credentials, and at least [`KUBELET_DELAY`] later, the kubelet swaps
/// the Secret to `user`/[`NEW_PASSWORD`]; a probe measures when decisions succeed again; the
/// pushes go on until repositories filled after that. Returns the `fault:` figures.
async fn rotation_run(
    run: RotationRun,
    volume: &mut SecretVolume,
    user: &str,
    rotate: impl AsyncFnOnce(),
) -> String {
    let pushers = Pushers::start(run.prefix, run.push_client.clone());
    pushers
        .until(
            Duration::from_secs(20),
            "repositories filled before the rotation",
            |p| repos_done(p, |_| true) >= 2,
        )
        .await;

    let rotated = Instant::now();
    rotate().await;
    pushers
        .until(
            Duration::from_secs(15),
            "pushes refused for the stale credentials",
            |p| {
                rotated.elapsed() >= KUBELET_DELAY
                    && p.iter().filter(|p| p.status == 503).count() >= STALE_REFUSALS
            },
        )
        .await;

    let probe_repo = format!("faults/{}-probe", run.prefix);
    let probe = (run.push_client)(&probe_repo);
    let probe_base = image(&probe, &probe_repo, 10, "MARKER").await;
    let probe_base = String::from_utf8(probe_base).expect("utf-8");
    let swapped = Instant::now();
    volume.update(user, NEW_PASSWORD);
    let recovered = first_decision(&probe, &probe_repo, &probe_base).await;
    pushers
        .until(
            Duration::from_secs(20),
            "repositories filled after the recovery",
            |p| repos_done(p, |p| p.sent > recovered) >= 3,
        )
        .await;
    let pushes = pushers.stop().await;

    let mut stored = std::collections::BTreeMap::new();
    for repo in pushes
        .iter()
        .map(|p| p.repo)
        .collect::<std::collections::BTreeSet<_>>()
    {
        let name = repo_name(run.prefix, repo);
        stored.insert(repo, (run.direct_client)(&name).list_tags(&name).await);
    }
    let at = Rotation {
        rotated,
        swapped,
        recovered,
    };
    let figures = check_rotation(&pushes, &stored, &at);
    assert!(
        at.recovered - at.swapped < RECOVERY_BOUND,
        "recovered {:?} after the Secret update",
        at.recovered - at.swapped
    );
    // What a dashboard shows for it: every refused read counted by its cause.
    let unauthorized = Scrape::take(&run.admin).await.get(
        "registry_gateway_registry_tag_list_requests_total",
        &[("result", "unauthorized")],
    );
    let refused = pushes.iter().filter(|p| p.status == 503).count() as u64;
    assert!(
        unauthorized >= refused,
        "{unauthorized} unauthorized reads counted"
    );
    figures
}

/// Kubernetes' order of events: the registry's password changes first (here distribution's own
/// htpasswd file; 2.8.2 re-reads it on change, checked below, so no registry restart), and the
/// kubelet updates the sidecar's mounted Secret seconds later. Pushes go on throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_rotated_during_pushes_fail_closed_then_recover_without_a_restart() {
    let figures = htpasswd_rotation("rotation", &[]).await;
    eprintln!("fault: registry credentials rotated during pushes (htpasswd): {figures}");
}

/// The same with the tag books in Redis: a failed read gives its read lock up at once, so the
/// decisions waiting on it meet the registry's refusal too, not the decision deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_rotated_during_pushes_with_redis_fail_closed_promptly() {
    let redis = support::Redis::start(false).await;
    let figures = htpasswd_rotation("redis-rotation", &["--state", &redis.url()]).await;
    eprintln!("fault: registry credentials rotated during pushes (htpasswd, Redis): {figures}");
}

/// One htpasswd rotation run (see above) with `extra` sidecar flags; the `fault:` figures.
async fn htpasswd_rotation(prefix: &'static str, extra: &[&str]) -> String {
    let mut volume = SecretVolume::new(READER, OLD_PASSWORD);
    let mut args = rotation_gateway_args(&volume);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let mut stack = Stack::start_with(support::StackOptions {
        registry: support::RegistryOptions::with_htpasswd(PUSHER, PUSHER_PASSWORD)
            .and_htpasswd_user(READER, OLD_PASSWORD),
        credentials_dir: false,
        gateway_extra_args: args,
        ..support::StackOptions::new(&config(ROTATION_ROOM as u64))
    })
    .await;
    let pid = stack.gateway.pid();
    let (front, direct) = (stack.client(), stack.registry_client());
    let run = RotationRun {
        prefix,
        push_client: Arc::new(move |_| front.clone()),
        direct_client: Arc::new(move |_| direct.clone()),
        admin: stack.gateway.admin(),
    };
    let registry = &mut stack.registry;
    let figures = rotation_run(run, &mut volume, READER, async || {
        registry.set_htpasswd_password(READER, NEW_PASSWORD);
        let reader =
            |password| RegistryClient::new(&registry.url()).with_basic_auth(READER, password);
        let old = reader(OLD_PASSWORD).request("GET", "/v2/", &[], None).await;
        assert_eq!(old.status, 401, "distribution re-read its htpasswd file");
        let new = reader(NEW_PASSWORD).request("GET", "/v2/", &[], None).await;
        assert_eq!(new.status, 200);
    })
    .await;

    assert_eq!(stack.gateway.exited(), None);
    assert_eq!(stack.gateway.pid(), pid, "no restart");
    assert!(
        stack
            .gateway
            .log()
            .contains("registry credentials reloaded"),
        "the sidecar re-read its Secret"
    );
    assert_no_secret_logged(
        &stack.gateway,
        &[
            (READER, OLD_PASSWORD),
            (READER, NEW_PASSWORD),
            (PUSHER, PUSHER_PASSWORD),
        ],
    );
    figures
}

/// The same rotation behind Docker token auth. The issuer is the kit's fake standing in for
/// Harbor's token service: the sidecar's robot account gets pull tokens from it with the
/// password of its Secret; refreshing the robot's secret makes the old one fail at the token
/// service at once, while tokens already issued stay valid until they expire (JWTs are not
/// called back). Pushers hold tokens of their own, minted per repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_service_credentials_rotated_during_pushes_fail_closed_then_recover() {
    const ROBOT: &str = "robot$gateway-reader";
    let issuer = support::TokenIssuer::start(ROBOT, OLD_PASSWORD, Duration::from_secs(60)).await;
    let issuer = Arc::new(issuer);
    let mut volume = SecretVolume::new(ROBOT, OLD_PASSWORD);
    let mut args = rotation_gateway_args(&volume);
    // The issuer listens on another origin than the registry's.
    args.extend(["--registry-token-realm".to_owned(), issuer.realm()]);
    let mut stack = Stack::start_with(support::StackOptions {
        registry: support::RegistryOptions {
            token_auth: Some(issuer.auth_config()),
            ..support::RegistryOptions::default()
        },
        gateway_extra_args: args,
        ..support::StackOptions::new(&config(ROTATION_ROOM as u64))
    })
    .await;
    let pid = stack.gateway.pid();
    let with_token = |client: RegistryClient, actions: &'static [&'static str]| -> ClientFor {
        let issuer = issuer.clone();
        Arc::new(move |repo| {
            client
                .clone()
                .with_bearer(&issuer.token(&[(repo, actions)]))
        })
    };
    let run = RotationRun {
        prefix: "token-rotation",
        push_client: with_token(stack.client(), &["pull", "push"]),
        direct_client: with_token(stack.registry_client(), &["pull"]),
        admin: stack.gateway.admin(),
    };
    let figures = rotation_run(run, &mut volume, ROBOT, async || {
        issuer.set_password(NEW_PASSWORD);
        let realm = issuer.realm();
        let target = format!(
            "{realm}?service={}&scope=repository:faults/x:pull",
            support::TOKEN_SERVICE
        );
        for (password, status) in [(OLD_PASSWORD, 401), (NEW_PASSWORD, 200)] {
            let reply = RegistryClient::new(&realm)
                .with_basic_auth(ROBOT, password)
                .request("GET", &target, &[], None)
                .await;
            assert_eq!(reply.status, status, "the token service after the change");
        }
    })
    .await;

    // The refusals came from the token service turning the old password away.
    let refused = issuer
        .requests()
        .iter()
        .filter(|r| r.user.as_deref() == Some(ROBOT) && r.status == 401)
        .count();
    assert!(refused >= STALE_REFUSALS, "{:?}", issuer.requests());
    assert_eq!(stack.gateway.exited(), None);
    assert_eq!(stack.gateway.pid(), pid, "no restart");
    assert_no_secret_logged(
        &stack.gateway,
        &[(ROBOT, OLD_PASSWORD), (ROBOT, NEW_PASSWORD)],
    );
    eprintln!(
        "fault: token-service credentials rotated during pushes (a fake standing in for Harbor's token service): {figures}; {refused} token requests refused for the old password"
    );
}
