//! The configuration as operators write it, and its compilation into a [`Policy`].
//!
//! Three shapes carry the same keys (`max_image_size`, `tag_count_limit`, `rules`, and the optional
//! `exclude_tags`), and the shape is detected, never declared:
//! - a YAML file with those keys at the top;
//! - a whole `kind: ConfigMap` manifest, whose `data` holds them as strings;
//! - a directory as Kubernetes mounts a ConfigMap: one file per key.
//!
//! YAML is parsed with `serde-saphyr` (maintained, panic-free, with budgets against alias bombs and
//! line/column on every node) into a small spanned tree; all validation happens on that tree, so
//! every problem is collected with its file, line, column and field path. This module reads no
//! files: the caller hands it the texts.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::rule::{Rule, TagFilter};
use super::size::ByteSize;
use super::{Limits, Policy};

/// Largest configuration text accepted; a ConfigMap holds at most 1 MiB.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Default `max_image_size` when the key is absent: 1GB.
pub const DEFAULT_MAX_IMAGE_SIZE: ByteSize = ByteSize::from_bytes(1024 * 1024 * 1024);
/// Default `tag_count_limit` when the key is absent.
pub const DEFAULT_TAG_COUNT_LIMIT: u64 = 1000;

const KEYS: [&str; 4] = ["max_image_size", "tag_count_limit", "rules", "exclude_tags"];

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

// ---------------------------------------------------------------------------------------------
// A spanned YAML tree.

#[derive(Clone, Debug)]
struct Node {
    line: u64,
    column: u64,
    value: Value,
}

#[derive(Clone, Debug)]
enum Value {
    Null,
    Bool,
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Self::Null => "nothing",
            Self::Bool => "a boolean",
            Self::Int(_) => "an integer",
            Self::Float(_) => "a decimal number",
            Self::Str(_) => "a string",
            Self::Seq(_) => "a list",
            Self::Map(_) => "a mapping",
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                {
                    let _ = v;
                    Ok(Value::Bool)
                }
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
                Ok(Value::Int(v.into()))
            }
            fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
                Ok(Value::Int(v))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
                i128::try_from(v)
                    .map(Value::Int)
                    .map_err(|_| E::custom("integer too large"))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Value, E> {
                Ok(Value::Str(v))
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
                Value::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Value>>()? {
                    items.push(Node::from(item));
                }
                Ok(Value::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<Value>>()? {
                    let value = map.next_value::<Spanned<Value>>()?;
                    entries.push((Node::from(key), Node::from(value)));
                }
                Ok(Value::Map(entries))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl From<Spanned<Value>> for Node {
    fn from(s: Spanned<Value>) -> Self {
        Self {
            line: s.referenced.line(),
            column: s.referenced.column(),
            value: s.value,
        }
    }
}

/// Where a parsed text sits in the file that holds it, for texts nested in a string (`rules: |`).
#[derive(Clone, Copy)]
struct Offset {
    lines: u64,
    columns: u64,
    /// Block scalars indent every line; a quoted string only shifts its first line.
    every_line: bool,
}

const NO_OFFSET: Offset = Offset {
    lines: 0,
    columns: 0,
    every_line: false,
};

struct Ctx<'a> {
    file: &'a str,
    offset: Offset,
    problems: &'a mut Vec<Problem>,
}

impl Ctx<'_> {
    fn at(&mut self, node: Option<&Node>, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_owned(),
            line: node.map(|n| n.line + self.offset.lines),
            column: node.map(|n| {
                if n.line == 1 || self.offset.every_line {
                    n.column + self.offset.columns
                } else {
                    n.column
                }
            }),
            field: field.to_owned(),
            message: message.into(),
        });
    }
}

fn parse_yaml(file: &str, text: &str, offset: Offset, problems: &mut Vec<Problem>) -> Option<Node> {
    if text.len() > MAX_CONFIG_BYTES {
        problems.push(Problem {
            file: file.to_owned(),
            line: None,
            column: None,
            field: String::new(),
            message: format!(
                "the configuration is {} bytes; at most {MAX_CONFIG_BYTES} bytes (1 MiB, the ConfigMap limit) are read",
                text.len()
            ),
        });
        return None;
    }
    // Budgets keep a hostile or broken file (alias bombs, deep nesting) from costing more than a
    // moment; a real policy is a few hundred events.
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = 20_000;
    alias_limits.max_replay_stack_depth = 16;
    alias_limits.max_alias_expansions_per_anchor = 100;
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: 200_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_depth: 64,
            max_documents: 1,
        },
        alias_limits: alias_limits,
    };
    match serde_saphyr::from_str_with_options::<Option<Spanned<Value>>>(text, options) {
        Ok(Some(node)) => Some(Node::from(node)),
        Ok(None) => Some(Node {
            line: 1,
            column: 1,
            value: Value::Null,
        }),
        Err(e) => {
            let location = e.location();
            let message = e.to_string();
            // The rendered error may quote a snippet; the first line is the sentence.
            let message = message.lines().next().unwrap_or_default().trim().to_owned();
            let mut ctx = Ctx {
                file,
                offset,
                problems,
            };
            let at = location.map(|l| Node {
                line: l.line().max(1),
                column: l.column().max(1),
                value: Value::Null,
            });
            ctx.at(at.as_ref(), "", format!("YAML error: {message}"));
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shapes.

/// The four keys, wherever they came from.
#[derive(Default)]
struct Keys<'a> {
    max_image_size: Option<KeyValue<'a>>,
    tag_count_limit: Option<KeyValue<'a>>,
    rules: Option<KeyValue<'a>>,
    exclude_tags: Option<KeyValue<'a>>,
}

/// A key's value, with the file it sits in.
struct KeyValue<'a> {
    file: &'a str,
    node: Node,
    offset: Offset,
    /// The text of the file the node came from, to work out block-scalar indentation.
    text: &'a str,
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

fn unknown_key_message(key: &str) -> String {
    format!(
        "unknown key `{key}`; expected one of max_image_size, tag_count_limit, rules, exclude_tags"
    )
}

fn set_key<'a>(keys: &mut Keys<'a>, key: &str, value: KeyValue<'a>) {
    match key {
        "max_image_size" => keys.max_image_size = Some(value),
        "tag_count_limit" => keys.tag_count_limit = Some(value),
        "rules" => keys.rules = Some(value),
        _ => keys.exclude_tags = Some(value),
    }
}

fn read_document<'a>(
    file: &'a str,
    text: &'a str,
    root: Node,
    keys: &mut Keys<'a>,
    problems: &mut Vec<Problem>,
) {
    let mut ctx = Ctx {
        file,
        offset: NO_OFFSET,
        problems,
    };
    let entries = match root.value {
        // An empty file is a configuration with every default.
        Value::Null => return,
        Value::Map(entries) => entries,
        other => {
            let root = Node {
                value: Value::Null,
                ..root
            };
            ctx.at(
                Some(&root),
                "",
                format!(
                    "expected a mapping of configuration keys, found {}",
                    other.kind()
                ),
            );
            return;
        }
    };
    let is_configmap = entries.iter().any(|(k, _)| {
        matches!(&k.value, Value::Str(s) if s == "kind" || s == "apiVersion" || s == "data")
    });
    if !is_configmap {
        read_keys(&mut ctx, file, text, entries, "", keys, false);
        return;
    }
    let mut data = None;
    for (key, value) in entries {
        let Value::Str(name) = &key.value else {
            ctx.at(Some(&key), "", "keys must be strings");
            continue;
        };
        match name.as_str() {
            "kind" => {
                if !matches!(&value.value, Value::Str(k) if k == "ConfigMap") {
                    ctx.at(Some(&value), "kind", "expected `ConfigMap`: only a ConfigMap manifest, a plain configuration file or a ConfigMap directory is read");
                }
            }
            "apiVersion" | "metadata" | "immutable" => {}
            "binaryData" => ctx.at(
                Some(&key),
                "binaryData",
                "the limits must be in `data` as text, not in `binaryData`",
            ),
            "data" => data = Some(value),
            _ if KEYS.contains(&name.as_str()) => ctx.at(
                Some(&key),
                name,
                format!("in a ConfigMap manifest, `{name}` belongs under `data`"),
            ),
            _ => ctx.at(
                Some(&key),
                name,
                format!(
                    "unknown ConfigMap field `{name}`; expected apiVersion, kind, metadata, data"
                ),
            ),
        }
    }
    match data {
        None => {}
        Some(Node {
            value: Value::Null, ..
        }) => {}
        Some(Node {
            value: Value::Map(entries),
            ..
        }) => read_keys(&mut ctx, file, text, entries, "data.", keys, true),
        Some(other) => {
            let kind = other.value.kind();
            ctx.at(
                Some(&other),
                "data",
                format!("expected a mapping of keys to strings, found {kind}"),
            )
        }
    }
}

fn read_keys<'a>(
    ctx: &mut Ctx<'_>,
    file: &'a str,
    text: &'a str,
    entries: Vec<(Node, Node)>,
    prefix: &str,
    keys: &mut Keys<'a>,
    strings_only: bool,
) {
    for (key, value) in entries {
        let Value::Str(name) = &key.value else {
            ctx.at(
                Some(&key),
                prefix.trim_end_matches('.'),
                "keys must be strings",
            );
            continue;
        };
        if !KEYS.contains(&name.as_str()) {
            ctx.at(
                Some(&key),
                &format!("{prefix}{name}"),
                unknown_key_message(name),
            );
            continue;
        }
        if strings_only && !matches!(value.value, Value::Str(_)) {
            let kind = value.value.kind();
            ctx.at(
                Some(&value),
                &format!("{prefix}{name}"),
                format!("ConfigMap data values must be strings, found {kind}; quote the value"),
            );
            continue;
        }
        let kv = KeyValue {
            file,
            node: value,
            offset: NO_OFFSET,
            text,
        };
        set_key(keys, name, kv);
    }
}

// ---------------------------------------------------------------------------------------------
// Values.

fn build(file: &str, keys: Keys<'_>, problems: &mut Vec<Problem>) -> Option<Policy> {
    let max_image_size = keys
        .max_image_size
        .map(|kv| size_value(&kv, "max_image_size", problems))
        .unwrap_or(Some(DEFAULT_MAX_IMAGE_SIZE))
        .unwrap_or(DEFAULT_MAX_IMAGE_SIZE);
    let tag_count_limit = keys
        .tag_count_limit
        .map(|kv| count_value(&kv, "tag_count_limit", problems))
        .unwrap_or(Some(DEFAULT_TAG_COUNT_LIMIT))
        .unwrap_or(DEFAULT_TAG_COUNT_LIMIT);
    let exclude_tags = keys
        .exclude_tags
        .map(|kv| with_nested(&kv, "exclude_tags", problems, exclude_value))
        .unwrap_or_default();
    let global = Limits {
        max_image_size,
        tag_count_limit,
        exclude_tags: exclude_tags.clone(),
    };
    let rules = keys
        .rules
        .map(|kv| {
            with_nested(&kv, "rules", problems, |ctx, node| {
                rules_value(ctx, node, &exclude_tags)
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

/// Runs `read` on a key's value; a string value (as in a ConfigMap) is parsed as YAML first, with
/// its lines mapped back to the file that holds it.
fn with_nested<T: Default>(
    kv: &KeyValue<'_>,
    field: &str,
    problems: &mut Vec<Problem>,
    read: impl FnOnce(&mut Ctx<'_>, &Node) -> T,
) -> T {
    match &kv.node.value {
        Value::Str(inner) => {
            let offset = nested_offset(kv);
            match parse_yaml(kv.file, inner, offset, problems) {
                Some(node) => {
                    let mut ctx = Ctx {
                        file: kv.file,
                        offset,
                        problems,
                    };
                    read(&mut ctx, &node)
                }
                None => T::default(),
            }
        }
        _ => {
            let mut ctx = Ctx {
                file: kv.file,
                offset: kv.offset,
                problems,
            };
            let _ = field;
            read(&mut ctx, &kv.node)
        }
    }
}

/// Where a string's own text starts in its file. The node's location is where the content
/// starts: for a block scalar (`rules: |`) that is the first content line, and every line shares
/// its indentation; for a quoted or plain string only the first line is shifted.
fn nested_offset(kv: &KeyValue<'_>) -> Offset {
    if kv.node.line == 1 && kv.node.column == 1 {
        // A whole key file (ConfigMap directory): its lines are the file's lines.
        return NO_OFFSET;
    }
    let previous = kv
        .text
        .lines()
        .nth(kv.node.line.saturating_sub(2) as usize)
        .unwrap_or_default();
    let indicator = previous
        .trim_end()
        .trim_end_matches(|c: char| c == '-' || c == '+' || c.is_ascii_digit());
    let block = kv.node.line > 1 && (indicator.ends_with('|') || indicator.ends_with('>'));
    Offset {
        lines: kv.node.line - 1,
        columns: kv.node.column - 1,
        every_line: block,
    }
}

fn size_value(kv: &KeyValue<'_>, field: &str, problems: &mut Vec<Problem>) -> Option<ByteSize> {
    let mut ctx = Ctx {
        file: kv.file,
        offset: kv.offset,
        problems,
    };
    read_size(&mut ctx, &kv.node, field)
}

fn count_value(kv: &KeyValue<'_>, field: &str, problems: &mut Vec<Problem>) -> Option<u64> {
    let mut ctx = Ctx {
        file: kv.file,
        offset: kv.offset,
        problems,
    };
    read_count(&mut ctx, &kv.node, field)
}

fn read_size(ctx: &mut Ctx<'_>, node: &Node, field: &str) -> Option<ByteSize> {
    let text = match &node.value {
        Value::Str(s) => s.trim().to_owned(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        other => {
            let kind = other.kind();
            ctx.at(
                Some(node),
                field,
                format!("expected a size such as 100MB or 1.5GB, found {kind}"),
            );
            return None;
        }
    };
    match text.parse::<ByteSize>() {
        Ok(size) => Some(size),
        Err(e) => {
            ctx.at(Some(node), field, e.to_string());
            None
        }
    }
}

fn read_count(ctx: &mut Ctx<'_>, node: &Node, field: &str) -> Option<u64> {
    let expected = "expected a whole number of tags, zero or more";
    let parsed = match &node.value {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::Str(s) => {
            let s = s.trim();
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                s.parse::<u64>().ok()
            } else {
                None
            }
        }
        Value::Float(f) if f.fract() == 0.0 && *f >= 0.0 && *f < 1e15 => Some(*f as u64),
        _ => None,
    };
    if parsed.is_none() {
        let found = match &node.value {
            Value::Str(s) => format!("`{}`", s.trim()),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            other => other.kind().to_owned(),
        };
        ctx.at(Some(node), field, format!("{expected}, found {found}"));
    }
    parsed
}

fn exclude_value(ctx: &mut Ctx<'_>, node: &Node) -> TagFilter {
    read_exclude(ctx, node, "exclude_tags").unwrap_or_default()
}

fn read_exclude(ctx: &mut Ctx<'_>, node: &Node, field: &str) -> Option<TagFilter> {
    let Value::Seq(items) = &node.value else {
        let kind = node.value.kind();
        ctx.at(
            Some(node),
            field,
            format!("expected a list of tag regexes, found {kind}"),
        );
        return None;
    };
    let mut patterns = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let here = format!("{field}[{i}]");
        match &item.value {
            Value::Str(p) => match regex::Regex::new(p) {
                Ok(_) => patterns.push(p.clone()),
                Err(e) => ctx.at(
                    Some(item),
                    &here,
                    format!("invalid regex: {}", one_line(&e.to_string())),
                ),
            },
            other => {
                let kind = other.kind();
                ctx.at(
                    Some(item),
                    &here,
                    format!("expected a regex string, found {kind}"),
                );
            }
        }
    }
    TagFilter::new(patterns).ok()
}

fn rules_value(ctx: &mut Ctx<'_>, node: &Node, global_exclude: &TagFilter) -> Vec<Rule> {
    let items = match &node.value {
        Value::Null => return Vec::new(),
        Value::Seq(items) => items,
        other => {
            let kind = other.kind();
            ctx.at(
                Some(node),
                "rules",
                format!("expected a list of rules (`- path: <regex>` with `limit:`), found {kind}"),
            );
            return Vec::new();
        }
    };
    let mut rules = Vec::new();
    for (index, item) in items.iter().enumerate() {
        if let Some(rule) = read_rule(ctx, index, item, global_exclude) {
            rules.push(rule);
        }
    }
    rules
}

fn read_rule(
    ctx: &mut Ctx<'_>,
    index: usize,
    node: &Node,
    global_exclude: &TagFilter,
) -> Option<Rule> {
    let here = format!("rules[{index}]");
    let Value::Map(entries) = &node.value else {
        let kind = node.value.kind();
        ctx.at(
            Some(node),
            &here,
            format!("expected a rule with `path` and `limit`, found {kind}"),
        );
        return None;
    };
    let mut path = None;
    let mut limit = None;
    let mut limit_key = None;
    for (key, value) in entries {
        match &key.value {
            Value::Str(k) if k == "path" => path = Some(value),
            Value::Str(k) if k == "limit" => {
                limit = Some(value);
                limit_key = Some(key);
            }
            Value::Str(k) => ctx.at(
                Some(key),
                &format!("{here}.{k}"),
                format!("unknown rule key `{k}`; expected path and limit"),
            ),
            _ => ctx.at(Some(key), &here, "keys must be strings"),
        }
    }
    let mut ok = true;
    let regex = match path {
        None => {
            ctx.at(
                Some(node),
                &format!("{here}.path"),
                "missing; every rule needs a `path` regex",
            );
            ok = false;
            None
        }
        Some(p) => match &p.value {
            Value::Str(text) => match regex::Regex::new(text) {
                Ok(_) => Some(text.clone()),
                Err(e) => {
                    ctx.at(
                        Some(p),
                        &format!("{here}.path"),
                        format!("invalid regex: {}", one_line(&e.to_string())),
                    );
                    ok = false;
                    None
                }
            },
            other => {
                let kind = other.kind();
                ctx.at(
                    Some(p),
                    &format!("{here}.path"),
                    format!("expected a regex string, found {kind}"),
                );
                ok = false;
                None
            }
        },
    };
    let mut max_image_size = None;
    let mut tag_count_limit = None;
    let mut exclude = None;
    match limit {
        None => {
            ctx.at(
                Some(node),
                &format!("{here}.limit"),
                "missing; every rule needs `limit` with both max_image_size and tag_count_limit",
            );
            ok = false;
        }
        Some(l) => {
            let Value::Map(entries) = &l.value else {
                let kind = l.value.kind();
                ctx.at(
                    Some(l),
                    &format!("{here}.limit"),
                    format!(
                        "expected a mapping with max_image_size and tag_count_limit, found {kind}"
                    ),
                );
                return None;
            };
            for (key, value) in entries {
                let field = match &key.value {
                    Value::Str(k) => format!("{here}.limit.{k}"),
                    _ => format!("{here}.limit"),
                };
                match &key.value {
                    Value::Str(k) if k == "max_image_size" => {
                        max_image_size = read_size(ctx, value, &field);
                        ok &= max_image_size.is_some();
                    }
                    Value::Str(k) if k == "tag_count_limit" => {
                        tag_count_limit = read_count(ctx, value, &field);
                        ok &= tag_count_limit.is_some();
                    }
                    Value::Str(k) if k == "exclude_tags" => {
                        exclude = read_exclude(ctx, value, &field);
                        ok &= exclude.is_some();
                    }
                    Value::Str(k) => {
                        ctx.at(
                            Some(key),
                            &field,
                            format!("unknown limit key `{k}`; expected max_image_size, tag_count_limit, exclude_tags"),
                        );
                        ok = false;
                    }
                    _ => {
                        ctx.at(Some(key), &field, "keys must be strings");
                        ok = false;
                    }
                }
            }
            for (name, present) in [
                (
                    "max_image_size",
                    entries
                        .iter()
                        .any(|(k, _)| matches!(&k.value, Value::Str(s) if s == "max_image_size")),
                ),
                (
                    "tag_count_limit",
                    entries
                        .iter()
                        .any(|(k, _)| matches!(&k.value, Value::Str(s) if s == "tag_count_limit")),
                ),
            ] {
                if !present {
                    ctx.at(
                        limit_key.or(Some(l)),
                        &format!("{here}.limit.{name}"),
                        format!("missing; every rule needs both max_image_size and tag_count_limit (rule {index})"),
                    );
                    ok = false;
                }
            }
        }
    }
    if !ok {
        return None;
    }
    Some(Rule {
        index,
        path: regex?,
        line: node.line + ctx.offset.lines,
        limits: Limits {
            max_image_size: max_image_size?,
            tag_count_limit: tag_count_limit?,
            exclude_tags: exclude.unwrap_or_else(|| global_exclude.clone()),
        },
    })
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests;
