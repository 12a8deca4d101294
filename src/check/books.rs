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

    /// Frees doubts older than `max_age` and marks the list to be read again.
    pub(super) fn expire_doubts(&mut self, now: Instant, max_age: Duration) {
        let before = self.doubts.len();
        let (old, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.doubts)
            .into_iter()
            .partition(|(_, since)| now.duration_since(*since) >= max_age);
        self.doubts = kept;
        for (tag, _) in old {
            self.book.release(&tag);
        }
        if self.doubts.len() != before {
            self.apply(Change::Stale);
        }
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

/// Books kept at most. A flood of distinct repository names (each one valid, from a client the
/// registry accepts) cannot grow memory past it: the least recently used books that hold no
/// reservation and no decision in progress are forgotten, and read again when next needed.
pub(super) const MAX_BOOKS: usize = 20_000;

impl Books {
    /// The book of `repository`, made when missing; `evicted` counts books forgotten to make room.
    pub(super) fn get(&self, repository: &str) -> (Arc<Repo>, usize) {
        let mut repos = self.repos.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(repo) = repos.get(repository) {
            return (repo.clone(), 0);
        }
        let evicted = if repos.len() >= MAX_BOOKS {
            evict_least_recent(&mut repos)
        } else {
            0
        };
        let repo = Arc::new(Repo::default());
        repos.insert(repository.to_owned(), repo.clone());
        (repo, evicted)
    }

    /// How many books are kept.
    pub(super) fn len(&self) -> usize {
        self.repos.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub(super) fn existing(&self, repository: &str) -> Option<Arc<Repo>> {
        let repos = self.repos.lock().unwrap_or_else(|p| p.into_inner());
        repos.get(repository).cloned()
    }

    /// Every book kept, with its repository's name.
    pub(super) fn entries(&self) -> Vec<(String, Arc<Repo>)> {
        let repos = self.repos.lock().unwrap_or_else(|p| p.into_inner());
        repos
            .iter()
            .map(|(name, repo)| (name.clone(), repo.clone()))
            .collect()
    }

    /// Forgets repositories idle for longer than `idle` that hold no reservation.
    pub(super) fn sweep(&self, now: Instant, idle: Duration) -> usize {
        let mut repos = self.repos.lock().unwrap_or_else(|p| p.into_inner());
        let before = repos.len();
        repos.retain(|_, repo| {
            if Arc::strong_count(repo) > 1 {
                return true;
            }
            let mut state = repo.lock();
            // A doubt is settled by the next read; one nobody asks about for this long is let
            // go (and the list marked for reading), so hung-up pushes cannot pin books forever.
            state.expire_doubts(now, idle);
            state.book.has_reservations()
                || state
                    .last_used
                    .is_some_and(|t| now.duration_since(t) < idle)
        });
        before - repos.len()
    }
}

/// Forgets a tenth of the books, least recently used first, among those nobody holds and that
/// hold no reservation. Amortised: one sort per `MAX_BOOKS / 10` new names.
fn evict_least_recent(repos: &mut HashMap<String, Arc<Repo>>) -> usize {
    let mut idle: Vec<(Option<Instant>, String)> = repos
        .iter()
        .filter(|(_, repo)| Arc::strong_count(repo) == 1)
        .filter_map(|(name, repo)| {
            let state = repo.lock();
            (!state.book.has_reservations()).then(|| (state.last_used, name.clone()))
        })
        .collect();
    idle.sort_unstable();
    let n = (MAX_BOOKS / 10).min(idle.len());
    for (_, name) in idle.into_iter().take(n) {
        repos.remove(&name);
    }
    n
}
