//! Faults with real processes: the sidecar SIGKILLed during concurrent pushes, Envoy restarted
//! while pushes go on, and a thousand configuration writes in ten seconds. Each prints one
//! `fault:` line with its figures, the rows of docs/RELIABILITY.md.

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
    assert_eq!(count(&after, 201), ROOM - stored_before, "{after:?}");
    assert_eq!(
        count(&after, 403),
        ROUND - (ROOM - stored_before),
        "{after:?}"
    );
    eprintln!(
        "fault: sidecar SIGKILLed mid-round: {} pushes during ({} stored, statuses {during:?}); after restart {} of {ROUND} admitted, {} tags stored for room {ROOM}; recovery {:.2}s",
        during.len(),
        stored_before,
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
    use support::{
        Envoy, EnvoyOptions, Fault, FaultProxy, Gateway, GatewayOptions, Registry, RegistryOptions,
    };

    let registry = Registry::start(RegistryOptions::default()).await;
    let proxy = FaultProxy::start_with(&registry.url(), &[]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config(100)).expect("config");
    let gateway = Gateway::start(GatewayOptions::new(&config_path, &proxy.url())).await;
    let envoy = Envoy::start(EnvoyOptions {
        registry_addr: registry.addr(),
        gateway_addr: gateway.grpc_addr(),
    })
    .await;
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
