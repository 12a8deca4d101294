//! The Envoy ext_authz adapter (`envoy.service.auth.v3.Authorization/Check`), for meshes where
//! ext_proc cannot be inserted (Istio's `CUSTOM` authorization provider).
//!
//! Envoy sends the manifest with `with_request_body { pack_as_bytes: true }`, so the exact bytes
//! arrive in `raw_body`. ext_authz sees the request only: an admitted tag's slot is held for
//! `--reservation-ttl`, then released, and the repository's tag list is read again on the next
//! decision; so exactness holds when pushes finish within that time (docs/concurrency.md).

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

use crate::check::{Checker, TagSource, Transport};
use crate::policy::{ManifestWrite, WriteKind};
use crate::respond::{self, Rendered};

/// `envoy.service.auth.v3.Authorization`.
pub struct ExtAuthzService<S> {
    checker: Arc<Checker<S>>,
}

impl<S> ExtAuthzService<S> {
    /// Serves decisions from `checker`.
    pub fn new(checker: Arc<Checker<S>>) -> Self {
        Self { checker }
    }
}

#[tonic::async_trait]
impl<S: TagSource> Authorization for ExtAuthzService<S> {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let http = request
            .into_inner()
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .ok_or_else(|| {
                Status::invalid_argument("CheckRequest without attributes.request.http")
            })?;
        if let Some(refused) =
            self.checker
                .check_harbor_api(Transport::ExtAuthz, &http.method, &http.path)
            && let Some(refusal) = respond::render(&refused.outcome)
        {
            return Ok(Response::new(deny(&refusal)));
        }
        // Istio's policy sends every PUT and DELETE (blob uploads included, their bodies cut
        // short): anything that is not a manifest write passes at once.
        let Some(write) = ManifestWrite::from_request(&http.method, &http.path) else {
            return Ok(Response::new(allow()));
        };
        if write.kind == WriteKind::Delete {
            // No response phase: we cannot see whether the delete happened, so the tag list is
            // read again on the next decision.
            self.checker.observe_unconfirmed_delete(&write);
            return Ok(Response::new(allow()));
        }
        let body: &[u8] = if http.raw_body.is_empty() {
            http.body.as_bytes()
        } else {
            &http.raw_body
        };
        // `allow_partial_message` lets big blob PUTs through uncut by a 413; a manifest that
        // arrived cut is never judged on a part.
        if http
            .headers
            .get("x-envoy-auth-partial-body")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Ok(Response::new(deny(&respond::not_whole(&write, true))));
        }
        let content_type = http.headers.get("content-type").map(String::as_str);
        let authorization = http.headers.get("authorization").map(String::as_str);
        let checked = self
            .checker
            .check_push(
                Transport::ExtAuthz,
                &write,
                content_type,
                body,
                authorization,
                None,
            )
            .await;
        match respond::render(&checked.outcome) {
            None => {
                if let Some(ticket) = checked.ticket {
                    ticket.expire_after(self.checker.options().reservation_ttl);
                }
                let warnings = crate::policy::warning_headers(&checked.warnings);
                Ok(Response::new(allow_warning(&warnings)))
            }
            Some(refusal) => Ok(Response::new(deny(&refusal))),
        }
    }
}

fn allow() -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: tonic::Code::Ok as i32,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
        ..Default::default()
    }
}

/// An allow whose response carries `Warning` headers (ext_authz adds them to the registry's
/// answer, whatever its status: this adapter never sees it).
fn allow_warning(values: &[String]) -> CheckResponse {
    let mut response = allow();
    if let Some(HttpResponse::OkResponse(ok)) = &mut response.http_response {
        ok.response_headers_to_add = values
            .iter()
            .map(|value| HeaderValueOption {
                header: Some(HeaderValue {
                    key: "warning".to_owned(),
                    value: value.clone(),
                    ..Default::default()
                }),
                append_action: HeaderAppendAction::AppendIfExistsOrAdd as i32,
                ..Default::default()
            })
            .collect();
    }
    response
}

/// An explicit denial: status code set (an empty response would deny too, but silently), and
/// header values in `value`, which ext_authz reads (the mirror image of ext_proc's `raw_value`).
fn deny(rendered: &Rendered) -> CheckResponse {
    let message = String::from_utf8_lossy(&rendered.body).into_owned();
    CheckResponse {
        status: Some(rpc::Status {
            code: rendered.grpc_code as i32,
            message: rendered.details.to_owned(),
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(rendered.http_status),
            }),
            headers: vec![HeaderValueOption {
                header: Some(HeaderValue {
                    key: "content-type".to_owned(),
                    value: "application/json".to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            body: message,
        })),
        ..Default::default()
    }
}
