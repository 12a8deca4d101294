//! Limits lowered below what a repository already holds. A reload cannot take tags away, so the
//! operator learns of it at once (log, `/status`, metric) rather than at the next push.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::{Checker, TagSource};
use crate::policy::RuleRef;

/// A repository whose cached tag count is over the limit now in force.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Conflict {
    pub repository: String,
    /// Counted tags, confirmed and reserved, as last read.
    pub tag_count: usize,
    pub tag_count_limit: u64,
    /// `None`: the global limits.
    pub rule: Option<RuleRef>,
    /// `enforce`, `warn` or `dry-run`: whether new tags are refused meanwhile.
    pub enforcement: &'static str,
}

/// The conflicts found at the last reload, read by `/status`.
pub type SharedConflicts = Arc<Mutex<Vec<Conflict>>>;

impl<S: TagSource> Checker<S> {
    /// Compares every cached tag book with the limits in force, records the result for
    /// `/status` and the metric, and logs each conflict the previous review had not seen.
    /// Repositories kept in a shared store are not cached here and are not reviewed.
    pub fn review_limits(&self) -> Vec<Conflict> {
        let snapshot = self.snapshot();
        let now = Instant::now();
        let mut found = Vec::new();
        for (repository, repo) in self.books.entries() {
            let (rule, limits) = snapshot.policy.limits_for(&repository);
            let mut state = repo.lock();
            if !state.is_fresh(now, self.options.tag_cache_ttl) {
                continue;
            }
            let count = state.book.count(&limits.exclude_tags);
            if count as u64 > limits.tag_count_limit {
                found.push(Conflict {
                    repository,
                    tag_count: count,
                    tag_count_limit: limits.tag_count_limit,
                    rule: rule.map(crate::policy::Rule::reference),
                    enforcement: limits.enforcement.as_str(),
                });
            }
        }
        found.sort_by(|a, b| a.repository.cmp(&b.repository));
        let mut current = self.conflicts.lock().unwrap_or_else(|p| p.into_inner());
        let seen: HashSet<(&str, u64)> = current
            .iter()
            .map(|c| (c.repository.as_str(), c.tag_count_limit))
            .collect();
        for c in &found {
            if !seen.contains(&(c.repository.as_str(), c.tag_count_limit)) {
                tracing::warn!(
                    repository = %c.repository,
                    tag_count = c.tag_count,
                    tag_count_limit = c.tag_count_limit,
                    rule = %crate::policy::decision::describe_rule(c.rule.as_ref()),
                    enforcement = c.enforcement,
                    config_version = snapshot.version,
                    "the configuration now in force sets a tag limit below what this repository already holds; no tag is removed, and new tags are refused until it is under the limit"
                );
            }
        }
        *current = found.clone();
        self.metrics.limit_conflicts.set(found.len() as i64);
        found
    }

    /// Reviews the limits after every reload, until the configuration channel closes.
    pub async fn review_on_reload(self: Arc<Self>) {
        let mut policy = self.policy.clone();
        while policy.changed().await.is_ok() {
            self.review_limits();
        }
    }

    /// Where `/status` reads the last review.
    pub fn conflicts(&self) -> SharedConflicts {
        self.conflicts.clone()
    }
}
