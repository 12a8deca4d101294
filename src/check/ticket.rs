//! The reservation ticket of one admitted push, settled by the registry's answer.

use std::sync::Arc;
use std::time::Duration;

use super::books::{Change, Repo};
use crate::metrics::Metrics;
use crate::shared::{RepoKeys, Settle, SharedBooks};

/// Where an admitted push's slots are held.
#[derive(Debug)]
pub(super) enum Backing {
    Memory(Arc<Repo>),
    Shared(Box<SharedLease>),
}

/// A lease in the shared store: its keys, its id, and the exclusion list it was decided under.
#[derive(Debug)]
pub(super) struct SharedLease {
    pub(super) books: Arc<SharedBooks>,
    pub(super) keys: RepoKeys,
    pub(super) id: String,
    pub(super) filter: crate::policy::TagFilter,
    /// The counted tags the push names. With no slot reserved the store held them all when the
    /// push was decided, and guards their rewrite until the lease would run out (`decide.lua`):
    /// committing them again changes nothing.
    pub(super) named: Vec<String>,
}

impl SharedLease {
    pub(super) fn settle(&self, op: Settle, reserved: Vec<String>, tags: Vec<String>) {
        let tags: Vec<String> = tags.into_iter().filter(|t| self.filter.counts(t)).collect();
        let changes_nothing = reserved.is_empty()
            && match op {
                Settle::Commit => tags.iter().all(|t| self.named.contains(t)),
                Settle::Release => true,
                _ => false,
            };
        if changes_nothing {
            return;
        }
        self.books
            .settle_later(self.keys.clone(), op, self.id.clone(), reserved, tags);
    }
}

/// The bookkeeping of one admitted push, settled by the registry's answer.
///
/// Dropping an unsettled ticket holds its slots in doubt until a tag-list read shows whether the
/// push landed: a stream that ends without the registry's answer may still have stored it.
#[derive(Debug)]
pub struct Ticket {
    pub(super) backing: Backing,
    pub(super) reference_tag: Option<String>,
    pub(super) reserved: Vec<String>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) settled: bool,
}

impl Ticket {
    /// Tags whose slots this push holds.
    pub fn reserved(&self) -> &[String] {
        &self.reserved
    }

    /// The registry answered the `PUT` with `status`; `oci_tags` are the values of its
    /// `OCI-Tag` headers (comma lists allowed), empty when absent.
    ///
    /// A 4xx is the registry's refusal (or Envoy's, before the registry saw the body): the slots
    /// are free. A 5xx may be Envoy's own answer (a route timeout, an upstream reset) after the
    /// registry stored the manifest, so its slots stay held until the tag list shows the truth.
    pub fn settle(mut self, status: u16, oci_tags: &[String]) {
        self.settled = true;
        let reserved = std::mem::take(&mut self.reserved);
        let counted = |label| {
            if !reserved.is_empty() {
                Metrics::count(&self.metrics.reservations, label);
            }
        };
        if !(200..500).contains(&status) {
            counted("in_doubt");
            self.hold_in_doubt(reserved);
            return;
        }
        if !(200..300).contains(&status) {
            counted("released");
            match &self.backing {
                Backing::Memory(repo) => {
                    let mut state = repo.lock();
                    for tag in &reserved {
                        state.book.release(tag);
                    }
                }
                Backing::Shared(lease) => lease.settle(Settle::Release, reserved, Vec::new()),
            }
            return;
        }
        counted("committed");
        // A registry that implements `?tag=` echoes what it created, and every tag it says it
        // created counts, named in our request or not; one that does not creates only the
        // reference's tag.
        let created: Vec<String> = if oci_tags.is_empty() {
            self.reference_tag.iter().cloned().collect()
        } else {
            oci_tags
                .iter()
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        };
        match &self.backing {
            Backing::Memory(repo) => {
                let mut state = repo.lock();
                for tag in &reserved {
                    state.book.release(tag);
                }
                for tag in created {
                    state.apply(Change::Confirm(tag));
                }
            }
            Backing::Shared(lease) => lease.settle(Settle::Commit, reserved, created),
        }
    }

    pub(super) fn hold_in_doubt(&self, reserved: Vec<String>) {
        match &self.backing {
            Backing::Memory(repo) => repo.lock().doubt(&reserved),
            Backing::Shared(lease) if !reserved.is_empty() => {
                lease.settle(Settle::Doubt, reserved, Vec::new());
            }
            Backing::Shared(_) => {}
        }
    }

    /// ext_authz has no response phase: hold the slots for `ttl`, then release them and read
    /// the tag list again on the next decision, which then shows whether the push landed.
    ///
    /// A push that reserved nothing named only tags the book already counts: whether it landed
    /// changes no count, so it calls for no read. (A delete racing it marks the list for a read
    /// of its own, now and after `ttl`.)
    pub fn expire_after(mut self, ttl: Duration) {
        self.settled = true;
        if self.reserved.is_empty() {
            return;
        }
        let Backing::Memory(repo) = &self.backing else {
            // The lease was taken for `ttl`; its expiry calls for the read by itself.
            return;
        };
        let repo = repo.clone();
        let reserved = std::mem::take(&mut self.reserved);
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            let mut state = repo.lock();
            for tag in &reserved {
                state.book.release(tag);
            }
            state.apply(Change::Stale);
            Metrics::count(&metrics.reservations, "expired");
        });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // The request ended without the registry's answer (the client hung up, Envoy reset the
        // stream): the registry may still have stored the manifest. Freeing the slot now would let
        // a concurrent push overshoot, so it is held until a tag-list read shows the truth.
        let reserved = std::mem::take(&mut self.reserved);
        if !reserved.is_empty() {
            Metrics::count(&self.metrics.reservations, "in_doubt");
        }
        self.hold_in_doubt(reserved);
    }
}
