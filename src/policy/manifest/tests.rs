use super::*;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn fixtures() -> Vec<serde_json::Value> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/manifests");
    let index = std::fs::read(format!("{dir}/index.json")).expect("fixture catalogue is present");
    serde_json::from_slice::<Vec<serde_json::Value>>(&index).expect("catalogue is JSON")
}

fn fixture_bytes(file: &str) -> Vec<u8> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/manifests");
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
            matches!(got, Err(ManifestError::Malformed { .. })),
            "{name}: {got:?}"
        );
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
