//! The configuration as operators write it, and its compilation into a [`Policy`].
//!
//! Three shapes carry the same keys (`max_image_size`, `tag_count_limit`, `rules`, and the optional
//! `exclude_tags`, `enforcement` and `warn_at`), and the shape is detected, never declared:
//! - a YAML file with those keys at the top;
//! - a whole `kind: ConfigMap` manifest, whose `data` holds them as strings;
//! - a directory as Kubernetes mounts a ConfigMap: one file per key.
//!
//! YAML is parsed with `serde-saphyr` (maintained, panic-free, with budgets against alias bombs and
//! line/column on every node) into a small spanned tree; all validation happens on that tree, so
//! every problem is collected with its file, line, column and field path. This module reads no
//! files: the caller hands it the texts.
//!
//! `yaml` is the spanned tree and where problems are recorded, `shape` detects the shape and
//! finds the keys, `values` reads each key's value; [`compile`] here ties them together.

mod shape;
mod values;
mod yaml;

use std::fmt;

use self::shape::{KeyValue, Keys, read_document, set_key, unknown_key_message, with_nested};
use self::values::{
    exclude_value, key_value, one_line, read_count, read_enforcement, read_share, read_size,
    rules_value,
};
use self::yaml::{NO_OFFSET, Node, Value, parse_yaml};
use super::size::ByteSize;
use super::{Limits, Policy};

/// Largest configuration text accepted; a ConfigMap holds at most 1 MiB.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Default `max_image_size` when the key is absent: 1GB.
pub const DEFAULT_MAX_IMAGE_SIZE: ByteSize = ByteSize::from_bytes(1024 * 1024 * 1024);
/// Default `tag_count_limit` when the key is absent.
pub const DEFAULT_TAG_COUNT_LIMIT: u64 = 1000;

const KEYS: [&str; 6] = [
    "max_image_size",
    "tag_count_limit",
    "rules",
    "exclude_tags",
    "enforcement",
    "warn_at",
];

/// The configuration texts, as read by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// One YAML document: the plain shape or a `kind: ConfigMap` manifest.
    File { name: String, text: String },
    /// A ConfigMap mounted as a directory: one entry per visible key file.
    Directory { name: String, keys: Vec<KeyFile> },
}

/// One key of a ConfigMap directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFile {
    pub key: String,
    /// The path shown in messages.
    pub name: String,
    pub text: String,
}

/// One thing wrong with a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: Option<u64>,
    pub column: Option<u64>,
    /// Field path such as `rules[1].limit.tag_count_limit`; empty for the document itself.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a configuration; never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(
            f,
            "invalid configuration ({count} problem{}):",
            if count == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// Parses and validates a configuration. `Ok` only when nothing at all is wrong.
pub fn compile(source: &ConfigSource) -> Result<Policy, LoadError> {
    let mut problems = Vec::new();
    let mut keys = Keys::default();
    match source {
        ConfigSource::File { name, text } => {
            if let Some(root) = parse_yaml(name, text, NO_OFFSET, &mut problems) {
                read_document(name, text, root, &mut keys, &mut problems);
            }
        }
        ConfigSource::Directory { keys: files, .. } => {
            for file in files {
                if !KEYS.contains(&file.key.as_str()) {
                    problems.push(Problem {
                        file: file.name.clone(),
                        line: None,
                        column: None,
                        field: file.key.clone(),
                        message: if file.key.ends_with(".yaml") || file.key.ends_with(".yml") {
                            format!(
                                "{}; a directory is read as a ConfigMap with one file per key. To use a whole YAML file, pass the file's path to --config (its directory is still watched)",
                                unknown_key_message(&file.key)
                            )
                        } else {
                            unknown_key_message(&file.key)
                        },
                    });
                    continue;
                }
                // Each key file holds the key's value as text; ConfigMap values are strings.
                let node = Node {
                    line: 1,
                    column: 1,
                    value: Value::Str(file.text.clone()),
                };
                let kv = KeyValue {
                    file: &file.name,
                    node,
                    offset: NO_OFFSET,
                    text: &file.text,
                };
                set_key(&mut keys, &file.key, kv);
            }
        }
    }
    let name = match source {
        ConfigSource::File { name, .. } | ConfigSource::Directory { name, .. } => name,
    };
    match build(name, keys, &mut problems) {
        Some(policy) if problems.is_empty() => Ok(policy),
        _ => Err(LoadError { problems }),
    }
}

fn build(file: &str, keys: Keys<'_>, problems: &mut Vec<Problem>) -> Option<Policy> {
    let max_image_size = keys
        .max_image_size
        .map(|kv| key_value(&kv, "max_image_size", problems, read_size))
        .unwrap_or(Some(DEFAULT_MAX_IMAGE_SIZE))
        .unwrap_or(DEFAULT_MAX_IMAGE_SIZE);
    let tag_count_limit = keys
        .tag_count_limit
        .map(|kv| key_value(&kv, "tag_count_limit", problems, read_count))
        .unwrap_or(Some(DEFAULT_TAG_COUNT_LIMIT))
        .unwrap_or(DEFAULT_TAG_COUNT_LIMIT);
    let exclude_tags = keys
        .exclude_tags
        .map(|kv| with_nested(&kv, "exclude_tags", problems, exclude_value))
        .unwrap_or_default();
    let enforcement = keys
        .enforcement
        .and_then(|kv| key_value(&kv, "enforcement", problems, read_enforcement))
        .unwrap_or_default();
    let warn_at = keys
        .warn_at
        .and_then(|kv| key_value(&kv, "warn_at", problems, read_share));
    let global = Limits {
        max_image_size,
        tag_count_limit,
        exclude_tags,
        enforcement,
        warn_at,
    };
    let rules = keys
        .rules
        .map(|kv| {
            with_nested(&kv, "rules", problems, |ctx, node| {
                rules_value(ctx, node, &global)
            })
        })
        .unwrap_or_default();
    match Policy::new(global, rules) {
        Ok(policy) => Some(policy),
        Err(e) => {
            problems.push(Problem {
                file: file.to_owned(),
                line: None,
                column: None,
                field: "rules".to_owned(),
                message: format!(
                    "the rules together are too large to compile: {}",
                    one_line(&e.to_string())
                ),
            });
            None
        }
    }
}

#[cfg(test)]
mod tests;
