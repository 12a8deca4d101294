//! P5: tag-list requests the registry serves while 1,000 pushes go into a repository of 10,000
//! tags, counted from the registry's own access log.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::report::{Cmp, Figure};
use crate::stats::{Dist, round};
use crate::{Ctx, image_layout};
use registry_gateway_testkit::Conn;

pub(crate) fn p5(ctx: &mut Ctx) -> Result<Vec<Figure>, String> {
    let repo = "bench/p5";
    let tags = ctx.profile.p5_tags;
    let pushes = ctx.profile.p5_pushes;
    let image = image_layout(ctx, 1, 4096, 5);
    let mut direct = Conn::new(ctx.registry.addr);
    direct.upload_layout_blobs(repo, &image)?;
    let status = direct.put_layout_manifest(repo, "tag-00000", &image)?;
    if status != 201 {
        return Err(format!("P5 seed push: HTTP {status}"));
    }
    // distribution 2.8 keeps a tag as files: _manifests/tags/<tag>/current/link (the digest)
    // and _manifests/tags/<tag>/index/sha256/<hex>/link. Write the other tags that way.
    let hex = image.digest.trim_start_matches("sha256:").to_owned();
    let tags_dir = ctx
        .registry
        .storage
        .join("docker/registry/v2/repositories")
        .join(repo)
        .join("_manifests/tags");
    let t = Instant::now();
    for i in 1..tags {
        let tag_dir = tags_dir.join(format!("tag-{i:05}"));
        let current = tag_dir.join("current");
        let index = tag_dir.join("index/sha256").join(&hex);
        for (d, what) in [(&current, "current"), (&index, "index")] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            std::fs::write(d.join("link"), &image.digest)
                .map_err(|e| format!("{what} link: {e}"))?;
        }
    }
    let created_in = t.elapsed().as_secs_f64();
    let listed = direct.list_tags(repo)?.len();
    if listed != tags {
        return Err(format!(
            "P5: the registry lists {listed} tags, expected {tags}"
        ));
    }
    let metric = "registry_gateway_registry_tag_list_requests_total";
    let list_path = format!("/v2/{repo}/tags/list");
    let log0 = ctx.registry.access_log().len();
    let m0 = ctx.gateway.metric(metric)?;

    let mut via = Conn::new(ctx.envoy_sidecar.addr);
    via.warm().map_err(|e| e.to_string())?;
    let t = Instant::now();
    let status = via.put_layout_manifest(repo, "new-00000", &image)?;
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    if status != 201 {
        return Err(format!("P5 first push through the sidecar: HTTP {status}"));
    }
    std::thread::sleep(Duration::from_millis(200));
    let log1 = ctx.registry.access_log().len();
    let m1 = ctx.gateway.metric(metric)?;
    let first_fetches = ctx.registry.count_gets(log0, &list_path);

    let mut lat = Vec::with_capacity(pushes);
    let mut refused = 0usize;
    for i in 1..=pushes {
        let t = Instant::now();
        let status = via.put_layout_manifest(repo, &format!("new-{i:05}"), &image)?;
        lat.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        if status != 201 {
            refused += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let steady_fetches = ctx.registry.count_gets(log1, &list_path);
    let m2 = ctx.gateway.metric(metric)?;
    let after = direct.list_tags(repo)?.len();
    let lat = Dist::new(lat);
    let raw = json!({
        "tags_before": tags,
        "tags_written_as_files_in_s": round(created_in),
        "pushes_after_first": pushes,
        "method": "PUT /v2/bench/p5/manifests/new-<i> (a new tag each) through envoy+sidecar on one keep-alive connection; tag-list requests counted from the registry's access log (GET /v2/bench/p5/tags/list) and from the sidecar's registry_gateway_registry_tag_list_requests_total",
        "first_push_ms": round(first_ms),
        "tag_list_requests_for_first_push": first_fetches,
        "tag_list_requests_steady_state_registry_log": steady_fetches,
        "sidecar_metric_first": m1 - m0,
        "sidecar_metric_steady": m2 - m1,
        "refused": refused,
        "tags_listed_after": after,
        "tags_expected_after": tags + 1 + pushes,
        "steady_push_latency": lat.json(),
    });
    if refused > 0 || after != tags + 1 + pushes {
        return Err(format!(
            "P5: {refused} pushes refused, {after} tags listed after: {raw}"
        ));
    }
    Ok(vec![Figure {
        id: "P5".into(),
        what: format!(
            "tag-list requests (registry log) during {pushes} pushes, {tags} tags (first push: {first_fetches}, {first_ms:.0} ms)"
        ),
        value: steady_fetches as f64,
        unit: "requests",
        target: Some((Cmp::AtMost, 0.0)),
        raw,
    }])
}
