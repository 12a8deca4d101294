//! Which tags this replica last saw the shared store count: a hint, never a count.
//!
//! A push that only re-writes counted tags takes no slot, so its decision can start on the
//! request line, before the manifest arrives, and overlap Envoy's wait for the body. A push that
//! creates a tag must wait for its manifest: its slot would otherwise be held by a manifest that
//! may yet be refused. The hint says which case a push probably is; the store's answer says which
//! it is. A wrong hint costs one store call, or the overlap, and nothing else.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// Slots of the table. Fixed, so that a flood of names costs no memory: 32 KiB.
const SLOTS: usize = 4096;

pub(super) struct Hints {
    /// Fingerprints of (repository, tag), one per slot; 0 is empty.
    slots: Box<[AtomicU64]>,
    hasher: std::hash::RandomState,
}

impl Default for Hints {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl std::fmt::Debug for Hints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hints").finish_non_exhaustive()
    }
}

impl Hints {
    fn slot(&self, repository: &str, tag: &str) -> (&AtomicU64, u64) {
        let fingerprint = self.hasher.hash_one((repository, tag)) | 1;
        (&self.slots[fingerprint as usize % SLOTS], fingerprint)
    }

    /// The store counted `tag` when this replica last asked.
    pub(super) fn counted(&self, repository: &str, tag: &str) {
        let (slot, fingerprint) = self.slot(repository, tag);
        slot.store(fingerprint, Ordering::Relaxed);
    }

    /// `tag` is not counted, or may no longer be.
    pub(super) fn forget(&self, repository: &str, tag: &str) {
        let (slot, fingerprint) = self.slot(repository, tag);
        let _ = slot.compare_exchange(fingerprint, 0, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Whether every one of `tags` was counted when last seen.
    pub(super) fn all_counted(&self, repository: &str, tags: &[String]) -> bool {
        tags.iter().all(|tag| {
            let (slot, fingerprint) = self.slot(repository, tag);
            slot.load(Ordering::Relaxed) == fingerprint
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_is_per_repository_and_tag_and_can_be_withdrawn() {
        let hints = Hints::default();
        let tags = |t: &[&str]| t.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
        assert!(!hints.all_counted("a", &tags(&["v1"])));
        hints.counted("a", "v1");
        assert!(hints.all_counted("a", &tags(&["v1"])));
        assert!(!hints.all_counted("b", &tags(&["v1"])));
        assert!(!hints.all_counted("a", &tags(&["v1", "v2"])));
        hints.forget("a", "v1");
        assert!(!hints.all_counted("a", &tags(&["v1"])));
    }
}
