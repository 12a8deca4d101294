//! JSON objects read the way Go's `encoding/json` reads them into a struct, which is how
//! distribution, Harbor and containerd decode the manifest they store and clients pull.
//!
//! Go matches an object key to a struct field exactly or, failing that, case-insensitively under
//! Unicode simple case folding, and when several keys land on one field the last one wins. A
//! parser that reads only the exact spelling (serde's) would measure `{"layers":[small],
//! "LAYERS":[big]}` as small while the registry stores big. So every member is kept, in order,
//! duplicates included, and a field is read only when exactly one key names it, spelled exactly:
//! any other spelling, or a second key for the same field, is refused by naming the key.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};

/// A JSON value with every object member kept in order.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Json {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

/// A JSON number as serde_json hands it over: integers that fit 64 bits stay exact.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Number {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

impl Json {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "a boolean",
            Self::Number(_) => "a number",
            Self::String(_) => "a string",
            Self::Array(_) => "an array",
            Self::Object(_) => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(Number::Unsigned(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(Number::Signed(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        Ok(Json::Number(Number::Float(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Json>()? {
            members.push((key, value));
        }
        Ok(Json::Object(members))
    }
}

/// Go's case folding of a key, as far as it can equal an ASCII field name: ASCII letters fold
/// to one case, and the only non-ASCII characters whose simple-fold orbit holds an ASCII letter
/// are U+017F (ſ, with `s`) and U+212A (the Kelvin sign, with `k`). Every other character stays
/// itself and so never equals a letter of a field name.
fn folds_to(key: &str, field: &str) -> bool {
    let mut key = key.chars().map(|c| match c {
        '\u{017F}' => 's',
        '\u{212A}' => 'k',
        c => c.to_ascii_lowercase(),
    });
    let mut field = field.chars().map(|c| c.to_ascii_lowercase());
    loop {
        match (key.next(), field.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// A key that Go would read into a field the gateway reads another way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyProblem {
    /// Go reads `key` into `field`; we read only the exact spelling.
    Spelling {
        at: String,
        key: String,
        field: &'static str,
    },
    /// Several keys name `field`; Go keeps the last.
    Repeated {
        at: String,
        field: &'static str,
        keys: Vec<String>,
    },
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spelling { at, key, field } => write!(
                f,
                "the key {key:?}{} is read by the registry as the field \"{field}\" (it matches keys without regard to letter case); spell it \"{field}\"",
                location(at)
            ),
            Self::Repeated { at, field, keys } => {
                let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
                write!(
                    f,
                    "the field \"{field}\"{} is given {} times ({}); the registry would keep only the last, so send it once",
                    location(at),
                    keys.len(),
                    keys.join(", ")
                )
            }
        }
    }
}

fn location(at: &str) -> String {
    if at.is_empty() {
        String::new()
    } else {
        format!(" in {at}")
    }
}

/// The members of one object, looked up as Go would.
#[derive(Clone, Copy, Debug)]
pub(super) struct Object<'a> {
    members: &'a [(String, Json)],
    /// Where the object sits, for messages (`layers[2]`; empty at the top).
    at: &'a str,
}

impl<'a> Object<'a> {
    pub(super) fn new(members: &'a [(String, Json)], at: &'a str) -> Self {
        Self { members, at }
    }

    /// Refuses every other spelling or repeat of each of `fields`, whether or not we read them:
    /// the registry stores what Go reads, so no field of the schema may be ambiguous.
    pub(super) fn check(&self, fields: &[&'static str]) -> Result<(), KeyProblem> {
        for field in fields {
            self.get(field)?;
        }
        Ok(())
    }

    /// The one member that names `field`, spelled exactly; `None` when there is none.
    pub(super) fn get(&self, field: &'static str) -> Result<Option<&'a Json>, KeyProblem> {
        let mut found = self.members.iter().filter(|(key, _)| folds_to(key, field));
        let Some((key, value)) = found.next() else {
            return Ok(None);
        };
        let rest: Vec<&(String, Json)> = found.collect();
        if !rest.is_empty() {
            let keys = std::iter::once(key)
                .chain(rest.iter().map(|(k, _)| k))
                .cloned()
                .collect();
            return Err(KeyProblem::Repeated {
                at: self.at.to_owned(),
                field,
                keys,
            });
        }
        if key != field {
            return Err(KeyProblem::Spelling {
                at: self.at.to_owned(),
                key: key.clone(),
                field,
            });
        }
        Ok(Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_matches_go_for_ascii_names() {
        for (key, field, want) in [
            ("layers", "layers", true),
            ("LAYERS", "layers", true),
            ("Layers", "layers", true),
            ("layer\u{017F}", "layers", true),
            ("\u{212A}ind", "kind", true),
            ("layer", "layers", false),
            ("layers ", "layers", false),
            ("lay\u{0130}ers", "layers", false),
            ("siz\u{0435}", "size", false),
        ] {
            assert_eq!(folds_to(key, field), want, "{key:?} vs {field}");
        }
    }

    #[test]
    fn members_keep_order_and_repeats() {
        let json: Json = serde_json::from_str(r#"{"a":1,"A":2,"a":3}"#).expect("json");
        let Json::Object(members) = json else {
            panic!("object")
        };
        assert_eq!(members.len(), 3);
        let problem = Object::new(&members, "").get("a").expect_err("repeated");
        assert_eq!(
            problem,
            KeyProblem::Repeated {
                at: String::new(),
                field: "a",
                keys: vec!["a".into(), "A".into(), "a".into()]
            }
        );
    }
}
