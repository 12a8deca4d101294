//! P1: blob push throughput of a large layer, Envoy with the sidecar over Envoy alone (and Envoy
//! alone over the registry directly).

use std::net::SocketAddr;
use std::time::Instant;

use serde_json::json;

use crate::report::{Cmp, Figure};
use crate::stats::{median, round};
use crate::{Ctx, MIB};
use registry_gateway_testkit as support;
use registry_gateway_testkit::Conn;

pub(crate) fn p1(ctx: &mut Ctx) -> Result<Vec<Figure>, String> {
    let size = ctx.profile.p1_blob_bytes;
    let blob = support::random_bytes(size, 0xB10B);
    let digest = support::sha256_digest(&blob);
    let repo = "bench/p1";
    let modes: [(&str, SocketAddr); 3] = [
        ("direct", ctx.registry.addr),
        ("envoy", ctx.envoy_alone.addr),
        ("envoy+sidecar", ctx.envoy_sidecar.addr),
    ];
    let mut conns: Vec<Conn> = modes.iter().map(|(_, a)| Conn::new(*a)).collect();
    // Warm-up: the first upload creates the blob; later ones find it and only store the upload.
    for conn in &mut conns {
        conn.upload_blob(repo, &blob, &digest)?;
    }
    const STREAMS: &str = "http.registry.ext_proc.streams_started";
    let streams_before = ctx.envoy_sidecar.stat(STREAMS);
    let mut seconds: [Vec<f64>; 3] = Default::default();
    for round in 0..ctx.profile.p1_rounds {
        for k in 0..3 {
            let m = (round + k) % 3;
            let t = Instant::now();
            conns[m].upload_blob(repo, &blob, &digest)?;
            seconds[m].push(t.elapsed().as_secs_f64());
        }
    }
    // Structural check: blob uploads never reach the processor.
    let streams = ctx
        .envoy_sidecar
        .stat(STREAMS)
        .map(|after| after.saturating_sub(streams_before.unwrap_or(0)));
    if streams.unwrap_or(0) != 0 {
        return Err(format!(
            "P1: blob uploads opened {streams:?} ext_proc streams"
        ));
    }
    let mb_s = |s: &f64| size as f64 / MIB as f64 / s;
    let sidecar_over_alone: Vec<f64> = (0..ctx.profile.p1_rounds)
        .map(|r| seconds[1][r] / seconds[2][r])
        .collect();
    let alone_over_direct: Vec<f64> = (0..ctx.profile.p1_rounds)
        .map(|r| seconds[0][r] / seconds[1][r])
        .collect();
    let per_mode = |m: usize| {
        json!({
            "seconds": seconds[m].iter().map(|s| round(*s)).collect::<Vec<_>>(),
            "mib_per_s": seconds[m].iter().map(|s| round(mb_s(s))).collect::<Vec<_>>(),
            "median_mib_per_s": round(mb_s(&median(&seconds[m]))),
        })
    };
    let raw = json!({
        "blob_bytes": size,
        "rounds": ctx.profile.p1_rounds,
        "method": "monolithic upload (POST /blobs/uploads/, PUT ?digest= with the bytes) on one keep-alive connection per mode; modes rotated each round; value = median of per-round ratios",
        "direct": per_mode(0),
        "envoy": per_mode(1),
        "envoy+sidecar": per_mode(2),
        "ratio_per_round": sidecar_over_alone.iter().map(|r| round(*r)).collect::<Vec<_>>(),
        "ratio_per_round_quartiles": quartiles(&sidecar_over_alone),
        "ratio_of_medians": round(median(&seconds[1]) / median(&seconds[2])),
        "ext_proc_streams_during_uploads": streams,
        "alone_over_direct_per_round": alone_over_direct.iter().map(|r| round(*r)).collect::<Vec<_>>(),
    });
    Ok(vec![
        Figure {
            id: "P1".into(),
            what: format!(
                "blob push {} MiB: throughput envoy+sidecar / envoy",
                size / MIB
            ),
            value: median(&sidecar_over_alone),
            unit: "ratio",
            target: Some((Cmp::AtLeast, 0.97)),
            raw: raw.clone(),
        },
        Figure {
            id: "P1 direct".into(),
            what: format!(
                "blob push: throughput envoy / direct ({:.0} vs {:.0} MiB/s)",
                mb_s(&median(&seconds[1])),
                mb_s(&median(&seconds[0]))
            ),
            value: median(&alone_over_direct),
            unit: "ratio",
            target: None,
            raw: json!({"see": "P1"}),
        },
    ])
}

/// First and third quartiles (of the sorted values, nearest rank): the spread of the per-round
/// ratios, i.e. how finely this machine resolves the figure.
fn quartiles(values: &[f64]) -> [f64; 2] {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |p: f64| {
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1)) - 1;
        v.get(i).copied().map_or(f64::NAN, round)
    };
    [at(0.25), at(0.75)]
}
