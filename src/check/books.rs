//! Tag books of the repositories seen, in this process: the `--state memory` store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::policy::TagBook;

/// A repository's book and whether its confirmed tags can be trusted.
#[derive(Debug, Default)]
pub(super) struct BookState {
    pub(super) book: TagBook,
    /// When the confirmed tags were read from the registry; `None` means they must be read.
    pub(super) fetched_at: Option<Instant>,
    /// Changes seen while a fetch is in flight, replayed onto its result.
    pub(super) journal: Option<Vec<Change>>,
    pub(super) last_used: Option<Instant>,
    /// Reserved slots of pushes whose outcome is unknown: the stream ended without the
    /// registry's answer, or the answer was a 5xx that Envoy may have made up after the registry
    /// stored the manifest. Each keeps its slot until a tag-list read that began
    /// [`DOUBT_GRACE`] after it shows the truth.
    pub(super) doubts: Vec<(String, Instant)>,
}

/// How long after an unknown outcome a tag-list read is trusted to show it: the registry may
/// still be storing a manifest whose client, or whose Envoy, already gave up.
pub const DOUBT_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub(super) enum Change {
    Confirm(String),
    Remove(String),
    /// Tags went away that we cannot name (a delete by digest): read the list again.
    Stale,
}

impl BookState {
    pub(super) fn apply(&mut self, change: Change) {
        match &change {
            Change::Confirm(tag) => self.book.confirm(tag),
            Change::Remove(tag) => self.book.remove(tag),
            Change::Stale => self.fetched_at = None,
        }
        if let Some(journal) = &mut self.journal {
            journal.push(change);
        }
    }

    pub(super) fn is_fresh(&self, now: Instant, ttl: Duration) -> bool {
        self.fetched_at
            .is_some_and(|at| now.duration_since(at) < ttl)
            && !self
                .doubts
                .iter()
                .any(|(_, since)| *since + DOUBT_GRACE <= now)
    }

    /// Keeps `tags`' slots until a read shows whether the push landed.
    pub(super) fn doubt(&mut self, tags: &[String]) {
        let now = Instant::now();
        self.doubts
            .extend(tags.iter().map(|tag| (tag.clone(), now)));
    }

    /// A read that began at `started` shows every push doubted a grace period before it.
    pub(super) fn resolve_doubts(&mut self, started: Instant) {
        let (resolved, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.doubts)
            .into_iter()
            .partition(|(_, since)| *since + DOUBT_GRACE <= started);
        self.doubts = kept;
        for (tag, _) in resolved {
            self.book.release(&tag);
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Repo {
    pub(super) state: Mutex<BookState>,
    /// Held while the tag list is fetched, so concurrent decisions share one fetch.
    pub(super) fetch: tokio::sync::Mutex<()>,
}

impl Repo {
    pub(super) fn lock(&self) -> MutexGuard<'_, BookState> {
        // A panic while holding the lock cannot leave the book half-changed in a way that matters
        // more than refusing every later push; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Tag books of every repository seen recently.
#[derive(Debug, Default)]
pub(super) struct Books {
    pub(super) repos: Mutex<HashMap<String, Arc<Repo>>>,
}

impl Books {
    pub(super) fn get(&self, repository: &str) -> Arc<Repo> {
        let mut repos = self.repos.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(repo) = repos.get(repository) {
            return repo.clone();
        }
        let repo = Arc::new(Repo::default());
        repos.insert(repository.to_owned(), repo.clone());
        repo
    }

    pub(super) fn existing(&self, repository: &str) -> Option<Arc<Repo>> {
        let repos = self.repos.lock().unwrap_or_else(|p| p.into_inner());
        repos.get(repository).cloned()
    }

    /// Forgets repositories idle for longer than `idle` that hold no reservation.
    pub(super) fn sweep(&self, now: Instant, idle: Duration) -> usize {
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
