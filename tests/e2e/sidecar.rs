//! The product end to end: a real CNCF distribution registry, the `registry-gateway serve` binary
//! and a real Envoy running the shipped `envoy/envoy.yaml` (only addresses substituted), all on
//! 127.0.0.1 ephemeral ports. Images are OCI layouts built on disk and pushed with the real
//! skopeo; raw HTTP through Envoy covers what no client would send.
//!
//! Every test starts its own stack with the seed policy (below) and proves one scenario of
//! issue 3, item 6. Limits are 1024-based: 20MB = 20971520 bytes.

use crate::support;

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{
    Descriptor, Envoy, Gateway, GatewayOptions, HttpReply, OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST,
    Registry, RegistryClient, RegistryOptions, Scrape, Stack, StackOptions, TokenIssuer,
    eventually, oci_image_layout, oci_index_layout, oci_index_layout_seeded, sha256_digest,
    skopeo_copy, skopeo_copy_all, skopeo_inspect_raw,
};

/// The seed product's example limits (`tests/fixtures/policy/valid/seed.yaml`).
const SEED_CONFIG: &str = include_str!("../fixtures/policy/valid/seed.yaml");

const MIB: u64 = 1024 * 1024;
/// project-1's `max_image_size: 20MB`.
const PROJECT_1_LIMIT: u64 = 20 * MIB;
const RULE_0: &str = "rule 0 (path `^project-1/.*`)";
const RULE_2: &str = "rule 2 (path `^project-2/.*`)";
const GLOBAL: &str = "the global limit";

// ---------------------------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------------------------

fn temp_dir() -> tempfile::TempDir {
    support::temp_dir("rg-e2e-sidecar-")
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// skopeo exited 0.
fn assert_copied(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what}: skopeo failed ({}):\n{}",
        output.status,
        stderr_of(output)
    );
}

/// skopeo failed with a policy refusal printed as `denied: <message>`, and the gateway's message
/// (the text after `denied: `, not skopeo's own words before it) holds every one of `needles`.
/// Returns that message.
fn assert_skopeo_denied(output: &Output, what: &str, needles: &[&str]) -> String {
    let stderr = stderr_of(output);
    assert!(
        !output.status.success(),
        "{what}: skopeo must fail, but succeeded:\n{stderr}"
    );
    let (_, message) = stderr.split_once("denied: ").unwrap_or_else(|| {
        panic!("{what}: skopeo must print the refusal as `denied: <message>`:\n{stderr}")
    });
    assert_contains_all(message, needles, what);
    message.to_owned()
}

fn assert_contains_all(text: &str, needles: &[&str], what: &str) {
    for needle in needles {
        assert!(
            text.contains(needle),
            "{what}: expected {needle:?} in:\n{text}"
        );
    }
}

/// An OCI error answer: `status`, `content-type: application/json`, `errors[0].code == code`.
/// Returns `errors[0].message`.
fn assert_oci_error(reply: &HttpReply, status: u16, code: &str, what: &str) -> String {
    assert_eq!(
        reply.status,
        status,
        "{what}: expected HTTP {status}, got {}: {}",
        reply.status,
        reply.text()
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{what}: content-type of {}",
        reply.text()
    );
    let body = reply.json();
    let error = &body["errors"][0];
    assert_eq!(error["code"], code, "{what}: {body}");
    error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no message in {body}"))
        .to_owned()
}

fn assert_created(reply: &HttpReply, what: &str) {
    assert_eq!(
        reply.status,
        201,
        "{what}: expected 201 Created, got {}: {}",
        reply.status,
        reply.text()
    );
}

/// `<n> bytes (<display>)`, as every refusal shows a limit.
fn limit_text(bytes: u64, display: &str) -> String {
    format!("{bytes} bytes ({display})")
}

/// Pseudo-random bytes (incompressible, not all zero), deterministic per seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn descriptor_of(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest: sha256_digest(bytes),
        size: bytes.len() as u64,
    }
}

/// A layer descriptor that claims `size` bytes for a blob nobody uploads (refused manifests are
/// judged before the registry looks for their blobs).
fn phantom_layer(size: u64, seed: u64) -> Descriptor {
    Descriptor {
        media_type: OCI_LAYER_TAR.to_owned(),
        digest: sha256_digest(&seed.to_le_bytes()),
        size,
    }
}

fn descriptor_json(d: &Descriptor) -> serde_json::Value {
    json!({ "mediaType": d.media_type, "digest": d.digest, "size": d.size })
}

/// A small image config blob.
fn config_blob(seed: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [] },
        "history": [{ "created_by": format!("registry-gateway e2e config {seed}") }],
    }))
    .expect("JSON value serialises")
}

/// An OCI image manifest over `config` and `layers`, with optional manifest annotations.
fn oci_manifest(
    config: &Descriptor,
    layers: &[Descriptor],
    annotations: Option<serde_json::Value>,
) -> Vec<u8> {
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor_json(config),
        "layers": layers.iter().map(descriptor_json).collect::<Vec<_>>(),
    });
    if let Some(annotations) = annotations {
        manifest["annotations"] = annotations;
    }
    serde_json::to_vec(&manifest).expect("JSON value serialises")
}

/// Uploads a config blob and one `layer_len`-byte layer blob into `repo` through `client`, and
/// returns their descriptors.
async fn upload_config_and_layer(
    client: &RegistryClient,
    repo: &str,
    layer_len: usize,
    seed: u64,
) -> (Descriptor, Descriptor) {
    let config = config_blob(seed);
    let layer = noise(layer_len, seed);
    client.upload_blob(repo, &config).await;
    client.upload_blob(repo, &layer).await;
    (
        descriptor_of(OCI_CONFIG, &config),
        descriptor_of(OCI_LAYER_TAR, &layer),
    )
}

/// Uploads the blobs of `upload_config_and_layer(client, repo, MIB, 3)` into another `repo`.
async fn upload_mib_image_blobs(client: &RegistryClient, repo: &str) {
    for blob in [config_blob(3), noise(MIB as usize, 3)] {
        client.upload_blob(repo, &blob).await;
    }
}

/// PUTs `manifest` as `repo:tag` through `client` until the answer is `status` (bounded by
/// `within`), and returns that answer.
async fn put_until(
    client: &RegistryClient,
    (repo, tag): (&str, &str),
    manifest: &[u8],
    status: u16,
    within: Duration,
    what: &str,
) -> HttpReply {
    eventually(within, what, || {
        let client = client.clone();
        let manifest = manifest.to_vec();
        async move {
            let reply = client
                .put_manifest(repo, tag, OCI_MANIFEST, &manifest)
                .await;
            if reply.status == status {
                Ok(reply)
            } else {
                Err(format!("HTTP {}: {}", reply.status, reply.text()))
            }
        }
    })
    .await
}

/// With limit 3 in `project-1/app`: two tags of a small image (seeded `seed`) pushed by skopeo
/// straight to the registry with `creds`, a third through Envoy is stored, and a fourth is
/// refused for the tag limit (only a tag list read the sidecar made with its own credentials can
/// tell it about the first two); `direct` then lists exactly the three.
async fn assert_fourth_tag_refused_behind_auth(
    stack: &Stack,
    creds: &str,
    seed: u64,
    direct: &RegistryClient,
    what: &str,
) {
    let dir = temp_dir();
    let layout = oci_image_layout(dir.path(), &[3000], seed);
    for tag in ["v1", "v2"] {
        let dest = format!("{}/project-1/app:{tag}", stack.registry.host());
        let copied = skopeo_copy(&layout.dir, &dest, &["--dest-creds", creds]).await;
        assert_copied(&copied, &format!("{tag} straight to the registry"));
    }

    let host = stack.envoy_host();
    let copied = skopeo_copy(
        &layout.dir,
        &format!("{host}/project-1/app:v3"),
        &["--dest-creds", creds],
    )
    .await;
    assert_copied(&copied, "the third tag through Envoy");
    let refused = skopeo_copy(
        &layout.dir,
        &format!("{host}/project-1/app:v4"),
        &["--dest-creds", creds],
    )
    .await;
    assert_skopeo_denied(
        &refused,
        what,
        &["project-1/app", "already has 3 tags", "v4", RULE_0],
    );
    assert_eq!(
        registry_tags(direct, "project-1/app").await,
        strings(&["v1", "v2", "v3"])
    );
}

/// The registry's tags for `repo`, read directly (not through Envoy), sorted.
async fn registry_tags(client: &RegistryClient, repo: &str) -> Vec<String> {
    let mut tags = client.list_tags(repo).await;
    tags.sort();
    tags
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The value of one exact series line of a Prometheus/OpenMetrics text exposition.
fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

async fn admin_text(client: &RegistryClient, path: &str) -> String {
    let reply = client
        .get(path)
        .await
        .unwrap_or_else(|e| panic!("GET {path} on the admin port: {e}"));
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.text());
    reply.text()
}

/// A TCP server that accepts connections and never answers: a registry that hangs.
async fn silent_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("bound address");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

// ---------------------------------------------------------------------------------------------
// 1. An allowed push
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_allowed_skopeo_push_through_envoy_is_stored_and_pulls_back_with_the_same_digest() {
    let stack = Stack::start(SEED_CONFIG).await;
    let dir = temp_dir();
    let layout = oci_image_layout(dir.path(), &[3 * MIB, 4096, 1], 1);
    let dest = format!("{}/project-1/app:v1", stack.envoy_host());

    let copied = skopeo_copy(&layout.dir, &dest, &[]).await;
    assert_copied(&copied, "allowed push");

    // Pulled back through Envoy: the very bytes of the layout's manifest.
    let pulled = stack.client().get_manifest("project-1/app", "v1").await;
    assert_eq!(pulled.status, 200, "GET manifest: {}", pulled.text());
    assert_eq!(sha256_digest(&pulled.body), layout.digest);
    assert_eq!(
        pulled.header("docker-content-digest"),
        Some(layout.digest.as_str())
    );
    let raw = skopeo_inspect_raw(&dest, &[]).await;
    assert_copied(&raw, "skopeo inspect --raw");
    assert_eq!(sha256_digest(&raw.stdout), layout.digest);
    assert_eq!(
        registry_tags(&stack.registry_client(), "project-1/app").await,
        strings(&["v1"])
    );

    // The manifest PUT was decided by the sidecar (an ext_proc stream), not merely proxied.
    let streams = stack
        .envoy
        .stat("http.registry.ext_proc.streams_started")
        .await
        .unwrap_or(0);
    assert!(streams >= 1, "ext_proc streams started: {streams}");
}

// ---------------------------------------------------------------------------------------------
// 2. Size boundaries
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn layers_of_exactly_the_limit_pass_and_one_byte_more_is_refused_in_skopeo() {
    let stack = Stack::start(SEED_CONFIG).await;
    let exact_dir = temp_dir();
    let over_dir = temp_dir();
    // Same seed: the first 10 MiB layer is the same blob in both, so skopeo uploads it once.
    let exact = oci_image_layout(exact_dir.path(), &[10 * MIB, 10 * MIB], 2);
    let over = oci_image_layout(over_dir.path(), &[10 * MIB, 10 * MIB + 1], 2);
    assert_eq!(exact.images[0].layers_size(), PROJECT_1_LIMIT);
    assert_eq!(over.images[0].layers_size(), PROJECT_1_LIMIT + 1);

    let host = stack.envoy_host();
    let passed = skopeo_copy(&exact.dir, &format!("{host}/project-1/x:exact"), &[]).await;
    assert_copied(&passed, "layers of exactly 20971520 bytes");

    let refused = skopeo_copy(&over.dir, &format!("{host}/project-1/x:over"), &[]).await;
    assert_skopeo_denied(
        &refused,
        "layers of 20971521 bytes",
        &[
            "project-1/x",
            "20971521 bytes",
            &limit_text(PROJECT_1_LIMIT, "20MB"),
            RULE_0,
        ],
    );

    let direct = stack.registry_client();
    assert_eq!(
        registry_tags(&direct, "project-1/x").await,
        strings(&["exact"])
    );
    assert_eq!(
        direct
            .get_manifest("project-1/x", &over.digest)
            .await
            .status,
        404,
        "the refused manifest is not stored"
    );
    let pulled = direct.get_manifest("project-1/x", "exact").await;
    assert_eq!(sha256_digest(&pulled.body), exact.digest);
}

// ---------------------------------------------------------------------------------------------
// 3. Rule order
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_first_matching_rule_decides_and_unmatched_repositories_get_the_global_limit() {
    let stack = Stack::start(SEED_CONFIG).await;
    let client = stack.client();
    // Images are one real 1 MiB layer blob listed N times: N MiB measured, every descriptor
    // true, and only 1 MiB uploaded per repository. Refused manifests need no blobs at all:
    // the gateway decides before the registry looks for them.
    let (config, layer) =
        upload_config_and_layer(&client, "project-2/big-image", MIB as usize, 3).await;
    let image = |mib: usize| oci_manifest(&config, &vec![layer.clone(); mib], None);
    let sixty = image(60);

    // Rule 1 (5GB) wins over rule 2 (50MB) for project-2/big-image: the rule matches the
    // repository itself (name + "/") and everything under it.
    let reply = client
        .put_manifest("project-2/big-image", "v1", OCI_MANIFEST, &sixty)
        .await;
    assert_created(&reply, "60MB into project-2/big-image (rule 1)");
    upload_mib_image_blobs(&client, "project-2/big-image/app").await;
    let reply = client
        .put_manifest("project-2/big-image/app", "v1", OCI_MANIFEST, &sixty)
        .await;
    assert_created(&reply, "60MB into project-2/big-image/app (rule 1)");

    // The same image elsewhere in project-2 falls to rule 2, whose limit is inclusive; no rule
    // matches library/x: the global 100MB.
    for (repo, over, limit, rule, what) in [
        ("project-2/api", 60, 50, RULE_2, "rule 2"),
        ("library/x", 101, 100, GLOBAL, "global"),
    ] {
        let reply = client
            .put_manifest(repo, "v1", OCI_MANIFEST, &image(over))
            .await;
        let message = assert_oci_error(
            &reply,
            403,
            "DENIED",
            &format!("{over}MB into {repo} ({what})"),
        );
        let needles = [
            repo,
            &format!("{} bytes", over as u64 * MIB),
            &limit_text(limit as u64 * MIB, &format!("{limit}MB")),
            rule,
        ];
        assert_contains_all(&message, &needles, &format!("{what} refusal"));
        upload_mib_image_blobs(&client, repo).await;
        let reply = client
            .put_manifest(repo, "v2", OCI_MANIFEST, &image(limit))
            .await;
        assert_created(&reply, &format!("exactly {limit}MB into {repo}"));
    }

    let direct = stack.registry_client();
    assert_eq!(
        registry_tags(&direct, "project-2/api").await,
        strings(&["v2"])
    );
    assert_eq!(registry_tags(&direct, "library/x").await, strings(&["v2"]));
}

// ---------------------------------------------------------------------------------------------
// 4. Tag limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_full_repository_accepts_overwrites_and_digest_pushes_but_refuses_a_new_tag() {
    let stack = Stack::start(SEED_CONFIG).await;
    let host = stack.envoy_host();
    let dirs: Vec<_> = (0..3).map(|_| temp_dir()).collect();
    let first = oci_image_layout(dirs[0].path(), &[2048, 10], 40);
    let second = oci_image_layout(dirs[1].path(), &[4096], 41);
    let third = oci_image_layout(dirs[2].path(), &[8192], 42);

    for tag in ["v1", "v2", "v3"] {
        let copied = skopeo_copy(&first.dir, &format!("{host}/project-1/app:{tag}"), &[]).await;
        assert_copied(&copied, &format!("filling project-1/app with {tag}"));
    }

    // At the limit: moving an existing tag to another image adds no tag.
    let copied = skopeo_copy(&second.dir, &format!("{host}/project-1/app:v1"), &[]).await;
    assert_copied(&copied, "overwriting v1 in a full repository");
    // A push by digest adds no tag either.
    let by_digest = format!("{host}/project-1/app@{}", third.digest);
    let copied = skopeo_copy(&third.dir, &by_digest, &[]).await;
    assert_copied(&copied, "push by digest into a full repository");

    // A fourth tag is refused, and skopeo shows why.
    let refused = skopeo_copy(&third.dir, &format!("{host}/project-1/app:v4"), &[]).await;
    assert_skopeo_denied(
        &refused,
        "a new tag in a full repository",
        &["project-1/app", "already has 3 tags", "v4", RULE_0],
    );

    let direct = stack.registry_client();
    assert_eq!(
        registry_tags(&direct, "project-1/app").await,
        strings(&["v1", "v2", "v3"])
    );
    let v1 = direct.get_manifest("project-1/app", "v1").await;
    assert_eq!(sha256_digest(&v1.body), second.digest, "v1 was moved");
    let stored = direct.get_manifest("project-1/app", &third.digest).await;
    assert_eq!(stored.status, 200, "the image pushed by digest is stored");
    // skopeo really wrote by digest (not by some tag), and that write was admitted.
    let digest_path = format!("/v2/project-1/app/manifests/{}", third.digest);
    let by_digest_puts: Vec<_> = stack
        .registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path() == digest_path)
        .collect();
    assert!(
        by_digest_puts.iter().any(|r| r.status == 201),
        "{by_digest_puts:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. A multi-arch index with one child over the limit
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_multi_arch_index_with_one_child_over_the_limit_is_refused_at_that_child() {
    let stack = Stack::start(SEED_CONFIG).await;
    let host = stack.envoy_host();
    let bad_dir = temp_dir();
    let good_dir = temp_dir();
    let bad = oci_index_layout(bad_dir.path(), &[&[1000], &[PROJECT_1_LIMIT + 1], &[2000]]);
    let good = oci_index_layout_seeded(good_dir.path(), &[&[1000], &[PROJECT_1_LIMIT], &[2000]], 7);
    let over_child = &bad.images[1];

    let refused = skopeo_copy_all(&bad.dir, &format!("{host}/project-1/multi:bad"), &[]).await;
    assert_skopeo_denied(
        &refused,
        "index with a 20971521-byte child",
        &[
            "project-1/multi",
            &over_child.digest,
            "20971521 bytes",
            &limit_text(PROJECT_1_LIMIT, "20MB"),
            RULE_0,
        ],
    );

    let direct = stack.registry_client();
    assert_eq!(
        direct.get_manifest("project-1/multi", "bad").await.status,
        404,
        "the index tag must not exist"
    );
    assert_eq!(
        direct
            .get_manifest("project-1/multi", &over_child.digest)
            .await
            .status,
        404,
        "the over-limit child must not be stored"
    );

    let copied = skopeo_copy_all(&good.dir, &format!("{host}/project-1/multi:good"), &[]).await;
    assert_copied(&copied, "index whose children are all within the limit");
    let pulled = direct.get_manifest("project-1/multi", "good").await;
    assert_eq!(sha256_digest(&pulled.body), good.digest);
    for child in &good.images {
        let stored = direct.get_manifest("project-1/multi", &child.digest).await;
        assert_eq!(stored.status, 200, "child {} stored", child.digest);
    }
    assert_eq!(
        registry_tags(&direct, "project-1/multi").await,
        strings(&["good"])
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Schema 1 and malformed bodies
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn schema_1_and_malformed_manifests_are_refused_as_invalid_and_never_stored() {
    let stack = Stack::start(SEED_CONFIG).await;
    let client = stack.client();
    let fixtures = support::repo_root().join("tests/fixtures/manifests");
    let read = |name: &str| {
        std::fs::read(fixtures.join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    };

    for (file, content_type, tag) in [
        (
            "schema1-signed.busybox.json",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "signed",
        ),
        (
            "schema1-unsigned.busybox.json",
            "application/vnd.docker.distribution.manifest.v1+json",
            "unsigned",
        ),
    ] {
        let reply = client
            .put_manifest("project-1/old", tag, content_type, &read(file))
            .await;
        let message = assert_oci_error(&reply, 400, "MANIFEST_INVALID", file);
        assert_contains_all(
            &message,
            &["project-1/old", "schema 1", "schema 2"],
            "schema 1 hint",
        );
        // The decision line names the type it refused.
        let log = stack.gateway.log();
        let wanted = format!("reference={tag} ");
        assert!(
            log.lines().any(|l| l.contains("decision")
                && l.contains(&wanted)
                && l.contains(&format!("media_type=\"{content_type}\""))
                && l.contains("outcome=\"deny\"")),
            "the refusal of {file} names its media type:\n{log}"
        );
    }

    let config = descriptor_of(OCI_CONFIG, &config_blob(6));
    let layer = descriptor_json(&phantom_layer(100, 6));
    let config_json = descriptor_json(&config);
    let negative = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_json,
        "layers": [{ "mediaType": OCI_LAYER_TAR, "digest": layer["digest"], "size": -1 }],
    })
    .to_string();
    let fractional = negative.replace("-1", "1.5");
    let overflowing = negative.replace("-1", "18446744073709551616");
    // Each size fits in a u64, their sum does not.
    let sum_overflow = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_json,
        "layers": [
            { "mediaType": OCI_LAYER_TAR, "digest": layer["digest"], "size": u64::MAX },
            { "mediaType": OCI_LAYER_TAR, "digest": layer["digest"], "size": 1 },
        ],
    })
    .to_string();
    let missing_layers = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_json,
    })
    .to_string();
    // A second `layers` key: a parser that keeps the first would measure 100 bytes, the registry
    // (Go, last key wins) would store 30 MiB.
    let duplicate_layers = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{config_json},"layers":[{layer}],"layers":[{big}]}}"#,
        big = descriptor_json(&phantom_layer(30 * MIB, 7)),
    );
    let cases: [(&str, String); 7] = [
        ("negative-size", negative),
        ("fractional-size", fractional),
        ("overflowing-size", overflowing),
        ("sum-overflow", sum_overflow),
        ("missing-layers", missing_layers),
        ("duplicate-layers", duplicate_layers),
        ("not-json", "this is { not JSON".to_owned()),
    ];
    for (tag, body) in &cases {
        let reply = client
            .put_manifest("project-1/bad", tag, OCI_MANIFEST, body.as_bytes())
            .await;
        let message = assert_oci_error(&reply, 400, "MANIFEST_INVALID", tag);
        assert!(message.contains("project-1/bad"), "{tag}: {message}");
    }

    let direct = stack.registry_client();
    assert!(registry_tags(&direct, "project-1/old").await.is_empty());
    assert!(registry_tags(&direct, "project-1/bad").await.is_empty());
    let reached: Vec<_> = stack
        .registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path().contains("/manifests/"))
        .collect();
    assert!(
        reached.is_empty(),
        "no refused manifest may reach the registry: {reached:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. A 3 MiB manifest
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_three_mib_manifest_is_measured_and_stored_and_one_over_four_mib_gets_413() {
    let stack = Stack::start(SEED_CONFIG).await;
    let client = stack.client();
    const LAYER_LEN: u64 = 1000;
    let (config, layer) =
        upload_config_and_layer(&client, "library/many-layers", LAYER_LEN as usize, 8).await;
    // One uploaded blob listed as many layers as it takes to reach 3 MiB of manifest.
    let per_layer = serde_json::to_vec(&descriptor_json(&layer))
        .expect("JSON")
        .len()
        + 1;
    let count = (3 * MIB as usize).div_ceil(per_layer);
    let manifest = oci_manifest(&config, &vec![layer.clone(); count], None);
    assert!(
        manifest.len() as u64 >= 3 * MIB && (manifest.len() as u64) < 4 * MIB,
        "{} bytes",
        manifest.len()
    );
    let measured = count as u64 * LAYER_LEN;
    assert!(measured > PROJECT_1_LIMIT && measured < 100 * MIB);

    let started = Instant::now();
    let reply = client
        .put_manifest("library/many-layers", "v1", OCI_MANIFEST, &manifest)
        .await;
    assert_created(&reply, "a 3 MiB manifest under the global limit");
    let elapsed = started.elapsed();
    let pulled = stack
        .registry_client()
        .get_manifest("library/many-layers", "v1")
        .await;
    assert_eq!(pulled.status, 200);
    assert_eq!(sha256_digest(&pulled.body), sha256_digest(&manifest));

    // It was measured, not waved through: the same manifest is over project-1's 20MB.
    let reply = client
        .put_manifest("project-1/many-layers", "v1", OCI_MANIFEST, &manifest)
        .await;
    let message = assert_oci_error(&reply, 403, "DENIED", "the 3 MiB manifest in project-1");
    assert_contains_all(
        &message,
        &[&format!("{measured} bytes"), RULE_0],
        "3 MiB manifest measured",
    );

    // Over distribution's 4 MiB manifest limit but inside Envoy's 5 MiB buffer: a clean 413.
    let base = oci_manifest(
        &config,
        std::slice::from_ref(&layer),
        Some(json!({ "pad": "" })),
    );
    let pad = (4 * MIB as usize + 1) - base.len();
    let too_big = oci_manifest(&config, &[layer], Some(json!({ "pad": "x".repeat(pad) })));
    assert_eq!(too_big.len() as u64, 4 * MIB + 1);
    let reply = client
        .put_manifest("library/many-layers", "v2", OCI_MANIFEST, &too_big)
        .await;
    assert_oci_error(&reply, 413, "MANIFEST_INVALID", "a 4 MiB + 1 byte manifest");
    assert_eq!(
        registry_tags(&stack.registry_client(), "library/many-layers").await,
        strings(&["v1"])
    );
    eprintln!("3 MiB manifest PUT took {elapsed:?}");
}

// ---------------------------------------------------------------------------------------------
// 8. A config edit while the stack runs
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn lowering_a_limit_while_running_refuses_the_next_push_and_raising_it_allows_again() {
    let stack = Stack::start(SEED_CONFIG).await;
    let client = stack.client();
    let host = stack.envoy_host();
    let dir = temp_dir();
    let layout = oci_image_layout(dir.path(), &[6 * MIB], 9);
    let copied = skopeo_copy(&layout.dir, &format!("{host}/project-1/app:v1"), &[]).await;
    assert_copied(&copied, "6 MiB under the seed's 20MB");

    // 5MB for project-1: the same 6 MiB image is now too large.
    let lowered = SEED_CONFIG.replacen("max_image_size: 20MB", "max_image_size: 5MB", 1);
    assert_ne!(lowered, SEED_CONFIG);
    let edited = Instant::now();
    stack.write_config(&lowered);
    // The product applies an edit within 1 s; 2 s leaves room for a loaded machine.
    let target = ("project-1/app", "v1");
    let what = "the lowered limit to apply";
    let refusal = put_until(
        &client,
        target,
        &layout.manifest,
        403,
        Duration::from_secs(2),
        what,
    );
    let message = refusal.await.json()["errors"][0]["message"].to_string();
    let applied_after = edited.elapsed();
    assert_contains_all(
        &message,
        &[
            &format!("{} bytes", 6 * MIB),
            &limit_text(5 * MIB, "5MB"),
            RULE_0,
        ],
        "refusal under the lowered limit",
    );
    let refused = skopeo_copy(&layout.dir, &format!("{host}/project-1/app:v2"), &[]).await;
    assert_skopeo_denied(
        &refused,
        "skopeo under the lowered limit",
        &[&limit_text(5 * MIB, "5MB")],
    );

    // Back to 20MB.
    let edited = Instant::now();
    stack.write_config(SEED_CONFIG);
    let what = "the raised limit to apply";
    put_until(
        &client,
        target,
        &layout.manifest,
        201,
        Duration::from_secs(2),
        what,
    )
    .await;
    let raised_after = edited.elapsed();
    let copied = skopeo_copy(&layout.dir, &format!("{host}/project-1/app:v2"), &[]).await;
    assert_copied(&copied, "skopeo after raising the limit again");
    assert_eq!(
        registry_tags(&stack.registry_client(), "project-1/app").await,
        strings(&["v1", "v2"])
    );
    eprintln!("lowered limit applied after {applied_after:?}, raised after {raised_after:?}");
}

// ---------------------------------------------------------------------------------------------
// 9. The sidecar stopped
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn with_the_sidecar_stopped_manifest_writes_fail_fast_blobs_still_upload_and_restart_heals() {
    let mut stack = Stack::start(SEED_CONFIG).await;
    let client = stack.client();
    let dir = temp_dir();
    let layout = oci_image_layout(dir.path(), &[5000], 10);
    client.upload_layout_blobs("project-1/app", &layout).await;
    let reply = client
        .put_manifest("project-1/app", "v1", OCI_MANIFEST, &layout.manifest)
        .await;
    assert_created(&reply, "push with the sidecar up");

    let status = stack.stop_gateway().await;
    assert!(status.success(), "sidecar exit on SIGTERM: {status}");

    let started = Instant::now();
    let reply = client
        .put_manifest("project-1/app", "v2", OCI_MANIFEST, &layout.manifest)
        .await;
    let elapsed = started.elapsed();
    let message = assert_oci_error(&reply, 503, "UNAVAILABLE", "manifest PUT, sidecar down");
    assert!(message.contains("registry-gateway"), "{message}");
    assert!(
        elapsed < Duration::from_secs(3),
        "fail-closed answer took {elapsed:?}"
    );

    // Blobs do not need the sidecar.
    let blob = noise(256 * 1024, 11);
    let digest = client.upload_blob("project-1/app", &blob).await;
    let stored = stack
        .registry_client()
        .request(
            "HEAD",
            &format!("/v2/project-1/app/blobs/{digest}"),
            &[],
            None,
        )
        .await;
    assert_eq!(stored.status, 200, "blob uploaded with the sidecar down");

    // A real client fails too, promptly.
    let started = Instant::now();
    let refused = skopeo_copy(
        &layout.dir,
        &format!("{}/project-1/app:v3", stack.envoy_host()),
        &[],
    )
    .await;
    let elapsed = started.elapsed();
    assert!(!refused.status.success(), "skopeo must fail");
    assert!(
        stderr_of(&refused).contains("503"),
        "{}",
        stderr_of(&refused)
    );
    assert!(
        elapsed < Duration::from_secs(20),
        "skopeo gave up after {elapsed:?}"
    );
    assert_eq!(
        registry_tags(&stack.registry_client(), "project-1/app").await,
        strings(&["v1"])
    );

    stack.restart_gateway().await;
    let what = "a push through the restarted sidecar";
    let target = ("project-1/app", "v2");
    put_until(
        &client,
        target,
        &layout.manifest,
        201,
        Duration::from_secs(15),
        what,
    )
    .await;
    assert_eq!(
        registry_tags(&stack.registry_client(), "project-1/app").await,
        strings(&["v1", "v2"])
    );
}

// ---------------------------------------------------------------------------------------------
// 10. htpasswd Basic auth behind the tag list
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn behind_htpasswd_the_sidecar_reads_tags_with_its_credentials_and_enforces_the_tag_limit() {
    const USER: &str = "ci-pusher";
    const PASSWORD: &str = "s3cret-Basic-pass";
    let stack = Stack::start_with(StackOptions::with_htpasswd(SEED_CONFIG, USER, PASSWORD)).await;
    let creds = format!("{USER}:{PASSWORD}");
    let what = "a fourth tag behind htpasswd";
    assert_fourth_tag_refused_behind_auth(&stack, &creds, 12, &stack.registry_client(), what).await;

    let tag_lists: Vec<_> = stack
        .registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path() == "/v2/project-1/app/tags/list")
        .collect();
    assert!(
        tag_lists.iter().any(|r| r.status == 200),
        "the sidecar read the tag list successfully: {tag_lists:?}"
    );
    let log = stack.gateway.log();
    assert!(!log.contains(PASSWORD), "the password leaked into the log");
}

// ---------------------------------------------------------------------------------------------
// 11. The Bearer token flow
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn behind_a_token_service_the_sidecar_gets_a_bearer_token_and_enforces_the_tag_limit() {
    // The issuer is a fake standing in for Harbor's token service (`/service/token`): the
    // registry challenges with `WWW-Authenticate: Bearer realm=...,service=...,scope=...`, and
    // the issuer hands a robot account JWTs signed with a key the registry trusts, as Harbor's
    // core does. Only the token protocol matters here, not who serves it.
    const ROBOT: &str = "robot$ci";
    const SECRET: &str = "t0ken-secret";
    let issuer = TokenIssuer::start(ROBOT, SECRET, Duration::from_secs(300)).await;
    let stack = Stack::start_with(StackOptions {
        registry: RegistryOptions {
            token_auth: Some(issuer.auth_config()),
            ..RegistryOptions::default()
        },
        // The issuer listens on its own port, another origin than the registry's: realms are
        // pinned to the registry's origin unless listed.
        gateway_extra_args: strings(&[
            "--registry-username",
            ROBOT,
            "--registry-token-realm",
            &issuer.realm(),
        ]),
        gateway_env: vec![(
            "REGISTRY_GATEWAY_REGISTRY_PASSWORD".to_owned(),
            SECRET.to_owned(),
        )],
        ..StackOptions::new(SEED_CONFIG)
    })
    .await;
    let creds = format!("{ROBOT}:{SECRET}");
    let token = issuer.token(&[("project-1/app", &["pull"])]);
    let direct = stack.registry_client().with_bearer(&token);
    let what = "a fourth tag behind a token service";
    assert_fourth_tag_refused_behind_auth(&stack, &creds, 13, &direct, what).await;
    // The sidecar asked for a pull-only token for this repository, as the robot, and got one.
    let sidecar_requests: Vec<_> = issuer
        .requests()
        .into_iter()
        .filter(|r| r.scopes == strings(&["repository:project-1/app:pull"]))
        .collect();
    assert!(
        sidecar_requests
            .iter()
            .any(|r| r.status == 200 && r.user.as_deref() == Some(ROBOT)),
        "no successful pull-only token request by {ROBOT}: {:?}",
        issuer.requests()
    );
    assert!(
        !stack.gateway.log().contains(SECRET),
        "the secret leaked into the log"
    );
}

// ---------------------------------------------------------------------------------------------
// 12. Content-Type with parameters and another letter case
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_content_type_with_parameters_and_upper_case_is_still_measured() {
    const ODD: &str = "Application/VND.OCI.Image.Manifest.v1+JSON; charset=utf-8";
    // Debug level: allowed decisions are logged there (refusals at info).
    let stack = Stack::start_with(StackOptions {
        gateway_extra_args: strings(&["--log", "info,registry_gateway=debug"]),
        ..StackOptions::new(SEED_CONFIG)
    })
    .await;
    let client = stack.client();

    let config = descriptor_of(OCI_CONFIG, &config_blob(14));
    let over = oci_manifest(&config, &[phantom_layer(PROJECT_1_LIMIT + 1, 14)], None);
    let reply = client.put_manifest("project-1/ct", "big", ODD, &over).await;
    let message = assert_oci_error(&reply, 403, "DENIED", "over the limit with an odd type");
    assert_contains_all(
        &message,
        &[
            "project-1/ct",
            "20971521 bytes",
            &limit_text(PROJECT_1_LIMIT, "20MB"),
            RULE_0,
        ],
        "odd content type measured",
    );

    let (config, layer) = upload_config_and_layer(&client, "project-1/ct", 2000, 14).await;
    let under = oci_manifest(&config, &[layer], None);
    let reply = client
        .put_manifest("project-1/ct", "small", ODD, &under)
        .await;
    // distribution 2.8 parses the media type (mime.ParseMediaType lower-cases it and drops the
    // parameters), so it stores such a manifest.
    assert_created(&reply, "under the limit with an odd type");
    let direct = stack.registry_client();
    let pulled = direct.get_manifest("project-1/ct", "small").await;
    assert_eq!(pulled.status, 200);
    assert_eq!(sha256_digest(&pulled.body), sha256_digest(&under));
    assert_eq!(
        registry_tags(&direct, "project-1/ct").await,
        strings(&["small"])
    );
    // The allowed push was measured too: its decision line carries the layer bytes.
    let log = stack.gateway.log();
    let decision = log
        .lines()
        .find(|l| l.contains(" decision ") && l.contains("reference=small"))
        .unwrap_or_else(|| panic!("no decision line for project-1/ct:small in:\n{log}"));
    assert_contains_all(
        decision,
        &["image_bytes=2000 ", "outcome=\"allow\""],
        "decision line",
    );
}

// ---------------------------------------------------------------------------------------------
// 13. An unreadable tag list
// ---------------------------------------------------------------------------------------------

/// A sidecar listing tags at `tag_url` (not the registry), behind an Envoy that proxies to the
/// real `registry`.
struct SplitStack {
    envoy: Envoy,
    _gateway: Gateway,
    _config_dir: tempfile::TempDir,
}

impl SplitStack {
    async fn start(registry: &Registry, tag_url: &str, extra_args: &[&str]) -> SplitStack {
        let config_dir = temp_dir();
        let config = config_dir.path().join("config.yaml");
        std::fs::write(&config, SEED_CONFIG).expect("temp dir is writable");
        let mut options = GatewayOptions::new(&config, tag_url);
        options.extra_args = strings(extra_args);
        let gateway = Gateway::start(options).await;
        let envoy = Envoy::start_between(registry.addr(), gateway.grpc_addr()).await;
        SplitStack {
            envoy,
            _gateway: gateway,
            _config_dir: config_dir,
        }
    }
}

#[tokio::test]
async fn an_unreadable_tag_list_refuses_with_503_promptly_unless_configured_to_allow() {
    let registry = Registry::start(RegistryOptions::default()).await;
    let direct = registry.client();
    let dir = temp_dir();
    let layout = oci_image_layout(dir.path(), &[4000], 15);
    direct.upload_layout_blobs("project-1/app", &layout).await;

    // Bound but not listening: connections are refused, and no other test can take the port.
    let reserved = tokio::net::TcpSocket::new_v4().expect("socket");
    reserved
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind 127.0.0.1:0");
    let closed_port = format!("http://{}", reserved.local_addr().expect("bound address"));
    let (silent_addr, silent) = silent_server().await;
    let silent_url = format!("http://{silent_addr}");

    for (what, url, cause) in [
        ("connection refused", closed_port.as_str(), "reached"),
        (
            "a registry that never answers",
            silent_url.as_str(),
            "within",
        ),
    ] {
        let stack = SplitStack::start(&registry, url, &[]).await;
        let client = stack.envoy.client();
        let started = Instant::now();
        let reply = client
            .put_manifest("project-1/app", "v1", OCI_MANIFEST, &layout.manifest)
            .await;
        let elapsed = started.elapsed();
        let message = assert_oci_error(&reply, 503, "UNAVAILABLE", what);
        assert_contains_all(
            &message,
            &["project-1/app", "could not check the push", cause],
            &format!("{what}: the cause is named"),
        );
        assert!(
            elapsed < Duration::from_secs(4),
            "{what}: answered after {elapsed:?}"
        );
        // Size checks need no tag list: an over-limit image is still a 403.
        let config = descriptor_of(OCI_CONFIG, &config_blob(15));
        let over = oci_manifest(&config, &[phantom_layer(PROJECT_1_LIMIT + 1, 15)], None);
        let reply = client
            .put_manifest("project-1/app", "big", OCI_MANIFEST, &over)
            .await;
        assert_oci_error(&reply, 403, "DENIED", &format!("{what}: size refusal"));
        drop(stack);
    }
    assert!(registry_tags(&direct, "project-1/app").await.is_empty());

    let stack = SplitStack::start(&registry, &closed_port, &["--on-registry-error", "allow"]).await;
    let reply = stack
        .envoy
        .client()
        .put_manifest("project-1/app", "v1", OCI_MANIFEST, &layout.manifest)
        .await;
    assert_created(&reply, "--on-registry-error allow");
    assert_eq!(
        registry_tags(&direct, "project-1/app").await,
        strings(&["v1"])
    );
    silent.abort();
    drop(reserved);
}

// ---------------------------------------------------------------------------------------------
// 14. /metrics and /status
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_count_the_decisions_and_status_shows_the_config_version_and_hash() {
    let stack = Stack::start(SEED_CONFIG).await;
    let client = stack.client();
    let admin = stack.gateway.admin();

    let (config, layer) = upload_config_and_layer(&client, "project-1/m", 1000, 16).await;
    let small = oci_manifest(&config, &[layer], None);
    assert_created(
        &client
            .put_manifest("project-1/m", "v1", OCI_MANIFEST, &small)
            .await,
        "allowed push",
    );
    let over = oci_manifest(&config, &[phantom_layer(PROJECT_1_LIMIT + 1, 16)], None);
    for tag in ["big1", "big2"] {
        let reply = client
            .put_manifest("project-1/m", tag, OCI_MANIFEST, &over)
            .await;
        assert_oci_error(&reply, 403, "DENIED", "over-limit push");
    }

    let deny = r#"registry_gateway_decisions_total{transport="ext_proc",outcome="deny",reason="image_too_large",enforcement="enforce"}"#;
    let allow = r#"registry_gateway_decisions_total{transport="ext_proc",outcome="allow",reason="none",enforcement="enforce"}"#;
    let metrics = admin_text(&admin, "/metrics").await;
    assert_eq!(metric_value(&metrics, deny), Some(2.0), "{metrics}");
    assert_eq!(metric_value(&metrics, allow), Some(1.0), "{metrics}");
    assert_eq!(
        metric_value(&metrics, "registry_gateway_config_version"),
        Some(1.0),
        "{metrics}"
    );

    let status: serde_json::Value =
        serde_json::from_str(&admin_text(&admin, "/status").await).expect("/status is JSON");
    assert_eq!(status["config"]["version"], 1, "{status}");
    let hash = status["config"]["hash"]
        .as_str()
        .unwrap_or_else(|| panic!("no config hash in {status}"))
        .to_owned();
    assert!(!hash.is_empty(), "{status}");

    // An edit bumps the version and changes the hash.
    stack.write_config(&SEED_CONFIG.replacen("tag_count_limit: 100", "tag_count_limit: 99", 1));
    let status = eventually(Duration::from_secs(3), "config version 2", || {
        let admin = admin.clone();
        async move {
            let text = admin_text(&admin, "/status").await;
            let status: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            if status["config"]["version"] == 2 {
                Ok(status)
            } else {
                Err(text)
            }
        }
    })
    .await;
    assert_ne!(status["config"]["hash"].as_str(), Some(hash.as_str()));
    let metrics = admin_text(&admin, "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "registry_gateway_config_version"),
        Some(2.0),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------------
// 15. Deletes through Envoy free tag slots
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_delete_by_digest_through_envoy_frees_the_slots_of_the_tags_it_removed() {
    let stack = Stack::start(SEED_CONFIG).await;
    let client = stack.client();
    let (config, layer) = upload_config_and_layer(&client, "project-1/app", 1000, 17).await;
    // Four distinct images (their annotations differ).
    let images: Vec<Vec<u8>> = (1..=4)
        .map(|i| {
            oci_manifest(
                &config,
                std::slice::from_ref(&layer),
                Some(json!({ "n": i.to_string() })),
            )
        })
        .collect();
    for (i, tag) in ["v1", "v2", "v3"].into_iter().enumerate() {
        let reply = client
            .put_manifest("project-1/app", tag, OCI_MANIFEST, &images[i])
            .await;
        assert_created(&reply, tag);
    }
    // distribution 2.8 deletes by digest only: a DELETE of a tag gets the registry's own
    // answer, and since nothing was deleted, no slot is freed.
    let by_tag = client.delete_manifest("project-1/app", "v1").await;
    assert_eq!(by_tag.status, 400, "DELETE by tag: {}", by_tag.text());
    assert_eq!(by_tag.json()["errors"][0]["code"], "DIGEST_INVALID");
    let reply = client
        .put_manifest("project-1/app", "v4", OCI_MANIFEST, &images[3])
        .await;
    let message = assert_oci_error(&reply, 403, "DENIED", "v4 in a full repository");
    assert!(message.contains("already has 3 tags"), "{message}");

    // distribution deletes by digest, untagging every tag that pointed at it (here v3).
    let deleted = client
        .delete_manifest("project-1/app", &sha256_digest(&images[2]))
        .await;
    assert_eq!(deleted.status, 202, "DELETE by digest: {}", deleted.text());
    let direct = stack.registry_client();
    assert_eq!(
        registry_tags(&direct, "project-1/app").await,
        strings(&["v1", "v2"])
    );

    // The sidecar saw the delete (response phase) and counts again: one slot free.
    let reply = client
        .put_manifest("project-1/app", "v4", OCI_MANIFEST, &images[3])
        .await;
    assert_created(&reply, "v4 after the delete freed a slot");
    let reply = client
        .put_manifest("project-1/app", "v5", OCI_MANIFEST, &images[2])
        .await;
    let message = assert_oci_error(&reply, 403, "DENIED", "v5 when full again");
    assert!(message.contains("already has 3 tags"), "{message}");
    assert_eq!(
        registry_tags(&direct, "project-1/app").await,
        strings(&["v1", "v2", "v4"])
    );
}

/// A push by digest that names no tag reserves and creates nothing, so the registry's answer
/// settles nothing: the sidecar asks Envoy to skip it (`mode_override`, which envoy/envoy.yaml
/// allows in exactly that mode) and Envoy sends 2 messages instead of 3. A tag push, a digest
/// push with `?tag=`, and a digest push into a repository whose limits may warn keep all 3. The
/// skipped phase costs no count and no stream error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_by_digest_naming_no_tag_skips_the_registry_answer_phase() {
    const SENT: &str = "http.registry.ext_proc.stream_msgs_sent";
    let config = "max_image_size: 1MB\ntag_count_limit: 3\nrules:\n  - path: ^warned/.*\n    limit:\n      max_image_size: 1MB\n      tag_count_limit: 3\n      warn_at: 50%\n";
    let stack = Stack::start(config).await;
    let client = stack.envoy.client();
    let admin = stack.gateway.admin();
    let before = Scrape::take(&admin).await;
    let put = async |repo: &str, reference: &str, marker: &str| -> (u16, u64) {
        let config = client.upload_blob(repo, b"{}").await;
        let layer = client.upload_blob(repo, marker.as_bytes()).await;
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{config}","size":2}},"layers":[{{"mediaType":"{OCI_LAYER_TAR}","digest":"{layer}","size":{}}}]}}"#,
            marker.len()
        );
        let reference = reference.replace("DIGEST", &sha256_digest(body.as_bytes()));
        let sent = stack.envoy.stat(SENT).await.unwrap_or(0);
        let reply = client
            .put_manifest(repo, &reference, OCI_MANIFEST, body.as_bytes())
            .await;
        // Envoy counts a stream's messages as it sends them; the last one may trail the answer.
        let mut messages = 0;
        for _ in 0..40 {
            messages = stack.envoy.stat(SENT).await.unwrap_or(0) - sent;
            if messages >= 3 || (messages == 2 && reference.starts_with("sha256:")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        (reply.status, messages)
    };
    assert_eq!(put("plain/app", "DIGEST", "a").await, (201, 2), "by digest");
    assert_eq!(put("plain/app", "v1", "b").await, (201, 3), "by tag");
    assert_eq!(
        put("plain/app", "DIGEST?tag=v2", "c").await,
        (201, 3),
        "by digest with ?tag="
    );
    assert_eq!(
        put("warned/app", "DIGEST", "d").await,
        (201, 3),
        "by digest where a limit may warn"
    );
    // The counts are untouched: v1 is the only tag (distribution 2.8 ignores `?tag=`), so two
    // more fit and a third does not, with digest pushes in between.
    assert_eq!(put("plain/app", "v3", "e").await.0, 201);
    assert_eq!(put("plain/app", "DIGEST", "f").await, (201, 2));
    assert_eq!(put("plain/app", "v4", "g").await.0, 201);
    assert_eq!(put("plain/app", "v5", "h").await.0, 403);
    let after = Scrape::take(&admin).await;
    let errors = "registry_gateway_stream_errors_total";
    assert_eq!(
        after.get(errors, &[]),
        before.get(errors, &[]),
        "{}",
        after.0
    );
}
