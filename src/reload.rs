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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config;
use crate::metrics::Metrics;
use crate::policy::{ConfigSource, LoadError, Policy, Problem};

/// One configuration version in force. Decisions take an `Arc<Snapshot>` and use it to the end,
/// so a reload never changes the rules under a decision in progress.
#[derive(Debug)]
pub struct Snapshot {
    pub policy: Policy,
    /// 1 at start-up, +1 for every applied change.
    pub version: u64,
    /// sha256 of the configuration texts.
    pub hash: String,
    pub loaded_at: SystemTime,
}

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
    spawn_inner(path, initial, metrics, options, true)
}

fn spawn_inner(
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

/// What the watcher callback sends: when, and whether the event could be the echo of our own
/// read. Every event is sent; the task decides.
#[derive(Debug)]
struct Signal {
    at: Instant,
    read_only: bool,
}

#[derive(Debug, Default)]
struct WatchState {
    watcher: Option<RecommendedWatcher>,
    armed: Vec<PathBuf>,
    stopped: bool,
    /// The last watcher problem reported, so a persistent one is logged once.
    reported: Option<String>,
}

/// Why a re-read happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    Start,
    Event,
    Resync,
}

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

/// A burst that never goes quiet is cut off after this many debounce periods.
const BURST_CAP_FACTOR: u32 = 3;

/// Reads retried when the symlink chain moved during a read (a torn read across a swap).
const TORN_READ_RETRIES: usize = 5;

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

    /// Watches the directories the path depends on now, creating the watcher if there is none.
    /// Watching an already watched directory again is harmless (notify adds to the mask), and
    /// re-adds a watch that a deleted or replaced directory ended.
    fn arm(&mut self) {
        if !self.use_watcher {
            return;
        }
        let dirs = watch_dirs(&self.path);
        let mut state = lock(&self.watch);
        if state.stopped {
            return;
        }
        if state.watcher.is_none() {
            let signals = self.signals.clone();
            let created =
                notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                    let read_only = event.as_ref().is_ok_and(|e| is_read_only(&e.kind));
                    let _ = signals.send(Signal {
                        at: Instant::now(),
                        read_only,
                    });
                });
            match created {
                Ok(watcher) => state.watcher = Some(watcher),
                Err(e) => {
                    let problem = format!(
                        "cannot watch for configuration changes ({e}); re-reading every {:?} instead",
                        self.options.resync
                    );
                    report_watch_problem(&mut state, &self.status, problem);
                    return;
                }
            }
        }
        let WatchState { watcher, armed, .. } = &mut *state;
        let Some(watcher) = watcher.as_mut() else {
            return;
        };
        for old in armed.iter().filter(|old| !dirs.contains(old)) {
            // A directory that is gone has lost its watch already.
            let _ = watcher.unwatch(old);
        }
        let mut problems = Vec::new();
        armed.clear();
        for dir in dirs {
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => armed.push(dir),
                Err(e) => problems.push(format!("{}: {e}", dir.display())),
            }
        }
        if problems.is_empty() {
            if state.reported.take().is_some() {
                tracing::info!(path = %self.path.display(), "watching for configuration changes again");
            }
            lock(&self.status).watch_error = None;
        } else {
            let problem = format!(
                "cannot watch {}; changes there apply at the next re-read (every {:?})",
                problems.join(", "),
                self.options.resync
            );
            report_watch_problem(&mut state, &self.status, problem);
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

/// What one re-read found.
enum Outcome {
    /// The same texts as the version in force.
    Unchanged,
    /// New texts that compile: the policy and their fingerprint.
    Changed(Policy, String),
    /// Unreadable, or invalid; the version in force stays.
    Invalid(LoadError),
}

/// Reads through the path, compares the fingerprint with `current`, and compiles if it differs.
fn reread(path: &Path, current: &str) -> Outcome {
    let source = match read_consistent(path) {
        Ok(source) => source,
        Err(e) => return Outcome::Invalid(e),
    };
    let hash = config::fingerprint(&source);
    if hash == current {
        return Outcome::Unchanged;
    }
    match crate::policy::compile(&source) {
        Ok(policy) => Outcome::Changed(policy, hash),
        Err(e) => Outcome::Invalid(e),
    }
}

/// Reads the configuration, and reads again if the symlink chain moved meanwhile: a kubelet swap
/// during a directory read could otherwise mix keys of the old and the new version.
fn read_consistent(path: &Path) -> Result<ConfigSource, LoadError> {
    let mut attempt = 0;
    loop {
        let before = chain_marker(path);
        let source = config::read(path)?;
        attempt += 1;
        if chain_marker(path) == before || attempt >= TORN_READ_RETRIES {
            return Ok(source);
        }
    }
}

/// What identifies the version a path resolves to now: the real path of a file, or the target
/// of a ConfigMap directory's `..data` link.
fn chain_marker(path: &Path) -> Option<PathBuf> {
    if path.is_dir() {
        std::fs::read_link(path.join("..data")).ok()
    } else {
        std::fs::canonicalize(path).ok()
    }
}

/// The directories whose entries decide what `path` reads: the path itself when it is a
/// directory (a ConfigMap mount), else the directory holding it; the directory of every symlink
/// hop on the way (so a repointed link is seen); and the directory of the resolved target.
/// Canonical, deduplicated, existing only.
fn watch_dirs(path: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut add = |dir: &Path| {
        if let Ok(dir) = std::fs::canonicalize(dir)
            && dir.is_dir()
            && !dirs.contains(&dir)
        {
            dirs.push(dir);
        }
    };
    if path.is_dir() {
        add(path);
    } else {
        add(&holder(path));
    }
    let mut hop = path.to_path_buf();
    for _ in 0..MAX_SYMLINK_HOPS {
        let Ok(target) = std::fs::read_link(&hop) else {
            break;
        };
        let dir = holder(&hop);
        add(&dir);
        hop = dir.join(target);
    }
    if let Ok(real) = std::fs::canonicalize(path) {
        if real.is_dir() {
            add(&real);
        } else if let Some(parent) = real.parent() {
            add(parent);
        }
    }
    dirs
}

/// Linux's own limit on symlinks followed in one lookup.
const MAX_SYMLINK_HOPS: usize = 40;

/// The directory holding `path` (`.` for a bare file name).
fn holder(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Events that an open or a read produces, which never change what a file holds. Everything
/// else, including kinds notify could not classify and errors, counts as a possible change.
fn is_read_only(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(
            AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
        )
    )
}

/// Debounce of one burst of events: quiet for `debounce` after the last one, or cut off at
/// `BURST_CAP_FACTOR × debounce` after the first.
#[derive(Debug, Clone, Copy)]
struct Burst {
    last: Instant,
    cap: Instant,
    debounce: Duration,
}

impl Burst {
    fn new(first: Instant, debounce: Duration) -> Self {
        Self {
            last: first,
            cap: first + debounce * BURST_CAP_FACTOR,
            debounce,
        }
    }

    fn event(&mut self, at: Instant) {
        self.last = self.last.max(at);
    }

    fn deadline(&self) -> Instant {
        (self.last + self.debounce).min(self.cap)
    }
}

fn report_watch_problem(state: &mut WatchState, status: &SharedStatus, problem: String) {
    if state.reported.as_deref() != Some(problem.as_str()) {
        tracing::warn!("{problem}");
    }
    lock(status).watch_error = Some(problem.clone());
    state.reported = Some(problem);
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

/// A poisoned lock only means another thread panicked mid-update of plain data; use it anyway.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, ModifyKind, RemoveKind};
    use std::os::unix::fs::symlink;

    fn real(path: &Path) -> PathBuf {
        std::fs::canonicalize(path).expect("exists")
    }

    #[test]
    fn watched_directories_follow_the_path_its_links_and_its_target() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = real(tmp.path());
        let mkdir = |name: &str| {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).expect("mkdir");
            dir
        };
        let plain = mkdir("plain");
        std::fs::write(plain.join("config.yaml"), "").expect("write");
        // A ConfigMap mount with one key, `--config` naming the key's visible link.
        let mount = mkdir("mount");
        let stamp = mkdir("mount/..2026_01_01_00_00_00.1");
        std::fs::write(stamp.join("config.yaml"), "").expect("write");
        symlink("..2026_01_01_00_00_00.1", mount.join("..data")).expect("link");
        symlink("..data/config.yaml", mount.join("config.yaml")).expect("link");
        // A chain across three directories, and a symlinked directory.
        let (a, b, c) = (mkdir("a"), mkdir("b"), mkdir("c"));
        std::fs::write(c.join("real.yaml"), "").expect("write");
        symlink("../c/real.yaml", b.join("hop.yaml")).expect("link");
        symlink("../b/hop.yaml", a.join("config.yaml")).expect("link");
        symlink(&mount, root.join("mount-link")).expect("link");

        let table: [(PathBuf, Vec<PathBuf>); 6] = [
            (plain.join("config.yaml"), vec![plain.clone()]),
            (plain.join("missing.yaml"), vec![plain.clone()]),
            (mount.clone(), vec![mount.clone()]),
            (
                mount.join("config.yaml"),
                vec![mount.clone(), stamp.clone()],
            ),
            (a.join("config.yaml"), vec![a.clone(), b.clone(), c.clone()]),
            (root.join("mount-link"), vec![mount.clone(), root.clone()]),
        ];
        for (path, expected) in table {
            assert_eq!(watch_dirs(&path), expected, "{}", path.display());
        }
    }

    #[test]
    fn only_opens_and_reads_can_be_echoes_of_our_own_read() {
        let table = [
            (EventKind::Access(AccessKind::Open(AccessMode::Any)), true),
            (EventKind::Access(AccessKind::Read), true),
            (EventKind::Access(AccessKind::Close(AccessMode::Read)), true),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                false,
            ),
            (EventKind::Access(AccessKind::Close(AccessMode::Any)), false),
            (EventKind::Modify(ModifyKind::Data(DataChange::Any)), false),
            (EventKind::Modify(ModifyKind::Any), false),
            (EventKind::Create(CreateKind::Any), false),
            (EventKind::Remove(RemoveKind::Folder), false),
            (EventKind::Any, false),
            (EventKind::Other, false),
        ];
        for (kind, echo) in table {
            assert_eq!(is_read_only(&kind), echo, "{kind:?}");
        }
    }

    #[test]
    fn a_burst_settles_after_the_quiet_time_or_at_its_cap() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut burst = Burst::new(t0, ms(200));
        assert_eq!(burst.deadline(), t0 + ms(200));
        burst.event(t0 + ms(150));
        assert_eq!(burst.deadline(), t0 + ms(350));
        // A late-delivered, earlier event does not move the deadline back.
        burst.event(t0 + ms(10));
        assert_eq!(burst.deadline(), t0 + ms(350));
        // A directory that never goes quiet is cut off at three debounce periods.
        burst.event(t0 + ms(550));
        assert_eq!(burst.deadline(), t0 + ms(600));
    }

    #[test]
    fn a_swapped_configmap_is_marked_by_its_data_link() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("..v1")).expect("mkdir");
        symlink("..v1", tmp.path().join("..data")).expect("link");
        assert_eq!(chain_marker(tmp.path()), Some(PathBuf::from("..v1")));
        assert_eq!(chain_marker(&tmp.path().join("missing.yaml")), None);
    }

    #[tokio::test]
    async fn without_a_watcher_the_periodic_re_read_applies_changes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("config.yaml");
        std::fs::write(&path, "tag_count_limit: 5\n").expect("write");
        let initial = load_initial(&path).expect("valid");
        let metrics = Arc::new(Metrics::new());
        let options = ReloadOptions {
            debounce: Duration::from_millis(200),
            resync: Duration::from_millis(50),
        };
        let (mut rx, status, _handle) =
            spawn_inner(path.clone(), initial, Arc::clone(&metrics), options, false);
        assert_eq!(metrics.config_version.get(), 1);

        std::fs::write(&path, "tag_count_limit: x\n").expect("break it");
        let start = Instant::now();
        while lock(&status).last_error.is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "invalid edit not seen"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::fs::write(&path, "tag_count_limit: 7\n").expect("fix it");
        let applied = tokio::time::timeout(
            Duration::from_secs(2),
            rx.wait_for(|s| s.policy.global().tag_count_limit == 7),
        )
        .await;
        assert!(matches!(applied, Ok(Ok(_))), "not applied by the re-read");
        assert_eq!(metrics.config_version.get(), 2);
        assert!(lock(&status).last_error.is_none());
        assert!(
            metrics
                .reloads
                .get_or_create(&crate::metrics::ResultLabels { result: "invalid" })
                .get()
                >= 1
        );
    }

    #[tokio::test]
    async fn a_change_before_spawn_is_caught_by_the_start_re_read() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("config.yaml");
        std::fs::write(&path, "tag_count_limit: 5\n").expect("write");
        let initial = load_initial(&path).expect("valid");
        std::fs::write(&path, "tag_count_limit: 6\n").expect("rewrite");
        let options = ReloadOptions {
            resync: Duration::from_secs(3600),
            ..ReloadOptions::default()
        };
        let (rx, _status, _handle) = spawn(path, initial, Arc::new(Metrics::new()), options);
        let snapshot = Arc::clone(&rx.borrow());
        assert_eq!(
            (snapshot.version, snapshot.policy.global().tag_count_limit),
            (2, 6)
        );
    }
}
