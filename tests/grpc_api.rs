//! The sidecar's own gRPC surface, against the real binary and a real registry: reflection lists
//! every service, health answers, and the pre-flight `registry_gateway.v1.Policy` API explains
//! limits and evaluates pushes without taking a tag slot.

use registry_gateway_testkit as support;

use registry_gateway::preflight::pb::policy_client::PolicyClient;
use registry_gateway::preflight::pb::{
    EvaluateRequest, EvaluateResponse, ExplainRequest, ExplainResponse, Outcome,
};
use support::{Stack, StackOptions};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const SEED: &str = include_str!("fixtures/policy/valid/seed.yaml");
const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

fn image(total: u64) -> Vec<u8> {
    format!(r#"{{"schemaVersion":2,"mediaType":"{OCI}","layers":[{{"size":{total}}}]}}"#)
        .into_bytes()
}

/// The one reply to one reflection request.
async fn reflect(
    client: &mut ServerReflectionClient<Channel>,
    request: MessageRequest,
) -> Option<MessageResponse> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection stream")
        .into_inner();
    let reply = replies.message().await.expect("reply").expect("one reply");
    reply.message_response
}

async fn explain(
    policy: &mut PolicyClient<Channel>,
    repository: &str,
) -> Result<ExplainResponse, tonic::Status> {
    let request = ExplainRequest {
        repository: repository.into(),
    };
    policy
        .explain(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Asks whether an image of `size` bytes may be pushed as `project-1/app:<reference>`.
async fn evaluate(
    policy: &mut PolicyClient<Channel>,
    reference: &str,
    size: u64,
) -> EvaluateResponse {
    let request = EvaluateRequest {
        repository: "project-1/app".into(),
        reference: reference.into(),
        tags: vec![],
        content_type: OCI.into(),
        manifest: image(size),
    };
    policy
        .evaluate(request)
        .await
        .expect("evaluate")
        .into_inner()
}

#[tokio::test]
async fn reflection_lists_every_service_and_health_answers() {
    let stack = Stack::start_with(StackOptions::new(SEED)).await;
    let url = format!("http://{}", stack.gateway.grpc_addr());
    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let reply = reflect(&mut reflection, MessageRequest::ListServices(String::new())).await;
    let Some(MessageResponse::ListServicesResponse(list)) = reply else {
        panic!("expected a service list, got {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    let services = [
        "envoy.service.ext_proc.v3.ExternalProcessor",
        "envoy.service.auth.v3.Authorization",
        "grpc.health.v1.Health",
        "registry_gateway.v1.Policy",
    ];
    support::assert_includes(&names, &services, "the reflected services");
    // The descriptors are complete enough for a client to describe the services.
    let symbol =
        MessageRequest::FileContainingSymbol("envoy.service.ext_proc.v3.ExternalProcessor".into());
    let reply = reflect(&mut reflection, symbol).await;
    assert!(
        matches!(reply, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{reply:?}"
    );

    let mut health = HealthClient::new(channel);
    for service in [
        "",
        "envoy.service.ext_proc.v3.ExternalProcessor",
        "registry_gateway.v1.Policy",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
}

#[tokio::test]
async fn preflight_explains_and_evaluates_without_taking_a_slot() {
    let stack = Stack::start_with(StackOptions::new(SEED)).await;
    let url = format!("http://{}", stack.gateway.grpc_addr());
    let mut policy = PolicyClient::connect(url).await.expect("connect");

    let explained = explain(&mut policy, "project-1/app")
        .await
        .expect("explain");
    let rule = explained.rule.expect("rule 0 applies");
    assert_eq!((rule.index, rule.path.as_str()), (0, "^project-1/.*"));
    let limits = explained.limits.expect("limits");
    assert_eq!(
        (
            limits.max_image_size_bytes,
            limits.max_image_size.as_str(),
            limits.tag_count_limit
        ),
        (20_971_520, "20MB", 3)
    );
    let global = explain(&mut policy, "library/nginx")
        .await
        .expect("explain");
    assert!(global.rule.is_none());
    assert!(explain(&mut policy, "").await.is_err());

    let too_big = evaluate(&mut policy, "v1", 20_971_521).await;
    assert_eq!(too_big.outcome, Outcome::Deny as i32);
    assert_eq!(
        (
            too_big.http_status,
            too_big.oci_code.as_str(),
            too_big.reason.as_str()
        ),
        (403, "DENIED", "image_too_large")
    );
    assert!(
        too_big.message.contains("20971521 bytes"),
        "{}",
        too_big.message
    );
    assert_eq!(too_big.image_size_bytes, Some(20_971_521));

    // Fill project-1/app to 2 of its 3 tags through Envoy.
    let client = stack.client();
    let config = client.upload_blob("project-1/app", b"{}").await;
    let layer = client.upload_blob("project-1/app", b"layer").await;
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":5}}]}}"#
    );
    for tag in ["a", "b"] {
        let reply = client
            .put_manifest("project-1/app", tag, OCI, body.as_bytes())
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    // Asking twice whether a third tag fits takes no slot: both say yes, and the real push passes.
    for _ in 0..2 {
        let fits = evaluate(&mut policy, "c", 5).await;
        assert_eq!(fits.outcome, Outcome::Allow as i32, "{}", fits.message);
        assert_eq!(fits.tag_count, Some(2));
    }
    let reply = client
        .put_manifest("project-1/app", "c", OCI, body.as_bytes())
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let full = evaluate(&mut policy, "d", 5).await;
    assert_eq!(
        (full.outcome, full.reason.as_str()),
        (Outcome::Deny as i32, "tag_limit")
    );
    assert!(
        full.message.contains("already has 3 tags"),
        "{}",
        full.message
    );
}
