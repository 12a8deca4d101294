//! Micro-benchmarks of the decision path (issue 6): what one manifest write costs the sidecar's CPU
//! once the bytes have arrived, without gRPC, tokio or the network.
//!
//! - `measure/{10,500}_layers`: `policy::manifest::measure` on an OCI image manifest (parse the
//!   JSON, check the media type, sum the layer sizes).
//! - `rule_lookup/100_rules/*`: `Policy::limits_for` among 100 rules, for a repository matched by
//!   the last rule (the whole `RegexSet` is consulted) and for one matched by none (the global
//!   limits; two passes, the name and the name with a trailing `/`).
//! - `decision/*`: a whole decision, `Policy::evaluate` + `TagQuery::finish`, against a `TagBook`
//!   holding 1,000 tags: pushing an existing tag (moves it, reserves nothing), and a new tag
//!   (reserves a slot; released after each iteration so every iteration sees the same book).
//!
//! Run with `cargo bench --bench decision`; `scripts/bench` measures the whole stack.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use registry_gateway_policy::{
    ConfigSource, Evaluation, ManifestPush, ManifestWrite, Policy, TagBook, compile,
    manifest::measure,
};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// An OCI image manifest with `layers` gzip layers, formatted as BuildKit writes it (compact JSON,
/// 64-hex digests, an annotation on the config), so parsing costs what a real push costs.
fn manifest(layers: usize) -> Vec<u8> {
    let hex = |i: usize| format!("{:064x}", (i as u128 + 1) * 0x9E37_79B9_7F4A_7C15_u128);
    let layers: Vec<serde_json::Value> = (0..layers)
        .map(|i| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": format!("sha256:{}", hex(i)),
                "size": 1_000_000 + i * 4096,
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{}", hex(usize::MAX >> 8)),
            "size": 1469,
            "annotations": {"org.opencontainers.image.created": "2025-01-01T00:00:00Z"},
        },
        "layers": layers,
    }))
    .expect("JSON value serialises")
}

/// 100 rules `^team-<i>/.*` (i = 0..99), each with its own limits, and global limits.
fn policy_with_100_rules() -> Policy {
    let mut yaml = String::from("max_image_size: 1GB\ntag_count_limit: 5000\nrules:\n");
    for i in 0..100 {
        yaml.push_str(&format!(
            "  - path: ^team-{i}/.*\n    limit: {{max_image_size: {}MB, tag_count_limit: {}}}\n",
            100 + i,
            2000 + i
        ));
    }
    compile(&ConfigSource::File {
        name: "bench.yaml".to_owned(),
        text: yaml,
    })
    .expect("the benchmark policy is valid")
}

fn bench_measure(c: &mut Criterion) {
    let mut group = c.benchmark_group("measure");
    for layers in [10, 500] {
        let body = manifest(layers);
        group.bench_function(format!("{layers}_layers"), |b| {
            b.iter(|| measure(black_box(Some(OCI_MANIFEST)), black_box(&body)))
        });
    }
    group.finish();
}

fn bench_rule_lookup(c: &mut Criterion) {
    let policy = policy_with_100_rules();
    let mut group = c.benchmark_group("rule_lookup/100_rules");
    group.bench_function("last_rule_matches", |b| {
        b.iter(|| {
            let (rule, _) = policy.limits_for(black_box("team-99/app"));
            rule.map(|r| r.index)
        })
    });
    group.bench_function("no_rule_matches", |b| {
        b.iter(|| {
            let (rule, _) = policy.limits_for(black_box("elsewhere/app"));
            rule.map(|r| r.index)
        })
    });
    group.finish();
}

fn bench_decision(c: &mut Criterion) {
    let policy = policy_with_100_rules();
    let body = manifest(10);
    let mut book = TagBook::new((0..1000).map(|i| format!("v{i}")));
    let existing = ManifestWrite::from_request("PUT", "/v2/team-99/app/manifests/v500")
        .expect("a manifest write");
    let new_tag = ManifestWrite::from_request("PUT", "/v2/team-99/app/manifests/new-tag")
        .expect("a manifest write");
    let mut group = c.benchmark_group("decision/1000_tags");
    for (name, write) in [("existing_tag", &existing), ("new_tag", &new_tag)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let push = ManifestPush {
                    write,
                    content_type: Some(OCI_MANIFEST),
                    body: &body,
                };
                let decision = match policy.evaluate(black_box(&push)) {
                    Evaluation::NeedTags(query) => query.finish(&mut book),
                    Evaluation::Done(_) => panic!("a tag push needs the tag book"),
                };
                assert!(decision.is_allowed(), "{decision:?}");
                // Keep the book as it was: the next iteration decides the same question.
                if let Some(tag) = write.reference.tag()
                    && !book.is_confirmed(tag)
                {
                    book.release(tag);
                }
                decision
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short enough for a shared 2-core machine; the numbers are microseconds and settle quickly.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_measure, bench_rule_lookup, bench_decision
}
criterion_main!(benches);
