//! Shape detection: a plain file, a `kind: ConfigMap` manifest or a ConfigMap directory, each
//! reduced to the same keys, every value kept with the file and position it came from.

use super::yaml::{Ctx, NO_OFFSET, Node, Offset, Value, parse_yaml};
use super::{KEYS, Problem};

/// The keys, wherever they came from.
#[derive(Default)]
pub(super) struct Keys<'a> {
    pub(super) max_image_size: Option<KeyValue<'a>>,
    pub(super) tag_count_limit: Option<KeyValue<'a>>,
    pub(super) rules: Option<KeyValue<'a>>,
    pub(super) exclude_tags: Option<KeyValue<'a>>,
    pub(super) enforcement: Option<KeyValue<'a>>,
    pub(super) warn_at: Option<KeyValue<'a>>,
}

/// A key's value, with the file it sits in.
pub(super) struct KeyValue<'a> {
    pub(super) file: &'a str,
    pub(super) node: Node,
    pub(super) offset: Offset,
    /// The text of the file the node came from, to work out block-scalar indentation.
    pub(super) text: &'a str,
}

pub(super) fn unknown_key_message(key: &str) -> String {
    format!(
        "unknown key `{key}`; expected one of max_image_size, tag_count_limit, rules, exclude_tags, enforcement, warn_at"
    )
}

pub(super) fn set_key<'a>(keys: &mut Keys<'a>, key: &str, value: KeyValue<'a>) {
    match key {
        "max_image_size" => keys.max_image_size = Some(value),
        "tag_count_limit" => keys.tag_count_limit = Some(value),
        "rules" => keys.rules = Some(value),
        "enforcement" => keys.enforcement = Some(value),
        "warn_at" => keys.warn_at = Some(value),
        _ => keys.exclude_tags = Some(value),
    }
}

pub(super) fn read_document<'a>(
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

/// Runs `read` on a key's value; a string value (as in a ConfigMap) is parsed as YAML first, with
/// its lines mapped back to the file that holds it.
pub(super) fn with_nested<T: Default>(
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
