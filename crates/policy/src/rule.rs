//! Rules and tag filters: regexes compiled once per configuration version.
//!
//! Rust's `regex` runs in linear time, so no rule can make a decision slow.

use std::sync::Arc;

use regex::RegexSet;

use super::Limits;
use super::decision::RuleRef;

/// One `rules[]` entry, compiled.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Position in the `rules` list; the first match wins.
    pub index: usize,
    /// The regex as written.
    pub path: String,
    /// Line of the rule in its file, for messages.
    pub line: u64,
    pub limits: Limits,
}

impl Rule {
    /// How decisions, logs and reports name this rule.
    pub fn reference(&self) -> RuleRef {
        RuleRef {
            index: self.index,
            path: self.path.clone(),
        }
    }
}

/// Tags that do not count toward `tag_count_limit` (referrer and signature tags, for example).
/// Empty by default, as in the original product: every tag counts.
#[derive(Clone, Debug, Default)]
pub struct TagFilter {
    patterns: Vec<String>,
    set: Option<Arc<RegexSet>>,
}

impl TagFilter {
    /// Compiles the patterns; an empty list excludes nothing.
    pub fn new(patterns: Vec<String>) -> Result<Self, regex::Error> {
        if patterns.is_empty() {
            return Ok(Self::default());
        }
        let set = RegexSet::new(&patterns)?;
        Ok(Self {
            patterns,
            set: Some(Arc::new(set)),
        })
    }

    /// Whether `tag` counts toward the limit.
    pub fn counts(&self, tag: &str) -> bool {
        self.set.as_ref().is_none_or(|set| !set.is_match(tag))
    }

    /// Whether every tag counts (nothing is excluded).
    pub fn is_empty(&self) -> bool {
        self.set.is_none()
    }

    /// The patterns as written.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Two filters are the same compiled object; used to keep a tag count memo valid.
    pub fn same_as(&self, other: &Self) -> bool {
        match (&self.set, &other.set) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_filter_counts_every_tag() {
        let f = TagFilter::default();
        assert!(f.counts("v1") && f.counts("sha256-abc") && f.is_empty());
    }

    #[test]
    fn referrer_and_signature_tags_can_be_excluded() {
        let f = TagFilter::new(vec![r"^sha256-[0-9a-f]{64}(\.(sig|att|sbom))?$".into()])
            .expect("valid pattern");
        let hex = "a".repeat(64);
        assert!(!f.counts(&format!("sha256-{hex}")));
        assert!(!f.counts(&format!("sha256-{hex}.sig")));
        assert!(f.counts(&format!("sha256-{hex}.txt")));
        assert!(f.counts("v1.0"));
    }

    #[test]
    fn same_as_compares_compiled_identity() {
        let a = TagFilter::new(vec!["x".into()]).expect("valid");
        let b = TagFilter::new(vec!["x".into()]).expect("valid");
        assert!(a.same_as(&a.clone()));
        assert!(!a.same_as(&b));
        assert!(TagFilter::default().same_as(&TagFilter::default()));
    }
}
