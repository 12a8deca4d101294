//! Measurements of index children, shared by digest: many tags point at the same index, and
//! many indexes share platform images. Bounded: past [`CAPACITY`] digests the oldest are
//! forgotten and measured again if they come up.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;

/// Digests kept at most; an entry is a digest, a size or a few child references: well under
/// 1 KB, so the cache stays under a few MB.
pub(super) const CAPACITY: usize = 10_000;

/// What a child manifest turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Child {
    /// An image: the bytes that count against `max_image_size`.
    Image { bytes: u64 },
    /// An index nested in an index: its own children.
    Index { children: Vec<ChildRef> },
}

/// An index entry: which manifest, and for which platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ChildRef {
    pub(super) digest: String,
    /// `os/architecture[/variant]`, when the entry names one.
    pub(super) platform: Option<String>,
}

/// A child's measurement, or why it could not be measured.
pub(super) type Measurement = Result<Child, String>;

#[derive(Default)]
struct Entries {
    cells: HashMap<String, Arc<OnceCell<Measurement>>>,
    order: VecDeque<String>,
}

/// Child measurements by digest. Concurrent requests for one digest wait for one read.
pub(super) struct ChildCache {
    capacity: usize,
    entries: Mutex<Entries>,
}

impl ChildCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: Mutex::default(),
        }
    }

    /// The measurement of `digest`, from the cache or from `measure` (run once per digest
    /// while it is cached).
    pub(super) async fn get_or_measure<F, Fut>(&self, digest: &str, measure: F) -> Measurement
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Measurement>,
    {
        let cell = {
            // Nothing in the map can be left half-updated by a panicking holder.
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            match entries.cells.get(digest) {
                Some(cell) => cell.clone(),
                None => {
                    while entries.cells.len() >= self.capacity {
                        let Some(oldest) = entries.order.pop_front() else {
                            break;
                        };
                        entries.cells.remove(&oldest);
                    }
                    let cell = Arc::new(OnceCell::new());
                    entries.cells.insert(digest.to_owned(), cell.clone());
                    entries.order.push_back(digest.to_owned());
                    cell
                }
            }
        };
        cell.get_or_init(measure).await.clone()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cells
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn one_digest_is_measured_once() {
        let cache = ChildCache::new(10);
        let reads = AtomicUsize::new(0);
        for _ in 0..3 {
            let got = cache
                .get_or_measure("sha256:a", || async {
                    reads.fetch_add(1, Ordering::Relaxed);
                    Ok(Child::Image { bytes: 5 })
                })
                .await;
            assert_eq!(got, Ok(Child::Image { bytes: 5 }));
        }
        assert_eq!(reads.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn the_cache_forgets_the_oldest_past_its_capacity() {
        let cache = ChildCache::new(2);
        for digest in ["sha256:a", "sha256:b", "sha256:c"] {
            let _ = cache
                .get_or_measure(digest, || async { Ok(Child::Image { bytes: 1 }) })
                .await;
        }
        assert_eq!(cache.len(), 2);
        let reads = AtomicUsize::new(0);
        let _ = cache
            .get_or_measure("sha256:a", || async {
                reads.fetch_add(1, Ordering::Relaxed);
                Err("gone".to_owned())
            })
            .await;
        assert_eq!(reads.load(Ordering::Relaxed), 1, "a was forgotten");
    }
}
