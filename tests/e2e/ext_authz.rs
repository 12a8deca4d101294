//! ext_authz mode through a real Envoy (`envoy/ext-authz.yaml`) against ext_proc mode
//! (`envoy/envoy.yaml`), both in front of the same real registry and the same sidecar: one table
//! of pushes gives the same status, OCI code and message in both modes.

use crate::support;

use support::{HttpReply, RegistryClient, Stack, StackOptions, repo_root};

const CONFIG: &str = "max_image_size: 100MB\ntag_count_limit: 100\nrules:\n  - path: ^team/.*\n    limit: {max_image_size: 1MB, tag_count_limit: 2}\n";
const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

/// What a client sees: status, OCI code and message (with the repository name normalised).
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    code: Option<String>,
    message: Option<String>,
}

fn seen(reply: &HttpReply, repository: &str) -> Seen {
    let body: Option<serde_json::Value> = serde_json::from_slice(&reply.body).ok();
    let error = body.as_ref().map(|b| &b["errors"][0]);
    Seen {
        status: reply.status,
        code: error.and_then(|e| e["code"].as_str()).map(str::to_owned),
        message: error
            .and_then(|e| e["message"].as_str())
            .map(|m| m.replace(repository, "<repo>")),
    }
}

/// Runs the scenario table through `client` (one Envoy) into repositories under `prefix`.
async fn run(client: &RegistryClient, prefix: &str) -> Vec<(String, Seen)> {
    let repo = format!("team/{prefix}");
    let config = client.upload_blob(&repo, b"{}").await;
    let layer = client.upload_blob(&repo, b"some layer bytes").await;
    let manifest = |size: u64, marker: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":{size}}}],"annotations":{{"m":"{marker}"}}}}"#
        )
        .into_bytes()
    };
    let schema1 =
        std::fs::read(repo_root().join("tests/fixtures/manifests/schema1-signed.busybox.json"))
            .expect("fixture");
    let mut padded = manifest(16, "p");
    padded.truncate(padded.len() - 2);
    padded.extend_from_slice(format!(r#","x":"{}"}}}}"#, " ".repeat(4 * 1024 * 1024)).as_bytes());
    const SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
    // In order: each push sees the tags the ones before it left.
    let pushes: [(&str, &str, &str, Vec<u8>); 8] = [
        ("first tag", "v1", OCI, manifest(16, "1")),
        ("over 1MB", "v2", OCI, manifest(1024 * 1024 + 1, "2")),
        ("second tag", "v2", OCI, manifest(16, "2")),
        ("third tag over the limit", "v3", OCI, manifest(16, "3")),
        ("existing tag moves", "v1", OCI, manifest(16, "1b")),
        ("schema 1", "v9", SCHEMA1, schema1),
        (
            "malformed",
            "v9",
            OCI,
            br#"{"layers":[{"size":-1}]}"#.to_vec(),
        ),
        ("over 4 MiB", "v9", OCI, padded),
    ];
    let mut results = Vec::new();
    for (name, tag, content_type, body) in &pushes {
        let reply = client.put_manifest(&repo, tag, content_type, body).await;
        results.push(((*name).to_owned(), seen(&reply, &repo)));
    }
    let blob = client
        .try_upload_blob(&repo, &vec![7u8; 2 * 1024 * 1024])
        .await;
    results.push((
        "blob upload".into(),
        Seen {
            status: blob.status,
            code: None,
            message: None,
        },
    ));
    results.push((
        "tags afterwards".into(),
        Seen {
            status: 0,
            code: None,
            message: Some(client.list_tags(&repo).await.join(",")),
        },
    ));
    results
}

#[tokio::test]
async fn ext_authz_and_ext_proc_give_the_same_answers_through_real_envoys() {
    let stack = Stack::start_with(StackOptions::new(CONFIG)).await;
    let authz = stack.start_envoy("envoy/ext-authz.yaml").await;
    let via_proc = run(&stack.client(), "proc").await;
    let via_authz = run(&RegistryClient::new(&authz.url()), "authz").await;
    for ((name, proc), (_, authz)) in via_proc.iter().zip(&via_authz) {
        assert_eq!(proc, authz, "{name}: ext_proc and ext_authz disagree");
    }
    let status = |name: &str| {
        via_proc
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.status)
    };
    assert_eq!(status("first tag"), Some(201));
    assert_eq!(status("over 1MB"), Some(403));
    assert_eq!(status("second tag"), Some(201));
    assert_eq!(status("third tag over the limit"), Some(403));
    assert_eq!(status("existing tag moves"), Some(201));
    assert_eq!(status("schema 1"), Some(400));
    assert_eq!(status("malformed"), Some(400));
    assert_eq!(status("over 4 MiB"), Some(413));
    assert_eq!(status("blob upload"), Some(201));
    let tags = via_proc
        .iter()
        .find(|(n, _)| n == "tags afterwards")
        .and_then(|(_, s)| s.message.clone());
    assert_eq!(tags.as_deref(), Some("v1,v2"));
}
