//! Rolling limits out through real Envoys, in both filter modes (`envoy/envoy.yaml` for
//! ext_proc, `envoy/ext-authz.yaml` for ext_authz), in front of one real registry and sidecar:
//! `dry-run` lets a push over a limit through and records it, `warn` also hands the client the
//! refusal in a `Warning` header, and `warn_at` warns at its threshold and not below.

use crate::support;

use support::{HttpReply, RegistryClient, Scrape, Stack, StackOptions, one_layer_image as image};

const OCI: &str = support::OCI_MANIFEST;
const DECISIONS: &str = "registry_gateway_decisions_total";

const CONFIG: &str = "\
max_image_size: 1GB
tag_count_limit: 100
rules:
  - path: ^trial/.*
    limit: {max_image_size: 1KB, tag_count_limit: 2, enforcement: dry-run}
  - path: ^soon/.*
    limit: {max_image_size: 1KB, tag_count_limit: 2, enforcement: warn}
  - path: ^soft/.*
    limit: {max_image_size: 10KB, tag_count_limit: 5, warn_at: 80%}
";

/// Both front doors of one stack: ext_proc (the stack's own Envoy) and ext_authz.
struct Doors {
    stack: Stack,
    authz: support::Envoy,
}

impl Doors {
    async fn start() -> Doors {
        let stack = Stack::start_with(StackOptions::new(CONFIG)).await;
        let authz = stack.start_envoy("envoy/ext-authz.yaml").await;
        Doors { stack, authz }
    }

    /// `(mode label, client)` for each filter mode.
    fn clients(&self) -> [(&'static str, RegistryClient); 2] {
        [
            ("ext_proc", self.stack.client()),
            ("ext_authz", RegistryClient::new(&self.authz.url())),
        ]
    }
}

/// Every `Warning` header of a reply, raw.
fn warnings(reply: &HttpReply) -> Vec<String> {
    reply
        .headers
        .get_all("warning")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

fn would_deny(scrape: &Scrape, transport: &str, reason: &str, enforcement: &str) -> u64 {
    scrape.get(
        DECISIONS,
        &[
            ("transport", transport),
            ("outcome", "would_deny"),
            ("reason", reason),
            ("enforcement", enforcement),
        ],
    )
}

#[tokio::test]
async fn dry_run_lets_pushes_over_the_limits_through_and_records_each_would_be_denial() {
    let doors = Doors::start().await;
    let admin = doors.stack.gateway.admin();
    for (transport, client) in doors.clients() {
        let repo = format!("trial/{transport}");
        let before = Scrape::take(&admin).await;
        // Over the size limit: stored, nothing said to the client.
        let big = image(&client, &repo, 2000, "big").await;
        let reply = client.put_manifest(&repo, "big", OCI, &big).await;
        assert_eq!(reply.status, 201, "{transport}: {}", reply.text());
        assert_eq!(warnings(&reply), Vec::<String>::new(), "{transport}");
        // Past the tag limit of 2: every push stored, and the count stays true (each slot is
        // held as in enforce), so the third and fourth are would-be denials.
        for tag in ["t2", "t3", "t4"] {
            let small = image(&client, &repo, 10, tag).await;
            let reply = client.put_manifest(&repo, tag, OCI, &small).await;
            assert_eq!(reply.status, 201, "{transport} {tag}: {}", reply.text());
            assert!(warnings(&reply).is_empty(), "{transport} {tag}");
        }
        let after = Scrape::take(&admin).await;
        let delta = |reason| {
            would_deny(&after, transport, reason, "dry-run")
                - would_deny(&before, transport, reason, "dry-run")
        };
        assert_eq!(delta("image_too_large"), 1, "{transport}");
        assert_eq!(
            delta("tag_limit"),
            2,
            "{transport}: t3 and t4 over a limit of 2"
        );
        let mut tags = doors.stack.registry_client().list_tags(&repo).await;
        tags.sort();
        assert_eq!(tags, ["big", "t2", "t3", "t4"], "{transport}");
    }
    let log = doors.stack.gateway.log();
    let line = log
        .lines()
        .find(|l| l.contains("trial/ext_proc") && l.contains("image_too_large"))
        .unwrap_or_else(|| panic!("no decision line for the dry run in:\n{log}"));
    for fragment in [
        "would_deny",
        "dry-run",
        "image_bytes=2",
        "max_image_bytes=1024",
    ] {
        assert!(line.contains(fragment), "{fragment} in {line}");
    }
}

#[tokio::test]
async fn warn_hands_the_client_the_refusal_in_a_warning_header() {
    let doors = Doors::start().await;
    for (transport, client) in doors.clients() {
        let repo = format!("soon/{transport}");
        let big = image(&client, &repo, 2000, "big").await;
        let reply = client.put_manifest(&repo, "big", OCI, &big).await;
        assert_eq!(reply.status, 201, "{transport}: {}", reply.text());
        let seen = warnings(&reply);
        assert_eq!(seen.len(), 1, "{transport}: {seen:?}");
        let value = &seen[0];
        assert!(
            value.starts_with("299 - \"") && value.ends_with('"'),
            "{value}"
        );
        for fragment in [
            "enforcement: warn",
            &format!("push to {repo}:big refused: the image's layers total 2000 bytes"),
            "over the limit of 1024 bytes (1KB) set by rule 1",
        ] {
            assert!(
                value.contains(fragment),
                "{transport}: {fragment} in {value}"
            );
        }
        assert!(value.len() <= 4096);
        // A push within every limit gets no header.
        let small = image(&client, &repo, 10, "small").await;
        let reply = client.put_manifest(&repo, "small", OCI, &small).await;
        assert_eq!(reply.status, 201);
        assert!(
            warnings(&reply).is_empty(),
            "{transport}: {:?}",
            warnings(&reply)
        );
    }
}

#[tokio::test]
async fn warn_at_fires_at_the_threshold_and_not_below_and_the_limit_still_holds() {
    let doors = Doors::start().await;
    for (transport, client) in doors.clients() {
        let repo = format!("soft/{transport}");
        // 80% of 5 tags: the fourth tag is the first to warn.
        for n in 1..=5 {
            let tag = format!("v{n}");
            let body = image(&client, &repo, 10, &tag).await;
            let reply = client.put_manifest(&repo, &tag, OCI, &body).await;
            assert_eq!(reply.status, 201, "{transport} {tag}: {}", reply.text());
            let seen = warnings(&reply);
            if n < 4 {
                assert!(seen.is_empty(), "{transport} {tag}: {seen:?}");
            } else {
                assert_eq!(seen.len(), 1, "{transport} {tag}: {seen:?}");
                let expected = format!("299 - \"{repo} now has {n} of its 5 tags");
                assert!(seen[0].starts_with(&expected), "{transport}: {}", seen[0]);
            }
        }
        let body = image(&client, &repo, 10, "v6").await;
        let reply = client.put_manifest(&repo, "v6", OCI, &body).await;
        assert_eq!(
            reply.status, 403,
            "{transport}: warn_at does not lift the limit"
        );
        assert!(warnings(&reply).is_empty());
        // Size: 80% of 10KB is 8192 bytes; one byte less is quiet. By digest, so no tag count.
        for (bytes, warned) in [(8191, false), (8192, true)] {
            let body = image(&client, &repo, bytes, &format!("s{bytes}")).await;
            let digest = support::sha256_digest(&body);
            let reply = client.put_manifest(&repo, &digest, OCI, &body).await;
            assert_eq!(reply.status, 201, "{transport} {bytes}: {}", reply.text());
            let seen = warnings(&reply);
            assert_eq!(!seen.is_empty(), warned, "{transport} {bytes}: {seen:?}");
            if warned {
                assert!(
                    seen[0].contains("8192 bytes, 80% of the limit of 10240 bytes"),
                    "{}",
                    seen[0]
                );
            }
        }
    }
}

/// On a shared store the reservation follows the same rule: a push let through past a `dry-run`
/// tag limit holds its slot in Redis, so every replica's count stays true.
#[tokio::test]
async fn dry_run_counts_stay_true_on_a_shared_store() {
    let redis = support::Redis::start(false).await;
    let mut options = StackOptions::new(CONFIG);
    options.gateway_extra_args = vec!["--state".into(), redis.url()];
    let stack = Stack::start_with(options).await;
    let client = stack.client();
    let admin = stack.gateway.admin();
    let repo = "trial/shared";
    let before = Scrape::take(&admin).await;
    for tag in ["a", "b", "c", "d"] {
        let body = image(&client, repo, 10, tag).await;
        let reply = client.put_manifest(repo, tag, OCI, &body).await;
        assert_eq!(reply.status, 201, "{tag}: {}", reply.text());
    }
    let after = Scrape::take(&admin).await;
    let delta = would_deny(&after, "ext_proc", "tag_limit", "dry-run")
        - would_deny(&before, "ext_proc", "tag_limit", "dry-run");
    assert_eq!(delta, 2, "c and d are over a limit of 2");
    let log = stack.gateway.log();
    let last = log
        .lines()
        .rfind(|l| l.contains(repo) && l.contains("reference=d"))
        .unwrap_or_else(|| panic!("no decision line for d in:\n{log}"));
    assert!(last.contains("tag_count=3"), "the count includes c: {last}");
}

/// A reload that lowers a limit below what a cached repository holds is in `/status`, the
/// metric and the log at once, before any push.
#[tokio::test]
async fn a_reload_below_a_repository_count_shows_in_status_at_once() {
    let stack = Stack::start(CONFIG).await;
    let client = stack.client();
    let repo = "team/app";
    for tag in ["a", "b", "c"] {
        let body = image(&client, repo, 10, tag).await;
        let reply = client.put_manifest(repo, tag, OCI, &body).await;
        assert_eq!(reply.status, 201, "{tag}: {}", reply.text());
    }
    stack.write_config(&format!(
        "{CONFIG}  - path: ^team/.*\n    limit: {{max_image_size: 1GB, tag_count_limit: 2}}\n"
    ));
    let admin = stack.gateway.admin();
    let conflicts = support::eventually(
        std::time::Duration::from_secs(10),
        "the conflict in /status",
        || async {
            let status = admin.request("GET", "/status", &[], None).await.json();
            match status["limit_conflicts"].as_array() {
                Some(list) if !list.is_empty() => Ok(list.clone()),
                _ => Err(status),
            }
        },
    )
    .await;
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0]["repository"], repo);
    assert_eq!(conflicts[0]["tag_count"], 3);
    assert_eq!(conflicts[0]["tag_count_limit"], 2);
    assert_eq!(conflicts[0]["rule"]["index"], 3);
    let scrape = Scrape::take(&admin).await;
    assert_eq!(scrape.get("registry_gateway_limit_conflicts", &[]), 1);
    let log = stack.gateway.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("below what this repository already holds"))
        .count();
    assert_eq!(lines, 1, "logged once:\n{log}");
}
