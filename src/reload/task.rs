//! The reload task: waits for a watcher signal or the resync tick, debounces, re-reads off the
//! runtime, then swaps the snapshot or keeps the last good one and says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};

use super::debounce::Burst;
use super::read::{Outcome, reread};
use super::watcher::{Signal, WatchState};
use super::{ECHO_GRACE, ReloadHandle, ReloadOptions, Reloader, SharedStatus, Snapshot, lock};
use crate::metrics::Metrics;
use crate::policy::{LoadError, Problem};

pub(super) fn spawn_inner(
    path: PathBuf,
    initial: Snapshot,
    metrics: Arc<Metrics>,
    options: ReloadOptions,
    use_watcher: bool,
) -> (watch::Receiver<Arc<Snapshot>>, SharedStatus, ReloadHandle) {
    set_gauges(&metrics, &initial);
    let (snapshots, receiver) = watch::channel(Arc::new(initial));
    let status = SharedStatus::default();
    let (signals, signal_rx) = mpsc::unbounded_channel();
    let watch = Arc::new(Mutex::new(WatchState::default()));
    let mut reloader = Reloader {
        path,
        options,
        metrics,
        status: Arc::clone(&status),
        snapshots,
        watch: Arc::clone(&watch),
        signals,
        signal_rx,
        use_watcher,
        echo: None,
    };
    // Arm before returning, so that the caller's next change is an event we receive; then read
    // once more, for a change made between `load_initial` and the arming.
    reloader.arm();
    reloader.reload_blocking(Trigger::Start);
    let task = tokio::spawn(reloader.run());
    let handle = ReloadHandle {
        watch,
        task: Some(task),
    };
    (receiver, status, handle)
}

/// Why a re-read happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    Start,
    Event,
    Resync,
}

impl Reloader {
    async fn run(mut self) {
        let resync = self.options.resync.max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let trigger = tokio::select! {
                signal = self.signal_rx.recv() => {
                    // `self.signals` keeps the channel open, so `None` cannot happen.
                    let Some(signal) = signal else { continue };
                    if self.is_echo(&signal) {
                        continue;
                    }
                    self.settle(signal.at).await;
                    Trigger::Event
                }
                _ = ticker.tick() => Trigger::Resync,
            };
            self.arm();
            self.reload(trigger).await;
        }
    }

    fn is_echo(&self, signal: &Signal) -> bool {
        signal.read_only
            && self
                .echo
                .is_some_and(|(start, end)| signal.at >= start && signal.at <= end)
    }

    /// Waits until the directories have been quiet for the debounce time, or the burst cap.
    async fn settle(&mut self, first: Instant) {
        let mut burst = Burst::new(first, self.options.debounce);
        loop {
            let deadline = tokio::time::Instant::from_std(burst.deadline());
            match tokio::time::timeout_at(deadline, self.signal_rx.recv()).await {
                Ok(Some(signal)) => {
                    if !self.is_echo(&signal) {
                        burst.event(signal.at);
                    }
                }
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// Re-reads through the path and applies what it finds; the reading and compiling happen
    /// on the blocking pool.
    async fn reload(&mut self, trigger: Trigger) {
        let path = self.path.clone();
        let current = self.snapshots.borrow().hash.clone();
        let started = Instant::now();
        let outcome = tokio::task::spawn_blocking(move || reread(&path, &current))
            .await
            .unwrap_or_else(|e| Outcome::Invalid(internal_error(&self.path, &e.to_string())));
        self.echo = Some((started, Instant::now() + ECHO_GRACE));
        self.apply(trigger, outcome);
    }

    /// The same, on the caller's thread: once at start, right after the watch is armed.
    fn reload_blocking(&mut self, trigger: Trigger) {
        let current = self.snapshots.borrow().hash.clone();
        let started = Instant::now();
        let outcome = reread(&self.path, &current);
        self.echo = Some((started, Instant::now() + ECHO_GRACE));
        self.apply(trigger, outcome);
    }

    fn apply(&mut self, trigger: Trigger, outcome: Outcome) {
        let current = Arc::clone(&self.snapshots.borrow());
        let (policy, hash) = match outcome {
            Outcome::Invalid(error) => return self.reject(error),
            Outcome::Unchanged => {
                let restored = {
                    let mut status = lock(&self.status);
                    status.last_error_at = None;
                    status.last_error.take().is_some()
                };
                if restored {
                    tracing::info!(
                        version = current.version,
                        hash = %current.hash,
                        "configuration is back to the version in force"
                    );
                }
                if trigger != Trigger::Start {
                    Metrics::count(&self.metrics.reloads, "unchanged");
                }
                tracing::debug!(
                    version = current.version,
                    ?trigger,
                    "configuration unchanged"
                );
                return;
            }
            Outcome::Changed(policy, hash) => (policy, hash),
        };
        let snapshot = Snapshot {
            policy,
            version: current.version.saturating_add(1),
            hash,
            loaded_at: SystemTime::now(),
        };
        set_gauges(&self.metrics, &snapshot);
        Metrics::count(&self.metrics.reloads, "applied");
        tracing::info!(
            version = snapshot.version,
            hash = %snapshot.hash,
            rules = snapshot.policy.rules().len(),
            ?trigger,
            path = %self.path.display(),
            "configuration applied"
        );
        {
            let mut status = lock(&self.status);
            status.last_error = None;
            status.last_error_at = None;
        }
        self.snapshots.send_replace(Arc::new(snapshot));
    }

    fn reject(&mut self, error: LoadError) {
        let message = error.to_string();
        let version = self.snapshots.borrow().version;
        Metrics::count(&self.metrics.reloads, "invalid");
        let mut status = lock(&self.status);
        // A file that stays broken is re-read at every resync; say so loudly once.
        if status.last_error.as_deref() == Some(message.as_str()) {
            tracing::debug!(version, "configuration still invalid: {message}");
        } else {
            tracing::warn!(
                version,
                path = %self.path.display(),
                "configuration rejected; version {version} stays in force: {message}"
            );
        }
        status.last_error = Some(message);
        status.last_error_at = Some(SystemTime::now());
    }
}

fn internal_error(path: &Path, cause: &str) -> LoadError {
    LoadError {
        problems: vec![Problem {
            file: path.display().to_string(),
            line: None,
            column: None,
            field: String::new(),
            message: format!("internal error while reloading: {cause}"),
        }],
    }
}

fn set_gauges(metrics: &Metrics, snapshot: &Snapshot) {
    metrics
        .config_version
        .set(i64::try_from(snapshot.version).unwrap_or(i64::MAX));
    let loaded = snapshot
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    metrics.config_loaded_timestamp.set(loaded);
}
