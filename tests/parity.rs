//! One scenario table through both Envoy adapters (ext_proc and ext_authz) on a real tonic server
//! bound to 127.0.0.1:0, with a fake tag source: the same outcome, HTTP status, OCI code and
//! message from each.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::ext_authz::v3::pb::{
    AuthorizationServer, CheckRequest, CheckResponse, HttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AuthzRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Phase;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
};
use registry_gateway::check::{CheckOptions, Checker, TagError, TagSource};
use registry_gateway::extauthz::ExtAuthzService;
use registry_gateway::extproc::ExtProcService;
use registry_gateway::metrics::Metrics;
use registry_gateway::policy::{ConfigSource, compile};
use registry_gateway::reload::Snapshot;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Streaming;
use tonic::transport::Channel;

const CONFIG: &str = "max_image_size: 1MB\ntag_count_limit: 100\nrules:\n  - path: ^small/.*\n    limit: {max_image_size: 1KB, tag_count_limit: 2}\n";
const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

/// Tags per repository; `broken/*` cannot be listed.
#[derive(Clone, Default)]
struct FakeRegistry;

impl TagSource for FakeRegistry {
    async fn list_tags(&self, repository: &str) -> Result<Vec<String>, TagError> {
        match repository {
            r if r.starts_with("broken/") => Err(TagError::Status { status: 502 }),
            "small/full" => Ok(vec!["a".into(), "b".into()]),
            _ => Ok(vec![]),
        }
    }

    async fn client_may_read(
        &self,
        _repository: &str,
        _authorization: Option<&str>,
    ) -> Result<bool, TagError> {
        Ok(true)
    }
}

fn image(total: u64) -> Vec<u8> {
    format!(r#"{{"schemaVersion":2,"mediaType":"{OCI}","layers":[{{"size":{total}}}]}}"#)
        .into_bytes()
}

struct Scenario {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    /// `None`: allowed.
    want: Option<(u16, &'static str, &'static str)>,
}

fn scenarios() -> Vec<Scenario> {
    let schema1 = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/manifests/schema1-signed.busybox.json"
    ))
    .expect("fixture");
    let s = |name, method, path, content_type, body, want| Scenario {
        name,
        method,
        path,
        content_type,
        body,
        want,
    };
    vec![
        s(
            "small image allowed",
            "PUT",
            "/v2/small/app/manifests/v1",
            OCI,
            image(1024),
            None,
        ),
        s(
            "one byte over refused",
            "PUT",
            "/v2/small/app/manifests/v1",
            OCI,
            image(1025),
            Some((403, "DENIED", "1025 bytes")),
        ),
        s(
            "global limit refused",
            "PUT",
            "/v2/other/app/manifests/v1",
            OCI,
            image(1024 * 1024 + 1),
            Some((403, "DENIED", "the global limit")),
        ),
        s(
            "tag limit refused",
            "PUT",
            "/v2/small/full/manifests/c",
            OCI,
            image(1),
            Some((403, "DENIED", "already has 2 tags")),
        ),
        s(
            "existing tag moves",
            "PUT",
            "/v2/small/full/manifests/a",
            OCI,
            image(1),
            None,
        ),
        s(
            "digest push adds no tag",
            "PUT",
            "/v2/small/full/manifests/sha256:0000",
            OCI,
            image(1),
            None,
        ),
        s(
            "parameterised content type",
            "PUT",
            "/v2/small/app/manifests/v2",
            "Application/VND.oci.image.manifest.v1+json; charset=utf-8",
            image(1),
            None,
        ),
        s(
            "schema 1 refused",
            "PUT",
            "/v2/small/app/manifests/v1",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            schema1,
            Some((400, "MANIFEST_INVALID", "schema 2")),
        ),
        s(
            "malformed body refused",
            "PUT",
            "/v2/small/app/manifests/v1",
            OCI,
            b"{\"layers\":[{\"size\":-1}]}".to_vec(),
            Some((400, "MANIFEST_INVALID", "not valid JSON")),
        ),
        s(
            "missing content type refused",
            "PUT",
            "/v2/small/app/manifests/v1",
            "",
            image(1),
            Some((400, "MANIFEST_INVALID", "no Content-Type")),
        ),
        s(
            "oversized manifest refused",
            "PUT",
            "/v2/small/app/manifests/v1",
            OCI,
            vec![b' '; 4 * 1024 * 1024 + 1],
            Some((413, "MANIFEST_INVALID", "4194305 bytes")),
        ),
        s(
            "unreadable tag list fails closed",
            "PUT",
            "/v2/broken/app/manifests/v1",
            OCI,
            image(1),
            Some((503, "UNAVAILABLE", "HTTP 502")),
        ),
        s(
            "delete passes",
            "DELETE",
            "/v2/small/app/manifests/v1",
            OCI,
            Vec::new(),
            None,
        ),
        s(
            "blob upload is not ours",
            "PUT",
            "/v2/small/app/blobs/uploads/x?digest=sha256:00",
            "application/octet-stream",
            b"data".to_vec(),
            None,
        ),
    ]
}

async fn serve() -> String {
    let policy = compile(&ConfigSource::File {
        name: "t".into(),
        text: CONFIG.into(),
    })
    .expect("valid");
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(Snapshot {
        policy,
        version: 1,
        hash: String::new(),
        loaded_at: SystemTime::now(),
    }));
    std::mem::forget(tx);
    let metrics = Arc::new(Metrics::new());
    let checker = Arc::new(Checker::new(
        FakeRegistry,
        rx,
        CheckOptions::default(),
        metrics.clone(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                ExternalProcessorServer::new(ExtProcService::new(checker.clone(), metrics))
                    .max_decoding_message_size(8 << 20),
            )
            .add_service(
                AuthorizationServer::new(ExtAuthzService::new(checker))
                    .max_decoding_message_size(8 << 20),
            )
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

/// (allowed, status, content type, body)
type Answer = (bool, u16, String, Vec<u8>);

fn header(key: &str, value: &str) -> HeaderValue {
    HeaderValue {
        key: key.into(),
        raw_value: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// The request body in one message, as Envoy sends a buffered body.
fn whole_body(body: Vec<u8>) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Phase::RequestBody(HttpBody {
            body,
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// An ext_proc stream: what to send on it, and its replies.
async fn open_stream(
    client: &mut ExternalProcessorClient<Channel>,
) -> (
    mpsc::Sender<ProcessingRequest>,
    Streaming<ProcessingResponse>,
) {
    let (tx, rx) = mpsc::channel(4);
    let replies = client
        .process(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    (tx, replies)
}

async fn via_ext_proc(url: &str, s: &Scenario) -> Answer {
    let mut client = ExternalProcessorClient::connect(url.to_owned())
        .await
        .expect("connect")
        .max_decoding_message_size(8 << 20)
        .max_encoding_message_size(8 << 20);
    let mut headers = vec![
        header(":method", s.method),
        header(":path", s.path),
        header(":authority", "r"),
    ];
    if !s.content_type.is_empty() {
        headers.push(header("content-type", s.content_type));
    }
    let has_body = !s.body.is_empty();
    let mut messages = vec![ProcessingRequest {
        request: Some(Phase::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap { headers }),
            end_of_stream: !has_body,
            ..Default::default()
        })),
        ..Default::default()
    }];
    if has_body {
        messages.push(whole_body(s.body.clone()));
    }
    let (tx, mut replies) = open_stream(&mut client).await;
    for m in messages {
        tx.send(m).await.expect("send");
        let reply = replies
            .message()
            .await
            .expect("reply")
            .expect("a reply per phase");
        if let Some(Reply::ImmediateResponse(r)) = reply.response {
            let set = r.headers.map(|h| h.set_headers).unwrap_or_default();
            let ct = set
                .iter()
                .filter_map(|o| o.header.as_ref())
                .find(|h| h.key == "content-type")
                .map(|h| {
                    assert!(
                        h.value.is_empty(),
                        "ext_proc header values go in raw_value only"
                    );
                    String::from_utf8_lossy(&h.raw_value).into_owned()
                })
                .unwrap_or_default();
            return (false, r.status.map_or(0, |s| s.code as u16), ct, r.body);
        }
    }
    (true, 0, String::new(), Vec::new())
}

async fn via_ext_authz(url: &str, s: &Scenario) -> Answer {
    let mut client = AuthorizationClient::connect(url.to_owned())
        .await
        .expect("connect")
        .max_encoding_message_size(8 << 20);
    let mut headers = HashMap::new();
    if !s.content_type.is_empty() {
        headers.insert("content-type".to_owned(), s.content_type.to_owned());
    }
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AuthzRequest {
                http: Some(HttpRequest {
                    method: s.method.into(),
                    path: s.path.into(),
                    headers,
                    raw_body: s.body.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let response: CheckResponse = client.check(request).await.expect("check").into_inner();
    let code = response
        .status
        .as_ref()
        .map(|s| s.code)
        .expect("ext_authz always sets a status");
    match response.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            assert_ne!(code, 0, "a denial carries a non-OK status");
            let ct = d
                .headers
                .iter()
                .filter_map(|o| o.header.as_ref())
                .find(|h| h.key == "content-type")
                .map(|h| h.value.clone())
                .unwrap_or_default();
            (
                false,
                d.status.map_or(0, |s| s.code as u16),
                ct,
                d.body.into_bytes(),
            )
        }
        _ => {
            assert_eq!(code, 0);
            (true, 0, String::new(), Vec::new())
        }
    }
}

#[tokio::test]
async fn both_adapters_give_the_same_answer_to_every_scenario() {
    let url = serve().await;
    for s in scenarios() {
        let proc = tokio::time::timeout(Duration::from_secs(5), via_ext_proc(&url, &s))
            .await
            .expect("ext_proc answers");
        let authz = tokio::time::timeout(Duration::from_secs(5), via_ext_authz(&url, &s))
            .await
            .expect("ext_authz answers");
        assert_eq!(proc, authz, "{}: adapters disagree", s.name);
        match s.want {
            None => assert!(
                proc.0,
                "{}: expected allow, got {:?}",
                s.name,
                String::from_utf8_lossy(&proc.3)
            ),
            Some((status, code, fragment)) => {
                assert!(!proc.0, "{}: expected a refusal", s.name);
                assert_eq!(proc.1, status, "{}", s.name);
                assert_eq!(proc.2, "application/json", "{}", s.name);
                let body: serde_json::Value =
                    serde_json::from_slice(&proc.3).expect("OCI error JSON");
                assert_eq!(body["errors"][0]["code"], code, "{}", s.name);
                let message = body["errors"][0]["message"].as_str().expect("message");
                assert!(message.contains(fragment), "{}: {message}", s.name);
            }
        }
    }
}

#[tokio::test]
async fn a_body_without_request_headers_ends_the_stream_with_an_error() {
    let url = serve().await;
    let mut client = ExternalProcessorClient::connect(url)
        .await
        .expect("connect");
    let (tx, mut replies) = open_stream(&mut client).await;
    tx.send(whole_body(image(1))).await.expect("send");
    // Never a CONTINUE: Envoy turns the error into a refusal (failure_mode_allow: false).
    let status = replies.message().await.expect_err("the stream fails");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
}
