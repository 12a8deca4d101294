//! The fuzz targets' way into the registry client's parsers of a tag-list response (`fuzz/`,
//! target `tag_page`): the `Link` and `WWW-Authenticate` headers and the page body, exactly as
//! `list_all` reads them. Not an API; hidden from the documentation.

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, LINK};

use crate::registry::challenge::{Challenge, select_challenge};
use crate::registry::links::{next_page, parse_next_link, tag_list_url};
use crate::registry::{RegistryClient, TagList};

impl RegistryClient {
    /// Reads `input` as a response to a tag-list page request: header lines (`name: value`, lines
    /// that are not a valid header are skipped) up to an empty line, then the body. Panics when
    /// a parser breaks one of its promises: a next page off the registry's origin or carrying
    /// credentials, a `Link` target that is not part of its header, a Bearer challenge without a
    /// realm.
    #[doc(hidden)]
    pub fn fuzz_tag_list_page(input: &[u8]) {
        let (head, body) = match input.windows(2).position(|w| w == b"\n\n") {
            Some(i) => (&input[..i], &input[i + 2..]),
            None => (input, &input[..0]),
        };
        let mut headers = HeaderMap::new();
        for line in head.split(|&b| b == b'\n') {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(line[..colon].trim_ascii()),
                HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
            ) else {
                continue;
            };
            headers.append(name, value);
        }
        let base = Url::parse("https://registry.example:5000/mirror/").expect("a fixed URL");
        let requested =
            tag_list_url(&base, "library/app", Some(100)).expect("a valid repository name");
        for value in headers.get_all(LINK) {
            let text = String::from_utf8_lossy(value.as_bytes());
            if let Some(target) = parse_next_link(&text) {
                assert!(text.contains(target), "{target:?} is not in {text:?}");
            }
        }
        if let Ok(Some(next)) = next_page(&headers, &requested, &base) {
            assert_eq!(next.origin(), base.origin(), "{next}");
            assert!(
                next.username().is_empty() && next.password().is_none(),
                "{next}"
            );
            assert!(next.fragment().is_none(), "{next}");
        }
        if let Some(Challenge::Bearer { realm, .. }) = select_challenge(&headers) {
            assert!(!realm.is_empty());
        }
        if let Ok(list) = serde_json::from_slice::<TagList>(body) {
            let mut tags = list.tags.unwrap_or_default();
            tags.sort_unstable();
            tags.dedup();
        }
    }
}
