//! The only request path: evaluate a manifest write, fetch the repository's tags when the policy
//! needs them, decide and reserve, then settle the reservation when the registry answers.
//!
//! This module defines [`TagSource`] and never names the registry client: `app` plugs one in.
//! `books` keeps tag books in this process, `crate::shared` in Redis or Valkey; `ticket` is
//! what an admitted push holds until the registry answers; `standing` remembers which clients the
//! registry accepts.

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
    /// The shared state store (Redis/Valkey) could not be asked.
    #[error("{0}")]
    Store(crate::shared::StoreError),
}

impl TagError {
    /// What a client may read of the cause: no URL, no error chain (those go to the log).
    pub fn cause(&self) -> String {
        match self {
            Self::Timeout(d) => format!("the registry did not answer within {d:?}"),
            Self::Unauthorized { status } => {
                format!("the registry refused the gateway's own credentials (HTTP {status})")
            }
            Self::Status { status } => format!("the registry answered HTTP {status}"),
            Self::Transport(_) => "the registry could not be reached".to_owned(),
            Self::InvalidResponse(_) => {
                "the registry sent an answer that could not be read".to_owned()
            }
            Self::Store(crate::shared::StoreError::Timeout(d)) => {
                format!(
                    "the gateway's shared state store (Redis/Valkey) did not answer within {d:?}"
                )
            }
            Self::Store(crate::shared::StoreError::Failed(_)) => {
                "the gateway's shared state store (Redis/Valkey) could not be reached".to_owned()
            }
        }
    }

    /// Stable label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Unauthorized { .. } => "unauthorized",
            Self::Status { .. } => "status",
            Self::Transport(_) => "transport",
            Self::InvalidResponse(_) => "invalid_response",
            Self::Store(_) => "state_store",
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

    /// Whether the registry lets a client holding `authorization` (the client's own header,
    /// `None` for an anonymous client) read `repository`. One request, no challenge answered:
    /// the question is whether these exact credentials are accepted.
    fn client_may_read(
        &self,
        repository: &str,
        authorization: Option<&str>,
    ) -> impl Future<Output = Result<bool, TagError>> + Send;
}

mod books;
mod conflicts;
mod hints;
mod standing;
mod ticket;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use self::books::DOUBT_GRACE;
use self::books::{Books, Change, Repo};
pub use self::conflicts::{Conflict, SharedConflicts};
use self::hints::Hints;
use self::standing::Standings;
pub use self::ticket::Ticket;
use self::ticket::{Backing, SharedLease};

use crate::shared::{Begin, Decided, RepoKeys, Settle, SharedBooks, Take};
use tokio::time::Instant;

use crate::metrics::{DecisionLabels, Metrics};
use crate::policy::{
    Decision, Denial, Evaluation, Facts, ManifestPush, ManifestWrite, Reference, TagBook, Tally,
    Verdict, WriteKind,
};
use crate::snapshot::Snapshot;

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
    /// Ask the registry whether it accepts a client's credentials before acting for it.
    pub client_check: bool,
    /// How long the registry's answer about one client's credentials is kept.
    pub client_check_ttl: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            tag_cache_ttl: Duration::from_secs(300),
            decision_timeout: Duration::from_millis(2500),
            allow_on_registry_error: false,
            reservation_ttl: Duration::from_secs(30),
            client_check: true,
            client_check_ttl: Duration::from_secs(60),
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
    /// The registry refuses this client's credentials: the gateway acts for no one the registry
    /// would refuse, so it judges nothing, reserves nothing, tells nothing, and lets the
    /// registry give its own answer (its 401 challenge, usually).
    Defer,
}

/// A decided manifest `PUT`: its outcome and, when allowed, the ticket that settles the tag book
/// once the registry answers.
#[derive(Debug)]
pub struct Checked {
    pub outcome: Outcome,
    pub facts: Facts,
    pub ticket: Option<Ticket>,
    /// The refusal a `warn` or `dry-run` limit let through (the push is allowed).
    pub waived: Option<Denial>,
    /// Texts for the client's `Warning` headers, on an allowed push.
    pub warnings: Vec<String>,
}

impl Checked {
    /// An outcome with nothing held, waived or said beyond it.
    fn bare(outcome: Outcome, facts: Facts) -> Self {
        Self {
            outcome,
            facts,
            ticket: None,
            waived: None,
            warnings: Vec::new(),
        }
    }
}

/// Decides manifest writes for every adapter.
pub struct Checker<S> {
    source: S,
    books: Arc<Books>,
    /// Tag books in Redis/Valkey, shared by every replica; `None` keeps them in this process.
    shared: Option<Arc<SharedBooks>>,
    /// Which tags the shared store counted when last asked: which pushes may be decided early.
    hints: Hints,
    standings: Standings,
    policy: watch::Receiver<Arc<Snapshot>>,
    options: CheckOptions,
    metrics: Arc<Metrics>,
    /// Repositories over a limit lowered by a reload, as last reviewed.
    conflicts: SharedConflicts,
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
            shared: None,
            hints: Hints::default(),
            standings: Standings::default(),
            policy,
            options,
            metrics,
            conflicts: SharedConflicts::default(),
        }
    }

    /// Keeps tag books in a shared store instead of this process.
    pub fn with_shared(mut self, shared: Option<Arc<SharedBooks>>) -> Self {
        self.shared = shared;
        self
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
    /// `authorization` is the client's own header, used only to ask the registry whether it
    /// accepts the client. `early` is what [`decide_early`](Self::decide_early) started for
    /// this push, used when it still holds for the manifest.
    pub async fn check_push(
        &self,
        transport: Transport,
        write: &ManifestWrite,
        content_type: Option<&str>,
        body: &[u8],
        authorization: Option<&str>,
        early: Option<Early>,
    ) -> Checked {
        let client = Client::Asking(authorization);
        let slots = Slots::Reserve;
        self.check(transport, write, content_type, body, client, slots, early)
            .await
    }

    /// Starts the store's decision on a push's request line, before its manifest arrives, when
    /// the push probably creates no tag (see `hints`): such a decision takes no slot, only the
    /// guard of the tags it re-writes, so a manifest refused later has taken nothing from
    /// anyone. The store call then overlaps Envoy's wait for the body. `None` when there is
    /// nothing to start (memory mode, a push that may create a tag).
    pub fn decide_early(
        self: &Arc<Self>,
        write: &ManifestWrite,
        authorization: Option<&str>,
    ) -> Option<Early> {
        let shared = self.shared.clone()?;
        if write.kind != WriteKind::Put || write.grammar().is_err() {
            return None;
        }
        let snapshot = self.snapshot();
        let limits = snapshot.policy.limits_for(&write.repository).1;
        let filter = limits.exclude_tags.clone();
        let tags = limits.counted_tags(&write.tags());
        if tags.is_empty() || !self.hints.all_counted(&write.repository, &tags) {
            return None;
        }
        let checker = self.clone();
        let repository = write.repository.clone();
        let authorization = authorization.map(str::to_owned);
        let deadline = self.options.decision_timeout;
        let decided = tokio::spawn(async move {
            let decided = async {
                // Nothing is done for a client the registry refuses, early or not.
                let accepted = checker.client_accepted(&repository, authorization.as_deref());
                match accepted.await {
                    Ok(true) => {}
                    Ok(false) => return Err("not_accepted"),
                    Err(_) => return Err("failed"),
                }
                let keys = RepoKeys::new(&repository, &filter);
                let id = shared.lease_id();
                // The guard must outlast the push as a decision on its body would: that
                // decision's lease from the latest moment this one is still used.
                let hold = shared.options().lease + EARLY_USE;
                let ttl = checker.options.tag_cache_ttl;
                // Creating no tag, the push meets no limit: the store answers `Later` if it would.
                let limit = u64::MAX;
                let take = Take::Rewrites;
                let decided = shared
                    .decide(&keys, &tags, limit, ttl, hold, &id, take)
                    .await;
                match decided.map_err(|_| "failed")? {
                    Decided::Tally { tally, .. } => Ok((
                        tally,
                        SharedLease {
                            books: shared,
                            keys,
                            id,
                            filter,
                            named: tags,
                        },
                    )),
                    Decided::Cold(_) => Err("cold"),
                    Decided::Later => Err("later"),
                }
            };
            let decided = tokio::time::timeout(deadline, decided).await;
            decided.unwrap_or(Err("failed"))
        });
        Some(Early {
            snapshot,
            started: Instant::now(),
            decided,
            metrics: self.metrics.clone(),
            counted: false,
        })
    }

    /// Harbor's REST calls that create tags or copy artifacts, refused at the door; `None` for
    /// any other request that is not a manifest write.
    pub fn check_harbor_api(
        &self,
        transport: Transport,
        method: &str,
        path: &str,
    ) -> Option<Checked> {
        if !crate::policy::is_harbor_tag_write(method, path) {
            return None;
        }
        let checked = Checked::bare(
            Outcome::Deny(crate::policy::decision::harbor_tag_write()),
            Facts {
                repository: path.split_once('?').map_or(path, |(p, _)| p).to_owned(),
                ..Facts::default()
            },
        );
        self.record(transport, &checked, Duration::ZERO);
        Some(checked)
    }

    /// What a push would get, reserving nothing (the pre-flight API). Counted and logged like a
    /// decision, under its own transport label.
    pub async fn dry_run(
        &self,
        write: &ManifestWrite,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Checked {
        // The pre-flight API is served to operators on the gateway's own port, not to clients.
        let client = Client::Operator;
        let (transport, slots) = (Transport::Preflight, Slots::JudgeOnly);
        self.check(transport, write, content_type, body, client, slots, None)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn check(
        &self,
        transport: Transport,
        write: &ManifestWrite,
        content_type: Option<&str>,
        body: &[u8],
        client: Client<'_>,
        slots: Slots,
        early: Option<Early>,
    ) -> Checked {
        let started = Instant::now();
        let deadline = self.options.decision_timeout;
        let snapshot = self.snapshot();
        let push = ManifestPush {
            write,
            content_type,
            body,
        };
        let evaluation = snapshot.policy.evaluate(&push);
        // Work for a client (a slot, a tag-list read) or words about a repository's limits
        // only for a client the registry accepts.
        let acts_for_client = match &evaluation {
            Evaluation::NeedTags(_) => true,
            Evaluation::Done(d) => d.discloses_limits(),
        };
        let asks_registry =
            acts_for_client && self.options.client_check && matches!(client, Client::Asking(_));
        let evaluation = match evaluation {
            // Decided without the network (a digest push within its size limit, an
            // unmeasurable manifest): no deadline to arm, nothing to keep for an error.
            Evaluation::Done(decision) if !asks_registry => {
                let checked = self.settle_decision(decision, write, None, slots);
                self.record(transport, &checked, started.elapsed());
                return checked;
            }
            evaluation => evaluation,
        };
        let facts = match &evaluation {
            Evaluation::Done(d) => d.facts.clone(),
            Evaluation::NeedTags(q) => q.facts().clone(),
        };
        let decided = tokio::time::timeout(deadline, async {
            let mut unverified = false;
            if acts_for_client && let Client::Asking(authorization) = client {
                match self.client_accepted(&write.repository, authorization).await {
                    Ok(true) => {}
                    Ok(false) => return Ok(None),
                    // Size limits never need the network: with the registry unreachable, a
                    // refusal decided without it still stands (it lets nothing through); an
                    // allowed push goes on with nothing told about the repository.
                    Err(_) if matches!(evaluation, Evaluation::Done(_)) => unverified = true,
                    Err(error) => return Err(error),
                }
            }
            match evaluation {
                Evaluation::Done(mut decision) => {
                    if unverified {
                        decision.warnings.clear();
                    }
                    Ok(Some((decision, None)))
                }
                Evaluation::NeedTags(query) => match &self.shared {
                    Some(shared) => {
                        let early = match early {
                            Some(early) => early.outcome(&snapshot).await,
                            None => None,
                        };
                        if let Some((tally, lease)) = early {
                            let backing = Backing::Shared(Box::new(lease));
                            return Ok(Some((query.conclude(tally), Some(backing))));
                        }
                        let (decision, lease) =
                            self.decide_shared(shared, query, slots, transport).await?;
                        Ok(Some((decision, Some(Backing::Shared(Box::new(lease))))))
                    }
                    None => {
                        let repo = self.book(&write.repository);
                        let decision = self.decide_with_tags(&repo, query, slots).await?;
                        Ok(Some((decision, Some(Backing::Memory(repo)))))
                    }
                },
            }
        })
        .await
        .unwrap_or(Err(TagError::Timeout(deadline)));
        let checked = match decided {
            Ok(Some((decision, backing))) => self.settle_decision(decision, write, backing, slots),
            Ok(None) => Checked::bare(Outcome::Defer, facts),
            Err(error) => self.unavailable(facts, error),
        };
        self.record(transport, &checked, started.elapsed());
        checked
    }

    /// Whether the registry accepts the client's credentials for `repository`, from a short
    /// cache or by asking it.
    async fn client_accepted(
        &self,
        repository: &str,
        authorization: Option<&str>,
    ) -> Result<bool, TagError> {
        if !self.options.client_check {
            return Ok(true);
        }
        let key = Standings::key(repository, authorization);
        let cell = self.standings.cell(key, self.options.client_check_ttl);
        let may = cell
            .get_or_try_init(|| async {
                let result = self.source.client_may_read(repository, authorization).await;
                let label = match &result {
                    Ok(true) => "accepted",
                    Ok(false) => "refused",
                    Err(e) => e.as_str(),
                };
                Metrics::count(&self.metrics.client_checks, label);
                result
            })
            .await?;
        Ok(*may)
    }

    /// A decision on the shared store: one script call with a warm cache; when the store says
    /// the list must be read, one replica reads it for all while the others wait.
    async fn decide_shared(
        &self,
        shared: &Arc<SharedBooks>,
        query: crate::policy::TagQuery<'_>,
        slots: Slots,
        transport: Transport,
    ) -> Result<(Decision, SharedLease), TagError> {
        let repository = query.repository().to_owned();
        let filter = query.exclude_tags().clone();
        let keys = RepoKeys::new(&repository, &filter);
        let tags = query.counted_tags();
        let lease = shared.lease_id();
        // ext_authz never sees the registry's answer: the lease is its reservation TTL.
        let hold = match transport {
            Transport::ExtAuthz => self.options.reservation_ttl,
            _ => shared.options().lease,
        };
        let ttl = self.options.tag_cache_ttl;
        let reserve = slots == Slots::Reserve;
        let store = TagError::Store;
        loop {
            let decided = shared
                .decide(
                    &keys,
                    &tags,
                    query.reservation_limit(),
                    ttl,
                    hold,
                    &lease,
                    if reserve { Take::Slots } else { Take::Nothing },
                )
                .await
                .map_err(store)?;
            match decided {
                Decided::Tally { tally, allowed } => {
                    if reserve && allowed {
                        for tag in &tags {
                            if tally.reserved.contains(tag) {
                                self.hints.forget(&repository, tag);
                            } else {
                                self.hints.counted(&repository, tag);
                            }
                        }
                    }
                    for tag in &tally.new_tags {
                        self.hints.forget(&repository, tag);
                    }
                    let lease = SharedLease {
                        books: shared.clone(),
                        keys,
                        id: lease,
                        filter,
                        named: tags,
                    };
                    return Ok((query.conclude(tally), lease));
                }
                Decided::Later => {
                    return Err(store(crate::shared::StoreError::Failed(
                        "the store answered `later` to a decision that takes slots".to_owned(),
                    )));
                }
                Decided::Cold(reads) => {
                    let lock = self.options.decision_timeout + Duration::from_secs(1);
                    match shared
                        .begin_read(&keys, lock, &reads)
                        .await
                        .map_err(store)?
                    {
                        Begin::Read => {}
                        Begin::Decide => continue,
                        Begin::Wait => {
                            // Another replica is reading the list: wait for its result.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                    let started = SharedBooks::now_ms();
                    let listed = self.source.list_tags(&repository).await;
                    let label = listed.as_ref().map_or_else(TagError::as_str, |_| "ok");
                    Metrics::count(&self.metrics.registry_calls, label);
                    let listed = match listed {
                        Ok(listed) => listed,
                        Err(error) => {
                            // Free the read at once: the decisions waiting on it then meet the
                            // registry's own answer instead of waiting out the lock.
                            if let Err(store) = shared.abandon_read(&keys).await {
                                tracing::warn!(error = %store, "giving up a tag-list read in the state store failed");
                            }
                            return Err(error);
                        }
                    };
                    let counted: Vec<String> =
                        listed.into_iter().filter(|t| filter.counts(t)).collect();
                    shared
                        .complete_read(&keys, started, ttl, &counted)
                        .await
                        .map_err(store)?;
                }
            }
        }
    }

    async fn decide_with_tags(
        &self,
        repo: &Repo,
        query: crate::policy::TagQuery<'_>,
        slots: Slots,
    ) -> Result<Decision, TagError> {
        let finish = |query: crate::policy::TagQuery<'_>, book: &mut TagBook| match slots {
            Slots::Reserve => query.finish(book),
            Slots::JudgeOnly => query.judge(book),
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
            let fetch_started = Instant::now();
            let result = self.source.list_tags(query.repository()).await;
            let mut state = repo.lock();
            let journal = state.journal.take().unwrap_or_default();
            match result {
                Ok(tags) => {
                    Metrics::count(&self.metrics.registry_calls, "ok");
                    state.book.replace_confirmed(tags);
                    state.fetched_at = Some(Instant::now());
                    state.resolve_doubts(fetch_started);
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
        backing: Option<Backing>,
        slots: Slots,
    ) -> Checked {
        let Decision {
            facts,
            verdict,
            waived,
            warnings,
        } = decision;
        match verdict {
            Verdict::Deny(denial) => Checked::bare(Outcome::Deny(denial), facts),
            Verdict::Allow { reserved } => {
                // A dry run reserved nothing and has no registry answer to follow.
                let ticket = (slots == Slots::Reserve).then(|| Ticket {
                    backing: backing.unwrap_or_else(|| self.backing_for(&write.repository)),
                    reference_tag: write.reference.tag().map(str::to_owned),
                    reserved,
                    metrics: self.metrics.clone(),
                    settled: false,
                });
                Checked {
                    outcome: Outcome::Allow,
                    facts,
                    ticket,
                    waived,
                    warnings,
                }
            }
        }
    }

    fn unavailable(&self, facts: Facts, error: TagError) -> Checked {
        if self.options.allow_on_registry_error {
            tracing::warn!(repository = %facts.repository, error = %error, "tag list unavailable; allowing as configured");
            return Checked::bare(Outcome::Allow, facts);
        }
        tracing::warn!(repository = %facts.repository, error = %error, "registry unavailable for a decision");
        let message = crate::policy::decision::unavailable(&facts, &error.cause());
        Checked::bare(Outcome::Unavailable { error, message }, facts)
    }

    fn record(&self, transport: Transport, checked: &Checked, elapsed: Duration) {
        let (outcome, reason) = match &checked.outcome {
            Outcome::Allow => match &checked.waived {
                Some(waived) => ("would_deny", waived.reason.as_str()),
                None => ("allow", "none"),
            },
            Outcome::Deny(d) => ("deny", d.reason.as_str()),
            Outcome::Unavailable { error, .. } => ("error", error.as_str()),
            Outcome::Defer => ("defer", "client_refused_by_registry"),
        };
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                transport: transport.as_str(),
                outcome,
                reason,
                enforcement: checked.facts.enforcement.as_str(),
            })
            .inc();
        if !checked.warnings.is_empty() {
            let kind = if checked.waived.is_some() {
                "waived"
            } else {
                "soft"
            };
            self.metrics
                .warnings
                .get_or_create(&crate::metrics::ResultLabels { result: kind })
                .inc_by(checked.warnings.len() as u64);
        }
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
                    enforcement = f.enforcement.as_str(),
                    warnings = checked.warnings.len(),
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

    /// Whether the registry's answer to `write` can matter here, known from its request line
    /// alone. A push by digest naming no tag reserves and creates none, and where no limit
    /// warns there is nothing to add to the answer either: the ext_proc adapter then asks
    /// Envoy to skip that phase. What is given up: such a push let through unjudged (the
    /// registry had refused the client) is not reported when the registry stores it anyway;
    /// the tag pushes that follow it are.
    pub fn needs_registry_answer(&self, write: &ManifestWrite) -> bool {
        if write.kind != WriteKind::Put
            || write.reference.tag().is_some()
            || !write.query_tags.is_empty()
        {
            return true;
        }
        let snapshot = self.snapshot();
        let limits = snapshot.policy.limits_for(&write.repository).1;
        !limits.enforcement.refuses() || limits.warn_at.is_some()
    }

    /// The registry's answer to a push let through unjudged because the registry had refused the
    /// client's credentials. A 2xx means the registry accepted what the gateway was told it
    /// would refuse: the sidecar does not see the client's real `authorization` (Envoy's
    /// forwarding rules), or the registry lets clients push that may not read. Loud, counted,
    /// and the tag list is read again so the count stays true.
    pub fn observe_deferred(&self, write: &ManifestWrite, status: u16) {
        if !(200..300).contains(&status) {
            return;
        }
        tracing::error!(
            repository = %write.repository,
            reference = %write.reference.as_str(),
            status,
            "the registry stored a push whose client it had refused to the gateway; check that Envoy forwards `authorization` to the sidecar"
        );
        Metrics::count(&self.metrics.client_checks, "refused_but_stored");
        if self.shared.is_some() {
            self.shared_change(&write.repository, Change::Stale);
            return;
        }
        self.book(&write.repository).lock().apply(Change::Stale);
    }

    /// The exclusion list that applies to `repository` now.
    fn filter_for(&self, repository: &str) -> crate::policy::TagFilter {
        let snapshot = self.snapshot();
        snapshot
            .policy
            .limits_for(repository)
            .1
            .exclude_tags
            .clone()
    }

    /// A change seen in the registry, written to the shared store without waiting.
    fn shared_change(&self, repository: &str, change: Change) {
        let Some(shared) = &self.shared else { return };
        let filter = self.filter_for(repository);
        let keys = RepoKeys::new(repository, &filter);
        let (op, tags) = match change {
            Change::Confirm(tag) => (Settle::Commit, vec![tag]),
            Change::Remove(tag) => (Settle::Remove, vec![tag]),
            Change::Stale => (Settle::Stale, Vec::new()),
        };
        shared.settle_later(keys, op, String::new(), Vec::new(), tags);
    }

    /// The in-process book of `repository`, counting any books forgotten to make room for it.
    fn book(&self, repository: &str) -> Arc<Repo> {
        let (repo, evicted) = self.books.get(repository);
        if evicted > 0 {
            self.metrics.book_evictions.inc_by(evicted as u64);
            self.metrics.books.set(self.books.len() as i64);
        }
        repo
    }

    /// Where an admitted push that needed no count keeps its (empty) reservation.
    fn backing_for(&self, repository: &str) -> Backing {
        match &self.shared {
            Some(shared) => {
                let filter = self.filter_for(repository);
                Backing::Shared(Box::new(SharedLease {
                    books: shared.clone(),
                    keys: RepoKeys::new(repository, &filter),
                    id: shared.lease_id(),
                    filter,
                    named: Vec::new(),
                }))
            }
            None => Backing::Memory(self.book(repository)),
        }
    }

    /// A manifest `DELETE` the registry answered: a deleted tag frees its slot at once; a
    /// delete by digest removes tags we cannot name, so the list is read again next time.
    pub fn observe_delete(&self, write: &ManifestWrite, status: u16) {
        tracing::info!(
            transport = Transport::ExtProc.as_str(),
            repository = %write.repository,
            reference = %write.reference.as_str(),
            status,
            outcome = "allow",
            reason = "delete",
            "decision"
        );
        if !(200..300).contains(&status) {
            return;
        }
        if self.shared.is_some() {
            let change = match &write.reference {
                Reference::Tag(tag) => {
                    self.hints.forget(&write.repository, tag);
                    Change::Remove(tag.clone())
                }
                Reference::Digest(_) => Change::Stale,
            };
            self.shared_change(&write.repository, change);
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
        tracing::info!(
            transport = Transport::ExtAuthz.as_str(),
            repository = %write.repository,
            reference = %write.reference.as_str(),
            outcome = "allow",
            reason = "delete",
            "decision"
        );
        if self.shared.is_some() {
            self.shared_change(&write.repository, Change::Stale);
            let ttl = self.options.reservation_ttl;
            let (shared, repository) = (self.shared.clone(), write.repository.clone());
            let filter = self.filter_for(&repository);
            tokio::spawn(async move {
                tokio::time::sleep(ttl).await;
                if let Some(shared) = shared {
                    let keys = RepoKeys::new(&repository, &filter);
                    shared.settle_later(keys, Settle::Stale, String::new(), Vec::new(), Vec::new());
                }
            });
            return;
        }
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
        let forgotten = self.books.sweep(
            Instant::now(),
            self.options.tag_cache_ttl.max(Duration::from_secs(60)),
        );
        self.metrics.books.set(self.books.len() as i64);
        forgotten
    }
}

/// How long after the request line an early decision is still used; past it, the manifest is
/// decided as it arrives.
const EARLY_USE: Duration = Duration::from_secs(2);

/// A decision [`Checker::decide_early`] started on a push's request line.
pub struct Early {
    /// The policy it was started under: a reload before the manifest arrives voids it.
    snapshot: Arc<Snapshot>,
    started: Instant,
    /// The store's tally and the push's lease, or why there is none (a metric label).
    decided: tokio::task::JoinHandle<Result<(Tally, SharedLease), &'static str>>,
    metrics: Arc<Metrics>,
    counted: bool,
}

impl Early {
    /// The store's tally and the push's lease, when the store confirmed every tag, under the
    /// policy in force (`snapshot`), recently enough to stand for the manifest's decision.
    async fn outcome(mut self, snapshot: &Arc<Snapshot>) -> Option<(Tally, SharedLease)> {
        let outcome = if Arc::ptr_eq(&self.snapshot, snapshot) {
            let decided = (&mut self.decided).await.unwrap_or(Err("failed"));
            let young = self.started.elapsed() < EARLY_USE;
            decided.and_then(|d| if young { Ok(d) } else { Err("late") })
        } else {
            Err("reloaded")
        };
        // Counted here once waited for; dropped while waiting (the deadline), it counts as
        // unused.
        self.counted = true;
        let label = outcome.as_ref().err().copied().unwrap_or("used");
        Metrics::count(&self.metrics.early_decisions, label);
        outcome.ok()
    }
}

impl std::fmt::Debug for Early {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Early")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl Drop for Early {
    /// Unused (a refused manifest, a stream that ended): the call has nothing to undo, so it is
    /// not waited for.
    fn drop(&mut self) {
        if !self.counted {
            Metrics::count(&self.metrics.early_decisions, "unused");
        }
        self.decided.abort();
    }
}

/// Whose request is decided.
#[derive(Clone, Copy, Debug)]
enum Client<'a> {
    /// A registry client, with its own `Authorization` header if it sent one.
    Asking(Option<&'a str>),
    /// An operator's pre-flight question on the gateway's own port.
    Operator,
}

/// Whether a decision takes the slots of the tags it admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slots {
    /// A push: admitted tags hold their slots until the registry answers.
    Reserve,
    /// A question: nothing is taken from real pushes.
    JudgeOnly,
}

#[cfg(test)]
mod tests;
