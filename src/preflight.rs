//! The pre-flight API (`registry_gateway.v1.Policy`): which limits apply to a repository, and
//! what a push would get, without pushing. A CI pipeline can ask before it uploads gigabytes.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::check::{Checker, Outcome, TagSource};
use crate::policy::{Limits, ManifestWrite, Reference, WriteKind};
use crate::respond;

/// Generated from `proto/registry_gateway/v1/policy.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("registry_gateway.v1");
}

/// Every service's descriptors, for gRPC reflection.
pub const REFLECTION_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/reflection_descriptor.bin"));

/// `registry_gateway.v1.Policy`.
pub struct PolicyService<S> {
    checker: Arc<Checker<S>>,
}

impl<S> PolicyService<S> {
    /// Answers from the checker's policy and tag books.
    pub fn new(checker: Arc<Checker<S>>) -> Self {
        Self { checker }
    }
}

fn limits(limits: &Limits) -> pb::Limits {
    pb::Limits {
        max_image_size_bytes: limits.max_image_size.bytes(),
        max_image_size: limits.max_image_size.to_string(),
        tag_count_limit: limits.tag_count_limit,
        exclude_tags: limits.exclude_tags.patterns().to_vec(),
        enforcement: limits.enforcement.as_str().to_owned(),
        warn_at: limits.warn_at.map(|s| s.to_string()).unwrap_or_default(),
    }
}

fn valid_repository(repository: &str) -> Result<(), Status> {
    if repository.is_empty() || repository.contains(['?', '#']) || repository.starts_with('/') {
        return Err(Status::invalid_argument(
            "repository must be a name such as project-1/app, without the registry host",
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl<S: TagSource> pb::policy_server::Policy for PolicyService<S> {
    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let repository = request.into_inner().repository;
        valid_repository(&repository)?;
        let snapshot = self.checker.snapshot();
        let (rule, applied) = snapshot.policy.limits_for(&repository);
        Ok(Response::new(pb::ExplainResponse {
            repository,
            rule: rule.map(|r| pb::Rule {
                index: r.index as u32,
                path: r.path.clone(),
            }),
            limits: Some(limits(applied)),
            config_version: snapshot.version,
        }))
    }

    async fn evaluate(
        &self,
        request: Request<pb::EvaluateRequest>,
    ) -> Result<Response<pb::EvaluateResponse>, Status> {
        let request = request.into_inner();
        valid_repository(&request.repository)?;
        if request.reference.is_empty() || request.reference.contains('/') {
            return Err(Status::invalid_argument(
                "reference must be a tag or a digest (sha256:…)",
            ));
        }
        let write = ManifestWrite {
            kind: WriteKind::Put,
            repository: request.repository.clone(),
            reference: Reference::parse(&request.reference),
            query_tags: request.tags,
        };
        let content_type = Some(request.content_type.as_str()).filter(|c| !c.is_empty());
        let checked = self
            .checker
            .dry_run(&write, content_type, &request.manifest)
            .await;
        let snapshot = self.checker.snapshot();
        let (_, applied) = snapshot.policy.limits_for(&request.repository);
        let rendered = respond::render(&checked.outcome);
        let (outcome, reason, message) = match &checked.outcome {
            Outcome::Allow | Outcome::Defer => (pb::Outcome::Allow, "none", String::new()),
            Outcome::Deny(d) => (pb::Outcome::Deny, d.reason.as_str(), d.message.clone()),
            Outcome::Unavailable { error, message } => {
                (pb::Outcome::Unavailable, error.as_str(), message.clone())
            }
        };
        let facts = checked.facts;
        Ok(Response::new(pb::EvaluateResponse {
            outcome: outcome as i32,
            http_status: rendered.as_ref().map_or(0, |r| u32::from(r.http_status)),
            oci_code: rendered.as_ref().map_or("", |r| r.oci_code).to_owned(),
            message,
            reason: reason.to_owned(),
            rule: facts.rule.map(|r| pb::Rule {
                index: r.index as u32,
                path: r.path,
            }),
            image_size_bytes: facts.image_bytes,
            tag_count: facts.tag_count.map(|c| c as u64),
            limits: Some(limits(applied)),
            would_deny_reason: checked
                .waived
                .as_ref()
                .map(|d| d.reason.as_str().to_owned())
                .unwrap_or_default(),
            would_deny_message: checked.waived.map(|d| d.message).unwrap_or_default(),
            warnings: checked.warnings,
        }))
    }
}
