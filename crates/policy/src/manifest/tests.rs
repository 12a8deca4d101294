use super::*;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn fixtures() -> Vec<serde_json::Value> {
    let index = fixture_bytes("index.json");
    serde_json::from_slice::<Vec<serde_json::Value>>(&index).expect("catalogue is JSON")
}

/// A file of `tests/fixtures/manifests/`: real manifests, and `index.json`, their catalogue.
pub(crate) fn fixture_bytes(file: &str) -> Vec<u8> {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/manifests"
    );
    std::fs::read(format!("{dir}/{file}")).expect("fixture file is present")
}

#[test]
fn every_real_manifest_measures_as_its_catalogue_says() {
    let entries = fixtures();
    assert_eq!(entries.len(), 25);
    for entry in entries {
        let file = entry["file"].as_str().expect("file");
        let media_type = entry["media_type"].as_str().expect("media_type");
        let body = fixture_bytes(file);
        let got = measure(Some(media_type), &body);
        match entry["kind"].as_str().expect("kind") {
            "image" | "artifact" => {
                let sum = entry["layer_size_sum"].as_u64().expect("sum");
                let layers = entry["layers"].as_u64().expect("layers") as usize;
                let measured = got.unwrap_or_else(|e| panic!("{file}: {e}"));
                assert_eq!(measured.image_bytes(), sum, "{file}");
                assert!(
                    matches!(measured, Measured::Image { layers: l, .. } if l == layers),
                    "{file}"
                );
            }
            "index" => {
                let measured = got.unwrap_or_else(|e| panic!("{file}: {e}"));
                assert!(matches!(measured, Measured::Index { .. }), "{file}");
                assert_eq!(measured.image_bytes(), 0);
            }
            "schema1" => assert_eq!(got, Err(ManifestError::Schema1), "{file}"),
            "legacy-artifact" => assert_eq!(got, Err(ManifestError::LegacyArtifact), "{file}"),
            other => panic!("unknown kind {other}"),
        }
    }
}

#[test]
fn content_type_is_matched_without_parameters_or_case() {
    let body = br#"{"schemaVersion":2,"layers":[{"size":7}]}"#;
    for header in [
        OCI,
        "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
        "Application/VND.OCI.Image.Manifest.v1+JSON",
        "  application/vnd.oci.image.manifest.v1+json ;q=1",
    ] {
        assert_eq!(
            measure(Some(header), body).map(|m| m.image_bytes()),
            Ok(7),
            "{header}"
        );
    }
}

#[test]
fn malformed_bodies_are_refused() {
    let table: &[(&str, &str, &str)] = &[
        ("not json", OCI, "{"),
        ("negative size", OCI, r#"{"layers":[{"size":-1}]}"#),
        ("fractional size", OCI, r#"{"layers":[{"size":1.5}]}"#),
        ("exponent size", OCI, r#"{"layers":[{"size":1e3}]}"#),
        (
            "size over u64",
            OCI,
            r#"{"layers":[{"size":18446744073709551616}]}"#,
        ),
        ("string size", OCI, r#"{"layers":[{"size":"10"}]}"#),
        (
            "missing size",
            OCI,
            r#"{"layers":[{"digest":"sha256:00"}]}"#,
        ),
        (
            "missing layers",
            OCI,
            r#"{"schemaVersion":2,"config":{"size":2}}"#,
        ),
        ("null layers", DOCKER, r#"{"layers":null}"#),
        (
            "duplicate layers key",
            OCI,
            r#"{"layers":[],"layers":[{"size":99}]}"#,
        ),
        ("array body", OCI, "[]"),
        ("empty body", OCI, ""),
        (
            "index without manifests",
            "application/vnd.oci.image.index.v1+json",
            "{}",
        ),
    ];
    for (name, header, body) in table {
        let got = measure(Some(header), body.as_bytes());
        assert!(
            matches!(
                got,
                Err(ManifestError::Malformed { .. } | ManifestError::Key(_))
            ),
            "{name}: {got:?}"
        );
    }
}

/// Every spelling Go's `encoding/json` reads into a field the decision uses, at every level,
/// is refused with a message naming the key.
#[test]
fn keys_the_registry_reads_differently_are_refused_by_name() {
    let big = r#"[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:00","size":26214400}]"#;
    let table: &[(&str, String, &str)] = &[
        (
            "upper layers",
            format!(r#"{{"layers":[],"LAYERS":{big}}}"#),
            "LAYERS",
        ),
        ("title layers", format!(r#"{{"Layers":{big}}}"#), "Layers"),
        (
            "long s",
            format!("{{\"layer\u{17f}\":{big}}}"),
            "layer\u{17f}",
        ),
        (
            "escaped long s",
            format!(r#"{{"layer\u017f":{big}}}"#),
            "layer\u{17f}",
        ),
        (
            "size",
            r#"{"layers":[{"size":1,"SIZE":26214400}]}"#.into(),
            "SIZE",
        ),
        (
            "size only variant",
            r#"{"layers":[{"Size":26214400}]}"#.into(),
            "Size",
        ),
        (
            "nested size",
            r#"{"layers":[{"size":1},{"siZe":9}]}"#.into(),
            "siZe",
        ),
        (
            "mediaType",
            r#"{"MediaType":"x","layers":[]}"#.into(),
            "MediaType",
        ),
        (
            "config",
            r#"{"layers":[],"config":{"size":2,"Digest":"x"}}"#.into(),
            "Digest",
        ),
        (
            "exact repeat",
            r#"{"layers":[{"size":1,"size":2}]}"#.into(),
            "size",
        ),
        (
            "kelvin",
            r#"{"layers":[{"size":1}],"\u212aey":1}"#.into(),
            "",
        ),
    ];
    for (name, body, key) in table {
        let got = measure(Some(OCI), body.as_bytes());
        match &got {
            Err(ManifestError::Key(problem)) => {
                assert!(!key.is_empty(), "{name}: {problem}");
                assert!(
                    problem.to_string().contains(&format!("{key:?}")),
                    "{name}: {problem}"
                );
            }
            // A key that folds to no field of the schema: Go ignores it, and so do we.
            Ok(_) if key.is_empty() => {}
            other => panic!("{name}: {other:?}"),
        }
    }
    let index = "application/vnd.oci.image.index.v1+json";
    for body in [
        r#"{"manifests":[],"Manifests":[{"size":1}]}"#,
        r#"{"manifests":[{"size":1,"mediaType":"a","mediatype":"b"}]}"#,
        r#"{"manifests":[{"size":1,"Platform":{}}]}"#,
        r#"{"manifests":[],"SUBJECT":{"size":1}}"#,
        r#"{"manifests":[],"subject":{"Size":1}}"#,
    ] {
        let got = measure(Some(index), body.as_bytes());
        assert!(matches!(got, Err(ManifestError::Key(_))), "{body}: {got:?}");
    }
}

/// `field` in one of four spellings Go reads alike: exact, upper case, with U+017F for `s`,
/// capitalised.
fn spelled(field: &str, style: u8) -> String {
    match style % 4 {
        0 => field.to_owned(),
        1 => field.to_ascii_uppercase(),
        2 => field.replace('s', "\u{17f}"),
        _ => {
            let mut c = field.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        }
    }
}

proptest::proptest! {
    /// Whatever spellings and repeats a manifest uses, it is accepted only when every key is
    /// spelled exactly once, and then measured as Go reads it (keys folded, the last winning).
    #[test]
    fn accepted_manifests_measure_as_go_reads_them(
        groups in proptest::collection::vec(
            (0u8..4, proptest::collection::vec((0u8..4, 0u64..1000), 0..3)),
            1..3,
        )
    ) {
        let mut members = Vec::new();
        let mut go_sizes: Vec<u64> = Vec::new();
        for (style, layers) in &groups {
            let entries: Vec<String> = layers
                .iter()
                .map(|(s, n)| format!("{{{}:{n}}}", serde_json::json!(spelled("size", *s))))
                .collect();
            members.push(format!("{}:[{}]", serde_json::json!(spelled("layers", *style)), entries.join(",")));
            // Go: the last `layers` wins.
            go_sizes = layers.iter().map(|(_, n)| *n).collect();
        }
        let text = format!("{{{}}}", members.join(","));
        let got = measure(Some(OCI), text.as_bytes());
        if let Ok(measured) = &got {
            proptest::prop_assert_eq!(measured.image_bytes(), go_sizes.iter().sum::<u64>(), "{}", text);
        }
        let all_exact = groups.len() == 1
            && groups[0].0 % 4 == 0
            && groups[0].1.iter().all(|(s, _)| s % 4 == 0);
        proptest::prop_assert_eq!(got.is_ok(), all_exact, "{}", text);
    }
}

#[test]
fn sums_that_overflow_are_refused() {
    let max = i64::MAX;
    let body = format!(r#"{{"layers":[{{"size":{max}}},{{"size":1}}]}}"#);
    assert_eq!(
        measure(Some(OCI), body.as_bytes()),
        Err(ManifestError::SizeOverflow)
    );
    let body = format!(r#"{{"layers":[{{"size":{}}}]}}"#, u64::MAX);
    assert_eq!(
        measure(Some(OCI), body.as_bytes()),
        Err(ManifestError::SizeOverflow)
    );
    let body = format!(r#"{{"layers":[{{"size":{max}}}]}}"#);
    assert_eq!(
        measure(Some(OCI), body.as_bytes()).map(|m| m.image_bytes()),
        Ok(max as u64)
    );
}

#[test]
fn header_and_body_types_must_agree() {
    let body = format!(r#"{{"mediaType":"{DOCKER}","layers":[]}}"#);
    assert!(matches!(
        measure(Some(OCI), body.as_bytes()),
        Err(ManifestError::MediaTypeMismatch { .. })
    ));
    // An index body sent as an image manifest has no `layers`: refused, never measured as 0.
    let index = fixture_bytes("oci-index-multiarch.regclient.json");
    assert!(measure(Some(OCI), &index).is_err());
}

#[test]
fn missing_or_unknown_content_type_is_refused() {
    let body = br#"{"layers":[]}"#;
    assert_eq!(measure(None, body), Err(ManifestError::MissingContentType));
    assert_eq!(
        measure(Some("  "), body),
        Err(ManifestError::MissingContentType)
    );
    assert!(matches!(
        measure(Some("application/json"), body),
        Err(ManifestError::UnknownContentType(_))
    ));
}

#[test]
fn schema1_message_says_what_to_push_instead() {
    let msg = ManifestError::Schema1.to_string();
    assert!(msg.contains("schema 2") && msg.contains("OCI"), "{msg}");
}

proptest::proptest! {
    #[test]
    fn sums_never_overflow_silently(sizes in proptest::collection::vec(0u64..=u64::MAX, 0..8)) {
        let layers: Vec<String> = sizes.iter().map(|s| format!(r#"{{"size":{s}}}"#)).collect();
        let body = format!(r#"{{"layers":[{}]}}"#, layers.join(","));
        let exact: u128 = sizes.iter().map(|s| u128::from(*s)).sum();
        match measure(Some(OCI), body.as_bytes()) {
            Ok(m) => proptest::prop_assert_eq!(u128::from(m.image_bytes()), exact),
            Err(e) => {
                proptest::prop_assert_eq!(e, ManifestError::SizeOverflow);
                proptest::prop_assert!(exact > i64::MAX as u128 || sizes.iter().any(|s| *s > i64::MAX as u64));
            }
        }
    }
}
