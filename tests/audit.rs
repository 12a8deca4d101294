//! `registry-gateway audit` through the built binary against a real registry (distribution 2.8)
//! filled with known contents: images over and under their limits, a multi-arch index with one
//! oversized platform, a repository with 10,000 tags, nested names, excluded tags, a rule and the
//! global limits. The JSON violations are asserted exactly, with the exit codes 0, 3 and 1.

use std::process::Output;
use std::time::Instant;

use registry_gateway_testkit as support;
use serde_json::{Value, json};
use support::{
    FaultProxy, Layout, Registry, RegistryClient, RegistryOptions, oci_image_layout,
    oci_index_layout, put_manifest_many,
};

const BIN: &str = env!("CARGO_BIN_EXE_registry-gateway");
const KB: u64 = 1024;
/// Requests in flight while filling the registry.
const FILL_CONCURRENCY: usize = 16;

const CONFIG: &str = r"max_image_size: 20KB
tag_count_limit: 5
rules:
  - path: ^team-a/.*
    limit: {max_image_size: 8KB, tag_count_limit: 3}
  - path: ^many/.*
    limit: {max_image_size: 1MB, tag_count_limit: 9999}
  - path: ^signed/.*
    limit:
      max_image_size: 20KB
      tag_count_limit: 2
      exclude_tags: ['^sha256-[0-9a-f]{64}\.sig$']
";

/// Every repository of the fixture but the one with 10,000 tags.
const FEW: &str = "^(a|clean|multi|signed|team-a)/";

/// Limits nothing in the fixture breaks.
const GENEROUS: &str = "max_image_size: 1GB\ntag_count_limit: 100000\n";

/// Runs the binary with `args` (no `REGISTRY_GATEWAY_*` from the environment) off the runtime.
async fn audit(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("audit").args(&args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REGISTRY_GATEWAY_") {
                cmd.env_remove(key);
            }
        }
        cmd.output().expect("the binary runs")
    })
    .await
    .expect("audit task")
}

fn args(config: &std::path::Path, registry_url: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--config".to_owned(),
        config.display().to_string(),
        "--registry-url".to_owned(),
        registry_url.to_owned(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The one JSON document on stdout.
fn document(out: &Output) -> Value {
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\nstderr: {}", text(&out.stderr)))
}

fn write_config(dir: &std::path::Path, name: &str, yaml: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, yaml).expect("config");
    path
}

/// What the fixture pushed, for the expected violations.
struct Fixture {
    big: Layout,
    nested: Layout,
    index: Layout,
}

async fn push(client: &RegistryClient, repo: &str, tag: &str, layout: &Layout) {
    let reply = client.push_layout(repo, tag, layout).await;
    assert_eq!(reply.status, 201, "push {repo}:{tag}: {}", reply.text());
}

async fn fill(registry: &Registry, dir: &std::path::Path) -> Fixture {
    let client = registry.client();
    let small = oci_image_layout(&dir.join("small"), &[4 * KB, 2 * KB], 1);
    let big = oci_image_layout(&dir.join("big"), &[10 * KB], 2);
    let nested = oci_image_layout(&dir.join("nested"), &[25 * KB], 3);
    let index = oci_index_layout(&dir.join("index"), &[&[5 * KB], &[30 * KB]]);

    for tag in ["v1", "v2", "v4"] {
        push(&client, "team-a/app", tag, &small).await;
    }
    push(&client, "team-a/app", "v3", &big).await;
    for tag in ["latest", "stable"] {
        push(&client, "multi/arch", tag, &index).await;
    }
    push(&client, "a/b/c/d", "v1", &nested).await;
    let signature_tag = format!("sha256-{}.sig", "a".repeat(64));
    for tag in ["v1", "v2", signature_tag.as_str()] {
        push(&client, "signed/app", tag, &small).await;
    }
    push(&client, "clean/app", "v1", &small).await;

    // 10,000 tags of one manifest: its blobs once, then raw PUTs of the same bytes.
    push(&client, "many/tags", "t00000", &small).await;
    let tags = (1..10_000).map(|i| ("many/tags".to_owned(), format!("t{i:05}")));
    put_manifest_many(
        &client,
        tags,
        &small.media_type,
        &small.manifest,
        FILL_CONCURRENCY,
    )
    .await;
    Fixture { big, nested, index }
}

/// A finding as `--json` prints it, under the global limits (`rule` null) and for no index
/// child (`platform` null); [`with`] sets what differs.
fn finding(
    repository: &str,
    tag: Option<&str>,
    kind: &str,
    (measured, limit): (u64, u64),
    digest: Option<&str>,
) -> Value {
    json!({
        "repository": repository,
        "tag": tag,
        "kind": kind,
        "measured": measured,
        "limit": limit,
        "rule": null,
        "digest": digest,
        "platform": null,
    })
}

/// The image of `repository:tag`, the manifest `digest`, measured against its size limit.
fn image_size(repository: &str, tag: &str, digest: &str, sizes: (u64, u64)) -> Value {
    finding(repository, Some(tag), "image_size", sizes, Some(digest))
}

/// The tags of `repository` counted against its tag limit.
fn tag_count(repository: &str, counts: (u64, u64)) -> Value {
    finding(repository, None, "tag_count", counts, None)
}

/// `finding` with the fields of `fields` (an object) set.
fn with(mut finding: Value, fields: Value) -> Value {
    if let (Some(finding), Value::Object(fields)) = (finding.as_object_mut(), fields) {
        finding.extend(fields);
    }
    finding
}

/// Violations without fields another build may add (`enforcement`), for exact comparison.
fn core_fields(document: &Value) -> Vec<Value> {
    document["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .map(|v| {
            let mut v = v.clone();
            if let Some(object) = v.as_object_mut() {
                object.remove("enforcement");
            }
            v
        })
        .collect()
}

fn expected(fixture: &Fixture) -> Vec<Value> {
    let arm64 = &fixture.index.images[1];
    // Both tags name the same index, so both report its arm64 child.
    let multi_arch = |tag| {
        with(
            image_size("multi/arch", tag, &arm64.digest, (30 * KB, 20 * KB)),
            json!({"platform": "linux/arm64"}),
        )
    };
    let team_a = json!({"rule": {"index": 0, "path": "^team-a/.*"}});
    vec![
        image_size("a/b/c/d", "v1", &fixture.nested.digest, (25 * KB, 20 * KB)),
        with(
            tag_count("many/tags", (10_000, 9999)),
            json!({"rule": {"index": 1, "path": "^many/.*"}}),
        ),
        multi_arch("latest"),
        multi_arch("stable"),
        with(
            image_size("team-a/app", "v3", &fixture.big.digest, (10 * KB, 8 * KB)),
            team_a.clone(),
        ),
        with(tag_count("team-a/app", (4, 3)), team_a),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_lists_every_violation_exactly_and_exits_3() {
    let registry = Registry::start(RegistryOptions::open()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let fixture = fill(&registry, dir.path()).await;
    eprintln!("filled the registry in {:?}", started.elapsed());
    let config = write_config(dir.path(), "config.yaml", CONFIG);
    let generous = write_config(dir.path(), "generous.yaml", GENEROUS);
    let url = registry.url();

    // Two repositories a catalog page: every page is followed through its Link header.
    let started = Instant::now();
    let out = audit(args(&config, &url, &["--json", "--catalog-page-size", "2"])).await;
    eprintln!("audited in {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let doc = document(&out);
    assert_eq!(core_fields(&doc), expected(&fixture), "{doc}");
    assert_eq!(doc["repositories_scanned"], 6, "{doc}");
    assert_eq!(doc["tags_scanned"], 4 + 2 + 1 + 10_000 + 3 + 1, "{doc}");
    assert_eq!(doc["errors"], json!([]));
    assert_eq!(doc["complete"], true);
    let catalog_pages = registry.count_requests("GET", "/v2/_catalog");
    assert!(catalog_pages >= 3, "{catalog_pages} catalog pages read");
    // The index's children are read once each, whatever the number of tags naming them.
    for child in &fixture.index.images {
        let path = format!("/v2/multi/arch/manifests/{}", child.digest);
        assert_eq!(registry.count_requests("GET", &path), 1, "{path}");
    }
    // signed/app holds 3 tags against a limit of 2, one of them excluded: no violation.
    assert!(!doc.to_string().contains("signed/app"), "{doc}");

    // --repository filters by regex.
    let out = audit(args(&config, &url, &["--json", "--repository", "^team-a/"])).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let doc = document(&out);
    let team: Vec<Value> = expected(&fixture)
        .into_iter()
        .filter(|v| v["repository"] == "team-a/app")
        .collect();
    assert_eq!(core_fields(&doc), team);
    assert_eq!(doc["repositories_scanned"], 1);
    assert_eq!(doc["tags_scanned"], 4);

    // The table, by default.
    let out = audit(args(&config, &url, &["--repository", "^(team-a|multi)/"])).await;
    assert_eq!(out.status.code(), Some(3));
    let table = text(&out.stdout);
    assert!(table.starts_with("REPOSITORY"), "{table}");
    for fragment in [
        "team-a/app  v3",
        "10240 bytes (10KB)",
        "8192 bytes (8KB)",
        "rule 0 (^team-a/.*)",
        "4 tags",
        "linux/arm64",
        "global",
        "audited 2 repositories and 6 tags: 4 violations",
    ] {
        assert!(table.contains(fragment), "`{fragment}` missing:\n{table}");
    }

    // The audits below leave out the 10,000 tags, already read once above.
    let small = ["--json", "--repository", FEW];

    // Within generous limits: nothing to report, exit 0.
    let out = audit(args(
        &generous,
        &url,
        &[&small[..], &["--concurrency", "4"]].concat(),
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc = document(&out);
    assert_eq!(doc["violations"], json!([]));
    assert_eq!(doc["repositories_scanned"], 5);

    // A small fake proxy in front of the real registry answers 500 to one repository's tag
    // list (a real registry cannot be made to fail on demand): that repository is an error,
    // retried first, the others are still audited, and the exit code says incomplete.
    let proxy = FaultProxy::start(&url, &[("/v2/clean/app/tags/list", 500)]).await;
    let out = audit(args(&config, &proxy.url(), &small)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let doc = document(&out);
    assert_eq!(
        doc["errors"],
        json!([{"repository": "clean/app", "tag": null, "cause": "tag list: HTTP 500 (after 4 attempts)"}])
    );
    assert_eq!(proxy.injected(), 4, "the first attempt and three retries");
    let few: Vec<Value> = expected(&fixture)
        .into_iter()
        .filter(|v| v["repository"] != "many/tags")
        .collect();
    assert_eq!(core_fields(&doc), few, "violations still listed");
    assert_eq!(doc["repositories_scanned"], 4);
    assert_eq!(doc["complete"], false);
    assert!(
        text(&out.stderr).contains("incomplete"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_at_flags_what_reached_its_share_and_violations_carry_their_enforcement() {
    let registry = Registry::start(RegistryOptions::open()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let client = registry.client();
    let near = oci_image_layout(&dir.path().join("near"), &[9 * KB], 11);
    let over = oci_image_layout(&dir.path().join("over"), &[12 * KB], 12);
    for tag in ["a", "b", "c", "d"] {
        push(&client, "soft/app", tag, &near).await;
    }
    push(&client, "soon/app", "big", &over).await;
    let config = write_config(
        dir.path(),
        "config.yaml",
        "max_image_size: 10KB\ntag_count_limit: 5\nwarn_at: 80%\nrules:\n  - path: ^soon/.*\n    limit: {max_image_size: 10KB, tag_count_limit: 5, enforcement: warn}\n",
    );
    let out = audit(args(&config, &registry.url(), &["--json"])).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let doc = document(&out);
    let big = with(
        image_size("soon/app", "big", &over.digest, (12 * KB, 10 * KB)),
        json!({"rule": {"index": 0, "path": "^soon/.*"}, "enforcement": "warn"}),
    );
    assert_eq!(doc["violations"], json!([big]), "{doc}");
    // 9KB of 10KB and 4 of 5 tags reach 80% without breaking the limit: warnings, one per
    // tag for the size.
    let reached = json!({"enforcement": "enforce", "warn_at": "80%"});
    let mut warnings: Vec<Value> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|tag| {
            let size = image_size("soft/app", tag, &near.digest, (9 * KB, 10 * KB));
            with(size, reached.clone())
        })
        .collect();
    warnings.push(with(tag_count("soft/app", (4, 5)), reached));
    assert_eq!(doc["warnings"], json!(warnings), "{doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_exits_1_with_the_catalog_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), "config.yaml", CONFIG);
    // A port that was free a moment ago: nothing listens there.
    let url = format!("http://127.0.0.1:{}", support::free_port());
    let out = audit(args(&config, &url, &["--json"])).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let doc = document(&out);
    let errors = doc["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{doc}");
    assert!(errors[0]["repository"].is_null());
    let cause = errors[0]["cause"].as_str().expect("cause");
    assert!(
        cause.starts_with("catalog page 1: the registry could not be reached")
            && cause.ends_with("(after 4 attempts)"),
        "{cause}"
    );
    assert_eq!(doc["repositories_scanned"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_mistakes_are_explained() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), "config.yaml", CONFIG);
    let url = "http://127.0.0.1:9";
    let cases: [(Vec<String>, i32, &str); 5] = [
        (
            args(&config, url, &["--repository", "team/("]),
            2,
            "invalid value 'team/(' for '--repository <REGEX>': not a valid regex",
        ),
        (
            args(&config, url, &["--concurrency", "0"]),
            2,
            "must be from 1 to 64",
        ),
        (
            args(&dir.path().join("missing.yaml"), url, &[]),
            1,
            "cannot read the configuration",
        ),
        (
            args(
                &write_config(dir.path(), "bad.yaml", "max_image_size: 10XB\n"),
                url,
                &[],
            ),
            1,
            "unknown unit `XB`",
        ),
        (
            vec!["--config".into(), config.display().to_string()],
            2,
            "--registry-url <REGISTRY_URL>",
        ),
    ];
    for (argv, code, fragment) in cases {
        let out = audit(argv.clone()).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{argv:?}: {stderr}");
        assert!(
            stderr.contains(fragment),
            "{argv:?}: `{fragment}` in {stderr}"
        );
        assert!(out.stdout.is_empty(), "{argv:?}: nothing on stdout");
    }
}
