//! `WWW-Authenticate` parsing: which challenge the client answers.

use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};

use super::cursor::{Cursor, is_space, is_tchar};

/// The challenge the client answers, chosen from every `WWW-Authenticate` header: Bearer when
/// one with a realm is offered, else Basic.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

pub(super) fn select_challenge(headers: &HeaderMap) -> Option<Challenge> {
    let offered: Vec<RawChallenge> = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .flat_map(|value| parse_challenges(&String::from_utf8_lossy(value.as_bytes())))
        .collect();
    let bearer = offered.iter().find_map(|c| {
        let realm = c.param("realm").filter(|r| !r.is_empty())?;
        (c.scheme == "bearer").then(|| Challenge::Bearer {
            realm: realm.to_owned(),
            service: c.param("service").map(str::to_owned),
            scope: c
                .param("scope")
                .filter(|s| !s.trim().is_empty())
                .map(str::to_owned),
        })
    });
    bearer.or_else(|| {
        offered
            .iter()
            .any(|c| c.scheme == "basic")
            .then_some(Challenge::Basic)
    })
}

/// One challenge as written: lower-cased scheme and parameter names, unquoted values.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RawChallenge {
    pub(super) scheme: String,
    pub(super) params: Vec<(String, String)>,
}

impl RawChallenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// RFC 9110 §11.6.1 challenges: `scheme [param=value|"quoted, with commas", …]`, several
/// challenges comma-separated in one header. Lenient: junk is skipped, not fatal.
pub(super) fn parse_challenges(text: &str) -> Vec<RawChallenge> {
    let mut cursor = Cursor { text, pos: 0 };
    let mut challenges = Vec::new();
    loop {
        cursor.skip(|b| b == b',' || is_space(b));
        if cursor.at_end() {
            return challenges;
        }
        let scheme = cursor.token();
        if scheme.is_empty() {
            // Junk: skip to the next ASCII delimiter, which is always a UTF-8 boundary.
            cursor.skip(|b| !is_tchar(b) && b != b',' && !is_space(b));
            continue;
        }
        let mut challenge = RawChallenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
        };
        loop {
            cursor.skip(|b| b == b',' || is_space(b));
            let start = cursor.pos;
            let name = cursor.token();
            if name.is_empty() {
                if cursor.at_end() {
                    break;
                }
                // Not a parameter (a token68 such as `abc/+`): skip to the next comma.
                cursor.skip(|b| b != b',');
                continue;
            }
            cursor.skip(is_space);
            if !cursor.eat(b'=') {
                // A bare token starts the next challenge.
                cursor.pos = start;
                break;
            }
            if cursor.peek() == Some(b'=') {
                // token68 padding (`abc==`): no parameter.
                cursor.skip(|b| b == b'=');
                continue;
            }
            cursor.skip(is_space);
            let value = if cursor.peek() == Some(b'"') {
                cursor.quoted()
            } else {
                cursor.take(|b| b != b',' && !is_space(b)).to_owned()
            };
            challenge.params.push((name.to_ascii_lowercase(), value));
        }
        challenges.push(challenge);
    }
}
