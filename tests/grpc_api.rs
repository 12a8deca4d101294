//! The sidecar's own gRPC surface, against the real binary and a real registry: reflection lists
//! every service, health answers, and the pre-flight `registry_gateway.v1.Policy` API explains
//! limits and evaluates pushes without taking a tag slot.

use registry_gateway_testkit as support;

use registry_gateway::preflight::pb::policy_client::PolicyClient;
use registry_gateway::preflight::pb::{EvaluateRequest, ExplainRequest, Outcome};
use support::{Stack, StackOptions};
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
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection stream")
        .into_inner();
    let reply = replies.message().await.expect("reply").expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("expected a service list, got {:?}", reply.message_response);
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "envoy.service.ext_proc.v3.ExternalProcessor",
        "envoy.service.auth.v3.Authorization",
        "grpc.health.v1.Health",
        "registry_gateway.v1.Policy",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    // The descriptors are complete enough for a client to describe the services.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "envoy.service.ext_proc.v3.ExternalProcessor".into(),
        )),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection stream")
        .into_inner();
    let reply = replies.message().await.expect("reply").expect("one reply");
    assert!(
        matches!(reply.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{:?}",
        reply.message_response
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

    let explained = policy
        .explain(ExplainRequest {
            repository: "project-1/app".into(),
        })
        .await
        .expect("explain")
        .into_inner();
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
    let global = policy
        .explain(ExplainRequest {
            repository: "library/nginx".into(),
        })
        .await
        .expect("explain")
        .into_inner();
    assert!(global.rule.is_none());
    assert!(
        policy
            .explain(ExplainRequest {
                repository: String::new()
            })
            .await
            .is_err()
    );

    let evaluate = |reference: &str, size: u64| EvaluateRequest {
        repository: "project-1/app".into(),
        reference: reference.into(),
        tags: vec![],
        content_type: OCI.into(),
        manifest: image(size),
    };
    let too_big = policy
        .evaluate(evaluate("v1", 20_971_521))
        .await
        .expect("evaluate")
        .into_inner();
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
        let fits = policy
            .evaluate(evaluate("c", 5))
            .await
            .expect("evaluate")
            .into_inner();
        assert_eq!(fits.outcome, Outcome::Allow as i32, "{}", fits.message);
        assert_eq!(fits.tag_count, Some(2));
    }
    let reply = client
        .put_manifest("project-1/app", "c", OCI, body.as_bytes())
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let full = policy
        .evaluate(evaluate("d", 5))
        .await
        .expect("evaluate")
        .into_inner();
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
