//! The only request path: evaluate a manifest write, fetch the repository's tags when the policy
//! needs them, decide and reserve, then settle the reservation when the registry answers.
//!
//! This module defines [`TagSource`] and never names the registry client: `app` plugs one in.

use std::future::Future;

/// Why a repository's tags could not be read. The text names the cause for the client's message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("the registry did not answer the tag list within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the registry refused the gateway's credentials for the tag list (HTTP {status})")]
    Unauthorized { status: u16 },
    #[error("the registry answered the tag list with HTTP {status}")]
    Status { status: u16 },
    #[error("the registry could not be reached for the tag list: {0}")]
    Transport(String),
    #[error("the registry's tag list could not be read: {0}")]
    InvalidResponse(String),
}

impl TagError {
    /// Stable label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Unauthorized { .. } => "unauthorized",
            Self::Status { .. } => "status",
            Self::Transport(_) => "transport",
            Self::InvalidResponse(_) => "invalid_response",
        }
    }
}

/// Lists a repository's tags: every page, with a deadline. A repository the registry does not
/// know yet has no tags (`Ok(vec![])`).
pub trait TagSource: Send + Sync + 'static {
    fn list_tags(
        &self,
        repository: &str,
    ) -> impl Future<Output = Result<Vec<String>, TagError>> + Send;
}

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::metrics::{DecisionLabels, Metrics};
use crate::policy::{
    Decision, Denial, Evaluation, Facts, ManifestPush, ManifestWrite, Reference, TagBook, Verdict,
};
use crate::reload::Snapshot;

/// Which adapter asked; a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    ExtProc,
    ExtAuthz,
    Preflight,
}

impl Transport {
    /// Stable label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ExtProc => "ext_proc",
            Self::ExtAuthz => "ext_authz",
            Self::Preflight => "preflight",
        }
    }
}

/// Settings of the request path.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// How long a tag list read from the registry is trusted.
    pub tag_cache_ttl: Duration,
    /// Deadline for a whole decision, tag-list fetches and waits included.
    pub decision_timeout: Duration,
    /// Let pushes through when the tag list cannot be read.
    pub allow_on_registry_error: bool,
    /// ext_authz: how long an admitted tag holds its slot without a response phase.
    pub reservation_ttl: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            tag_cache_ttl: Duration::from_secs(300),
            decision_timeout: Duration::from_millis(2500),
            allow_on_registry_error: false,
            reservation_ttl: Duration::from_secs(30),
        }
    }
}

/// The outcome of a check, for the adapters to render.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Let the request through.
    Allow,
    /// A policy refusal.
    Deny(Denial),
    /// The tag list could not be read and the gateway fails closed.
    Unavailable { error: TagError, message: String },
}

/// A decided manifest `PUT`: its outcome and, when allowed, the ticket that settles the tag book
/// once the registry answers.
#[derive(Debug)]
pub struct Checked {
    pub outcome: Outcome,
    pub facts: Facts,
    pub ticket: Option<Ticket>,
}

/// A repository's book and whether its confirmed tags can be trusted.
#[derive(Debug, Default)]
struct BookState {
    book: TagBook,
    /// When the confirmed tags were read from the registry; `None` means they must be read.
    fetched_at: Option<Instant>,
    /// Changes seen while a fetch is in flight, replayed onto its result.
    journal: Option<Vec<Change>>,
    last_used: Option<Instant>,
}

#[derive(Clone, Debug)]
enum Change {
    Confirm(String),
    Remove(String),
    /// Tags went away that we cannot name (a delete by digest): read the list again.
    Stale,
}

impl BookState {
    fn apply(&mut self, change: Change) {
        match &change {
            Change::Confirm(tag) => self.book.confirm(tag),
            Change::Remove(tag) => self.book.remove(tag),
            Change::Stale => self.fetched_at = None,
        }
        if let Some(journal) = &mut self.journal {
            journal.push(change);
        }
    }

    fn is_fresh(&self, now: Instant, ttl: Duration) -> bool {
        self.fetched_at
            .is_some_and(|at| now.duration_since(at) < ttl)
    }
}

#[derive(Debug, Default)]
struct Repo {
    state: Mutex<BookState>,
    /// Held while the tag list is fetched, so concurrent decisions share one fetch.
    fetch: tokio::sync::Mutex<()>,
}

impl Repo {
    fn lock(&self) -> MutexGuard<'_, BookState> {
        // A panic while holding the lock cannot leave the book half-changed in a way that matters
        // more than refusing every later push; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Tag books of every repository seen recently.
#[derive(Debug, Default)]
struct Books {
    repos: Mutex<HashMap<String, Arc<Repo>>>,
}

impl Books {
    fn get(&self, repository: &str) -> Arc<Repo> {
        let mut repos = self.repos.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(repo) = repos.get(repository) {
            return repo.clone();
        }
        let repo = Arc::new(Repo::default());
        repos.insert(repository.to_owned(), repo.clone());
        repo
    }

    fn existing(&self, repository: &str) -> Option<Arc<Repo>> {
        let repos = self.repos.lock().unwrap_or_else(|p| p.into_inner());
        repos.get(repository).cloned()
    }

    /// Forgets repositories idle for longer than `idle` that hold no reservation.
    fn sweep(&self, now: Instant, idle: Duration) -> usize {
        let mut repos = self.repos.lock().unwrap_or_else(|p| p.into_inner());
        let before = repos.len();
        repos.retain(|_, repo| {
            if Arc::strong_count(repo) > 1 {
                return true;
            }
            let state = repo.lock();
            state.book.has_reservations()
                || state
                    .last_used
                    .is_some_and(|t| now.duration_since(t) < idle)
        });
        before - repos.len()
    }
}

/// Decides manifest writes for every adapter.
pub struct Checker<S> {
    source: S,
    books: Arc<Books>,
    policy: watch::Receiver<Arc<Snapshot>>,
    options: CheckOptions,
    metrics: Arc<Metrics>,
}

impl<S: TagSource> Checker<S> {
    /// A checker reading the policy in force from `policy`.
    pub fn new(
        source: S,
        policy: watch::Receiver<Arc<Snapshot>>,
        options: CheckOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            source,
            books: Arc::default(),
            policy,
            options,
            metrics,
        }
    }

    /// The configuration in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.policy.borrow().clone()
    }

    /// Settings of the request path.
    pub fn options(&self) -> &CheckOptions {
        &self.options
    }

    /// Decides a manifest `PUT`, fetching tags when needed and reserving new tags' slots.
    /// Logs one line and counts one decision.
    pub async fn check_push(
        &self,
        transport: Transport,
        write: &ManifestWrite,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Checked {
        self.check(transport, write, content_type, body, true).await
    }

    /// What a push would get, reserving nothing (the pre-flight API). Counted and logged like a
    /// decision, under its own transport label.
    pub async fn dry_run(
        &self,
        write: &ManifestWrite,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Checked {
        self.check(Transport::Preflight, write, content_type, body, false)
            .await
    }

    async fn check(
        &self,
        transport: Transport,
        write: &ManifestWrite,
        content_type: Option<&str>,
        body: &[u8],
        reserve: bool,
    ) -> Checked {
        let started = Instant::now();
        let snapshot = self.snapshot();
        let push = ManifestPush {
            write,
            content_type,
            body,
        };
        let checked = match snapshot.policy.evaluate(&push) {
            Evaluation::Done(decision) => self.settle_decision(decision, write, None, reserve),
            Evaluation::NeedTags(query) => {
                let facts = query.facts().clone();
                let repo = self.books.get(&write.repository);
                let deadline = self.options.decision_timeout;
                match tokio::time::timeout(deadline, self.decide_with_tags(&repo, query, reserve))
                    .await
                {
                    Ok(Ok(decision)) => self.settle_decision(decision, write, Some(repo), reserve),
                    Ok(Err(error)) => self.unavailable(facts, error),
                    Err(_) => self.unavailable(facts, TagError::Timeout(deadline)),
                }
            }
        };
        self.record(transport, &checked, started.elapsed());
        checked
    }

    async fn decide_with_tags(
        &self,
        repo: &Repo,
        query: crate::policy::TagQuery<'_>,
        reserve: bool,
    ) -> Result<Decision, TagError> {
        let finish = |query: crate::policy::TagQuery<'_>, book: &mut TagBook| {
            if reserve {
                query.finish(book)
            } else {
                query.judge(book)
            }
        };
        let ttl = self.options.tag_cache_ttl;
        loop {
            {
                let mut state = repo.lock();
                let now = Instant::now();
                state.last_used = Some(now);
                if state.is_fresh(now, ttl) {
                    return Ok(finish(query, &mut state.book));
                }
            }
            let _fetching = repo.fetch.lock().await;
            if repo.lock().is_fresh(Instant::now(), ttl) {
                // Another decision fetched while we waited.
                continue;
            }
            repo.lock().journal = Some(Vec::new());
            let result = self.source.list_tags(query.repository()).await;
            let mut state = repo.lock();
            let journal = state.journal.take().unwrap_or_default();
            match result {
                Ok(tags) => {
                    Metrics::count(&self.metrics.registry_calls, "ok");
                    state.book.replace_confirmed(tags);
                    state.fetched_at = Some(Instant::now());
                    for change in journal {
                        state.apply(change);
                    }
                    return Ok(finish(query, &mut state.book));
                }
                Err(error) => {
                    Metrics::count(&self.metrics.registry_calls, error.as_str());
                    for change in journal {
                        state.apply(change);
                    }
                    return Err(error);
                }
            }
        }
    }

    fn settle_decision(
        &self,
        decision: Decision,
        write: &ManifestWrite,
        repo: Option<Arc<Repo>>,
        reserve: bool,
    ) -> Checked {
        let Decision { facts, verdict } = decision;
        match verdict {
            Verdict::Deny(denial) => Checked {
                outcome: Outcome::Deny(denial),
                facts,
                ticket: None,
            },
            Verdict::Allow { reserved } => {
                // A dry run reserved nothing and has no registry answer to follow.
                let ticket = reserve.then(|| Ticket {
                    repo: repo.unwrap_or_else(|| self.books.get(&write.repository)),
                    tags: write.tags(),
                    reference_tag: write.reference.tag().map(str::to_owned),
                    reserved,
                    metrics: self.metrics.clone(),
                    settled: false,
                });
                Checked {
                    outcome: Outcome::Allow,
                    facts,
                    ticket,
                }
            }
        }
    }

    fn unavailable(&self, facts: Facts, error: TagError) -> Checked {
        if self.options.allow_on_registry_error {
            tracing::warn!(repository = %facts.repository, error = %error, "tag list unavailable; allowing as configured");
            return Checked {
                outcome: Outcome::Allow,
                facts,
                ticket: None,
            };
        }
        let message = format!(
            "push to {} refused: the registry gateway could not count the repository's tags because {error}. No limit was judged; retry the push shortly, and tell the registry administrator if it persists.",
            facts.image()
        );
        Checked {
            outcome: Outcome::Unavailable { error, message },
            facts,
            ticket: None,
        }
    }

    fn record(&self, transport: Transport, checked: &Checked, elapsed: Duration) {
        let (outcome, reason) = match &checked.outcome {
            Outcome::Allow => ("allow", "none"),
            Outcome::Deny(d) => ("deny", d.reason.as_str()),
            Outcome::Unavailable { error, .. } => ("error", error.as_str()),
        };
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                transport: transport.as_str(),
                outcome,
                reason,
            })
            .inc();
        self.metrics.decision_seconds.observe(elapsed.as_secs_f64());
        let f = &checked.facts;
        let rule = f.rule.as_ref().map_or_else(
            || "global".to_owned(),
            |r| format!("{}:{}", r.index, r.path),
        );
        macro_rules! decision_line {
            ($level:ident) => {
                tracing::$level!(
                    transport = transport.as_str(),
                    repository = %f.repository,
                    reference = %f.reference,
                    rule = %rule,
                    media_type = f.media_type.unwrap_or(""),
                    image_bytes = f.image_bytes,
                    max_image_bytes = f.max_image_bytes,
                    tag_count = f.tag_count,
                    tag_count_limit = f.tag_count_limit,
                    new_tags = f.new_tags,
                    outcome,
                    reason,
                    elapsed_us = elapsed.as_micros() as u64,
                    "decision"
                )
            };
        }
        // One line per decision at `info`, allowed ones included: the audit trail operators
        // ask for. `--log info,registry_gateway::check=warn` keeps only registry failures.
        match outcome {
            "error" => decision_line!(warn),
            _ => decision_line!(info),
        }
    }

    /// A manifest `DELETE` the registry answered: a deleted tag frees its slot at once; a
    /// delete by digest removes tags we cannot name, so the list is read again next time.
    pub fn observe_delete(&self, write: &ManifestWrite, status: u16) {
        if !(200..300).contains(&status) {
            return;
        }
        let Some(repo) = self.books.existing(&write.repository) else {
            return;
        };
        let mut state = repo.lock();
        match &write.reference {
            Reference::Tag(tag) => state.apply(Change::Remove(tag.clone())),
            Reference::Digest(_) => state.apply(Change::Stale),
        }
    }

    /// A manifest `DELETE` let through without a response phase (ext_authz): whether it happened
    /// is unknown, so the repository's tags are read again on the next decision.
    /// It is marked again after `reservation_ttl`, in case a read in between saw the list from
    /// before the delete landed.
    pub fn observe_unconfirmed_delete(&self, write: &ManifestWrite) {
        let Some(repo) = self.books.existing(&write.repository) else {
            return;
        };
        repo.lock().apply(Change::Stale);
        let ttl = self.options.reservation_ttl;
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            repo.lock().apply(Change::Stale);
        });
    }

    /// Forgets idle repositories; call periodically.
    pub fn sweep(&self) -> usize {
        self.books.sweep(
            Instant::now(),
            self.options.tag_cache_ttl.max(Duration::from_secs(60)),
        )
    }
}

/// The bookkeeping of one admitted push, settled by the registry's answer.
///
/// Dropping an unsettled ticket releases its reservations and makes the next decision re-read the
/// repository's tags: a stream that ends without a response never leaves a slot taken, and a push
/// the registry stored without us seeing the answer is still counted.
#[derive(Debug)]
pub struct Ticket {
    repo: Arc<Repo>,
    /// Every tag the push names.
    tags: Vec<String>,
    reference_tag: Option<String>,
    reserved: Vec<String>,
    metrics: Arc<Metrics>,
    settled: bool,
}

impl Ticket {
    /// Tags whose slots this push holds.
    pub fn reserved(&self) -> &[String] {
        &self.reserved
    }

    /// The registry answered the `PUT` with `status`; `oci_tags` are the values of its
    /// `OCI-Tag` headers (comma lists allowed), empty when absent.
    pub fn settle(mut self, status: u16, oci_tags: &[String]) {
        self.settled = true;
        let mut state = self.repo.lock();
        if !(200..300).contains(&status) {
            for tag in &self.reserved {
                state.book.release(tag);
            }
            if !self.reserved.is_empty() {
                Metrics::count(&self.metrics.reservations, "released");
            }
            return;
        }
        // A registry that implements `?tag=` echoes what it created; one that does not creates
        // only the reference's tag.
        let created: Vec<&str> = if oci_tags.is_empty() {
            self.reference_tag.iter().map(String::as_str).collect()
        } else {
            oci_tags
                .iter()
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect()
        };
        for tag in &self.reserved {
            state.book.release(tag);
        }
        for tag in self.tags.iter().filter(|t| created.contains(&t.as_str())) {
            state.apply(Change::Confirm(tag.clone()));
        }
        if !self.reserved.is_empty() {
            Metrics::count(&self.metrics.reservations, "committed");
        }
    }

    /// ext_authz has no response phase: hold the slots for `ttl`, then release them and read
    /// the tag list again on the next decision, which then shows whether the push landed.
    pub fn expire_after(mut self, ttl: Duration) {
        self.settled = true;
        if self.reserved.is_empty() && self.tags.is_empty() {
            return;
        }
        let repo = self.repo.clone();
        let reserved = std::mem::take(&mut self.reserved);
        let metrics = self.metrics.clone();
        let has_tags = !self.tags.is_empty();
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            let mut state = repo.lock();
            for tag in &reserved {
                state.book.release(tag);
            }
            if has_tags {
                state.apply(Change::Stale);
            }
            if !reserved.is_empty() {
                Metrics::count(&metrics.reservations, "expired");
            }
        });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut state = self.repo.lock();
        for tag in &self.reserved {
            state.book.release(tag);
        }
        if !self.reserved.is_empty() {
            // The request ended without the registry's answer: it may still have stored the
            // manifest (its 201 lost on the way back). Freeing the slot is only exact if the next
            // decision reads the tag list again.
            state.apply(Change::Stale);
            Metrics::count(&self.metrics.reservations, "released");
        }
    }
}

#[cfg(test)]
mod tests;
