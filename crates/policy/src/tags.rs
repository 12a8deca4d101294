//! A repository's tags as the gateway knows them: confirmed tags plus reservations for pushes
//! admitted and not yet answered by the registry.
//!
//! The decision counts both, so N concurrent pushes of new tags into a repository with room for k
//! admit exactly min(N, k). Reservations are counted per tag: two pushes of the same new tag share
//! one slot.

use std::collections::{HashMap, HashSet};

use super::rule::TagFilter;

/// Confirmed tags and in-flight reservations of one repository.
#[derive(Debug, Default)]
pub struct TagBook {
    confirmed: HashSet<String>,
    pending: HashMap<String, u32>,
    /// How many confirmed tags `filter` counts, kept current on every change, so that a
    /// repository with many tags is not re-scanned per decision.
    memo: Option<(TagFilter, usize)>,
}

impl TagBook {
    /// A book holding exactly `tags`, with no reservations.
    pub fn new(tags: impl IntoIterator<Item = String>) -> Self {
        Self {
            confirmed: tags.into_iter().collect(),
            ..Self::default()
        }
    }

    /// Whether the registry holds `tag`, as far as we know.
    pub fn is_confirmed(&self, tag: &str) -> bool {
        self.confirmed.contains(tag)
    }

    /// Whether `tag` is confirmed or reserved.
    pub fn contains(&self, tag: &str) -> bool {
        self.confirmed.contains(tag) || self.pending.contains_key(tag)
    }

    /// Number of confirmed tags.
    pub fn confirmed_len(&self) -> usize {
        self.confirmed.len()
    }

    /// Number of distinct reserved tags that are not confirmed yet.
    pub fn pending_len(&self) -> usize {
        self.pending
            .keys()
            .filter(|t| !self.confirmed.contains(*t))
            .count()
    }

    /// Tags that count toward the limit: confirmed or reserved, not excluded by `filter`.
    pub fn count(&mut self, filter: &TagFilter) -> usize {
        let confirmed = if filter.is_empty() {
            self.confirmed.len()
        } else {
            match &self.memo {
                Some((f, n)) if f.same_as(filter) => *n,
                _ => {
                    let n = self.confirmed.iter().filter(|t| filter.counts(t)).count();
                    self.memo = Some((filter.clone(), n));
                    n
                }
            }
        };
        let pending = self
            .pending
            .keys()
            .filter(|t| !self.confirmed.contains(*t) && filter.counts(t))
            .count();
        confirmed + pending
    }

    /// Holds a slot for each of `tags` until [`commit`](Self::commit) or
    /// [`release`](Self::release).
    pub fn reserve(&mut self, tags: &[String]) {
        for tag in tags {
            *self.pending.entry(tag.clone()).or_insert(0) += 1;
        }
    }

    /// The registry accepted a reserved tag: it is confirmed now.
    pub fn commit(&mut self, tag: &str) {
        self.unreserve(tag);
        self.confirm(tag);
    }

    /// A reserved tag was not created (refused, failed, abandoned, expired): free its slot.
    pub fn release(&mut self, tag: &str) {
        self.unreserve(tag);
    }

    /// The registry holds `tag` (observed without a reservation).
    pub fn confirm(&mut self, tag: &str) {
        if self.confirmed.insert(tag.to_owned())
            && let Some((f, n)) = &mut self.memo
            && f.counts(tag)
        {
            *n += 1;
        }
    }

    /// The registry deleted `tag`.
    pub fn remove(&mut self, tag: &str) {
        if self.confirmed.remove(tag)
            && let Some((f, n)) = &mut self.memo
            && f.counts(tag)
        {
            *n -= 1;
        }
    }

    /// A fresh tag list from the registry replaces the confirmed tags; reservations stay.
    pub fn replace_confirmed(&mut self, tags: impl IntoIterator<Item = String>) {
        self.confirmed = tags.into_iter().collect();
        self.memo = None;
    }

    fn unreserve(&mut self, tag: &str) {
        if let Some(n) = self.pending.get_mut(tag) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(tag);
            }
        }
    }

    /// Whether any reservation is outstanding.
    pub fn has_reservations(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reservations_count_until_committed_or_released() {
        let f = TagFilter::default();
        let mut book = TagBook::new(tags(&["a", "b"]));
        assert_eq!(book.count(&f), 2);
        book.reserve(&tags(&["c"]));
        assert_eq!(book.count(&f), 3);
        book.commit("c");
        assert_eq!(book.count(&f), 3);
        assert!(book.is_confirmed("c"));
        book.reserve(&tags(&["d"]));
        book.release("d");
        assert_eq!(book.count(&f), 3);
        assert!(!book.contains("d"));
    }

    #[test]
    fn two_reservations_of_one_tag_take_one_slot() {
        let f = TagFilter::default();
        let mut book = TagBook::new(tags(&[]));
        book.reserve(&tags(&["x"]));
        book.reserve(&tags(&["x"]));
        assert_eq!(book.count(&f), 1);
        book.release("x");
        assert_eq!(book.count(&f), 1, "the second push still holds the slot");
        book.commit("x");
        assert_eq!(book.count(&f), 1);
        assert!(!book.has_reservations());
    }

    #[test]
    fn a_reserved_tag_that_is_also_confirmed_counts_once() {
        let f = TagFilter::default();
        let mut book = TagBook::new(tags(&["a"]));
        book.reserve(&tags(&["b"]));
        book.replace_confirmed(tags(&["a", "b"]));
        assert_eq!(book.count(&f), 2);
    }

    #[test]
    fn excluded_tags_do_not_count_and_the_memo_follows_changes() {
        let f = TagFilter::new(vec!["^sha256-".into()]).expect("valid");
        let mut book = TagBook::new(tags(&["a", "sha256-1"]));
        assert_eq!(book.count(&f), 1);
        book.confirm("sha256-2");
        book.confirm("b");
        assert_eq!(book.count(&f), 2);
        book.remove("a");
        book.remove("sha256-1");
        assert_eq!(book.count(&f), 1);
        book.remove("missing");
        assert_eq!(book.count(&f), 1);
        // A different filter object is recounted, not taken from the memo.
        let other = TagFilter::default();
        assert_eq!(book.count(&other), 2);
    }

    #[test]
    fn releasing_an_unknown_reservation_is_harmless() {
        let mut book = TagBook::default();
        book.release("nope");
        book.commit("new");
        assert_eq!(book.count(&TagFilter::default()), 1);
    }
}
