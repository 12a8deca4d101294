//! Hot reload of the configuration: watch the directory, debounce, re-read, compare, compile,
//! swap atomically; keep the last good configuration when an edit is invalid.
//!
//! The watch is on directories, never on the file: an editor's rename-over and the kubelet's
//! `..data` symlink swap replace directory entries, and a watch on the old file's inode would see
//! nothing more once the old file is gone. The watched set is the directory holding the path (the
//! path itself for a ConfigMap directory), the directory of every symlink hop on the way to the
//! real file, and the directory of that file; it is recomputed after every burst, because a swap
//! moves the resolved target. The watcher callback only signals; one tokio task debounces,
//! re-reads through the configured path, and publishes through a `tokio::sync::watch` channel. A
//! periodic re-read backs the watcher up, and stands in for it when no watcher can be created.
//!
//! Every event schedules a re-read, whatever its kind, with one exception: our own read opens
//! files in the watched directories, and inotify reports those opens. An open or read event
//! stamped during our read (or just after it) is taken for its echo, so re-reads never schedule
//! each other; a writer's modify, close-after-write, create, rename or delete always counts.
//!
//! `watcher` computes the watched set, arms it and signals; `debounce` times a burst; `read`
//! is one re-read; `task` runs the loop and swaps snapshots.

mod debounce;
mod read;
mod task;
mod watcher;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use self::watcher::{Signal, WatchState};
use crate::config;
use crate::metrics::Metrics;
use crate::policy::LoadError;

pub use crate::snapshot::Snapshot;

/// What `/status` shows about reloads.
#[derive(Clone, Debug, Default)]
pub struct ReloadStatus {
    /// The last reload error (file, line, column and message), cleared by the next good load.
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    /// Why changes are not being watched (only the periodic re-read applies them), if so.
    pub watch_error: Option<String>,
}

/// Shared reload status.
pub type SharedStatus = Arc<Mutex<ReloadStatus>>;

/// Reads and compiles the configuration at start-up: version 1. An error is the same located
/// message a failed reload logs; the caller exits non-zero with it.
pub fn load_initial(path: &Path) -> Result<Snapshot, LoadError> {
    let (policy, hash) = config::load(path)?;
    Ok(Snapshot {
        policy,
        version: 1,
        hash,
        loaded_at: SystemTime::now(),
    })
}

/// Timing of the reloader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadOptions {
    /// Quiet time after the last filesystem event before the configuration is re-read. A burst
    /// that never goes quiet is cut off at three times this, so a change applies within about
    /// `3 × debounce` plus the read even next to a noisy neighbour in the same directory.
    pub debounce: Duration,
    /// Interval of the unconditional re-read that backs up the watcher (at least 10 ms).
    pub resync: Duration,
}

impl Default for ReloadOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(200),
            resync: Duration::from_secs(30),
        }
    }
}

/// Stops the reloader when dropped or shut down: the watcher is released at once and the task
/// ends, which closes the snapshot channel (receivers keep the last snapshot).
///
/// Keep it for as long as reloads should happen: binding it to `_` stops them immediately.
#[derive(Debug)]
#[must_use = "dropping the handle stops the reloader"]
pub struct ReloadHandle {
    watch: Arc<Mutex<WatchState>>,
    task: Option<JoinHandle<()>>,
}

impl ReloadHandle {
    /// Stops watching and re-reading. Same as dropping the handle.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for ReloadHandle {
    fn drop(&mut self) {
        {
            let mut state = lock(&self.watch);
            state.stopped = true;
            // Dropping the watcher here, not when the task is next polled, makes "stopped" mean
            // "no more inotify watches" by the time `drop` returns.
            state.watcher = None;
            state.armed.clear();
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts watching `path` with `initial` in force, and returns the snapshot channel (its
/// current value is always the configuration in force), the reload status for `/status`, and
/// the handle that stops it all. Sets the `config_version` and `config_loaded_timestamp`
/// gauges for `initial`.
///
/// Changes made after `spawn` returns are seen. A change made between [`load_initial`] and
/// `spawn` is caught by one re-read, on the caller's thread, before `spawn` returns (it counts
/// as `applied` or `invalid` if it finds one, and is not counted when nothing changed). Must be
/// called within a Tokio runtime.
pub fn spawn(
    path: PathBuf,
    initial: Snapshot,
    metrics: Arc<Metrics>,
    options: ReloadOptions,
) -> (watch::Receiver<Arc<Snapshot>>, SharedStatus, ReloadHandle) {
    task::spawn_inner(path, initial, metrics, options, true)
}

/// The reload task's state: `task` runs it, `watcher` arms its watch.
// Declared in the parent of both so that each sees the fields without widening them.
struct Reloader {
    path: PathBuf,
    options: ReloadOptions,
    metrics: Arc<Metrics>,
    status: SharedStatus,
    snapshots: watch::Sender<Arc<Snapshot>>,
    watch: Arc<Mutex<WatchState>>,
    /// Kept so the channel never closes, and cloned into every new watcher.
    signals: mpsc::UnboundedSender<Signal>,
    signal_rx: mpsc::UnboundedReceiver<Signal>,
    use_watcher: bool,
    /// The time span of our last read, extended by [`ECHO_GRACE`].
    echo: Option<(Instant, Instant)>,
}

/// How long after our own read an open/read event in the watched directories is taken for the
/// echo of that read. inotify reports the open of every file we read (notify maps `IN_OPEN` to
/// `Access(Open)`), so without this each re-read would schedule the next one, forever. Only
/// events that cannot carry a change are discounted, and only inside this window; a writer's
/// modify, close-after-write, create, rename or delete is never discounted.
const ECHO_GRACE: Duration = Duration::from_millis(250);

/// A poisoned lock only means another thread panicked mid-update of plain data; use it anyway.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
