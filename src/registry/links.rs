//! Registry URLs: tag-list, catalog and manifest URLs built from the base URL, and each next
//! page taken from the response's `Link` header and held to the registry's origin.

use reqwest::Url;
use reqwest::header::{HeaderMap, LINK};

use super::cursor::{Cursor, is_space};
use crate::check::TagError;

/// `{base}/v2/<name>/tags/list[?n=…]`, the name's slashes kept as path separators.
pub(super) fn tag_list_url(
    base: &Url,
    repository: &str,
    page_size: Option<u32>,
) -> Result<Url, TagError> {
    let url = repository_url(base, repository, &["tags", "list"])?;
    Ok(with_page_size(url, page_size))
}

/// `{base}/v2/_catalog[?n=…]`.
pub(super) fn catalog_url(base: &Url, page_size: Option<u32>) -> Result<Url, TagError> {
    let url = v2_url(base, ["_catalog"])?;
    Ok(with_page_size(url, page_size))
}

/// `{base}/v2/<name>/<tail…>`, the name's slashes kept as path separators and each tail
/// segment escaped as one segment.
pub(super) fn repository_url(base: &Url, repository: &str, tail: &[&str]) -> Result<Url, TagError> {
    // The URL library drops `.` and `..` segments silently, which would list another repository.
    if repository
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(TagError::InvalidResponse(format!(
            "repository name {repository:?} has an empty, `.` or `..` path segment"
        )));
    }
    v2_url(base, repository.split('/').chain(tail.iter().copied()))
}

/// `{base}/v2/<segments…>`, each segment escaped as one; the base's query and fragment dropped.
fn v2_url<'a>(base: &Url, segments: impl IntoIterator<Item = &'a str>) -> Result<Url, TagError> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| TagError::InvalidResponse(format!("{base} cannot carry a path")))?
        .pop_if_empty()
        .push("v2")
        .extend(segments);
    Ok(url)
}

fn with_page_size(mut url: Url, page_size: Option<u32>) -> Url {
    if let Some(n) = page_size {
        url.query_pairs_mut().append_pair("n", &n.to_string());
    }
    url
}

/// The `rel="next"` target of the response's Link headers, resolved against the URL that was
/// requested and held to the registry's origin.
pub(super) fn next_page(
    headers: &HeaderMap,
    requested: &Url,
    base: &Url,
) -> Result<Option<Url>, TagError> {
    for value in headers.get_all(LINK) {
        let text = String::from_utf8_lossy(value.as_bytes());
        let Some(target) = parse_next_link(&text) else {
            continue;
        };
        let mut next = requested.join(target).map_err(|e| {
            TagError::InvalidResponse(format!("the next-page Link {target:?} is not a URL: {e}"))
        })?;
        next.set_fragment(None);
        if next.origin() != base.origin() {
            return Err(TagError::InvalidResponse(format!(
                "the next-page Link points to another origin ({})",
                next.origin().ascii_serialization()
            )));
        }
        if !next.username().is_empty() || next.password().is_some() {
            return Err(TagError::InvalidResponse(
                "the next-page Link carries credentials".into(),
            ));
        }
        return Ok(Some(next));
    }
    Ok(None)
}

/// The target of the first `rel="next"` link in one Link header value (RFC 8288):
/// `<url>; rel="next", <url>; rel=prev`. `rel` may hold several space-separated types.
pub(super) fn parse_next_link(text: &str) -> Option<&str> {
    let mut cursor = Cursor { text, pos: 0 };
    loop {
        cursor.skip(|b| b == b',' || is_space(b));
        if !cursor.eat(b'<') {
            return None;
        }
        let target = cursor.take(|b| b != b'>');
        if !cursor.eat(b'>') {
            return None;
        }
        let mut next = false;
        loop {
            cursor.skip(is_space);
            if !cursor.eat(b';') {
                break;
            }
            cursor.skip(is_space);
            let name = cursor.token();
            cursor.skip(is_space);
            if !cursor.eat(b'=') {
                continue;
            }
            cursor.skip(is_space);
            let value = if cursor.peek() == Some(b'"') {
                cursor.quoted()
            } else {
                cursor
                    .take(|b| b != b';' && b != b',' && !is_space(b))
                    .to_owned()
            };
            if name.eq_ignore_ascii_case("rel")
                && value
                    .split_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
            {
                next = true;
            }
        }
        if next {
            return Some(target.trim());
        }
        // Skip whatever is left of this link-value.
        cursor.skip(|b| b != b',');
    }
}
