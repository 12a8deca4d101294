use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::Mutex;

use super::*;
use crate::policy::{ConfigSource, DenyReason};

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const BODY: &[u8] = br#"{"schemaVersion":2,"layers":[{"size":10}]}"#;

/// A tag source with a fixed list, a delay, and a call counter.
#[derive(Clone, Default)]
struct FakeSource {
    tags: Arc<Mutex<Vec<String>>>,
    calls: Arc<AtomicUsize>,
    delay: Duration,
    fail: Option<TagError>,
    /// Credentials the registry accepts; `None` accepts every client.
    accepts: Option<Vec<Option<String>>>,
    client_calls: Arc<AtomicUsize>,
}

impl TagSource for FakeSource {
    async fn list_tags(&self, _repository: &str) -> Result<Vec<String>, TagError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        Ok(self.tags.lock().expect("lock").clone())
    }

    async fn client_may_read(
        &self,
        _repository: &str,
        authorization: Option<&str>,
    ) -> Result<bool, TagError> {
        self.client_calls.fetch_add(1, Ordering::SeqCst);
        Ok(self
            .accepts
            .as_ref()
            .is_none_or(|accepted| accepted.iter().any(|a| a.as_deref() == authorization)))
    }
}

/// The configuration `yaml` compiled as snapshot `version`.
fn compiled(yaml: &str, version: u64) -> Arc<Snapshot> {
    Arc::new(Snapshot {
        policy: crate::policy::compile(&ConfigSource::File {
            name: "t".into(),
            text: yaml.into(),
        })
        .expect("valid"),
        version,
        hash: String::new(),
        loaded_at: std::time::SystemTime::now(),
    })
}

fn snapshot(yaml: &str) -> watch::Receiver<Arc<Snapshot>> {
    let (tx, rx) = watch::channel(compiled(yaml, 1));
    std::mem::forget(tx);
    rx
}

fn checker(source: FakeSource, yaml: &str, options: CheckOptions) -> Arc<Checker<FakeSource>> {
    Arc::new(Checker::new(
        source,
        snapshot(yaml),
        options,
        Arc::new(Metrics::new()),
    ))
}

/// A checker with default options over a registry listing `tags`.
fn checker_over(tags: &[&str], yaml: &str) -> Arc<Checker<FakeSource>> {
    checker(source_with(tags), yaml, CheckOptions::default())
}

/// A checker with default options over a registry listing `tags`, and the metrics it counts in.
fn checker_counting(
    tags: &[&str],
    policy: watch::Receiver<Arc<Snapshot>>,
) -> (Arc<Checker<FakeSource>>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let c = Arc::new(Checker::new(
        source_with(tags),
        policy,
        CheckOptions::default(),
        metrics.clone(),
    ));
    (c, metrics)
}

fn source_with(tags: &[&str]) -> FakeSource {
    FakeSource {
        tags: Arc::new(Mutex::new(tags.iter().map(|s| s.to_string()).collect())),
        ..FakeSource::default()
    }
}

fn put(path: &str) -> ManifestWrite {
    ManifestWrite::from_request("PUT", path).expect("manifest write")
}

fn put_delete(path: &str) -> ManifestWrite {
    ManifestWrite::from_request("DELETE", path).expect("manifest write")
}

/// A `PUT` of `BODY` to `path` through `transport`, without credentials.
async fn push_via(c: &Checker<FakeSource>, transport: Transport, path: &str) -> Checked {
    c.check_push(transport, &put(path), Some(OCI), BODY, None, None)
        .await
}

/// A `PUT` of `BODY` to `path` through ext_proc, without credentials.
async fn push(c: &Checker<FakeSource>, path: &str) -> Checked {
    push_via(c, Transport::ExtProc, path).await
}

/// The ticket of a push to `path` that must be allowed.
async fn admit(c: &Checker<FakeSource>, path: &str) -> Ticket {
    push(c, path).await.ticket.expect("allowed")
}

fn is_tag_limit(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Deny(d) if d.reason == DenyReason::TagLimit)
}

#[tokio::test]
async fn concurrent_new_tags_admit_exactly_the_room_left() {
    let mut source = source_with(&["a", "b", "c"]);
    source.delay = Duration::from_millis(20);
    let calls = source.calls.clone();
    let c = checker(source, "tag_count_limit: 5\n", CheckOptions::default());
    let mut tasks = Vec::new();
    for i in 0..30 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let checked = push(&c, &format!("/v2/r/manifests/n{i}")).await;
            // Hold the ticket like an open stream would.
            (checked.outcome, checked.ticket)
        }));
    }
    let mut allowed = 0;
    let mut tickets = Vec::new();
    for t in tasks {
        let (outcome, ticket) = t.await.expect("task");
        if outcome == Outcome::Allow {
            allowed += 1;
        } else {
            assert!(is_tag_limit(&outcome));
        }
        tickets.extend(ticket);
    }
    assert_eq!(allowed, 2);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "concurrent fetches are coalesced"
    );
    drop(tickets);
}

#[tokio::test]
async fn a_failed_push_releases_its_slot_and_a_committed_one_keeps_it() {
    let c = checker_over(&["a"], "tag_count_limit: 2\n");
    let (w, w2) = ("/v2/r/manifests/b", "/v2/r/manifests/c");
    let t = admit(&c, w).await;
    assert!(matches!(push(&c, w2).await.outcome, Outcome::Deny(_)));
    t.settle(400, &[]);
    let t2 = push(&c, w2).await.ticket.expect("slot freed");
    t2.settle(201, &[]);
    assert!(matches!(push(&c, w).await.outcome, Outcome::Deny(_)));
    // Re-pushing the committed tag moves it.
    assert_eq!(push(&c, w2).await.outcome, Outcome::Allow);
}

/// A stream that ends without the registry's answer (a client that hung up after its body) may
/// still have stored the manifest: its slot is held until a tag-list read made a grace period
/// later shows the truth, so a concurrent push cannot overshoot.
#[tokio::test(start_paused = true)]
async fn a_dropped_ticket_holds_its_slot_until_the_list_shows_the_truth() {
    let source = source_with(&[]);
    let tags = source.tags.clone();
    let c = checker(source, "tag_count_limit: 1\n", CheckOptions::default());
    let checked = push(&c, "/v2/r/manifests/x").await;
    assert_eq!(checked.ticket.as_ref().map(|t| t.reserved().len()), Some(1));
    drop(checked);
    let y = "/v2/r/manifests/y";
    let refused = push(&c, y).await;
    assert!(
        matches!(refused.outcome, Outcome::Deny(_)),
        "{:?}",
        refused.outcome
    );
    // The push did land: the read after the grace period counts it.
    tags.lock().expect("lock").push("x".into());
    tokio::time::advance(DOUBT_GRACE).await;
    let refused = push(&c, y).await;
    assert!(
        matches!(refused.outcome, Outcome::Deny(_)),
        "{:?}",
        refused.outcome
    );
    // Had it not landed, the slot comes free at the same read.
    tags.lock().expect("lock").clear();
    c.observe_delete(&put_delete("/v2/r/manifests/x"), 202);
    assert_eq!(push(&c, y).await.outcome, Outcome::Allow);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_ticket_whose_push_failed_frees_its_slot_after_the_grace() {
    let c = checker_over(&[], "tag_count_limit: 1\n");
    drop(push(&c, "/v2/r/manifests/x").await);
    tokio::time::advance(DOUBT_GRACE).await;
    assert_eq!(push(&c, "/v2/r/manifests/y").await.outcome, Outcome::Allow);
}

/// A 5xx may be Envoy's own (route timeout, upstream reset) after the registry stored the
/// manifest; a 4xx is a refusal. Only the 4xx frees the slot at once.
#[tokio::test(start_paused = true)]
async fn a_5xx_answer_holds_the_slot_and_a_4xx_frees_it() {
    for (status, free_at_once) in [
        (503, false),
        (504, false),
        (500, false),
        (0, false),
        (401, true),
        (413, true),
    ] {
        let source = source_with(&[]);
        let calls = source.calls.clone();
        let c = checker(source, "tag_count_limit: 1\n", CheckOptions::default());
        admit(&c, "/v2/r/manifests/x").await.settle(status, &[]);
        let y = "/v2/r/manifests/y";
        let got = push(&c, y).await;
        assert_eq!(
            got.outcome == Outcome::Allow,
            free_at_once,
            "{status}: {:?}",
            got.outcome
        );
        drop(got);
        if !free_at_once {
            tokio::time::advance(DOUBT_GRACE).await;
            let got = push(&c, y).await;
            assert_eq!(got.outcome, Outcome::Allow, "{status} after the re-read");
            assert_eq!(
                calls.load(Ordering::SeqCst),
                2,
                "{status}: the list was read again"
            );
        }
    }
}

/// The tags the registry reports creating (`OCI-Tag`) are the ones that count: every one of
/// them, named in our request or not, and none that it does not echo.
#[tokio::test]
async fn the_tags_in_oci_tag_are_the_ones_that_count() {
    for (case, path, echoed, third_allowed) in [
        (
            "every tag in OCI-Tag counts",
            "/v2/r/manifests/a",
            "a, b",
            false,
        ),
        (
            "query tags not echoed are released",
            "/v2/r/manifests/sha256:00?tag=a&tag=b",
            "a",
            true,
        ),
    ] {
        let c = checker_over(&[], "tag_count_limit: 2\n");
        admit(&c, path).await.settle(201, &[echoed.to_string()]);
        let got = push(&c, "/v2/r/manifests/c").await;
        if third_allowed {
            assert_eq!(got.outcome, Outcome::Allow, "{case}");
        } else {
            assert!(is_tag_limit(&got.outcome), "{case}: {:?}", got.outcome);
        }
    }
}

/// A client whose credentials the registry refuses gets nothing from the gateway: no slot, no
/// tag-list read, no count, limit or rule; the registry answers it instead.
#[tokio::test]
async fn clients_the_registry_refuses_take_no_slot_and_learn_nothing() {
    let mut source = source_with(&["a"]);
    source.accepts = Some(vec![Some("Basic good".into())]);
    let calls = source.calls.clone();
    let client_calls = source.client_calls.clone();
    let c = checker(
        source,
        "max_image_size: 1B\ntag_count_limit: 2\n",
        CheckOptions::default(),
    );
    let small = br#"{"schemaVersion":2,"layers":[{"size":1}]}"#;
    let push_as = |path: String, body: &'static [u8], authorization: Option<&'static str>| {
        let c = c.clone();
        async move {
            c.check_push(
                Transport::ExtAuthz,
                &put(&path),
                Some(OCI),
                body,
                authorization,
                None,
            )
            .await
        }
    };
    for authorization in [None, Some("Basic bad"), Some("Bearer forged")] {
        for path in ["/v2/r/manifests/new", "/v2/r/manifests/sha256:00"] {
            let got = push_as(path.into(), BODY, authorization).await;
            assert_eq!(got.outcome, Outcome::Defer, "{authorization:?} {path}");
            assert!(got.ticket.is_none());
            assert!(crate::respond::render(&got.outcome).is_none());
        }
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "no tag list read for refused clients"
    );
    // An accepted client fills the room; the refused ones took none of it.
    for tag in ["b", "c"] {
        let got = push_as(format!("/v2/r/manifests/{tag}"), small, Some("Basic good")).await;
        let expect_allow = tag == "b";
        assert_eq!(
            got.outcome == Outcome::Allow,
            expect_allow,
            "{tag}: {:?}",
            got.outcome
        );
        if let Some(t) = got.ticket {
            t.settle(201, &[]);
        }
    }
    // Answers are cached per client and repository: three refused clients and one accepted.
    assert_eq!(client_calls.load(Ordering::SeqCst), 4);
    // Pushes that need no count and tell no limit ask nothing.
    let invalid = push_as(
        "/v2/r/manifests/sha256:00".into(),
        b"{",
        Some("Basic other"),
    )
    .await;
    assert!(
        matches!(invalid.outcome, Outcome::Deny(ref d) if d.reason == DenyReason::ManifestInvalid)
    );
    assert_eq!(client_calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn the_client_check_can_be_turned_off() {
    let mut source = source_with(&[]);
    source.accepts = Some(vec![]);
    let c = checker(
        source,
        "tag_count_limit: 2\n",
        CheckOptions {
            client_check: false,
            ..CheckOptions::default()
        },
    );
    assert_eq!(push(&c, "/v2/r/manifests/a").await.outcome, Outcome::Allow);
}

#[tokio::test]
async fn the_same_new_tag_pushed_twice_takes_one_slot() {
    let c = checker_over(&["a"], "tag_count_limit: 2\n");
    let w = "/v2/r/manifests/b";
    let t1 = admit(&c, w).await;
    let t2 = push(&c, w).await.ticket.expect("shares the slot");
    t1.settle(500, &[]);
    assert!(matches!(
        push(&c, "/v2/r/manifests/c").await.outcome,
        Outcome::Deny(_)
    ));
    t2.settle(201, &[]);
}

#[tokio::test]
async fn a_deleted_tag_frees_its_slot_at_once() {
    let source = source_with(&["a", "b"]);
    let calls = source.calls.clone();
    let c = checker(source, "tag_count_limit: 2\n", CheckOptions::default());
    let new = "/v2/r/manifests/c";
    assert!(matches!(push(&c, new).await.outcome, Outcome::Deny(_)));
    let del = ManifestWrite::from_request("DELETE", "/v2/r/manifests/a").expect("write");
    c.observe_delete(&del, 404);
    assert!(matches!(push(&c, new).await.outcome, Outcome::Deny(_)));
    c.observe_delete(&del, 202);
    assert_eq!(push(&c, new).await.outcome, Outcome::Allow);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no re-read was needed");
}

#[tokio::test]
async fn a_delete_by_digest_makes_the_next_decision_read_the_list() {
    let source = source_with(&["a"]);
    let calls = source.calls.clone();
    let c = checker(source, "tag_count_limit: 5\n", CheckOptions::default());
    let w = "/v2/r/manifests/b";
    admit(&c, w).await.settle(201, &[]);
    let del = ManifestWrite::from_request("DELETE", "/v2/r/manifests/sha256:00").expect("write");
    c.observe_delete(&del, 202);
    push(&c, w).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_unreadable_tag_list_fails_closed_by_default_and_open_when_configured() {
    let mut source = source_with(&[]);
    source.fail = Some(TagError::Status { status: 502 });
    let c = checker(source.clone(), "{}", CheckOptions::default());
    let w = "/v2/r/manifests/v1";
    match push(&c, w).await.outcome {
        Outcome::Unavailable { message, .. } => assert!(message.contains("HTTP 502"), "{message}"),
        other => panic!("{other:?}"),
    }
    // Size checks never need the network.
    assert_eq!(
        push(&c, "/v2/r/manifests/sha256:00").await.outcome,
        Outcome::Allow
    );
    let open = checker(
        source,
        "{}",
        CheckOptions {
            allow_on_registry_error: true,
            ..CheckOptions::default()
        },
    );
    assert_eq!(push(&open, w).await.outcome, Outcome::Allow);
}

#[tokio::test]
async fn a_slow_registry_hits_the_decision_deadline() {
    let mut source = source_with(&[]);
    source.delay = Duration::from_secs(30);
    let options = CheckOptions {
        decision_timeout: Duration::from_millis(100),
        ..CheckOptions::default()
    };
    let c = checker(source, "{}", options);
    let started = Instant::now();
    let outcome = push(&c, "/v2/r/manifests/v1").await.outcome;
    assert!(
        matches!(
            outcome,
            Outcome::Unavailable {
                error: TagError::Timeout(_),
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn commits_seen_during_a_fetch_survive_its_result() {
    let mut source = source_with(&["a"]);
    source.delay = Duration::from_millis(100);
    let options = CheckOptions {
        tag_cache_ttl: Duration::from_millis(300),
        ..CheckOptions::default()
    };
    let c = checker(source, "tag_count_limit: 3\n", options);
    let ticket = admit(&c, "/v2/r/manifests/b").await;
    tokio::time::sleep(Duration::from_millis(310)).await;
    // A decision starts a fetch whose answer lacks `b`; `b` commits while it is in flight.
    let c2 = c.clone();
    let fetching = tokio::spawn(async move {
        let checked = push(&c2, "/v2/r/manifests/c").await;
        (checked.outcome, checked.ticket)
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    ticket.settle(201, &[]);
    let (outcome, c_ticket) = fetching.await.expect("task");
    assert_eq!(outcome, Outcome::Allow);
    // a, b (replayed from the journal) and c (reserved) count: a fourth tag is refused.
    assert!(matches!(
        push(&c, "/v2/r/manifests/d").await.outcome,
        Outcome::Deny(_)
    ));
    drop(c_ticket);
}

#[tokio::test(start_paused = true)]
async fn ext_authz_reservations_expire_and_the_list_is_read_again() {
    let source = source_with(&[]);
    let calls = source.calls.clone();
    let c = checker(source, "tag_count_limit: 1\n", CheckOptions::default());
    push_via(&c, Transport::ExtAuthz, "/v2/r/manifests/a")
        .await
        .ticket
        .expect("allowed")
        .expire_after(Duration::from_secs(30));
    let other = "/v2/r/manifests/b";
    assert!(matches!(
        push_via(&c, Transport::ExtAuthz, other).await.outcome,
        Outcome::Deny(_)
    ));
    tokio::time::sleep(Duration::from_secs(31)).await;
    // The push never landed (the fake registry still lists nothing): the slot is free again.
    assert_eq!(
        push_via(&c, Transport::ExtAuthz, other).await.outcome,
        Outcome::Allow
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Re-pushing a counted tag through ext_authz reserves nothing, and its unseen answer can change
/// no count: the list is not read again for it, however often it is pushed.
#[tokio::test(start_paused = true)]
async fn ext_authz_re_pushes_of_counted_tags_call_for_no_read() {
    let source = source_with(&["a"]);
    let calls = source.calls.clone();
    let c = checker(source, "tag_count_limit: 2\n", CheckOptions::default());
    for _ in 0..3 {
        let checked = push_via(&c, Transport::ExtAuthz, "/v2/r/manifests/a").await;
        let ticket = checked.ticket.expect("allowed");
        assert!(ticket.reserved().is_empty());
        ticket.expire_after(Duration::from_secs(30));
        tokio::time::sleep(Duration::from_secs(31)).await;
    }
    assert_eq!(
        push_via(&c, Transport::ExtAuthz, "/v2/r/manifests/b")
            .await
            .outcome,
        Outcome::Allow
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one read, the first");
}

#[tokio::test]
async fn idle_repositories_are_forgotten() {
    let c = checker_over(&[], "{}");
    admit(&c, "/v2/r/manifests/a").await.settle(201, &[]);
    assert_eq!(
        c.books.sweep(
            Instant::now() + Duration::from_secs(3600),
            Duration::from_secs(60)
        ),
        1
    );
}

/// A flood of distinct repository names keeps at most `MAX_BOOKS` books; honest repositories keep
/// their exact counts, an evicted one is simply read again.
#[tokio::test]
async fn the_books_are_capped_and_an_evicted_repository_is_read_again() {
    let source = source_with(&["a"]);
    let calls = source.calls.clone();
    let c = checker(source, "tag_count_limit: 2\n", CheckOptions::default());
    let t = admit(&c, "/v2/honest/manifests/b").await;
    // Held while the flood goes on: a book with a reservation is never evicted.
    for i in 0..(books::MAX_BOOKS + books::MAX_BOOKS / 2) {
        let checked = push(&c, &format!("/v2/flood/n{i}/manifests/x")).await;
        if let Some(t) = checked.ticket {
            t.settle(201, &[]);
        }
    }
    assert!(c.books.len() <= books::MAX_BOOKS, "{}", c.books.len());
    assert!(c.metrics.book_evictions.get() > 0);
    t.settle(201, &[]);
    let got = push(&c, "/v2/honest/manifests/c").await;
    assert!(is_tag_limit(&got.outcome), "{:?}", got.outcome);
    let before = calls.load(Ordering::SeqCst);
    assert!(before > books::MAX_BOOKS, "every flood name was read once");
}

/// `dry-run` and `warn` let a push over the limit through, but its slot is taken as in
/// `enforce`: once committed, the next push sees the true count.
#[tokio::test]
async fn a_push_let_through_by_dry_run_holds_its_slot_and_is_counted_as_a_would_be_denial() {
    for (mode, warned) in [("dry-run", false), ("warn", true)] {
        let (c, metrics) = checker_counting(
            &["a", "b"],
            snapshot(&format!("tag_count_limit: 2\nenforcement: {mode}\n")),
        );
        let got = push(&c, "/v2/r/manifests/c").await;
        assert_eq!(got.outcome, Outcome::Allow, "{mode}");
        assert_eq!(
            got.waived.as_ref().map(|d| d.reason),
            Some(DenyReason::TagLimit)
        );
        assert_eq!(
            !got.warnings.is_empty(),
            warned,
            "{mode}: {:?}",
            got.warnings
        );
        let ticket = got.ticket.expect("ticket");
        assert_eq!(ticket.reserved(), ["c".to_owned()]);
        ticket.settle(201, &[]);
        let next = push(&c, "/v2/r/manifests/d").await;
        assert_eq!(
            next.facts.tag_count,
            Some(3),
            "{mode}: the committed push counts"
        );
        let text = metrics.encode();
        let line = format!(
            "registry_gateway_decisions_total{{transport=\"ext_proc\",outcome=\"would_deny\",reason=\"tag_limit\",enforcement=\"{mode}\"}} 2"
        );
        assert!(text.contains(&line), "{mode}: {line} in\n{text}");
    }
}

/// A configuration without the new keys answers as before: refused, nothing waived or said.
#[tokio::test]
async fn without_rollout_keys_a_push_over_the_limit_is_refused_and_labelled_enforce() {
    let (c, metrics) = checker_counting(&["a"], snapshot("tag_count_limit: 1\n"));
    let got = push(&c, "/v2/r/manifests/b").await;
    assert!(is_tag_limit(&got.outcome));
    assert!(got.waived.is_none() && got.warnings.is_empty());
    assert!(metrics.encode().contains(
        "registry_gateway_decisions_total{transport=\"ext_proc\",outcome=\"deny\",reason=\"tag_limit\",enforcement=\"enforce\"} 1"
    ));
}

/// A reload that lowers a limit below a cached repository's count is reported at once, and
/// each conflict is logged once, not at every review.
#[tokio::test]
async fn a_reload_below_a_cached_count_is_reported_as_a_conflict() {
    let (tx, rx) = watch::channel(compiled("tag_count_limit: 10\n", 1));
    let (c, metrics) = checker_counting(&["a", "b", "c"], rx);
    let got = push(&c, "/v2/team/app/manifests/a").await;
    assert_eq!(got.outcome, Outcome::Allow);
    drop(got);
    assert!(c.review_limits().is_empty());
    tx.send(compiled(
        "tag_count_limit: 10\nrules:\n  - path: ^team/.*\n    limit: {max_image_size: 1GB, tag_count_limit: 2}\n",
        2,
    ))
    .expect("send");
    let found = c.review_limits();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (
            found[0].repository.as_str(),
            found[0].tag_count,
            found[0].tag_count_limit
        ),
        ("team/app", 3, 2)
    );
    assert_eq!(found[0].rule.as_ref().map(|r| r.index), Some(0));
    assert_eq!(*c.conflicts().lock().expect("lock"), found);
    assert!(
        metrics
            .encode()
            .contains("registry_gateway_limit_conflicts 1")
    );
    // Raised again: the conflict is gone.
    tx.send(compiled("tag_count_limit: 10\n", 3)).expect("send");
    assert!(c.review_limits().is_empty());
    assert!(
        metrics
            .encode()
            .contains("registry_gateway_limit_conflicts 0")
    );
}
