//! The registry's answers about clients' credentials, so the gateway acts for no one the
//! registry refuses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// The registry's answers about clients' credentials, keyed by repository and a hash of the
/// credentials (never the credentials themselves). Concurrent decisions for one client share one
/// question, as they share one tag-list read.
#[derive(Debug, Default)]
pub(super) struct Standings {
    pub(super) known: Mutex<HashMap<[u8; 32], Standing>>,
}

#[derive(Debug, Clone)]
pub(super) struct Standing {
    /// Filled once by the first asker; an error leaves it empty for the next one to retry.
    pub(super) answer: Arc<tokio::sync::OnceCell<bool>>,
    pub(super) asked_at: Instant,
}

/// Entries kept at most; a flood of distinct credentials cannot grow memory past it.
pub(super) const MAX_STANDINGS: usize = 10_000;

impl Standings {
    pub(super) fn key(repository: &str, authorization: Option<&str>) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(repository.as_bytes());
        hash.update([0]);
        if let Some(a) = authorization {
            hash.update([1]);
            hash.update(a.as_bytes());
        }
        hash.finalize().into()
    }

    /// The cell holding (or about to hold) the answer for `key`, fresh within `ttl`.
    pub(super) fn cell(&self, key: [u8; 32], ttl: Duration) -> Arc<tokio::sync::OnceCell<bool>> {
        let now = Instant::now();
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(standing) = known.get(&key)
            && now.duration_since(standing.asked_at) < ttl
        {
            return standing.answer.clone();
        }
        if known.len() >= MAX_STANDINGS {
            known.retain(|_, s| now.duration_since(s.asked_at) < ttl);
            if known.len() >= MAX_STANDINGS {
                known.clear();
            }
        }
        let standing = Standing {
            answer: Arc::default(),
            asked_at: now,
        };
        known.insert(key, standing.clone());
        standing.answer
    }
}
