//! No bypass, no lockout, no leak, through a real Envoy (`envoy/envoy.yaml`, and
//! `envoy/ext-authz.yaml` where the mode matters) in front of a real CNCF distribution registry.
//! Every bypass attempt is refused by the gateway, and the registry itself is then asked whether
//! anything was stored; every lockout attempt leaves honest pushes working.

use crate::support;

use support::{HttpReply, RegistryClient, Scrape, Stack, StackOptions, sha256_digest};

const CONFIG: &str = "\
max_image_size: 100MB
tag_count_limit: 100
rules:
  - path: ^project-1/.*
    limit:
      max_image_size: 20MB
      tag_count_limit: 3
";
const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const MIB: u64 = 1024 * 1024;

fn error_of(reply: &HttpReply) -> (String, String) {
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    let error = &body["errors"][0];
    (
        error["code"].as_str().unwrap_or_default().to_owned(),
        error["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Config and one small layer uploaded to `repo`; returns a manifest builder whose layer list is
/// written by `layers` (so its keys can be spelled any way).
async fn blobs(client: &RegistryClient, repo: &str) -> (String, String) {
    let config = client.upload_blob(repo, b"{}").await;
    let layer = client.upload_blob(repo, b"layer bytes").await;
    (config, layer)
}

/// The stack with [`CONFIG`], its client through Envoy, and [`blobs`] in `project-1/app`.
async fn stack_with_blobs() -> (Stack, RegistryClient, (String, String)) {
    let stack = Stack::start(CONFIG).await;
    let client = stack.client();
    let blobs = blobs(&client, "project-1/app").await;
    (stack, client, blobs)
}

fn manifest(config: &str, layers: &str, marker: &str) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},{layers},"annotations":{{"m":"{marker}"}}}}"#
    )
    .into_bytes()
}

fn layer(digest: &str, size: u64) -> String {
    format!(
        r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{digest}","size":{size}}}"#
    )
}

/// A 25 MiB image under a 20MB limit, spelled so that a parser reading only exact keys would
/// measure 11 bytes while Go's `encoding/json` (the registry's) reads 25 MiB.
#[tokio::test]
async fn manifests_the_registry_would_read_differently_are_refused_and_never_stored() {
    let (stack, client, (config, small)) = stack_with_blobs().await;
    let repo = "project-1/app";
    let big = layer(&small, 25 * MIB);
    let tiny = layer(&small, 11);
    let attempts: Vec<(&str, String, &str)> = vec![
        (
            "upper-case key",
            format!(r#""layers":[{tiny}],"LAYERS":[{big}]"#),
            "LAYERS",
        ),
        ("title-case only", format!(r#""Layers":[{big}]"#), "Layers"),
        (
            "long s",
            format!("\"layer\u{17f}\":[{big}]"),
            "layer\u{17f}",
        ),
        (
            "escaped long s",
            format!(r#""layer\u017f":[{big}]"#),
            "layer\u{17f}",
        ),
        (
            "repeated key",
            format!(r#""layers":[{big}],"layers":[{tiny}]"#),
            "layers",
        ),
        (
            "descriptor size spelled twice",
            format!(
                r#""layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{small}","size":11,"SIZE":{}}}]"#,
                25 * MIB
            ),
            "SIZE",
        ),
    ];
    for (i, (name, layers, key)) in attempts.iter().enumerate() {
        let tag = format!("bypass{i}");
        let body = manifest(&config, layers, name);
        let reply = client.put_manifest(repo, &tag, OCI, &body).await;
        let (code, message) = error_of(&reply);
        assert_eq!(
            (reply.status, code.as_str()),
            (400, "MANIFEST_INVALID"),
            "{name}: {message}"
        );
        assert!(message.contains(&format!("{key:?}")), "{name}: {message}");
        let stored = stack.registry_client().get_manifest(repo, &tag).await;
        assert_eq!(stored.status, 404, "{name}: stored under its tag");
        let digest = sha256_digest(&body);
        let stored = stack.registry_client().get_manifest(repo, &digest).await;
        assert_eq!(stored.status, 404, "{name}: stored by digest");
    }
    assert_eq!(
        stack
            .registry
            .count_requests("PUT", &format!("/v2/{repo}/manifests/bypass0")),
        0,
        "no refused manifest reached the registry"
    );
    // The honest spelling of the same small image goes through.
    let honest = client
        .put_manifest(
            repo,
            "v1",
            OCI,
            &manifest(&config, &format!(r#""layers":[{tiny}]"#), "ok"),
        )
        .await;
    assert_eq!(honest.status, 201, "{}", honest.text());
}

/// Digest pushes whose `:` is percent-encoded are digests to the registry: they take no tag
/// slot, and a 3-tag repository still takes its three real tags.
#[tokio::test]
async fn encoded_digest_references_take_no_slot_and_lock_nobody_out() {
    let (stack, client, (config, small)) = stack_with_blobs().await;
    let repo = "project-1/app";
    for (i, colon) in ["%3A", "%3a", "%3A"].iter().enumerate() {
        let body = manifest(
            &config,
            &format!(r#""layers":[{}]"#, layer(&small, 11)),
            &format!("d{i}"),
        );
        let hex = sha256_digest(&body)
            .trim_start_matches("sha256:")
            .to_owned();
        let reply = client
            .request(
                "PUT",
                &format!("/v2/{repo}/manifests/sha256{colon}{hex}"),
                &[("content-type", OCI)],
                Some(body),
            )
            .await;
        assert_eq!(
            reply.status,
            201,
            "encoded digest push {i}: {}",
            reply.text()
        );
    }
    for tag in ["v1", "v2", "v3"] {
        let body = manifest(
            &config,
            &format!(r#""layers":[{}]"#, layer(&small, 11)),
            tag,
        );
        let reply = client.put_manifest(repo, tag, OCI, &body).await;
        assert_eq!(reply.status, 201, "{tag}: {}", reply.text());
    }
    let body = manifest(
        &config,
        &format!(r#""layers":[{}]"#, layer(&small, 11)),
        "v4",
    );
    let reply = client.put_manifest(repo, "v4", OCI, &body).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(
        stack.registry_client().list_tags(repo).await,
        ["v1", "v2", "v3"]
    );
}

/// Names and references outside the distribution grammar are answered by the gateway, with no
/// tag-list read and nothing sent to the registry; query keys are decoded before `tag` is looked
/// for.
#[tokio::test]
async fn invalid_names_and_tags_are_answered_by_the_gateway_without_any_upstream_call() {
    let stack = Stack::start_with(StackOptions::new(CONFIG)).await;
    let client = stack.client();
    let (config, small) = blobs(&client, "project-1/app").await;
    let body = manifest(
        &config,
        &format!(r#""layers":[{}]"#, layer(&small, 11)),
        "x",
    );
    let long = "a".repeat(4000);
    let cases = [
        (format!("/v2/{long}/manifests/v1"), "NAME_INVALID"),
        ("/v2/project-1/App/manifests/v1".to_owned(), "NAME_INVALID"),
        ("/v2/project-1/app_/manifests/v1".to_owned(), "NAME_INVALID"),
        ("/v2/project-1/app/manifests/-v1".to_owned(), "TAG_INVALID"),
        (
            format!("/v2/project-1/app/manifests/{}", "t".repeat(129)),
            "TAG_INVALID",
        ),
        (
            "/v2/project-1/app/manifests/sha256:ab?%74ag=.bad".to_owned(),
            "TAG_INVALID",
        ),
    ];
    let lists_before = stack
        .registry
        .count_requests("GET", "/v2/project-1/app/tags/list");
    for (path, want) in &cases {
        let reply = client
            .request("PUT", path, &[("content-type", OCI)], Some(body.clone()))
            .await;
        let (code, message) = error_of(&reply);
        assert_eq!(
            (reply.status, code.as_str()),
            (400, *want),
            "{}: {message}",
            &path[..60.min(path.len())]
        );
        assert!(message.len() < 1000, "the message echoes the whole name");
    }
    assert_eq!(
        stack
            .registry
            .count_requests("GET", "/v2/project-1/app/tags/list"),
        lists_before,
        "no tag list was read"
    );
    let puts = stack
        .registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path().contains("/manifests/"))
        .count();
    assert_eq!(puts, 0, "nothing reached the registry");
}

/// An htpasswd registry: clients without credentials the registry accepts get the registry's
/// own 401, never a slot, a tag-list read with the gateway's credentials, or a count.
#[tokio::test]
async fn clients_the_registry_refuses_take_no_slot_and_read_no_count_in_either_mode() {
    const USER: &str = "pusher";
    const PASSWORD: &str = "honest-pass";
    let stack = Stack::start_with(StackOptions::with_htpasswd(CONFIG, USER, PASSWORD)).await;
    let authz = stack.start_envoy("envoy/ext-authz.yaml").await;
    let honest = stack.client();
    let repo = "project-1/app";
    let (config, small) = blobs(&honest, repo).await;
    let image = |marker: &str, size: u64| {
        manifest(
            &config,
            &format!(r#""layers":[{}]"#, layer(&small, size)),
            marker,
        )
    };
    for tag in ["v1", "v2"] {
        let reply = honest.put_manifest(repo, tag, OCI, &image(tag, 11)).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    let strangers = [
        RegistryClient::new(&stack.envoy.url()),
        RegistryClient::new(&stack.envoy.url()).with_basic_auth(USER, "wrong"),
        RegistryClient::new(&authz.url()),
        RegistryClient::new(&authz.url()).with_bearer("forged"),
    ];
    for (i, stranger) in strangers.iter().enumerate() {
        for (tag, size) in [(format!("anon{i}a"), 11), (format!("anon{i}b"), 25 * MIB)] {
            let reply = stranger
                .put_manifest(repo, &tag, OCI, &image(&tag, size))
                .await;
            assert_eq!(reply.status, 401, "stranger {i} {tag}: {}", reply.text());
            let text = reply.text();
            for secret in [
                "tag_count_limit",
                "already has",
                "rule 0",
                "20971520",
                "project-1/.*",
            ] {
                assert!(
                    !text.contains(secret),
                    "stranger {i} learnt {secret:?}: {text}"
                );
            }
        }
    }
    // ext_authz holds an admitted slot for 30 s: had a stranger taken one, this would fail.
    let reply = RegistryClient::new(&authz.url())
        .with_basic_auth(USER, PASSWORD)
        .put_manifest(repo, "v3", OCI, &image("v3", 11))
        .await;
    assert_eq!(reply.status, 201, "the honest third tag: {}", reply.text());
    let reply = honest.put_manifest(repo, "v4", OCI, &image("v4", 11)).await;
    reply.assert_answer(403, "already has 3 tags");
    assert_eq!(
        stack.registry_client().list_tags(repo).await,
        ["v1", "v2", "v3"]
    );
    let metrics = Scrape::take(&stack.gateway.admin()).await.0;
    assert!(
        metrics.contains("registry_gateway_client_checks_total{result=\"refused\"}"),
        "{metrics}"
    );
}

/// Harbor's REST calls that create tags or copy artifacts never reach Harbor through the door.
#[tokio::test]
async fn harbor_api_tag_writes_are_refused_at_the_door_in_every_spelling() {
    let stack = Stack::start_with(StackOptions::new(CONFIG)).await;
    for mode in ["envoy/envoy.yaml", "envoy/ext-authz.yaml"] {
        let envoy = stack.start_envoy(mode).await;
        let client = RegistryClient::new(&envoy.url());
        for path in [
            "/api/v2.0/projects/p/repositories/app/artifacts/v1/tags",
            "/api/v2.0/projects/p/repositories/a%252Fb/artifacts/sha256:00/tags",
            "/api/v2.0/projects/p/repositories/app/artifacts?from=q/src:v1",
            "/API/v2.0/Projects/p/repositories/app/Artifacts/v1/TAGS",
            "/api/v2.0/projects/p/repositories/app/artifacts/v1/%74ags",
        ] {
            let reply = client
                .request(
                    "POST",
                    path,
                    &[("content-type", "application/json")],
                    Some(br#"{"name":"v9"}"#.to_vec()),
                )
                .await;
            let (code, message) = error_of(&reply);
            assert_eq!(
                (reply.status, code.as_str()),
                (403, "DENIED"),
                "{mode} {path}: {message}"
            );
            assert!(message.contains("Harbor's API"), "{message}");
        }
    }
    let api_calls = stack
        .registry
        .requests()
        .into_iter()
        .filter(|r| r.path().starts_with("/api/") || r.path().starts_with("/API/"))
        .count();
    assert_eq!(api_calls, 0, "a refused API call reached the upstream");
}

/// A 503 tells the client the cause, not the gateway's internal addresses or error chain.
#[tokio::test]
async fn a_503_carries_no_internal_address() {
    let mut stack = Stack::start_with(StackOptions::new(CONFIG)).await;
    let client = stack.client();
    let (config, small) = blobs(&client, "project-1/app").await;
    let registry_port = stack.registry.addr().port().to_string();
    stack.registry.kill();
    let body = manifest(
        &config,
        &format!(r#""layers":[{}]"#, layer(&small, 11)),
        "x",
    );
    let reply = client.put_manifest("project-1/app", "v1", OCI, &body).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    let text = reply.text();
    assert!(text.contains("could not be reached"), "{text}");
    for internal in [
        "127.0.0.1",
        &registry_port,
        "http://",
        "error sending request",
    ] {
        assert!(!text.contains(internal), "{internal:?} in {text}");
    }
}
