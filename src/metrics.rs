//! Prometheus metrics. Labels come from bounded sets only (transport, outcome, reason, result),
//! never a repository or a tag.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `ext_proc`, `ext_authz` or `preflight`.
    pub transport: &'static str,
    /// `allow`, `deny`, `would_deny` (a `warn` or `dry-run` limit let it through), `defer` or
    /// `error`.
    pub outcome: &'static str,
    /// A `DenyReason`, a `TagError` label, or `none`.
    pub reason: &'static str,
    /// The `enforcement` of the limits that applied: `enforce`, `warn` or `dry-run`.
    pub enforcement: &'static str,
}

/// Labels carrying one bounded result word.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Labels of a shared-store call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct StateLabels {
    pub op: &'static str,
    pub result: &'static str,
}

/// Every metric the service exports.
#[derive(Debug)]
pub struct Metrics {
    pub decisions: Family<DecisionLabels, Counter>,
    /// `Warning` headers handed to clients, by kind (`waived`, `soft`).
    pub warnings: Family<ResultLabels, Counter>,
    pub decision_seconds: Histogram,
    pub registry_calls: Family<ResultLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    pub config_version: Gauge,
    pub config_loaded_timestamp: Gauge,
    pub stream_errors: Family<ResultLabels, Counter>,
    pub reservations: Family<ResultLabels, Counter>,
    pub client_checks: Family<ResultLabels, Counter>,
    pub state_calls: Family<StateLabels, Counter>,
    pub books: Gauge,
    /// Repositories over a tag limit lowered by a reload.
    pub limit_conflicts: Gauge,
    pub book_evictions: Counter,
    pub registry_tokens: Gauge,
    pub registry_token_evictions: Counter,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("registry_gateway");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Manifest write decisions by transport, outcome and reason",
            decisions.clone(),
        );
        // 50 µs to ~3 s: warm decisions are well under a millisecond, cold ones wait on the
        // registry's tag list.
        let warnings = Family::<ResultLabels, Counter>::default();
        registry.register(
            "warnings",
            "Warning headers handed to clients on allowed pushes: `waived` (a limit in warn mode) or `soft` (a warn_at threshold)",
            warnings.clone(),
        );
        let limit_conflicts = Gauge::default();
        registry.register(
            "limit_conflicts",
            "Repositories whose cached tag count is over the tag limit in force since the last reload (listed in /status)",
            limit_conflicts.clone(),
        );
        let decision_seconds = Histogram::new([
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0, 2.5,
        ]);
        registry.register(
            "decision_duration_seconds",
            "Time to decide a manifest write, tag-list fetches included",
            decision_seconds.clone(),
        );
        let registry_calls = Family::<ResultLabels, Counter>::default();
        registry.register(
            "registry_tag_list_requests",
            "Tag-list fetches from the registry, by result",
            registry_calls.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by result (applied, unchanged, invalid)",
            reloads.clone(),
        );
        let config_version = Gauge::default();
        registry.register(
            "config_version",
            "Version number of the configuration in force (1 at start-up, +1 per applied change)",
            config_version.clone(),
        );
        let config_loaded_timestamp = Gauge::default();
        registry.register(
            "config_loaded_timestamp_seconds",
            "Unix time at which the configuration in force was loaded",
            config_loaded_timestamp.clone(),
        );
        let stream_errors = Family::<ResultLabels, Counter>::default();
        registry.register(
            "stream_errors",
            "ext_proc streams that ended in an error, by cause",
            stream_errors.clone(),
        );
        let reservations = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tag_reservations",
            "Tag slots settled, by result (committed, released, expired, in_doubt)",
            reservations.clone(),
        );
        let client_checks = Family::<ResultLabels, Counter>::default();
        registry.register(
            "client_checks",
            "Questions to the registry whether it accepts a client's credentials, by answer (accepted, refused, or the error)",
            client_checks.clone(),
        );
        let state_calls = Family::<StateLabels, Counter>::default();
        registry.register(
            "state_store_calls",
            "Calls to the shared state store (Redis/Valkey), by script and result; one decide per decision with a warm cache",
            state_calls.clone(),
        );
        let books = Gauge::default();
        registry.register(
            "tag_books",
            "Repositories whose tag books this process keeps (memory mode; capped)",
            books.clone(),
        );
        let book_evictions = Counter::default();
        registry.register(
            "tag_book_evictions",
            "Tag books forgotten to stay under the cap; an evicted repository is read again",
            book_evictions.clone(),
        );
        let registry_tokens = Gauge::default();
        registry.register(
            "registry_tokens",
            "Registry bearer tokens this process keeps for reuse (capped)",
            registry_tokens.clone(),
        );
        let registry_token_evictions = Counter::default();
        registry.register(
            "registry_token_evictions",
            "Unexpired registry tokens forgotten to stay under the cap; a forgotten token is fetched again",
            registry_token_evictions.clone(),
        );
        Self {
            decisions,
            warnings,
            limit_conflicts,
            decision_seconds,
            registry_calls,
            reloads,
            config_version,
            config_loaded_timestamp,
            stream_errors,
            reservations,
            client_checks,
            state_calls,
            books,
            book_evictions,
            registry_tokens,
            registry_token_evictions,
            registry,
        }
    }

    /// Counts a result word in `family`.
    pub fn count(family: &Family<ResultLabels, Counter>, result: &'static str) {
        family.get_or_create(&ResultLabels { result }).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
