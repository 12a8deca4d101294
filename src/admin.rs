//! The HTTP admin port: `/metrics`, `/healthz`, `/readyz`, `/status`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::reload::{SharedStatus, Snapshot};

/// What the admin endpoints read.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub policy: watch::Receiver<Arc<Snapshot>>,
    pub reload_status: SharedStatus,
    /// Repositories over a tag limit lowered by a reload.
    pub conflicts: crate::check::SharedConflicts,
    /// Latched true once a policy is loaded and the gRPC listener is bound; false again while
    /// shutting down, so Kubernetes stops routing before the drain.
    pub ready: AtomicBool,
}

/// The admin router.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn status(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let snapshot = state.policy.borrow().clone();
    let reload = state
        .reload_status
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let body = serde_json::json!({
        "ready": state.ready.load(Ordering::Acquire),
        "config": {
            "version": snapshot.version,
            "hash": snapshot.hash,
            "loaded_at": rfc3339(snapshot.loaded_at),
            "rules": snapshot.policy.rules().len(),
        },
        "last_reload_error": reload.last_error,
        "last_reload_error_at": reload.last_error_at.map(rfc3339),
        "watch_error": reload.watch_error,
        "limit_conflicts": *state.conflicts.lock().unwrap_or_else(|p| p.into_inner()),
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
}

/// RFC 3339 in UTC, without pulling a date crate in for one field.
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_796_000_000)),
            "2026-11-30T00:53:20Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
