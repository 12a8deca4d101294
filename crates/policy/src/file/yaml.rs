//! YAML text into a small tree whose every node keeps its line and column, parsed under budgets;
//! and [`Ctx`], which records a problem at a node, shifted to where the text sits in its file.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::{MAX_CONFIG_BYTES, Problem};

#[derive(Clone, Debug)]
pub(super) struct Node {
    pub(super) line: u64,
    pub(super) column: u64,
    pub(super) value: Value,
}

#[derive(Clone, Debug)]
pub(super) enum Value {
    Null,
    Bool,
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Value {
    pub(super) fn kind(&self) -> &'static str {
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
pub(super) struct Offset {
    pub(super) lines: u64,
    pub(super) columns: u64,
    /// Block scalars indent every line; a quoted string only shifts its first line.
    pub(super) every_line: bool,
}

pub(super) const NO_OFFSET: Offset = Offset {
    lines: 0,
    columns: 0,
    every_line: false,
};

pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
    pub(super) offset: Offset,
    pub(super) problems: &'a mut Vec<Problem>,
}

impl Ctx<'_> {
    pub(super) fn at(&mut self, node: Option<&Node>, field: &str, message: impl Into<String>) {
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

pub(super) fn parse_yaml(
    file: &str,
    text: &str,
    offset: Offset,
    problems: &mut Vec<Problem>,
) -> Option<Node> {
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
            let message = message.lines().next().unwrap_or_default().trim();
            // The location is ours to print, once: drop the parser's own `error: line L column C:`.
            let message = message.strip_prefix("error: ").unwrap_or(message);
            let message = match message.split_once(": ") {
                Some((place, rest)) if place.starts_with("line ") && place.contains(" column ") => {
                    rest
                }
                _ => message,
            }
            .to_owned();
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
