//! Reads a configuration path into the texts the policy core compiles.
//!
//! A path is a YAML file (plain or a `kind: ConfigMap` manifest) or a directory as Kubernetes
//! mounts a ConfigMap: visible files are keys, reached through the `..data` symlink, and the
//! hidden `..data`/`..<timestamp>` entries are the atomic writer's machinery, not keys.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::policy::{ConfigSource, KeyFile, LoadError, Policy, Problem};

/// Reads `path` into a [`ConfigSource`], following symlinks.
pub fn read(path: &Path) -> Result<ConfigSource, LoadError> {
    let name = path.display().to_string();
    let fail = |message: String| LoadError {
        problems: vec![Problem {
            file: name.clone(),
            line: None,
            column: None,
            field: String::new(),
            message,
        }],
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    if meta.is_dir() {
        let mut keys = Vec::new();
        let entries = std::fs::read_dir(path).map_err(|e| fail(format!("cannot list: {e}")))?;
        let mut paths: Vec<(String, PathBuf)> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| fail(format!("cannot list: {e}")))?;
            let key = entry.file_name().to_string_lossy().into_owned();
            if key.starts_with('.') {
                continue;
            }
            paths.push((key, entry.path()));
        }
        paths.sort();
        for (key, file) in paths {
            // A key that vanished between listing and reading belongs to a swap in progress;
            // the next event re-reads the whole directory.
            let Ok(meta) = std::fs::metadata(&file) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let text = read_text(&file).map_err(|e| fail(format!("cannot read {key}: {e}")))?;
            keys.push(KeyFile {
                key,
                name: file.display().to_string(),
                text,
            });
        }
        Ok(ConfigSource::Directory { name, keys })
    } else {
        let text = read_text(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        Ok(ConfigSource::File { name, text })
    }
}

fn read_text(path: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    String::from_utf8(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is not UTF-8 text",
        )
    })
}

/// A stable hash of the configuration texts, to tell whether anything changed.
pub fn fingerprint(source: &ConfigSource) -> String {
    let mut hasher = Sha256::new();
    match source {
        ConfigSource::File { text, .. } => {
            hasher.update(b"file\0");
            hasher.update(text.as_bytes());
        }
        ConfigSource::Directory { keys, .. } => {
            hasher.update(b"dir\0");
            for key in keys {
                hasher.update(key.key.as_bytes());
                hasher.update(b"\0");
                hasher.update(key.text.as_bytes());
                hasher.update(b"\0");
            }
        }
    }
    let digest = hasher.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads and compiles `path`.
pub fn load(path: &Path) -> Result<(Policy, String), LoadError> {
    let source = read(path)?;
    let hash = fingerprint(&source);
    crate::policy::compile(&source).map(|policy| (policy, hash))
}
