//! Credentials as the client presents them: fixed, or read from a mounted Secret directory and
//! re-read when its files change. The file contents never reach a log or an error.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Credentials, Error};

const CREDENTIAL_RECHECK: Duration = Duration::from_secs(1);

#[derive(Clone, PartialEq, Eq)]
pub(super) struct Basic {
    pub(super) username: String,
    pub(super) password: String,
}

/// Credentials as of one read.
pub(super) struct Snapshot {
    pub(super) basic: Option<Basic>,
    pub(super) insecure: bool,
    /// Changes whenever `basic` or `insecure` does, so a caller can tell rotation happened.
    pub(super) generation: u64,
}

pub(super) enum CredentialStore {
    Fixed(Arc<Snapshot>),
    Directory {
        path: PathBuf,
        state: tokio::sync::Mutex<DirectoryState>,
    },
}

pub(super) struct DirectoryState {
    current: Arc<Snapshot>,
    stamp: Stamp,
    checked_at: Instant,
}

impl CredentialStore {
    pub(super) fn new(credentials: Credentials) -> Result<Self, Error> {
        let fixed = |basic| {
            Self::Fixed(Arc::new(Snapshot {
                basic,
                insecure: false,
                generation: 0,
            }))
        };
        match credentials {
            Credentials::None => Ok(fixed(None)),
            Credentials::Static { username, password } => {
                Ok(fixed(Some(Basic { username, password })))
            }
            Credentials::Directory(path) => {
                let read = read_directory(&path).map_err(|problem| match problem {
                    DirectoryProblem::Io(source) => Error::ReadCredentials {
                        path: path.clone(),
                        source,
                    },
                    DirectoryProblem::Invalid(problem) => Error::InvalidCredentials {
                        path: path.clone(),
                        problem,
                    },
                })?;
                let current = Arc::new(Snapshot {
                    basic: read.basic,
                    insecure: read.insecure,
                    generation: 0,
                });
                let state = DirectoryState {
                    current,
                    stamp: read.stamp,
                    checked_at: Instant::now(),
                };
                Ok(Self::Directory {
                    path,
                    state: tokio::sync::Mutex::new(state),
                })
            }
        }
    }

    /// Whether the gateway starts with a user name and password to send.
    pub(super) fn initial_has_basic(&self) -> bool {
        match self {
            Self::Fixed(snapshot) => snapshot.basic.is_some(),
            Self::Directory { state, .. } => state
                .try_lock()
                .is_ok_and(|state| state.current.basic.is_some()),
        }
    }

    /// The credentials to use now. `force` (after a 401) re-reads the files whatever their
    /// stamps say: a rewrite within the file system's timestamp granularity looks unchanged.
    pub(super) async fn current(&self, force: bool) -> Arc<Snapshot> {
        let (path, state) = match self {
            Self::Fixed(snapshot) => return snapshot.clone(),
            Self::Directory { path, state } => (path, state),
        };
        let mut state = state.lock().await;
        if !force && state.checked_at.elapsed() < CREDENTIAL_RECHECK {
            return state.current.clone();
        }
        state.checked_at = Instant::now();
        let known = state.stamp.clone();
        let dir = path.clone();
        // Secrets are on tmpfs, but a stat must not stall a runtime worker if they are not.
        let read = tokio::task::spawn_blocking(move || {
            if !force && stamp(&dir) == known {
                return Ok(None);
            }
            read_directory(&dir).map(Some)
        })
        .await;
        match read {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(read))) => {
                state.stamp = read.stamp;
                if read.basic != state.current.basic || read.insecure != state.current.insecure {
                    let generation = state.current.generation + 1;
                    state.current = Arc::new(Snapshot {
                        basic: read.basic,
                        insecure: read.insecure,
                        generation,
                    });
                    debug!(path = %path.display(), generation, "registry credentials reloaded");
                }
            }
            // A Secret update swaps a symlink; a read between unlink and link finds nothing.
            // The previous credentials are the best guess, and the next check tries again.
            Ok(Err(problem)) => {
                warn!(path = %path.display(), %problem, "cannot re-read registry credentials; keeping the previous ones");
            }
            Err(join) => {
                warn!(path = %path.display(), error = %join, "cannot re-read registry credentials; keeping the previous ones");
            }
        }
        state.current.clone()
    }
}

pub(super) struct DirectoryRead {
    pub(super) basic: Option<Basic>,
    pub(super) insecure: bool,
    stamp: Stamp,
}

#[derive(Debug)]
pub(super) enum DirectoryProblem {
    Io(std::io::Error),
    Invalid(&'static str),
}

impl fmt::Display for DirectoryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the file contents: they are the secret.
        match self {
            Self::Io(e) => e.fmt(f),
            Self::Invalid(problem) => f.write_str(problem),
        }
    }
}

const CREDENTIAL_FILES: [&str; 3] = ["username", "password", "insecure"];

pub(super) fn read_directory(dir: &Path) -> Result<DirectoryRead, DirectoryProblem> {
    // The stamp is taken first: a change during the read shows up at the next check.
    let stamp = stamp(dir);
    let username = read_optional(&dir.join("username"))?;
    let password = read_optional(&dir.join("password"))?;
    let insecure = read_optional(&dir.join("insecure"))?;
    let basic = match (username, password) {
        (None, None) => {
            return Err(DirectoryProblem::Invalid(
                "neither `username` nor `password` exists",
            ));
        }
        (None, Some(_)) => {
            return Err(DirectoryProblem::Invalid(
                "`password` exists without `username`",
            ));
        }
        (Some(_), None) => {
            return Err(DirectoryProblem::Invalid(
                "`username` exists without `password`",
            ));
        }
        (Some(username), Some(password)) => {
            let username = username.trim();
            // `kubectl create secret --from-file` keeps the file's final newline.
            let password = password.trim_end_matches(['\r', '\n']);
            (!username.is_empty()).then(|| Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            })
        }
    };
    let insecure = match insecure.as_deref().map(str::trim) {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") || v.is_empty() => false,
        Some(_) => {
            return Err(DirectoryProblem::Invalid(
                "`insecure` must be `true` or `false`",
            ));
        }
    };
    Ok(DirectoryRead {
        basic,
        insecure,
        stamp,
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, DirectoryProblem> {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| DirectoryProblem::Invalid("a credentials file is not UTF-8 text")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DirectoryProblem::Io(e)),
    }
}

/// Modification stamp of the credential files, through the `..data` symlink a Secret mount uses:
/// an update creates new files, so the target's stamp changes.
type Stamp = Vec<Option<FileStamp>>;

#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

fn stamp(dir: &Path) -> Stamp {
    CREDENTIAL_FILES
        .iter()
        .map(|name| {
            let meta = std::fs::metadata(dir.join(name)).ok()?;
            Some(FileStamp {
                modified: meta.modified().ok(),
                len: meta.len(),
                #[cfg(unix)]
                inode: std::os::unix::fs::MetadataExt::ino(&meta),
            })
        })
        .collect()
}
