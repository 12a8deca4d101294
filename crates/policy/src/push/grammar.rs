//! The distribution grammar for repository names, tags and digests (distribution's
//! `reference` package and its v2 router). A write that breaks it is answered by the gateway, so
//! a name the registry can never store costs no tag-list read, no slot and no book entry.

use std::sync::LazyLock;

use regex::Regex;

use super::{ManifestWrite, Reference};

/// distribution's `NameTotalLengthMax`.
pub const MAX_NAME_LENGTH: usize = 255;
/// `?tag=` values one request may name. The spec asks registries to take at least 10; more
/// than this is not a push but a request to hold slots.
pub const MAX_QUERY_TAGS: usize = 32;

static NAME: LazyLock<Regex> = LazyLock::new(|| {
    let component = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
    Regex::new(&format!("^{component}(?:/{component})*$")).expect("name grammar compiles")
});
static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$").expect("tag grammar"));
static DIGEST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$").expect("digest grammar")
});

/// Why the registry could not store a write's name, reference or tags.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    #[error(
        "the repository name is {length} characters long; registries accept at most {MAX_NAME_LENGTH}"
    )]
    NameTooLong { length: usize },
    #[error(
        "the repository name {name:?} is not valid: each /-separated part must be lower-case letters and digits, separated by '.', '_', '__' or dashes"
    )]
    Name { name: String },
    #[error(
        "the reference {reference:?} is neither a tag (letters, digits, '_', '.' and '-', at most 128, not starting with '.' or '-') nor a digest (<algorithm>:<hex>)"
    )]
    Reference { reference: String },
    #[error(
        "the tag {tag:?} in the query is not valid (letters, digits, '_', '.' and '-', at most 128, not starting with '.' or '-')"
    )]
    QueryTag { tag: String },
    #[error("the request names {count} tags in its query; at most {MAX_QUERY_TAGS} are accepted")]
    TooManyTags { count: usize },
}

impl GrammarError {
    /// `NAME_INVALID` rather than `TAG_INVALID`.
    pub fn is_name(&self) -> bool {
        matches!(self, Self::NameTooLong { .. } | Self::Name { .. })
    }
}

/// Shortened for messages: a 4,000-character name is not worth echoing whole.
fn shown(text: &str) -> String {
    const MAX: usize = 300;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

pub(super) fn check(write: &ManifestWrite) -> Result<(), GrammarError> {
    let name = &write.repository;
    if name.len() > MAX_NAME_LENGTH {
        return Err(GrammarError::NameTooLong { length: name.len() });
    }
    if !NAME.is_match(name) {
        return Err(GrammarError::Name { name: shown(name) });
    }
    let valid_reference = match &write.reference {
        Reference::Tag(tag) => TAG.is_match(tag),
        Reference::Digest(digest) => DIGEST.is_match(digest),
    };
    if !valid_reference {
        return Err(GrammarError::Reference {
            reference: shown(write.reference.as_str()),
        });
    }
    if write.query_tags.len() > MAX_QUERY_TAGS {
        return Err(GrammarError::TooManyTags {
            count: write.query_tags.len(),
        });
    }
    if let Some(tag) = write.query_tags.iter().find(|t| !TAG.is_match(t)) {
        return Err(GrammarError::QueryTag { tag: shown(tag) });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &str) -> ManifestWrite {
        ManifestWrite::from_request("PUT", path).expect("a manifest write")
    }

    /// Asserts that a push to `path(x)` passes the grammar for every `x` in `valid`, and for
    /// every `x` in `invalid` fails it with an error `refused` accepts.
    fn assert_grammar(
        path: impl Fn(&str) -> String,
        valid: &[&str],
        invalid: &[&str],
        refused: fn(&GrammarError) -> bool,
    ) {
        for x in valid {
            assert_eq!(write(&path(x)).grammar(), Ok(()), "{x}");
        }
        for x in invalid {
            let got = write(&path(x)).grammar();
            assert!(got.as_ref().is_err_and(refused), "{x}: {got:?}");
        }
    }

    #[test]
    fn names_follow_the_distribution_grammar() {
        let deep = "a/".repeat(127);
        assert_grammar(
            |name| format!("/v2/{name}/manifests/v1"),
            &[
                "a",
                "library/nginx",
                "a.b_c__d---e/f0",
                "manifests/manifests",
                deep.trim_end_matches('/'),
            ],
            &[
                "A",
                "a__-b",
                "a_",
                "-a",
                "a//b",
                "a/",
                "a..b",
                "a___b",
                "a b",
                "caf\u{e9}",
            ],
            |e| matches!(e, GrammarError::Name { .. }),
        );
        let long = "a".repeat(4000);
        let got = write(&format!("/v2/{long}/manifests/v1")).grammar();
        assert_eq!(got, Err(GrammarError::NameTooLong { length: 4000 }));
        assert!(got.expect_err("too long").is_name());
        let at_limit = "a".repeat(MAX_NAME_LENGTH);
        assert_eq!(
            write(&format!("/v2/{at_limit}/manifests/v1")).grammar(),
            Ok(())
        );
    }

    #[test]
    fn references_are_tags_or_digests() {
        let (longest, too_long) = ("t".repeat(128), "t".repeat(129));
        assert_grammar(
            |reference| format!("/v2/r/manifests/{reference}"),
            &["v1", "_x", "A.b-C_", &longest, "sha256:00", "sha256%3Aab"],
            &[
                ".v1",
                "-v1",
                &too_long,
                "v 1",
                "SHA256:ab",
                "sha256:",
                ":ab",
                "a:b:c",
            ],
            |e| matches!(e, GrammarError::Reference { .. }) && !e.is_name(),
        );
    }

    #[test]
    fn query_tags_follow_the_tag_grammar_and_are_capped() {
        assert_eq!(
            write("/v2/r/manifests/sha256:ab?tag=a&tag=b").grammar(),
            Ok(())
        );
        for query in ["tag=", "tag=.a", "tag=a%20b", "tag=a:b"] {
            let got = write(&format!("/v2/r/manifests/sha256:ab?{query}")).grammar();
            assert!(
                matches!(got, Err(GrammarError::QueryTag { .. })),
                "{query}: {got:?}"
            );
        }
        let many: Vec<String> = (0..=MAX_QUERY_TAGS).map(|i| format!("tag=t{i}")).collect();
        let got = write(&format!("/v2/r/manifests/sha256:ab?{}", many.join("&"))).grammar();
        assert_eq!(
            got,
            Err(GrammarError::TooManyTags {
                count: MAX_QUERY_TAGS + 1
            })
        );
    }
}
