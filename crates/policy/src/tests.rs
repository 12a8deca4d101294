use super::*;
use crate::manifest::tests::fixture_bytes;

const SEED: &str = include_str!("../../../tests/fixtures/policy/valid/seed.yaml");
const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MB: u64 = 1024 * 1024;

fn policy(yaml: &str) -> Policy {
    compile(&ConfigSource::File {
        name: "t.yaml".into(),
        text: yaml.into(),
    })
    .expect("valid policy")
}

fn image(total: u64) -> Vec<u8> {
    // Two layers, so the sum is what is measured.
    let a = total / 2;
    format!(r#"{{"schemaVersion":2,"mediaType":"{OCI}","config":{{"size":100}},"layers":[{{"size":{a}}},{{"size":{}}}]}}"#, total - a)
        .into_bytes()
}

/// The first step for a `PUT` of `body` to `path`.
fn evaluate<'p>(policy: &'p Policy, path: &str, content_type: &str, body: &[u8]) -> Evaluation<'p> {
    let write = ManifestWrite::from_request("PUT", path).expect("manifest write");
    policy.evaluate(&ManifestPush {
        write: &write,
        content_type: Some(content_type),
        body,
    })
}

fn decide(
    policy: &Policy,
    path: &str,
    content_type: &str,
    body: &[u8],
    book: &mut TagBook,
) -> Decision {
    match evaluate(policy, path, content_type, body) {
        Evaluation::Done(d) => d,
        Evaluation::NeedTags(q) => q.finish(book),
    }
}

/// An OCI image of `total` bytes pushed to `path` in a repository of `existing` tags.
fn decide_image(policy: &Policy, path: &str, total: u64, existing: usize) -> Decision {
    decide(policy, path, OCI, &image(total), &mut tags(existing))
}

fn tags(n: usize) -> TagBook {
    TagBook::new((0..n).map(|i| format!("t{i}")))
}

#[test]
fn size_equal_to_the_limit_passes_and_one_byte_over_is_refused() {
    let p = policy(SEED);
    let d = decide_image(&p, "/v2/project-1/app/manifests/v1", 20 * MB, 0);
    assert!(d.is_allowed(), "{d:?}");
    let d = decide_image(&p, "/v2/project-1/app/manifests/v1", 20 * MB + 1, 0);
    let denial = d.denial().expect("refused");
    assert_eq!(denial.reason, DenyReason::ImageTooLarge);
    for fragment in [
        "project-1/app:v1",
        "20971521 bytes",
        "20971520 bytes (20MB)",
        "rule 0 (path `^project-1/.*`)",
        "1MB = 1048576 bytes",
    ] {
        assert!(
            denial.message.contains(fragment),
            "{fragment}: {}",
            denial.message
        );
    }
}

#[test]
fn size_is_checked_before_any_tag_is_needed() {
    let p = policy(SEED);
    let body = image(100 * MB + 1);
    assert!(matches!(
        evaluate(&p, "/v2/library/nginx/manifests/big", OCI, &body),
        Evaluation::Done(d) if !d.is_allowed()
    ));
}

#[test]
fn the_first_matching_rule_wins() {
    let p = policy(SEED);
    // big-image sits before the broader project-2 rule: 60MB passes there, not in project-2/api.
    let body = image(60 * MB);
    assert!(
        decide(
            &p,
            "/v2/project-2/big-image/manifests/a",
            OCI,
            &body,
            &mut tags(0)
        )
        .is_allowed()
    );
    let d = decide(
        &p,
        "/v2/project-2/api/manifests/a",
        OCI,
        &body,
        &mut tags(0),
    );
    assert!(
        d.denial()
            .expect("refused")
            .message
            .contains("rule 2 (path `^project-2/.*`)")
    );
    let d = decide_image(&p, "/v2/library/nginx/manifests/a", 101 * MB, 0);
    assert!(
        d.denial()
            .expect("refused")
            .message
            .contains("the global limit")
    );
}

#[test]
fn a_new_tag_is_refused_at_the_limit_and_existing_tags_move_freely() {
    let p = policy(SEED);
    let body = image(1);
    let mut book = tags(3);
    let d = decide(&p, "/v2/project-1/app/manifests/new", OCI, &body, &mut book);
    let denial = d.denial().expect("refused");
    assert_eq!(denial.reason, DenyReason::TagLimit);
    for fragment in ["already has 3 tags", "is 3 tags", "rule 0", "new"] {
        assert!(
            denial.message.contains(fragment),
            "{fragment}: {}",
            denial.message
        );
    }
    assert!(decide(&p, "/v2/project-1/app/manifests/t1", OCI, &body, &mut book).is_allowed());
    assert!(
        decide(
            &p,
            "/v2/project-1/app/manifests/sha256:aa",
            OCI,
            &body,
            &mut book
        )
        .is_allowed()
    );
    assert_eq!(book.count(&TagFilter::default()), 3);
}

#[test]
fn concurrent_admissions_never_overshoot() {
    let p = policy(SEED);
    let body = image(1);
    let mut book = tags(1);
    let admitted: Vec<_> = (0..30)
        .map(|i| {
            decide(
                &p,
                &format!("/v2/project-1/app/manifests/n{i}"),
                OCI,
                &body,
                &mut book,
            )
        })
        .filter(Decision::is_allowed)
        .collect();
    assert_eq!(admitted.len(), 2);
    // The same new tag again shares its slot.
    assert!(decide(&p, "/v2/project-1/app/manifests/n0", OCI, &body, &mut book).is_allowed());
    assert_eq!(book.count(&TagFilter::default()), 3);
}

#[test]
fn every_query_tag_counts() {
    let p = policy(SEED);
    let body = image(1);
    let d = decide(
        &p,
        "/v2/project-1/app/manifests/sha256:ab?tag=a&tag=b&tag=c&tag=d",
        OCI,
        &body,
        &mut tags(0),
    );
    assert_eq!(d.denial().map(|x| x.reason), Some(DenyReason::TagLimit));
    let d = decide(
        &p,
        "/v2/project-1/app/manifests/sha256:ab?tag=a&tag=b&tag=c",
        OCI,
        &body,
        &mut tags(0),
    );
    assert_eq!(
        d.verdict,
        Verdict::Allow {
            reserved: vec!["a".into(), "b".into(), "c".into()]
        }
    );
}

#[test]
fn excluded_tags_neither_count_nor_get_refused() {
    let p =
        policy("tag_count_limit: 1\nexclude_tags: ['^sha256-[0-9a-f]{64}(\\.(sig|att|sbom))?$']\n");
    let sig = format!("sha256-{}.sig", "0".repeat(64));
    let mut book = TagBook::new(["v1".to_string(), format!("sha256-{}", "1".repeat(64))]);
    let d = decide(
        &p,
        &format!("/v2/a/manifests/{sig}"),
        OCI,
        &image(1),
        &mut book,
    );
    assert_eq!(d.verdict, Verdict::Allow { reserved: vec![] });
    assert_eq!(
        decide(&p, "/v2/a/manifests/v2", OCI, &image(1), &mut book)
            .denial()
            .map(|d| d.reason),
        Some(DenyReason::TagLimit)
    );
}

#[test]
fn indexes_have_no_size_of_their_own_but_tags_count() {
    let p = policy(SEED);
    let body = fixture_bytes("oci-index-multiarch.regclient.json");
    for (existing, allowed) in [(2, true), (3, false)] {
        let d = decide(
            &p,
            "/v2/project-1/app/manifests/v1",
            INDEX,
            &body,
            &mut tags(existing),
        );
        assert_eq!(d.is_allowed(), allowed, "{existing} tags: {d:?}");
    }
}

#[test]
fn unmeasurable_bodies_are_refused_with_their_reason() {
    let p = policy(SEED);
    let schema1 = fixture_bytes("schema1-signed.busybox.json");
    let d = decide(
        &p,
        "/v2/a/manifests/v1",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        &schema1,
        &mut tags(0),
    );
    assert_eq!(d.denial().map(|d| d.reason), Some(DenyReason::Schema1));
    let d = decide(&p, "/v2/a/manifests/v1", OCI, b"{not json", &mut tags(0));
    assert_eq!(
        d.denial().map(|d| d.reason),
        Some(DenyReason::ManifestInvalid)
    );
    let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
    let d = decide(&p, "/v2/a/manifests/v1", OCI, &huge, &mut tags(0));
    assert_eq!(
        d.denial().map(|d| d.reason),
        Some(DenyReason::ManifestTooLarge)
    );
}

#[test]
fn a_limit_of_zero_tags_refuses_every_new_tag() {
    let p = policy("tag_count_limit: 0\n");
    assert!(!decide_image(&p, "/v2/a/manifests/v1", 1, 0).is_allowed());
    assert!(decide_image(&p, "/v2/a/manifests/sha256:00", 1, 0).is_allowed());
}

#[test]
fn rules_match_the_name_or_the_name_with_a_slash() {
    let p = policy(
        "rules:\n  - path: ^team/app/.*\n    limit: {max_image_size: 1KB, tag_count_limit: 1}\n  - path: ^library/nginx$\n    limit: {max_image_size: 2KB, tag_count_limit: 2}\n",
    );
    let table: &[(&str, Option<usize>)] = &[
        ("team/app", Some(0)),
        ("team/app/x", Some(0)),
        ("team/apps", None),
        ("library/nginx", Some(1)),
        ("library/nginx/x", None),
    ];
    for (repo, want) in table {
        assert_eq!(p.limits_for(repo).0.map(|r| r.index), *want, "{repo}");
    }
}

#[test]
fn the_error_body_is_an_oci_envelope() {
    let body = decision::oci_error_body("DENIED", "no", &serde_json::json!({"a": 1}));
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["errors"][0]["code"], "DENIED");
    assert_eq!(v["errors"][0]["message"], "no");
}

#[test]
fn judging_reserves_nothing() {
    let p = policy(SEED);
    let mut book = tags(2);
    let Evaluation::NeedTags(q) = evaluate(&p, "/v2/project-1/app/manifests/new", OCI, &image(1))
    else {
        panic!("tags needed")
    };
    assert!(q.judge(&mut book).is_allowed());
    assert_eq!(book.count(&TagFilter::default()), 2);
}

#[test]
fn digest_references_are_written_with_an_at_sign() {
    let p = policy(SEED);
    let d = decide_image(
        &p,
        "/v2/project-1/app/manifests/sha256:abcd",
        20 * MB + 1,
        0,
    );
    let message = &d.denial().expect("refused").message;
    assert!(
        message.starts_with("push to project-1/app@sha256:abcd refused"),
        "{message}"
    );
    let d = decide_image(&p, "/v2/project-1/app/manifests/v1", 20 * MB + 1, 0);
    assert!(
        d.denial()
            .expect("refused")
            .message
            .starts_with("push to project-1/app:v1 refused")
    );
}

/// A write the registry could never store is answered without the tag book: no slot, no read.
#[test]
fn names_and_references_outside_the_grammar_are_refused_before_tags() {
    let p = policy(SEED);
    let long = "a".repeat(4000);
    for (path, reason) in [
        (format!("/v2/{long}/manifests/v1"), DenyReason::NameInvalid),
        (
            "/v2/Project-1/app/manifests/v1".to_owned(),
            DenyReason::NameInvalid,
        ),
        (
            "/v2/project-1/app/manifests/.v1".to_owned(),
            DenyReason::TagInvalid,
        ),
        (
            "/v2/project-1/app/manifests/sha256:ab?tag=.x".to_owned(),
            DenyReason::TagInvalid,
        ),
    ] {
        match evaluate(&p, &path, OCI, &image(1)) {
            Evaluation::Done(d) => {
                let denial = d.denial().expect("refused");
                assert_eq!(denial.reason, reason, "{path}");
                assert!(denial.message.len() < 1000, "{}", denial.message);
            }
            Evaluation::NeedTags(_) => panic!("{path}: asked for tags"),
        }
    }
}

/// A digest whose `:` is percent-encoded is still a digest: it creates no tag.
#[test]
fn an_encoded_digest_reference_takes_no_slot() {
    let p = policy(SEED);
    match evaluate(
        &p,
        "/v2/project-1/app/manifests/sha256%3A00",
        OCI,
        &image(1),
    ) {
        Evaluation::Done(d) => assert!(d.is_allowed(), "{d:?}"),
        Evaluation::NeedTags(_) => panic!("a digest push asked for tags"),
    }
}

const ROLLOUT: &str = include_str!("../../../tests/fixtures/policy/valid/rollout.yaml");

#[test]
fn enforcement_and_warn_at_are_inherited_by_rules_that_do_not_say() {
    let p = policy(ROLLOUT);
    let table: &[(&str, Enforcement, Option<&str>)] = &[
        ("trial/app", Enforcement::DryRun, Some("90%")),
        ("soon/app", Enforcement::Warn, Some("80%")),
        ("strict/app", Enforcement::Enforce, Some("90%")),
        ("elsewhere", Enforcement::Enforce, Some("90%")),
    ];
    for (repo, mode, share) in table {
        let limits = p.limits_for(repo).1;
        assert_eq!(limits.enforcement, *mode, "{repo}");
        assert_eq!(
            limits.warn_at.map(|s| s.to_string()).as_deref(),
            *share,
            "{repo}"
        );
    }
    // A configuration without the new keys enforces and never warns.
    let p = policy(SEED);
    for limits in std::iter::once(p.global()).chain(p.rules().iter().map(|r| &r.limits)) {
        assert_eq!(limits.enforcement, Enforcement::Enforce);
        assert_eq!(limits.warn_at, None);
    }
}

#[test]
fn dry_run_lets_an_oversized_image_through_with_the_refusal_recorded_and_nothing_said() {
    let p = policy(ROLLOUT);
    let mut book = tags(0);
    let d = decide(
        &p,
        "/v2/trial/app/manifests/big",
        OCI,
        &image(10 * MB + 1),
        &mut book,
    );
    assert!(d.is_allowed(), "{d:?}");
    let waived = d.waived.as_ref().expect("would-be denial");
    assert_eq!(waived.reason, DenyReason::ImageTooLarge);
    assert!(
        waived.message.contains("10485761 bytes"),
        "{}",
        waived.message
    );
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(d.facts.enforcement, Enforcement::DryRun);
    assert!(d.discloses_limits());
    // The tag slot is held as in enforce, so the dry run's count stays true.
    assert_eq!(
        d.verdict,
        Verdict::Allow {
            reserved: vec!["big".into()]
        }
    );
    assert!(book.contains("big"));
    // The same push under the enforced rule is refused with the same words.
    let enforced = decide_image(&p, "/v2/strict/app/manifests/big", 10 * MB + 1, 0);
    assert_eq!(
        enforced.denial().map(|d| d.reason),
        Some(DenyReason::ImageTooLarge)
    );
}

#[test]
fn dry_run_past_the_tag_limit_reserves_and_records_the_tag_refusal() {
    let p = policy(ROLLOUT);
    let mut book = tags(5);
    let d = decide(&p, "/v2/trial/app/manifests/t5", OCI, &image(MB), &mut book);
    assert!(d.is_allowed(), "{d:?}");
    let waived = d.waived.as_ref().expect("would-be denial");
    assert_eq!(waived.reason, DenyReason::TagLimit);
    assert_eq!(
        d.verdict,
        Verdict::Allow {
            reserved: vec!["t5".into()]
        }
    );
    assert_eq!(d.facts.tag_count, Some(5));
    assert!(book.contains("t5"));
    // Both limits broken: the would-be denial is the one enforce gives first, the size.
    let d = decide(
        &p,
        "/v2/trial/app/manifests/t6",
        OCI,
        &image(11 * MB),
        &mut book,
    );
    assert_eq!(d.waived.map(|w| w.reason), Some(DenyReason::ImageTooLarge));
}

#[test]
fn warn_hands_the_client_the_refusal_text() {
    let p = policy(ROLLOUT);
    let d = decide_image(&p, "/v2/soon/app/manifests/t5", MB, 5);
    assert!(d.is_allowed(), "{d:?}");
    let waived = d.waived.as_ref().expect("would-be denial");
    assert_eq!(waived.reason, DenyReason::TagLimit);
    assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
    assert!(
        d.warnings[0].contains("enforcement: warn"),
        "{}",
        d.warnings[0]
    );
    assert!(d.warnings[0].contains(&waived.message), "{}", d.warnings[0]);
}

#[test]
fn warn_at_fires_at_the_threshold_and_not_below() {
    let p = policy(ROLLOUT);
    // soon/: warn_at 80% of 5 tags = 4 tags after the push.
    let below = decide_image(&p, "/v2/soon/app/manifests/new", MB, 2);
    assert!(below.is_allowed() && below.warnings.is_empty(), "{below:?}");
    let at = decide_image(&p, "/v2/soon/app/manifests/new", MB, 3);
    assert!(at.is_allowed() && at.waived.is_none(), "{at:?}");
    assert_eq!(at.warnings.len(), 1, "{:?}", at.warnings);
    assert!(
        at.warnings[0].starts_with("soon/app now has 4 of its 5 tags"),
        "{}",
        at.warnings[0]
    );
    // A push to an existing tag adds none, but the count it leaves still counts.
    let existing = decide_image(&p, "/v2/soon/app/manifests/t0", MB, 4);
    assert!(existing.warnings[0].starts_with("soon/app now has 4 of its 5 tags"));
    // Sizes: 80% of 10MB is 8MB exactly.
    let digest = format!("/v2/soon/app/manifests/sha256:{}", "0".repeat(64));
    let size = |bytes| decide_image(&p, &digest, bytes, 0);
    assert!(size(8 * MB - 1).warnings.is_empty());
    let at = size(8 * MB);
    assert_eq!(at.warnings.len(), 1, "{:?}", at.warnings);
    assert!(
        at.warnings[0].contains("8388608 bytes, 80% of the limit of 10485760 bytes"),
        "{}",
        at.warnings[0]
    );
    // Limits are still enforced past a soft threshold.
    let over = decide_image(&p, "/v2/strict/app/manifests/x", 10 * MB + 1, 0);
    assert!(!over.is_allowed());
    assert!(over.warnings.is_empty());
}

#[test]
fn warnings_fit_the_header_budget() {
    let p = policy(ROLLOUT);
    let d = decide_image(&p, "/v2/soon/app/manifests/new", 9 * MB, 3);
    assert_eq!(d.warnings.len(), 2, "{:?}", d.warnings);
    let values = warning_headers(&d.warnings);
    assert_eq!(values.len(), 2);
    assert!(values.iter().map(String::len).sum::<usize>() <= rollout::MAX_WARNING_BYTES);
    assert!(
        values
            .iter()
            .all(|v| v.starts_with("299 - \"") && v.ends_with('"'))
    );
}
