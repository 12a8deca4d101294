//! One re-read: the configuration as of one consistent moment (a symlink swap during the read
//! means reading again), fingerprinted, and compiled only when it changed. Blocking file I/O.

use std::path::{Path, PathBuf};

use crate::config;
use crate::policy::{ConfigSource, LoadError, Policy};

/// Reads retried when the symlink chain moved during a read (a torn read across a swap).
const TORN_READ_RETRIES: usize = 5;

/// What one re-read found.
pub(super) enum Outcome {
    /// The same texts as the version in force.
    Unchanged,
    /// New texts that compile: the policy and their fingerprint.
    Changed(Policy, String),
    /// Unreadable, or invalid; the version in force stays.
    Invalid(LoadError),
}

/// Reads through the path, compares the fingerprint with `current`, and compiles if it differs.
pub(super) fn reread(path: &Path, current: &str) -> Outcome {
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
pub(super) fn chain_marker(path: &Path) -> Option<PathBuf> {
    if path.is_dir() {
        std::fs::read_link(path.join("..data")).ok()
    } else {
        std::fs::canonicalize(path).ok()
    }
}
