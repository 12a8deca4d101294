//! Readers for the keys' values: sizes, tag counts, exclude lists and rules. Each problem is
//! recorded with its field path (`rules[2].limit.max_image_size`) and reading goes on, so one
//! pass reports them all.

use super::Problem;
use super::shape::KeyValue;
use super::yaml::{Ctx, Node, Value};
use crate::Limits;
use crate::rollout::{Enforcement, Share};
use crate::rule::{Rule, TagFilter};
use crate::size::ByteSize;

/// A reader of one value: its problems go to `ctx`, and a bad value gives `None`.
pub(super) type Reader<T> = fn(&mut Ctx<'_>, &Node, &str) -> Option<T>;

/// Reads `node` with `read` into `slot`; `false` when the value is bad.
fn read_into<T>(
    slot: &mut Option<T>,
    read: Reader<T>,
    ctx: &mut Ctx<'_>,
    node: &Node,
    field: &str,
) -> bool {
    *slot = read(ctx, node, field);
    slot.is_some()
}

/// Reads the value of `kv` with `read` (one of the `read_*` readers), each problem located in
/// the key's own file.
pub(super) fn key_value<T>(
    kv: &KeyValue<'_>,
    field: &str,
    problems: &mut Vec<Problem>,
    read: Reader<T>,
) -> Option<T> {
    let mut ctx = Ctx {
        file: kv.file,
        offset: kv.offset,
        problems,
    };
    read(&mut ctx, &kv.node, field)
}

/// A value written as a string and read with `T`'s `FromStr`; any other kind of value is refused
/// with the message `otherwise` gives.
fn read_parsed<T: std::str::FromStr<Err = String>>(
    ctx: &mut Ctx<'_>,
    node: &Node,
    field: &str,
    otherwise: impl FnOnce(&Value) -> String,
) -> Option<T> {
    let parsed = match &node.value {
        Value::Str(s) => s.trim().parse::<T>(),
        other => Err(otherwise(other)),
    };
    parsed.map_err(|e| ctx.at(Some(node), field, e)).ok()
}

pub(super) fn read_enforcement(ctx: &mut Ctx<'_>, node: &Node, field: &str) -> Option<Enforcement> {
    read_parsed(ctx, node, field, |other| {
        format!("expected enforce, warn or dry-run, found {}", other.kind())
    })
}

pub(super) fn read_share(ctx: &mut Ctx<'_>, node: &Node, field: &str) -> Option<Share> {
    read_parsed(ctx, node, field, |other| match other {
        Value::Int(i) => format!(
            "expected a share of the limit such as \"90%\", found the number {i}; write it with a percent sign"
        ),
        Value::Float(f) => format!(
            "expected a share of the limit such as \"90%\", found the number {f}; write it with a percent sign"
        ),
        other => format!(
            "expected a share of the limit such as \"90%\", found {}",
            other.kind()
        ),
    })
}

pub(super) fn read_size(ctx: &mut Ctx<'_>, node: &Node, field: &str) -> Option<ByteSize> {
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

pub(super) fn read_count(ctx: &mut Ctx<'_>, node: &Node, field: &str) -> Option<u64> {
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

pub(super) fn exclude_value(ctx: &mut Ctx<'_>, node: &Node) -> TagFilter {
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

/// `global`: the top-level limits, whose `exclude_tags`, `enforcement` and `warn_at` a rule
/// inherits when its `limit` does not say.
pub(super) fn rules_value(ctx: &mut Ctx<'_>, node: &Node, global: &Limits) -> Vec<Rule> {
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
        if let Some(rule) = read_rule(ctx, index, item, global) {
            rules.push(rule);
        }
    }
    rules
}

fn read_rule(ctx: &mut Ctx<'_>, index: usize, node: &Node, global: &Limits) -> Option<Rule> {
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
    let mut enforcement = None;
    let mut warn_at = None;
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
                        ok &= read_into(&mut max_image_size, read_size, ctx, value, &field);
                    }
                    Value::Str(k) if k == "tag_count_limit" => {
                        ok &= read_into(&mut tag_count_limit, read_count, ctx, value, &field);
                    }
                    Value::Str(k) if k == "exclude_tags" => {
                        ok &= read_into(&mut exclude, read_exclude, ctx, value, &field);
                    }
                    Value::Str(k) if k == "enforcement" => {
                        ok &= read_into(&mut enforcement, read_enforcement, ctx, value, &field);
                    }
                    Value::Str(k) if k == "warn_at" => {
                        ok &= read_into(&mut warn_at, read_share, ctx, value, &field);
                    }
                    Value::Str(k) => {
                        ctx.at(
                            Some(key),
                            &field,
                            format!("unknown limit key `{k}`; expected max_image_size, tag_count_limit, exclude_tags, enforcement, warn_at"),
                        );
                        ok = false;
                    }
                    _ => {
                        ctx.at(Some(key), &field, "keys must be strings");
                        ok = false;
                    }
                }
            }
            let present = |name: &str| {
                entries
                    .iter()
                    .any(|(k, _)| matches!(&k.value, Value::Str(s) if s == name))
            };
            for name in ["max_image_size", "tag_count_limit"] {
                if !present(name) {
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
            exclude_tags: exclude.unwrap_or_else(|| global.exclude_tags.clone()),
            enforcement: enforcement.unwrap_or(global.enforcement),
            warn_at: warn_at.or(global.warn_at),
        },
    })
}

pub(super) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
