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
    /// Recognises a manifest write from a method and a path (with its query). Anything else is
    /// `None`: not ours to judge.
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
        let rest = path.strip_prefix("/v2/")?;
        let (before, reference) = rest.rsplit_once('/')?;
        let repository = before.strip_suffix("/manifests")?;
        if repository.is_empty() || reference.is_empty() {
            return None;
        }
        let query_tags = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|pair| pair.strip_prefix("tag="))
            .map(percent_decode)
            .filter(|t| !t.is_empty())
            .collect();
        Some(Self {
            kind,
            repository: repository.to_owned(),
            reference: Reference::parse(reference),
            query_tags,
        })
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

/// A manifest `PUT` with its body: what the policy judges.
#[derive(Clone, Copy, Debug)]
pub struct ManifestPush<'a> {
    pub write: &'a ManifestWrite,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_manifest_writes_from_the_right() {
        type Row<'a> = (&'a str, &'a str, Option<(WriteKind, &'a str, &'a str)>);
        let table: &[Row<'_>] = &[
            (
                "PUT",
                "/v2/library/nginx/manifests/latest",
                Some((WriteKind::Put, "library/nginx", "latest")),
            ),
            (
                "PUT",
                "/v2/a/manifests/manifests/manifests/v1",
                Some((WriteKind::Put, "a/manifests/manifests", "v1")),
            ),
            (
                "PUT",
                "/v2/x/manifests/sha256:abc",
                Some((WriteKind::Put, "x", "sha256:abc")),
            ),
            (
                "DELETE",
                "/v2/p/q/manifests/v1",
                Some((WriteKind::Delete, "p/q", "v1")),
            ),
            (
                "PUT",
                "/v2/p/manifests/v1?ns=docker.io",
                Some((WriteKind::Put, "p", "v1")),
            ),
            ("put", "/v2/p/manifests/v1", None),
            ("GET", "/v2/p/manifests/v1", None),
            ("PUT", "/v2/p/blobs/uploads/abc", None),
            ("PUT", "/v2/p/Manifests/v1", None),
            ("PUT", "/v2/manifests/v1", None),
            ("PUT", "/v2/p/manifests/", None),
            ("PUT", "/v3/p/manifests/v1", None),
        ];
        for (method, path, want) in table {
            let got = ManifestWrite::from_request(method, path);
            let got = got
                .as_ref()
                .map(|w| (w.kind, w.repository.as_str(), w.reference.as_str()));
            assert_eq!(got, *want, "{method} {path}");
        }
    }

    #[test]
    fn every_query_tag_is_a_tag_being_created() {
        let w = ManifestWrite::from_request(
            "PUT",
            "/v2/p/manifests/sha256:ab?tag=a&ns=x&tag=b&tag=a&tag=%76%31",
        )
        .expect("manifest write");
        assert_eq!(w.query_tags, ["a", "b", "a", "v1"]);
        assert_eq!(w.tags(), ["a", "b", "v1"]);
        let w =
            ManifestWrite::from_request("PUT", "/v2/p/manifests/v1?tag=v1&tag=v2").expect("write");
        assert_eq!(w.tags(), ["v1", "v2"]);
    }

    #[test]
    fn digest_references_create_no_tag() {
        let w = ManifestWrite::from_request("PUT", "/v2/p/manifests/sha256:00").expect("write");
        assert!(w.tags().is_empty());
        assert_eq!(w.reference.tag(), None);
    }

    #[test]
    fn percent_decoding_keeps_broken_escapes() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%41"), "A");
    }
}
