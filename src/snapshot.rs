//! The configuration in force, as the request path sees it: reload produces snapshots, the
//! request path reads them, and neither depends on the other.

use std::time::SystemTime;

use crate::policy::Policy;

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
