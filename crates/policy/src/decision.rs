//! Decisions: allow (with the tag slots it reserved) or deny, with the facts behind them and the
//! message the pushing client prints.

use serde_json::json;

use super::Limits;
use super::rollout::{self, Enforcement};
use super::size::ByteSize;

/// Why a push was refused. `as_str` is stable: it appears in logs and metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// The layers add up to more than `max_image_size`.
    ImageTooLarge,
    /// A new tag would take the repository past `tag_count_limit`.
    TagLimit,
    /// The body cannot be measured (malformed, unknown type, mismatched type).
    ManifestInvalid,
    /// A Docker schema 1 manifest, which carries no sizes.
    Schema1,
    /// The body is larger than any registry accepts for a manifest.
    ManifestTooLarge,
    /// The repository name breaks the distribution grammar.
    NameInvalid,
    /// The reference or a `?tag=` value is neither a valid tag nor a digest.
    TagInvalid,
    /// A Harbor API call that creates tags or copies artifacts without a manifest write.
    HarborApi,
}

impl DenyReason {
    /// Every reason, for metrics that pre-register their label values.
    pub const ALL: [Self; 8] = [
        Self::ImageTooLarge,
        Self::TagLimit,
        Self::ManifestInvalid,
        Self::Schema1,
        Self::ManifestTooLarge,
        Self::NameInvalid,
        Self::TagInvalid,
        Self::HarborApi,
    ];

    /// Whether the message names a repository's limits, count or rule: told only to clients
    /// the registry accepts.
    pub const fn discloses_limits(self) -> bool {
        matches!(self, Self::ImageTooLarge | Self::TagLimit)
    }

    /// Stable name for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ImageTooLarge => "image_too_large",
            Self::TagLimit => "tag_limit",
            Self::ManifestInvalid => "manifest_invalid",
            Self::Schema1 => "schema1",
            Self::ManifestTooLarge => "manifest_too_large",
            Self::NameInvalid => "name_invalid",
            Self::TagInvalid => "tag_invalid",
            Self::HarborApi => "harbor_api",
        }
    }
}

/// The rule that applied: a `rules[]` entry, or the global limits when `None`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RuleRef {
    pub index: usize,
    pub path: String,
}

/// `repo:tag` or `repo@sha256:…`: the reference as a user would type it.
pub fn image_reference(repository: &str, reference: &str) -> String {
    // Tags never contain `:`; digests always do.
    let separator = if reference.contains(':') { '@' } else { ':' };
    format!("{repository}{separator}{reference}")
}

impl Facts {
    /// The pushed image as a user would type it.
    pub fn image(&self) -> String {
        image_reference(&self.repository, &self.reference)
    }
}

/// How a rule is named in messages.
pub fn describe_rule(rule: Option<&RuleRef>) -> String {
    match rule {
        Some(r) => format!("rule {} (path `{}`)", r.index, r.path),
        None => "the global limit (no rule matched)".to_owned(),
    }
}

/// What was measured and which limits applied; logged with every decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub repository: String,
    pub reference: String,
    pub rule: Option<RuleRef>,
    pub media_type: Option<&'static str>,
    pub image_bytes: Option<u64>,
    pub max_image_bytes: Option<u64>,
    /// Tags counted toward the limit before this push (confirmed plus reserved).
    pub tag_count: Option<usize>,
    pub tag_count_limit: Option<u64>,
    /// Tags this push creates.
    pub new_tags: usize,
    /// What the limits that applied do to a push that breaks them.
    pub enforcement: Enforcement,
}

/// A refusal, as the client will read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub reason: DenyReason,
    /// Complete on its own: clients print `message` and drop `detail`.
    pub message: String,
    pub detail: serde_json::Value,
}

/// Allow or deny.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let the push through. `reserved` are the tag slots now held in the repository's book,
    /// to be committed or released when the registry answers.
    Allow {
        reserved: Vec<String>,
    },
    Deny(Denial),
}

/// A decision and the facts behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub facts: Facts,
    pub verdict: Verdict,
    /// The refusal `enforce` would have given, let through because the limit is `warn` or
    /// `dry-run`: logged and counted as a would-be denial.
    pub waived: Option<Denial>,
    /// Texts for the client's `Warning` headers on an allowed push (see
    /// [`warning_headers`](crate::warning_headers)).
    pub warnings: Vec<String>,
}

impl Decision {
    /// Whether the push may go on.
    pub fn is_allowed(&self) -> bool {
        matches!(self.verdict, Verdict::Allow { .. })
    }

    /// A refusal.
    pub fn denied(facts: Facts, denial: Denial) -> Self {
        Self {
            facts,
            verdict: Verdict::Deny(denial),
            waived: None,
            warnings: Vec::new(),
        }
    }

    /// A push let through under `limits`, holding `reserved`; `waived` is the refusal a limit
    /// in `warn` or `dry-run` did not give. The client's warnings follow: the waived refusal's
    /// text in `warn` (nothing in `dry-run`), else the `warn_at` thresholds this push reached.
    pub fn allowed(
        facts: Facts,
        reserved: Vec<String>,
        waived: Option<Denial>,
        limits: &Limits,
    ) -> Self {
        let warnings = match (&waived, limits.enforcement) {
            (Some(denial), Enforcement::Warn) => vec![rollout::waived_warning(&denial.message)],
            (Some(_), _) => Vec::new(),
            (None, _) => soft_warnings(&facts, limits),
        };
        Self {
            facts,
            verdict: Verdict::Allow { reserved },
            waived,
            warnings,
        }
    }

    /// Whether what the client would learn names the repository's limits, count or rule, or
    /// the decision reports on the client's push: done only for clients the registry accepts.
    pub fn discloses_limits(&self) -> bool {
        self.denial().is_some_and(|d| d.reason.discloses_limits())
            || self.waived.is_some()
            || !self.warnings.is_empty()
    }

    /// The refusal, if any.
    pub fn denial(&self) -> Option<&Denial> {
        match &self.verdict {
            Verdict::Deny(d) => Some(d),
            Verdict::Allow { .. } => None,
        }
    }
}

/// The `warn_at` thresholds an allowed push reached: its image size, and the repository's tag
/// count once its new tags are stored.
fn soft_warnings(facts: &Facts, limits: &Limits) -> Vec<String> {
    let Some(share) = limits.warn_at else {
        return Vec::new();
    };
    let rule = describe_rule(facts.rule.as_ref());
    let mut warnings = Vec::new();
    let max = limits.max_image_size.bytes();
    if let Some(bytes) = facts.image_bytes
        && share.reached(bytes, max)
    {
        warnings.push(rollout::size_warning(
            &facts.image(),
            bytes,
            max,
            share,
            &rule,
        ));
    }
    if let Some(count) = facts.tag_count {
        let after = count as u64 + facts.new_tags as u64;
        if share.reached(after, limits.tag_count_limit) {
            warnings.push(rollout::tag_warning(
                &facts.repository,
                after,
                limits.tag_count_limit,
                share,
                &rule,
            ));
        }
    }
    warnings
}

pub(super) fn image_too_large(facts: &Facts, measured: ByteSize, limit: ByteSize) -> Denial {
    let rule = describe_rule(facts.rule.as_ref());
    let message = format!(
        "push to {image} refused: the image's layers total {measured}, over the limit of {limit} set by {rule} (sizes are 1024-based: 1MB = 1048576 bytes). Make the image smaller (fewer or smaller layers), or ask the registry administrator to raise max_image_size for {repo}.",
        repo = facts.repository,
        image = facts.image(),
        measured = measured.exact(),
        limit = limit.exact(),
    );
    Denial {
        reason: DenyReason::ImageTooLarge,
        message,
        detail: json!({
            "repository": facts.repository,
            "reference": facts.reference,
            "image_size_bytes": measured.bytes(),
            "max_image_size_bytes": limit.bytes(),
            "max_image_size": limit.to_string(),
            "rule": facts.rule,
        }),
    }
}

pub(super) fn tag_limit(facts: &Facts, count: usize, new_tags: &[String], limit: u64) -> Denial {
    let rule = describe_rule(facts.rule.as_ref());
    let tags = new_tags.join(", ");
    let message = format!(
        "push to {image} refused: repository {repo} already has {count} tag{s} and the limit set by {rule} is {limit} tag{ls}, so the new tag{ns} {tags} cannot be created. Delete tags you no longer need, or push to an existing tag, or ask the registry administrator to raise tag_count_limit for {repo}.",
        repo = facts.repository,
        image = facts.image(),
        s = if count == 1 { "" } else { "s" },
        ls = if limit == 1 { "" } else { "s" },
        ns = if new_tags.len() == 1 { "" } else { "s" },
    );
    Denial {
        reason: DenyReason::TagLimit,
        message,
        detail: json!({
            "repository": facts.repository,
            "reference": facts.reference,
            "tag_count": count,
            "new_tags": new_tags,
            "tag_count_limit": limit,
            "rule": facts.rule,
        }),
    }
}

pub(super) fn invalid(facts: &Facts, reason: DenyReason, what: &str) -> Denial {
    let message = if reason == DenyReason::NameInvalid {
        // The name may be thousands of characters; `what` shows it shortened.
        format!("push refused: {what}")
    } else {
        format!("push to {} refused: {what}", facts.image())
    };
    Denial {
        reason,
        message,
        detail: json!({ "repository": facts.repository, "reference": facts.reference }),
    }
}

/// Harbor's REST calls that create tags or copy artifacts: no manifest write to judge.
pub fn harbor_tag_write() -> Denial {
    Denial {
        reason: DenyReason::HarborApi,
        message: "refused: creating tags and copying artifacts through Harbor's API would step around this registry's push limits (tag count and image size). Push or retag with a registry client instead (docker push, skopeo copy, crane tag, oras tag), which the limits check.".to_owned(),
        detail: serde_json::Value::Null,
    }
}

/// A manifest the gateway could not receive whole, given how many bytes arrived and whether
/// Envoy cut it.
pub fn manifest_not_whole(facts: &Facts, cut_by_envoy: bool) -> Denial {
    let what = if cut_by_envoy {
        "the gateway did not receive the whole manifest (Envoy's request body buffer limit is too small for it)".to_owned()
    } else {
        format!(
            "the manifest is larger than {} bytes (4 MiB), the most a registry accepts",
            super::MAX_MANIFEST_BYTES
        )
    };
    invalid(facts, DenyReason::ManifestTooLarge, &what)
}

/// A push refused because the registry could not be asked; `cause` says why without any
/// internal address or error chain.
pub fn unavailable(facts: &Facts, cause: &str) -> String {
    format!(
        "push to {} refused: the registry gateway could not check the push because {cause}. No limit was judged; retry the push shortly, and tell the registry administrator if it persists.",
        facts.image()
    )
}

/// The OCI error envelope for a denial, with the given code
/// (`{"errors":[{"code":…,"message":…,"detail":…}]}`).
pub fn oci_error_body(code: &str, message: &str, detail: &serde_json::Value) -> Vec<u8> {
    let body = json!({ "errors": [ { "code": code, "message": message, "detail": detail } ] });
    serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"errors\":[]}".to_vec())
}
