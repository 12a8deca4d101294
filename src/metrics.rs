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

/// Declares [`Metrics`] from one table: each metric's field, type and exported name, its doc
/// comment as its HELP text, so that the struct, the registration and the help cannot drift
/// apart. A metric without `Default` (a histogram, for its buckets) gives its value after `=`.
macro_rules! metrics {
    ($($(#[doc = $help:literal])+ $field:ident: $ty:ty, $name:literal $(= $make:expr)?;)+) => {
        /// Every metric the service exports.
        #[derive(Debug)]
        pub struct Metrics {
            $($(#[doc = $help])+ pub $field: $ty,)+
            registry: Registry,
        }

        impl Metrics {
            /// Creates and registers every metric, in the table's order.
            pub fn new() -> Self {
                let mut registry = Registry::with_prefix("registry_gateway");
                $(
                    let $field: $ty = metrics!(@make $($make)?);
                    // Each doc line starts with a space, which also joins the lines.
                    let help = concat!($($help),+).trim_start();
                    registry.register($name, help, $field.clone());
                )+
                Self { $($field,)+ registry }
            }
        }
    };
    (@make) => { Default::default() };
    (@make $make:expr) => { $make };
}

metrics! {
    /// Manifest write decisions by transport, outcome and reason
    decisions: Family<DecisionLabels, Counter>, "decisions";
    /// Warning headers handed to clients on allowed pushes: `waived` (a limit in warn mode) or
    /// `soft` (a warn_at threshold)
    warnings: Family<ResultLabels, Counter>, "warnings";
    /// Repositories whose cached tag count is over the tag limit in force since the last reload
    /// (listed in /status)
    limit_conflicts: Gauge, "limit_conflicts";
    /// Time to decide a manifest write, tag-list fetches included
    decision_seconds: Histogram, "decision_duration_seconds" = Histogram::new([
        // 50 µs to ~3 s: warm decisions are well under a millisecond, cold ones wait on the
        // registry's tag list.
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5,
    ]);
    /// Tag-list fetches from the registry, by result
    registry_calls: Family<ResultLabels, Counter>, "registry_tag_list_requests";
    /// Configuration reloads by result (applied, unchanged, invalid)
    reloads: Family<ResultLabels, Counter>, "config_reloads";
    /// Version number of the configuration in force (1 at start-up, +1 per applied change)
    config_version: Gauge, "config_version";
    /// Unix time at which the configuration in force was loaded
    config_loaded_timestamp: Gauge, "config_loaded_timestamp_seconds";
    /// ext_proc streams that ended in an error, by cause
    stream_errors: Family<ResultLabels, Counter>, "stream_errors";
    /// Tag slots settled, by result (committed, released, expired, in_doubt)
    reservations: Family<ResultLabels, Counter>, "tag_reservations";
    /// Questions to the registry whether it accepts a client's credentials, by answer (accepted,
    /// refused, or the error)
    client_checks: Family<ResultLabels, Counter>, "client_checks";
    /// Calls to the shared state store (Redis/Valkey), by script and result; one decide per
    /// decision with a warm cache
    state_calls: Family<StateLabels, Counter>, "state_store_calls";
    /// Decisions the shared store started on a push's request line, by result: `used` (they
    /// stood for the manifest), `later` (the store found a tag to create, so the manifest was
    /// decided when it came), `cold`, `failed`, `not_accepted` (the client), `late`,
    /// `reloaded` (the policy changed first) or `unused` (the manifest was refused first or
    /// never came, the client was refused, or the decision's deadline ran out while waiting)
    early_decisions: Family<ResultLabels, Counter>, "early_decisions";
    /// Repositories whose tag books this process keeps (memory mode; capped)
    books: Gauge, "tag_books";
    /// Tag books forgotten to stay under the cap; an evicted repository is read again
    book_evictions: Counter, "tag_book_evictions";
    /// Registry bearer tokens this process keeps for reuse (capped)
    registry_tokens: Gauge, "registry_tokens";
    /// Unexpired registry tokens forgotten to stay under the cap; a forgotten token is fetched
    /// again
    registry_token_evictions: Counter, "registry_token_evictions";
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
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
