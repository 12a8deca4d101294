//! The shipped `envoy/envoy.yaml` in front of a real registry, without the sidecar: what passes
//! straight through, that manifest writes fail closed however their path is spelled, and (with a
//! recording stand-in processor) exactly what the sidecar is sent and how its refusals reach
//! clients.
//!
//! These tests also prove the harness in `tests/support` (registry with and without auth, token
//! issuer, Envoy, OCI layouts, skopeo, raw HTTP) on its own, so an end-to-end failure elsewhere
//! can be blamed on the sidecar. Each test starts its own processes on ephemeral loopback ports;
//! where no processor is wanted, Envoy's sidecar address is a port where nothing listens.

use crate::support;

use std::time::{Duration, Instant};

use support::{
    Envoy, FAKE_DENIAL_MESSAGE, FakeExtProc, Registry, RegistryOptions, TokenIssuer, eventually,
    free_port, loopback, oci_image_layout, oci_index_layout, raw_http, sha256_digest, skopeo_copy,
    skopeo_copy_all, skopeo_inspect_raw,
};

/// Registry + Envoy whose `registry-gateway` cluster points at a closed port.
async fn registry_and_envoy_without_sidecar() -> (Registry, Envoy) {
    let registry = Registry::start(RegistryOptions::default()).await;
    let envoy = envoy_without_sidecar(&registry).await;
    (registry, envoy)
}

/// Envoy in front of `registry`, its `registry-gateway` cluster pointing at a closed port.
async fn envoy_without_sidecar(registry: &Registry) -> Envoy {
    Envoy::start_between(registry.addr(), loopback(free_port())).await
}

/// Registry + the recording stand-in processor + Envoy between them.
async fn registry_processor_and_envoy() -> (Registry, FakeExtProc, Envoy) {
    let registry = Registry::start(RegistryOptions::default()).await;
    let processor = FakeExtProc::start().await;
    let envoy = Envoy::start_between(registry.addr(), processor.addr()).await;
    (registry, processor, envoy)
}

/// Pseudo-random bytes (not compressible, not all zero).
fn noise(len: usize, seed: u8) -> Vec<u8> {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect()
}

#[tokio::test]
async fn everything_but_manifest_writes_passes_through_without_the_sidecar() {
    let (registry, envoy) = registry_and_envoy_without_sidecar().await;
    let client = envoy.client();

    let root = client.request("GET", "/v2/", &[], None).await;
    assert_eq!(root.status, 200, "GET /v2/ through Envoy: {}", root.text());

    // Larger than the manifest route's 5 MiB buffer: the pass-through route streams, so size
    // does not matter there.
    let blob = noise(8 * 1024 * 1024 + 1, 1);
    let digest = client.upload_blob("library/app", &blob).await;
    assert_eq!(digest, sha256_digest(&blob));
    let stored = registry
        .client()
        .request("GET", &format!("/v2/library/app/blobs/{digest}"), &[], None)
        .await;
    assert_eq!(stored.status, 200);
    assert_eq!(sha256_digest(&stored.body), digest, "blob stored unchanged");

    // An image pushed straight to the registry can be pulled through Envoy (GET and HEAD on
    // manifests are not manifest writes).
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = oci_image_layout(dir.path(), &[1000, 2000], 7);
    let pushed = registry
        .client()
        .push_layout("library/app", "v1", &layout)
        .await;
    assert_eq!(pushed.status, 201, "direct push: {}", pushed.text());
    let pulled = client.get_manifest("library/app", "v1").await;
    assert_eq!(pulled.status, 200);
    assert_eq!(pulled.body, layout.manifest);
    let head = client.head_manifest("library/app", "v1").await;
    assert_eq!(head.status, 200);
    assert_eq!(client.list_tags("library/app").await, vec!["v1".to_owned()]);
    assert_eq!(
        registry.count_requests("GET", "/v2/library/app/tags/list"),
        1,
        "the registry's access log counts tag-list calls"
    );

    // None of it opened an ext_proc stream: the sidecar is never asked about these requests.
    let streams = envoy
        .stat("http.registry.ext_proc.streams_started")
        .await
        .unwrap_or(0);
    assert_eq!(streams, 0, "ext_proc streams for pass-through requests");
}

#[tokio::test]
async fn manifest_writes_fail_closed_quickly_when_no_sidecar_listens() {
    let (registry, envoy) = registry_and_envoy_without_sidecar().await;
    let client = envoy.client();
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = oci_image_layout(dir.path(), &[4096, 100], 11);

    // Blobs go through: only manifest writes need the sidecar.
    client.upload_layout_blobs("team/app", &layout).await;

    for reference in ["v1", layout.digest.as_str()] {
        let started = Instant::now();
        let reply = client
            .put_manifest("team/app", reference, &layout.media_type, &layout.manifest)
            .await;
        let elapsed = started.elapsed();
        assert_eq!(
            reply.status,
            503,
            "PUT manifests/{reference} without sidecar: {}",
            reply.text()
        );
        // An OCI error body that clients print, not Envoy's empty 500.
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let error = &reply.json()["errors"][0];
        assert_eq!(error["code"], "UNAVAILABLE");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("registry-gateway")),
            "{error}"
        );
        assert!(
            elapsed < Duration::from_secs(3),
            "fail-closed answer took {elapsed:?}"
        );
    }
    let direct = registry.client();
    assert_eq!(direct.list_tags("team/app").await, Vec::<String>::new());
    assert_eq!(
        direct.get_manifest("team/app", &layout.digest).await.status,
        404
    );
    assert_eq!(
        registry.count_requests("PUT", "/v2/team/app/manifests/v1"),
        0,
        "no manifest PUT reached the registry"
    );

    // DELETE is a manifest write too.
    let pushed = direct.push_layout("team/app", "v2", &layout).await;
    assert_eq!(pushed.status, 201);
    let delete = client.delete_manifest("team/app", &layout.digest).await;
    assert_eq!(
        delete.status,
        503,
        "DELETE without sidecar: {}",
        delete.text()
    );
    assert_eq!(direct.get_manifest("team/app", "v2").await.status, 200);

    // A real client: skopeo's push through Envoy fails, the same copy straight to the registry
    // works and pulls back byte for byte.
    let started = Instant::now();
    let refused = skopeo_copy(&layout.dir, &format!("{}/team/other:v1", envoy.host()), &[]).await;
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "skopeo through Envoy without sidecar must fail"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "skopeo gave up after {elapsed:?}: {stderr}"
    );
    // containers/image (like docker's distribution client) parses error bodies of 4xx answers
    // only; for a 5xx it prints the status line.
    assert!(
        stderr.contains("503 Service Unavailable"),
        "skopeo shows the status: {stderr}"
    );
    assert_eq!(direct.list_tags("team/other").await, Vec::<String>::new());
    let copied = skopeo_copy(
        &layout.dir,
        &format!("{}/team/other:v1", registry.host()),
        &[],
    )
    .await;
    assert!(
        copied.status.success(),
        "skopeo straight to the registry: {}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let raw = skopeo_inspect_raw(&format!("{}/team/other:v1", registry.host()), &[]).await;
    assert!(raw.status.success());
    assert_eq!(sha256_digest(&raw.stdout), layout.digest);
}

#[tokio::test]
async fn multi_arch_index_copies_with_skopeo_all_and_pulls_back_unchanged() {
    let registry = Registry::start(RegistryOptions::default()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = oci_index_layout(dir.path(), &[&[1000, 2000], &[3000], &[10]]);
    let target = format!("{}/multi/app:v1", registry.host());
    let copied = skopeo_copy_all(&layout.dir, &target, &[]).await;
    assert!(
        copied.status.success(),
        "skopeo copy --all: {}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let raw = skopeo_inspect_raw(&target, &[]).await;
    assert_eq!(sha256_digest(&raw.stdout), layout.digest);
    for image in &layout.images {
        let child = registry
            .client()
            .get_manifest("multi/app", &image.digest)
            .await;
        assert_eq!(child.status, 200);
        assert_eq!(child.body, image.manifest);
    }
    // skopeo pushes the children by digest and the index to the tag: exactly one tag.
    assert_eq!(
        registry.client().list_tags("multi/app").await,
        vec!["v1".to_owned()]
    );
    let manifest_puts: Vec<String> = registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path().contains("/manifests/"))
        .map(|r| r.target)
        .collect();
    assert_eq!(manifest_puts.len(), 4, "{manifest_puts:?}");
    assert!(
        manifest_puts[3].ends_with("/manifests/v1"),
        "{manifest_puts:?}"
    );
}

#[tokio::test]
async fn no_spelling_of_a_manifest_path_slips_past_the_manifest_route() {
    let (registry, envoy) = registry_and_envoy_without_sidecar().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = oci_image_layout(dir.path(), &[500], 3);
    let direct = registry.client();
    for repo in ["direct", "gated"] {
        direct.upload_layout_blobs(repo, &layout).await;
    }

    // Each spelling, for repository `{repo}`, means `PUT /v2/{repo}/manifests/t` to
    // distribution (whose router works on the decoded path).
    let spellings = [
        "/v2/{repo}/manifests/t",
        "/v2/{repo}/%6Danifests/t",
        "/v2/{repo}/%6d%61%6e%69%66%65%73%74%73/t",
        "/v2/{repo}/manifests/%74",
        "/v2/{repo}/manifests%2Ft",
        "/v2/{repo}/manifests%2ft",
        "/v2//{repo}/manifests/t",
        "/v2/{repo}//manifests//t",
        "/v2/{repo}/./manifests/t",
        "/v2/{repo}/x/../manifests/t",
        "/v2/{repo}/%2E/manifests/t",
        "/v2/{repo}/manifests/t?tag=u",
        "/v2/%64irect/manifests/t",
    ];
    let headers = [("content-type", layout.media_type.as_str())];
    let mut report = Vec::new();
    // The same request straight to the registry (repository `direct`) and through Envoy
    // (repository `gated`).
    let both = |method: &'static str, target: &'static str| {
        let direct_target = target.replace("{repo}", "direct");
        let gated_target = target
            .replace("{repo}", "gated")
            .replace("%64irect", "%67ated");
        let (manifest, headers) = (&layout.manifest, &headers);
        let (registry_addr, envoy_addr) = (registry.addr(), envoy.addr());
        async move {
            let via_registry =
                raw_http(registry_addr, method, &direct_target, headers, manifest).await;
            let via_envoy = raw_http(envoy_addr, method, &gated_target, headers, manifest).await;
            (via_registry, via_envoy)
        }
    };
    for spelling in spellings {
        let (via_registry, via_envoy) = both("PUT", spelling).await;
        report.push(format!(
            "{spelling}: registry {} / envoy {}",
            via_registry.status, via_envoy.status
        ));
        assert!(
            via_envoy.status == 400 || via_envoy.status == 503,
            "{spelling} through Envoy without sidecar must be refused (400 for an escaped \
             slash, 503 fail-closed otherwise), got {}: {}",
            via_envoy.status,
            via_envoy.text()
        );
    }
    // Spellings that are no manifest write at the registry either (its router is
    // case-sensitive, and Envoy refuses a lower-case method outright): they may pass Envoy
    // untouched, but nothing is stored.
    for (method, target) in [
        ("PUT", "/v2/{repo}/MANIFESTS/t"),
        ("put", "/v2/{repo}/manifests/t"),
    ] {
        let (via_registry, via_envoy) = both(method, target).await;
        report.push(format!(
            "{method} {target}: registry {} / envoy {}",
            via_registry.status, via_envoy.status
        ));
        assert_ne!(
            via_registry.status, 201,
            "{method} {target} at the registry"
        );
        assert_ne!(via_envoy.status, 201, "{method} {target} through Envoy");
    }
    eprintln!("{}", report.join("\n"));
    assert_eq!(
        direct.list_tags("gated").await,
        Vec::<String>::new(),
        "nothing stored through Envoy:\n{}",
        report.join("\n")
    );
    assert_eq!(
        direct.get_manifest("gated", &layout.digest).await.status,
        404
    );
    // The registry itself stores the disguised spellings (`%6Danifests`, `manifests%2Ft`, ...):
    // without Envoy's normalisation they would be manifest PUTs that skip the route
    // (pitfall 14). (distribution 2.8 ignores `?tag=`, so only `t` exists.)
    assert_eq!(direct.list_tags("direct").await, vec!["t".to_owned()]);
    let direct_puts: Vec<_> = registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.status == 201 && !r.target.contains("/blobs/"))
        .map(|r| r.target)
        .collect();
    let disguised = [
        "/v2/direct/%6Danifests/t",
        "/v2/direct/manifests%2Ft",
        "/v2/%64irect/manifests/t",
    ];
    support::assert_includes(
        &direct_puts,
        &disguised,
        "the manifests the registry stored",
    );
}

/// `manifest` (an OCI image manifest) with an annotation padding it to exactly `total` bytes.
fn padded_manifest(manifest: &[u8], total: usize) -> Vec<u8> {
    let mut value: serde_json::Value = serde_json::from_slice(manifest).expect("manifest JSON");
    value["annotations"] = serde_json::json!({ "org.example.padding": "" });
    let bare = serde_json::to_vec(&value).expect("serialises").len();
    assert!(total >= bare, "cannot pad {bare} bytes down to {total}");
    value["annotations"]["org.example.padding"] = serde_json::json!("x".repeat(total - bare));
    let padded = serde_json::to_vec(&value).expect("serialises");
    assert_eq!(padded.len(), total);
    padded
}

#[tokio::test]
async fn envoy_sends_exactly_manifest_writes_to_ext_proc_with_the_whole_body() {
    let (registry, processor, envoy) = registry_processor_and_envoy().await;
    let client = envoy.client();
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = oci_image_layout(dir.path(), &[2048, 10], 5);

    // A push through Envoy: blobs pass by, the manifest PUT is one ext_proc stream with
    // request headers, the whole body in one message, and the registry's answer.
    let pushed = client.push_layout("team/app", "v1", &layout).await;
    assert_eq!(pushed.status, 201, "{}", pushed.text());
    let streams = processor.streams();
    assert_eq!(
        streams.len(),
        1,
        "only the manifest PUT opens a stream: {streams:#?}"
    );
    let put = &streams[0];
    assert_eq!(put.method, "PUT");
    assert_eq!(put.path, "/v2/team/app/manifests/v1");
    assert_eq!(
        put.content_type.as_deref(),
        Some(layout.media_type.as_str())
    );
    assert!(!put.headers_end_of_stream);
    assert_eq!(put.body_messages, 1, "BUFFERED: one body message");
    assert!(put.body_end_of_stream);
    assert_eq!(put.body, layout.manifest);
    assert_eq!(
        put.response_status,
        Some(201),
        "response headers reach the processor"
    );
    assert!(put.unexpected.is_empty(), "{:?}", put.unexpected);
    // Envoy half-closes the stream when the request is over (the graceful-close runtime flag
    // in envoy.yaml), rather than resetting it: a finished stream is not an error.
    let ended = eventually(Duration::from_secs(3), "the stream to end", || async {
        processor.streams()[0].ended.clone().ok_or("still open")
    })
    .await;
    assert_eq!(ended, Ok(()), "how Envoy ended the stream");

    // Reads never reach it.
    assert_eq!(client.get_manifest("team/app", "v1").await.status, 200);
    assert_eq!(client.head_manifest("team/app", "v1").await.status, 200);
    assert_eq!(client.list_tags("team/app").await, vec!["v1".to_owned()]);
    assert_eq!(processor.streams().len(), 1);

    // DELETE: headers only (no body phase), then the registry's 202.
    let deleted = client.delete_manifest("team/app", &layout.digest).await;
    assert_eq!(deleted.status, 202, "{}", deleted.text());
    let streams = processor.streams();
    assert_eq!(streams.len(), 2);
    let delete = &streams[1];
    assert_eq!(delete.method, "DELETE");
    assert!(delete.headers_end_of_stream);
    assert_eq!(delete.body_messages, 0);
    assert_eq!(delete.response_status, Some(202));

    // The largest manifest distribution stores (4 MiB) fits Envoy's route buffer and arrives
    // whole; the registry accepts it.
    let big = padded_manifest(&layout.manifest, 4 * 1024 * 1024);
    let stored = client
        .put_manifest("team/app", "big", &layout.media_type, &big)
        .await;
    assert_eq!(stored.status, 201, "4 MiB manifest: {}", stored.text());
    let streams = processor.streams();
    assert_eq!(streams[2].body.len(), big.len());
    assert_eq!(streams[2].body_messages, 1);

    // Over the route's 5 MiB buffer: Envoy answers 413 itself and nothing is stored.
    let huge = padded_manifest(&layout.manifest, 5 * 1024 * 1024 + 1);
    let refused = client
        .put_manifest("team/app", "huge", &layout.media_type, &huge)
        .await;
    assert_eq!(refused.status, 413);
    assert_eq!(
        registry.count_requests("PUT", "/v2/team/app/manifests/huge"),
        0
    );
    // The processor saw that request's headers, no body, and then Envoy's own 413 as
    // "response headers": a response phase is not always the registry's answer.
    let streams = processor.streams();
    assert_eq!(streams[3].path, "/v2/team/app/manifests/huge");
    assert_eq!(streams[3].body_messages, 0);
    assert_eq!(streams[3].response_status, Some(413));

    // A refusal from the processor reaches the client as sent: status, JSON content type
    // (raw_value) and the OCI error body. The registry never sees the PUT.
    client.upload_layout_blobs("team/denied/app", &layout).await;
    let denied = client
        .put_manifest(
            "team/denied/app",
            "v1",
            &layout.media_type,
            &layout.manifest,
        )
        .await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.header("content-type"), Some("application/json"));
    assert_eq!(denied.json()["errors"][0]["code"], "DENIED");
    assert_eq!(
        registry.count_requests("PUT", "/v2/team/denied/app/manifests/v1"),
        0
    );

    // And the same through a real client: skopeo prints the message.
    let copied = skopeo_copy(&layout.dir, &format!("{}/team/app:v2", envoy.host()), &[]).await;
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let raw = skopeo_inspect_raw(&format!("{}/team/app:v2", envoy.host()), &[]).await;
    assert_eq!(sha256_digest(&raw.stdout), layout.digest);
    let refused = skopeo_copy(
        &layout.dir,
        &format!("{}/team/denied/app:v2", envoy.host()),
        &[],
    )
    .await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains(&format!("denied: {FAKE_DENIAL_MESSAGE}")),
        "skopeo shows the denial message: {stderr}"
    );

    let started = envoy
        .stat("http.registry.ext_proc.streams_started")
        .await
        .unwrap_or(0);
    let streams = processor.streams();
    for s in &streams {
        eprintln!(
            "{} {} body={}B in {} message(s), upstream status {:?}, denied {}, ended {:?}",
            s.method,
            s.path,
            s.body.len(),
            s.body_messages,
            s.response_status,
            s.denied,
            s.ended
        );
    }
    assert_eq!(started, streams.len() as u64);
}

/// skopeo copies `layout` to `dest` with `--dest-creds creds`; else panics with its stderr and
/// the registry's log.
async fn assert_copied_with(
    layout: &support::Layout,
    dest: &str,
    creds: &str,
    what: &str,
    registry: &Registry,
) {
    let copied = skopeo_copy(&layout.dir, dest, &["--dest-creds", creds]).await;
    assert!(
        copied.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&copied.stderr),
        registry.log()
    );
}

#[tokio::test]
async fn registry_auth_variants_work_and_pass_through_envoy_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = oci_image_layout(dir.path(), &[300], 9);

    // htpasswd (bcrypt) Basic auth.
    let basic = Registry::start(RegistryOptions::with_htpasswd("alice", "s3cret")).await;
    let envoy = envoy_without_sidecar(&basic).await;
    let anonymous = envoy.client().request("GET", "/v2/", &[], None).await;
    assert_eq!(anonymous.status, 401);
    assert!(
        anonymous
            .header("www-authenticate")
            .is_some_and(|c| c.starts_with("Basic ")),
        "{:?}",
        anonymous.headers
    );
    let authed = envoy
        .client()
        .with_basic_auth("alice", "s3cret")
        .request("GET", "/v2/", &[], None)
        .await;
    assert_eq!(authed.status, 200);
    let dest = format!("{}/basic/app:v1", basic.host());
    assert_copied_with(
        &layout,
        &dest,
        "alice:s3cret",
        "skopeo with Basic auth",
        &basic,
    )
    .await;
    assert_eq!(basic.client().list_tags("basic/app").await, vec!["v1"]);
    drop(envoy);

    // Docker token auth with a test issuer (Harbor's part).
    let issuer = TokenIssuer::start("robot", "t0ken", Duration::from_secs(300)).await;
    let registry = Registry::start(RegistryOptions {
        token_auth: Some(issuer.auth_config()),
        ..RegistryOptions::default()
    })
    .await;
    let envoy = envoy_without_sidecar(&registry).await;
    let challenge = envoy.client().tags_reply("tok/app").await;
    assert_eq!(challenge.status, 401);
    let header = challenge.header("www-authenticate").unwrap_or_default();
    assert!(
        header.starts_with("Bearer ")
            && header.contains(&format!("realm=\"{}\"", issuer.realm()))
            && header.contains("scope=\"repository:tok/app:pull\""),
        "{header}"
    );
    let dest = format!("{}/tok/app:v1", registry.host());
    let what = "skopeo with the token flow";
    assert_copied_with(&layout, &dest, "robot:t0ken", what, &registry).await;
    assert!(
        issuer
            .requests()
            .iter()
            .any(|r| r.user.as_deref() == Some("robot")
                && r.scopes
                    .iter()
                    .any(|s| s.starts_with("repository:tok/app:"))),
        "{:?}",
        issuer.requests()
    );
    let pull_token = issuer.token(&[("tok/app", &["pull"])]);
    let tags = envoy
        .client()
        .with_bearer(&pull_token)
        .list_tags("tok/app")
        .await;
    assert_eq!(tags, vec!["v1"]);
}

#[tokio::test]
async fn a_processor_that_never_answers_is_cut_off_by_message_timeout() {
    let (registry, _processor, envoy) = registry_processor_and_envoy().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = oci_image_layout(dir.path(), &[10], 1);
    let client = envoy.client();
    client.upload_layout_blobs("hang/app", &layout).await;

    // The fake never answers the body of a `/hang/` request: Envoy's message_timeout (5 s)
    // ends the wait, fail-closed, with the same 503 + OCI body as an unreachable sidecar.
    let started = Instant::now();
    let reply = client
        .put_manifest("hang/app", "v1", &layout.media_type, &layout.manifest)
        .await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.json()["errors"][0]["code"], "UNAVAILABLE");
    assert!(
        elapsed >= Duration::from_millis(4900) && elapsed < Duration::from_secs(8),
        "answered after {elapsed:?}, expected the 5 s message_timeout"
    );
    assert_eq!(
        registry.client().list_tags("hang/app").await,
        Vec::<String>::new()
    );
    eprintln!("{}", envoy.access_log());
}
