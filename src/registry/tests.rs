//! Unit tests for the registry client's parsers, token lifetimes and credential reads.

use std::time::Duration;

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderValue, LINK, WWW_AUTHENTICATE};

use super::auth::{seconds, usable_lifetime};
use super::challenge::{Challenge, RawChallenge, parse_challenges, select_challenge};
use super::credentials::{DirectoryProblem, read_directory};
use super::links::{next_page, parse_next_link, tag_list_url};
use super::{Credentials, RegistryClient, RegistryConfig};
use crate::check::TagError;

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn challenges_are_parsed_with_quoted_commas_and_several_per_header() {
    type Expected<'a> = &'a [(&'a str, &'a [(&'a str, &'a str)])];
    let cases: &[(&str, Expected<'_>)] = &[
        (
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:team/app:pull,push""#,
            &[(
                "bearer",
                &[
                    ("realm", "https://auth.example/token"),
                    ("service", "registry.example"),
                    ("scope", "repository:team/app:pull,push"),
                ],
            )],
        ),
        (
            r#"Basic realm="harbor""#,
            &[("basic", &[("realm", "harbor")])],
        ),
        ("basic", &[("basic", &[])]),
        (
            r#"BEARER Realm = "a\"b" , Error="invalid_token""#,
            &[("bearer", &[("realm", "a\"b"), ("error", "invalid_token")])],
        ),
        (
            r#"Basic realm="x", Bearer realm="https://t/token",service=reg"#,
            &[
                ("basic", &[("realm", "x")]),
                (
                    "bearer",
                    &[("realm", "https://t/token"), ("service", "reg")],
                ),
            ],
        ),
        (
            "Bearer realm=https://t/token,service=reg",
            &[(
                "bearer",
                &[("realm", "https://t/token"), ("service", "reg")],
            )],
        ),
        (
            "Negotiate abc==, Basic realm=r",
            &[("negotiate", &[]), ("basic", &[("realm", "r")])],
        ),
        (
            r#"Bearer realm="unterminated"#,
            &[("bearer", &[("realm", "unterminated")])],
        ),
        ("", &[]),
        (" , ,", &[]),
    ];
    for (header, expected) in cases {
        let expected: Vec<RawChallenge> = expected
            .iter()
            .map(|(scheme, p)| RawChallenge {
                scheme: (*scheme).to_owned(),
                params: params(p),
            })
            .collect();
        assert_eq!(parse_challenges(header), expected, "{header}");
    }
}

#[test]
fn bearer_is_preferred_and_needs_a_realm() {
    let cases: &[(&[&str], Option<Challenge>)] = &[
        (&[r#"Basic realm="r""#], Some(Challenge::Basic)),
        (
            &[
                r#"Basic realm="r""#,
                r#"Bearer realm="https://t",scope="repository:a:pull""#,
            ],
            Some(Challenge::Bearer {
                realm: "https://t".into(),
                service: None,
                scope: Some("repository:a:pull".into()),
            }),
        ),
        (&[r#"Bearer service="s""#], None),
        (
            &[r#"Bearer realm="https://t",scope="""#],
            Some(Challenge::Bearer {
                realm: "https://t".into(),
                service: None,
                scope: None,
            }),
        ),
        (&[r#"Digest realm="r",nonce="n""#], None),
        (&[], None),
    ];
    for (values, expected) in cases {
        let mut headers = HeaderMap::new();
        for value in *values {
            headers.append(
                WWW_AUTHENTICATE,
                HeaderValue::from_str(value).expect("valid header"),
            );
        }
        assert_eq!(select_challenge(&headers), *expected, "{values:?}");
    }
}

#[test]
fn the_next_link_is_found_among_other_links_and_forms() {
    let cases: &[(&str, Option<&str>)] = &[
        (
            r#"</v2/a/tags/list?last=b&n=2>; rel="next""#,
            Some("/v2/a/tags/list?last=b&n=2"),
        ),
        (
            "</v2/a/tags/list?last=b>;rel=next",
            Some("/v2/a/tags/list?last=b"),
        ),
        (
            r#"<https://r/p?a=1,2>; rel="prev", <https://r/n?a=3,4>; rel="next""#,
            Some("https://r/n?a=3,4"),
        ),
        (
            r#"<list?last=x>; title="a, b; c"; rel="first next""#,
            Some("list?last=x"),
        ),
        (r#"<x>; REL="Next""#, Some("x")),
        (r#"</v2/a/tags/list?last=b>; rel="prev""#, None),
        ("</v2/a/tags/list?last=b>", None),
        ("garbage", None),
        ("<unterminated; rel=next", None),
        ("", None),
    ];
    for (header, expected) in cases {
        assert_eq!(parse_next_link(header), *expected, "{header}");
    }
}

#[test]
fn next_links_resolve_against_the_request_and_stay_on_the_origin() {
    let base = Url::parse("https://registry.example/").expect("url");
    let requested = Url::parse("https://registry.example/v2/a/b/tags/list?n=2").expect("url");
    let cases: &[(&str, Result<Option<&str>, ()>)] = &[
        (
            "</v2/a/b/tags/list?last=x&n=2>; rel=next",
            Ok(Some("https://registry.example/v2/a/b/tags/list?last=x&n=2")),
        ),
        (
            "<list?last=x>; rel=next",
            Ok(Some("https://registry.example/v2/a/b/tags/list?last=x")),
        ),
        (
            "<https://registry.example:443/v2/a/b/tags/list?last=x>; rel=next",
            Ok(Some("https://registry.example/v2/a/b/tags/list?last=x")),
        ),
        (
            "<http://registry.example/v2/a/b/tags/list?last=x>; rel=next",
            Err(()),
        ),
        ("<https://registry.example:8443/v2/x>; rel=next", Err(())),
        ("<https://evil.example/v2/x>; rel=next", Err(())),
        ("<//evil.example/v2/x>; rel=next", Err(())),
        ("<https://u:p@registry.example/v2/x>; rel=next", Err(())),
        ("</v2/a/b/tags/list?last=x>; rel=prev", Ok(None)),
    ];
    for (link, expected) in cases {
        let mut headers = HeaderMap::new();
        headers.insert(LINK, HeaderValue::from_str(link).expect("valid header"));
        let got = next_page(&headers, &requested, &base);
        match (got, expected) {
            (Ok(got), Ok(expected)) => {
                assert_eq!(got.as_ref().map(Url::as_str), *expected, "{link}")
            }
            (Err(TagError::InvalidResponse(_)), Err(())) => {}
            (got, _) => panic!("{link}: unexpected {got:?}"),
        }
    }
}

#[test]
fn tag_list_urls_keep_slashes_and_refuse_dot_segments() {
    let root = Url::parse("https://r.example").expect("url");
    let prefixed = Url::parse("https://r.example/mirror/?x=1").expect("url");
    let cases: &[(&Url, &str, Option<u32>, Option<&str>)] = &[
        (
            &root,
            "app",
            None,
            Some("https://r.example/v2/app/tags/list"),
        ),
        (
            &root,
            "team/app/web",
            Some(100),
            Some("https://r.example/v2/team/app/web/tags/list?n=100"),
        ),
        (
            &prefixed,
            "a/b",
            None,
            Some("https://r.example/mirror/v2/a/b/tags/list"),
        ),
        (
            &root,
            "a b",
            None,
            Some("https://r.example/v2/a%20b/tags/list"),
        ),
        (&root, "a/../b", None, None),
        (&root, "./a", None, None),
        (&root, "a//b", None, None),
        (&root, "a/", None, None),
        (&root, "", None, None),
    ];
    for (base, repository, n, expected) in cases {
        let got = tag_list_url(base, repository, *n).ok();
        assert_eq!(got.as_ref().map(Url::as_str), *expected, "{repository}");
    }
}

#[test]
fn token_lifetimes_default_to_sixty_seconds_less_a_margin() {
    let s = Duration::from_secs;
    let cases = [
        (None, Some(s(50))),
        (Some(s(300)), Some(s(290))),
        (Some(s(1800)), Some(s(1790))),
        (Some(s(20)), Some(s(15))),
        (Some(s(0)), None),
    ];
    for (expires_in, expected) in cases {
        assert_eq!(usable_lifetime(expires_in), expected, "{expires_in:?}");
    }
    let cases = [
        (serde_json::json!(300), Some(s(300))),
        (serde_json::json!(1.5), Some(Duration::from_millis(1500))),
        (serde_json::json!("60"), Some(s(60))),
        (serde_json::json!(-1), None),
        (serde_json::json!(null), None),
    ];
    for (value, expected) in cases {
        assert_eq!(seconds(&value), expected, "{value}");
    }
}

#[test]
fn credential_directories_are_read_with_trimming_and_checked() {
    type Files<'a> = &'a [(&'a str, &'a str)];
    type Read<'a> = (Option<(&'a str, &'a str)>, bool);
    let cases: &[(Files<'_>, Result<Read<'_>, &str>)] = &[
        (
            &[("username", "robot$p+ci\n"), ("password", "s3cret\n")],
            Ok((Some(("robot$p+ci", "s3cret")), false)),
        ),
        (
            &[
                ("username", "u"),
                ("password", " p "),
                ("insecure", " TRUE\n"),
            ],
            Ok((Some(("u", " p ")), true)),
        ),
        (
            &[("username", ""), ("password", ""), ("insecure", "false")],
            Ok((None, false)),
        ),
        (
            &[("username", "u")],
            Err("`username` exists without `password`"),
        ),
        (
            &[("password", "p")],
            Err("`password` exists without `username`"),
        ),
        (&[], Err("neither `username` nor `password` exists")),
        (
            &[("username", "u"), ("password", "p"), ("insecure", "yes")],
            Err("`insecure` must be `true` or `false`"),
        ),
    ];
    for (files, expected) in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, text) in *files {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        let got = read_directory(dir.path());
        match (got, expected) {
            (Ok(read), Ok((basic, insecure))) => {
                let got = read
                    .basic
                    .as_ref()
                    .map(|b| (b.username.as_str(), b.password.as_str()));
                assert_eq!((got, read.insecure), (*basic, *insecure), "{files:?}");
            }
            (Err(DirectoryProblem::Invalid(problem)), Err(expected)) => {
                assert_eq!(problem, *expected)
            }
            (got, _) => panic!("{files:?}: unexpected {:?}", got.map(|r| r.insecure)),
        }
    }
}

#[test]
fn construction_refuses_unsafe_or_meaningless_configurations() {
    let config =
        |url: &str, credentials: Credentials, plain: bool, page_size: Option<u32>| RegistryConfig {
            base_url: Url::parse(url).expect("url"),
            credentials,
            timeout: Duration::from_secs(1),
            insecure: false,
            plain_http_credentials: plain,
            token_realms: Vec::new(),
            page_size,
        };
    let user = || Credentials::Static {
        username: "u".into(),
        password: "p".into(),
    };
    let cases = [
        // Plain http with nothing to protect needs no flag (the original product's examples).
        (
            config("http://r.example", Credentials::None, false, None),
            None,
        ),
        (
            config("http://r.example", user(), false, None),
            Some("clear text"),
        ),
        (config("http://r.example", user(), true, None), None),
        (config("https://r.example", user(), false, Some(1000)), None),
        (
            config("https://u:p@r.example", Credentials::None, false, None),
            Some("must not contain credentials"),
        ),
        (
            config("ftp://r.example", Credentials::None, true, None),
            Some("`ftp` is not supported"),
        ),
        (
            config("https://r.example", Credentials::None, false, Some(0)),
            Some("at least 1"),
        ),
    ];
    for (config, expected) in cases {
        let url = config.base_url.to_string();
        match (RegistryClient::new(config), expected) {
            (Ok(_), None) => {}
            (Err(e), Some(fragment)) => assert!(e.to_string().contains(fragment), "{url}: {e}"),
            (got, _) => panic!(
                "{url}: unexpected {:?}",
                got.map(|_| ()).map_err(|e| e.to_string())
            ),
        }
    }
    let mut bad_realm = config("https://r.example", Credentials::None, false, None);
    bad_realm.token_realms = vec![Url::parse("https://auth.example/token?x=1").expect("url")];
    assert!(RegistryClient::new(bad_realm).is_err());
}

#[test]
fn debug_output_never_shows_a_password() {
    let credentials = Credentials::Static {
        username: "u".into(),
        password: "hunter2".into(),
    };
    assert!(!format!("{credentials:?}").contains("hunter2"));
}
