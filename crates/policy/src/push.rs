//! Manifest writes as the registry routes them: `PUT`/`DELETE /v2/<name>/manifests/<reference>`.
//!
//! `<name>` may contain `/`, so the path is parsed from the right. Matching is case-sensitive on the
//! method and the path, as distribution's router is.

/// What a manifest reference names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    /// A tag: pushing it creates or moves the tag.
    Tag(String),
    /// A digest (`<alg>:<hex>`): pushing by digest creates no tag.
    Digest(String),
}

impl Reference {
    /// Tags never contain `:`, so a `:` marks a digest.
    pub fn parse(text: &str) -> Self {
        if text.contains(':') {
            Self::Digest(text.to_owned())
        } else {
            Self::Tag(text.to_owned())
        }
    }

    /// The reference as written.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Tag(t) | Self::Digest(t) => t,
        }
    }

    /// The tag, when the reference is one.
    pub fn tag(&self) -> Option<&str> {
        match self {
            Self::Tag(t) => Some(t),
            Self::Digest(_) => None,
        }
    }
}

/// The kind of manifest write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    Put,
    Delete,
}

/// A manifest write recognised from a request line, before its body is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestWrite {
    pub kind: WriteKind,
    pub repository: String,
    pub reference: Reference,
    /// Every `?tag=` value: each is a tag being created (distribution-spec, unreleased).
    pub query_tags: Vec<String>,
}

impl ManifestWrite {
    /// Recognises a manifest write from a method and a path (with its query), reading the path
    /// as the registry does: percent-escapes decoded (so `sha256%3A…` is a digest), then parsed
    /// from the right. Anything else is `None`: not ours to judge. A path with a broken escape
    /// is `None` too: Go's HTTP server refuses it with 400 before any handler runs.
    pub fn from_request(method: &str, path: &str) -> Option<Self> {
        let kind = match method {
            "PUT" => WriteKind::Put,
            "DELETE" => WriteKind::Delete,
            _ => return None,
        };
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let path = percent_decode(path, false)?;
        let rest = path.strip_prefix("/v2/")?;
        let (before, reference) = rest.rsplit_once('/')?;
        let repository = before.strip_suffix("/manifests")?;
        if repository.is_empty() || reference.is_empty() {
            return None;
        }
        Some(Self {
            kind,
            repository: repository.to_owned(),
            reference: Reference::parse(reference),
            query_tags: query.map(query_values_of_tag).unwrap_or_default(),
        })
    }

    /// Whether the registry would accept the name, the reference and every `?tag=` value: the
    /// distribution grammar, checked before anything else so that no tag list is read (and no
    /// slot taken) for a write the registry cannot store.
    pub fn grammar(&self) -> Result<(), GrammarError> {
        grammar::check(self)
    }

    /// Every tag this write would create or move: the reference's tag and each `?tag=` value,
    /// without repeats.
    pub fn tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = Vec::with_capacity(1 + self.query_tags.len());
        for tag in self
            .reference
            .tag()
            .into_iter()
            .chain(self.query_tags.iter().map(String::as_str))
        {
            if !tags.iter().any(|t| t == tag) {
                tags.push(tag.to_owned());
            }
        }
        tags
    }
}

pub use self::grammar::{GrammarError, MAX_NAME_LENGTH, MAX_QUERY_TAGS};

mod grammar;

/// Whether a request is one of Harbor's REST calls that create a tag
/// (`POST /api/v2.0/projects/{p}/repositories/{r}/artifacts/{ref}/tags`) or copy an artifact
/// (`POST /api/v2.0/projects/{p}/repositories/{r}/artifacts?from=…`): a tag appears with no
/// manifest write for the gateway to judge. Matched on the decoded path without regard to letter
/// case, so no spelling slips past.
pub fn is_harbor_tag_write(method: &str, path: &str) -> bool {
    static HARBOR: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"(?i)^/api/v2\.0/projects/[^/]+/repositories/[^/]+/artifacts(?:/[^/]+/tags)?/*$",
        )
        .expect("Harbor route pattern compiles")
    });
    if !method.eq_ignore_ascii_case("POST") {
        return false;
    }
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    match percent_decode(path, false) {
        Some(decoded) => HARBOR.is_match(&decoded.replace("//", "/")),
        // A broken escape under /api/ is refused too: better a refused odd request than a
        // missed tag write.
        None => path.to_ascii_lowercase().contains("/api/"),
    }
}

/// A manifest `PUT` with its body: what the policy judges.
#[derive(Clone, Copy, Debug)]
pub struct ManifestPush<'a> {
    pub write: &'a ManifestWrite,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// Every value of the query key `tag`, as Go's `url.ParseQuery` reads a query: pairs split on
/// `&`, keys and values percent-decoded with `+` as a space, and a pair that Go cannot read (a
/// broken escape, a `;`) dropped.
fn query_values_of_tag(query: &str) -> Vec<String> {
    query
        .split('&')
        .filter(|pair| !pair.contains(';'))
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key, true)?;
            let value = percent_decode(value, true)?;
            (key == "tag").then_some(value)
        })
        .collect()
}

/// Percent-decodes as Go does: `None` for a broken escape; `plus_is_space` for query parts.
/// Bytes that are not UTF-8 become U+FFFD, which no name or tag grammar admits.
fn percent_decode(text: &str, plus_is_space: bool) -> Option<String> {
    if !text.contains(['%', '+']) {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' => {
                let h = bytes.get(i + 1).copied().and_then(hex)?;
                let l = bytes.get(i + 2).copied().and_then(hex)?;
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The manifest write a `PUT` of `path` is.
    fn put(path: &str) -> ManifestWrite {
        ManifestWrite::from_request("PUT", path).unwrap_or_else(|| panic!("PUT {path}: a write"))
    }

    #[test]
    fn recognises_manifest_writes_from_the_right() {
        use WriteKind::{Delete, Put};
        for (method, path, kind, repository, reference) in [
            (
                "PUT",
                "/v2/library/nginx/manifests/latest",
                Put,
                "library/nginx",
                "latest",
            ),
            (
                "PUT",
                "/v2/a/manifests/manifests/manifests/v1",
                Put,
                "a/manifests/manifests",
                "v1",
            ),
            ("PUT", "/v2/x/manifests/sha256:abc", Put, "x", "sha256:abc"),
            ("DELETE", "/v2/p/q/manifests/v1", Delete, "p/q", "v1"),
            ("PUT", "/v2/p/manifests/v1?ns=docker.io", Put, "p", "v1"),
        ] {
            let w = ManifestWrite::from_request(method, path)
                .unwrap_or_else(|| panic!("{method} {path}: a manifest write"));
            let got = (w.kind, w.repository.as_str(), w.reference.as_str());
            assert_eq!(got, (kind, repository, reference), "{method} {path}");
        }
        for (method, path) in [
            ("put", "/v2/p/manifests/v1"),
            ("GET", "/v2/p/manifests/v1"),
            ("PUT", "/v2/p/blobs/uploads/abc"),
            ("PUT", "/v2/p/Manifests/v1"),
            ("PUT", "/v2/manifests/v1"),
            ("PUT", "/v2/p/manifests/"),
            ("PUT", "/v3/p/manifests/v1"),
        ] {
            let got = ManifestWrite::from_request(method, path);
            assert!(got.is_none(), "{method} {path}: not a manifest write");
        }
    }

    #[test]
    fn every_query_tag_is_a_tag_being_created() {
        let w = put("/v2/p/manifests/sha256:ab?tag=a&ns=x&tag=b&tag=a&tag=%76%31");
        assert_eq!(w.query_tags, ["a", "b", "a", "v1"]);
        assert_eq!(w.tags(), ["a", "b", "v1"]);
        let w = put("/v2/p/manifests/v1?tag=v1&tag=v2");
        assert_eq!(w.tags(), ["v1", "v2"]);
    }

    #[test]
    fn digest_references_create_no_tag() {
        let w = put("/v2/p/manifests/sha256:00");
        assert!(w.tags().is_empty());
        assert_eq!(w.reference.tag(), None);
    }

    #[test]
    fn harbor_tag_writes_are_recognised_in_every_spelling() {
        for path in [
            "/api/v2.0/projects/p/repositories/r/artifacts/latest/tags",
            "/api/v2.0/projects/p/repositories/a%252Fb/artifacts/sha256:00/tags/",
            "/api/v2.0/projects/p/repositories/r/artifacts?from=q/s:v1",
            "/api/v2.0/projects/p/repositories/r/artifacts/",
            "/API/V2.0/Projects/p/Repositories/r/Artifacts/v1/Tags",
            "/api/v2%2E0/projects/p/repositories/r/artifacts/v1/%74ags",
        ] {
            assert!(is_harbor_tag_write("POST", path), "{path}");
        }
        for (method, path) in [
            (
                "GET",
                "/api/v2.0/projects/p/repositories/r/artifacts/v1/tags",
            ),
            (
                "DELETE",
                "/api/v2.0/projects/p/repositories/r/artifacts/v1/tags/v1",
            ),
            (
                "POST",
                "/api/v2.0/projects/p/repositories/r/artifacts/v1/labels",
            ),
            ("POST", "/api/v2.0/projects"),
            ("POST", "/v2/p/r/blobs/uploads/"),
        ] {
            assert!(!is_harbor_tag_write(method, path), "{method} {path}");
        }
    }

    #[test]
    fn broken_escapes_are_not_decoded() {
        assert_eq!(percent_decode("a%2", false), None);
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%41+", false).as_deref(), Some("A+"));
        assert_eq!(percent_decode("%41+", true).as_deref(), Some("A "));
    }

    #[test]
    fn paths_are_read_decoded_as_the_registry_reads_them() {
        fn tag(repository: &str, tag: &str) -> Option<(String, Reference)> {
            Some((repository.to_owned(), Reference::Tag(tag.into())))
        }
        fn digest(repository: &str, digest: &str) -> Option<(String, Reference)> {
            Some((repository.to_owned(), Reference::Digest(digest.into())))
        }
        for (path, want) in [
            ("/v2/r/manifests/sha256%3Aabc", digest("r", "sha256:abc")),
            ("/v2/r/manifests/sha256%3aabc", digest("r", "sha256:abc")),
            ("/v2/r/%6Danifests/v1", tag("r", "v1")),
            ("/v2/a%2Fb/manifests/v1", tag("a/b", "v1")),
            ("/v2/r/manifests%2Fv1", tag("r", "v1")),
            ("/v2/r/manifests/v%31", tag("r", "v1")),
            ("/v2/r/manifests/v1%", None),
            ("/v2/r/manifests/v1%g0", None),
        ] {
            let got = ManifestWrite::from_request("PUT", path).map(|w| (w.repository, w.reference));
            assert_eq!(got, want, "{path}");
        }
    }

    #[test]
    fn query_keys_and_values_are_decoded_as_go_reads_them() {
        let w =
            put("/v2/p/manifests/sha256:ab?%74ag=a&t%61g=%62&tag=c+d&tag=e%zz&tag=f;x&TAG=g&tag");
        assert_eq!(w.query_tags, ["a", "b", "c d", ""]);
    }
}
