//! The filesystem watch: which directories a path depends on, (re-)arming them after every burst,
//! and the callback, which only signals.

use std::path::{Path, PathBuf};
use std::time::Instant;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use super::{Reloader, SharedStatus, lock};

/// What the watcher callback sends: when, and whether the event could be the echo of our own
/// read. Every event is sent; the task decides.
#[derive(Debug)]
pub(super) struct Signal {
    pub(super) at: Instant,
    pub(super) read_only: bool,
}

#[derive(Debug, Default)]
pub(super) struct WatchState {
    pub(super) watcher: Option<RecommendedWatcher>,
    pub(super) armed: Vec<PathBuf>,
    pub(super) stopped: bool,
    /// The last watcher problem reported, so a persistent one is logged once.
    pub(super) reported: Option<String>,
}

impl Reloader {
    /// Watches the directories the path depends on now, creating the watcher if there is none.
    /// Watching an already watched directory again is harmless (notify adds to the mask), and
    /// re-adds a watch that a deleted or replaced directory ended.
    pub(super) fn arm(&mut self) {
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
}

/// The directories whose entries decide what `path` reads: the path itself when it is a
/// directory (a ConfigMap mount), else the directory holding it; the directory of every symlink
/// hop on the way (so a repointed link is seen); and the directory of the resolved target.
/// Canonical, deduplicated, existing only.
pub(super) fn watch_dirs(path: &Path) -> Vec<PathBuf> {
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
pub(super) fn is_read_only(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(
            AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
        )
    )
}

fn report_watch_problem(state: &mut WatchState, status: &SharedStatus, problem: String) {
    if state.reported.as_deref() != Some(problem.as_str()) {
        tracing::warn!("{problem}");
    }
    lock(status).watch_error = Some(problem.clone());
    state.reported = Some(problem);
}
