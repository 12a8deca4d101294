//! The one table from outcomes to what the client sees: HTTP status, OCI error code and the gRPC
//! code ext_authz puts in `CheckResponse.status`. Fail-open and fail-closed behaviour can be
//! audited here and in `envoy/*.yaml`, nowhere else.
//!
//! | outcome                         | HTTP | OCI code         | gRPC (ext_authz)   |
//! |---------------------------------|------|------------------|--------------------|
//! | allow                           | -    | -                | OK                 |
//! | deny: image too large           | 403  | DENIED           | PERMISSION_DENIED  |
//! | deny: tag limit                 | 403  | DENIED           | PERMISSION_DENIED  |
//! | deny: manifest invalid          | 400  | MANIFEST_INVALID | INVALID_ARGUMENT   |
//! | deny: schema 1                  | 400  | MANIFEST_INVALID | INVALID_ARGUMENT   |
//! | deny: manifest over 4 MiB       | 413  | MANIFEST_INVALID | INVALID_ARGUMENT   |
//! | deny: repository name invalid   | 400  | NAME_INVALID     | INVALID_ARGUMENT   |
//! | deny: tag or reference invalid  | 400  | TAG_INVALID      | INVALID_ARGUMENT   |
//! | deny: Harbor API tag/copy       | 403  | DENIED           | PERMISSION_DENIED  |
//! | tag list unavailable (fail closed) | 503 | UNAVAILABLE   | UNAVAILABLE        |
//!
//! `DENIED` is what docker and skopeo print as `denied: <message>` without retrying;
//! `MANIFEST_INVALID` makes containers/image clients fall back to another manifest format, which
//! is what a schema 1 or unmeasurable push needs.

use crate::check::Outcome;
use crate::policy::decision::{self, oci_error_body};
use crate::policy::{Denial, DenyReason, Facts, ManifestWrite};

/// What a refusal looks like on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub http_status: u16,
    pub oci_code: &'static str,
    pub grpc_code: tonic::Code,
    /// The JSON OCI error envelope; sent with `content-type: application/json`.
    pub body: Vec<u8>,
    /// A short word for Envoy's `%RESPONSE_CODE_DETAILS%` and logs.
    pub details: &'static str,
}

/// The status line and code of a denial reason.
pub const fn deny_status(reason: DenyReason) -> (u16, &'static str, tonic::Code) {
    match reason {
        DenyReason::ImageTooLarge | DenyReason::TagLimit | DenyReason::HarborApi => {
            (403, "DENIED", tonic::Code::PermissionDenied)
        }
        DenyReason::ManifestInvalid | DenyReason::Schema1 => {
            (400, "MANIFEST_INVALID", tonic::Code::InvalidArgument)
        }
        DenyReason::ManifestTooLarge => (413, "MANIFEST_INVALID", tonic::Code::InvalidArgument),
        DenyReason::NameInvalid => (400, "NAME_INVALID", tonic::Code::InvalidArgument),
        DenyReason::TagInvalid => (400, "TAG_INVALID", tonic::Code::InvalidArgument),
    }
}

/// Renders a refusal; `None` for an allowed request.
pub fn render(outcome: &Outcome) -> Option<Rendered> {
    match outcome {
        Outcome::Allow | Outcome::Defer => None,
        Outcome::Deny(denial) => Some(denied(denial)),
        Outcome::Unavailable { error, message } => Some(Rendered {
            http_status: 503,
            oci_code: "UNAVAILABLE",
            grpc_code: tonic::Code::Unavailable,
            body: oci_error_body(
                "UNAVAILABLE",
                message,
                &serde_json::json!({ "cause": error.as_str() }),
            ),
            details: "tag_list_unavailable",
        }),
    }
}

/// A manifest body the gateway could not receive whole: larger than any registry accepts, or
/// cut by Envoy's buffer. Refused like an oversized manifest, never allowed unseen.
pub fn not_whole(write: &ManifestWrite, cut_by_envoy: bool) -> Rendered {
    let facts = Facts {
        repository: write.repository.clone(),
        reference: write.reference.as_str().to_owned(),
        ..Facts::default()
    };
    let denial = decision::manifest_not_whole(&facts, cut_by_envoy);
    denied(&denial)
}

fn denied(denial: &Denial) -> Rendered {
    let (http_status, oci_code, grpc_code) = deny_status(denial.reason);
    Rendered {
        http_status,
        oci_code,
        grpc_code,
        body: oci_error_body(oci_code, &denial.message, &denial.detail),
        details: denial.reason.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::TagError;

    #[test]
    fn every_reason_has_a_row() {
        let table: &[(DenyReason, u16, &str)] = &[
            (DenyReason::ImageTooLarge, 403, "DENIED"),
            (DenyReason::TagLimit, 403, "DENIED"),
            (DenyReason::ManifestInvalid, 400, "MANIFEST_INVALID"),
            (DenyReason::Schema1, 400, "MANIFEST_INVALID"),
            (DenyReason::ManifestTooLarge, 413, "MANIFEST_INVALID"),
            (DenyReason::NameInvalid, 400, "NAME_INVALID"),
            (DenyReason::TagInvalid, 400, "TAG_INVALID"),
            (DenyReason::HarborApi, 403, "DENIED"),
        ];
        assert_eq!(table.len(), DenyReason::ALL.len());
        for (reason, status, code) in table {
            let outcome = Outcome::Deny(Denial {
                reason: *reason,
                message: "m".into(),
                detail: serde_json::Value::Null,
            });
            let r = render(&outcome).expect("refusal");
            assert_eq!((r.http_status, r.oci_code), (*status, *code));
            let body: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
            assert_eq!(body["errors"][0]["code"], *code);
            assert_eq!(body["errors"][0]["message"], "m");
        }
    }

    #[test]
    fn an_unreadable_tag_list_is_a_503_unavailable() {
        let outcome = Outcome::Unavailable {
            error: TagError::Status { status: 502 },
            message: "x".into(),
        };
        let r = render(&outcome).expect("refusal");
        assert_eq!(
            (r.http_status, r.oci_code, r.grpc_code),
            (503, "UNAVAILABLE", tonic::Code::Unavailable)
        );
        assert!(render(&Outcome::Allow).is_none());
    }
}
