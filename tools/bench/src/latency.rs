//! P2: the latency a manifest PUT gains from the sidecar, warm tag cache: Envoy alone, Envoy with
//! the sidecar and Envoy with the do-nothing ext_proc server, interleaved request by request.

use std::net::SocketAddr;
use std::time::Instant;

use serde_json::{Value, json};

use crate::report::{BLUE, Cmp, Figure, GREEN, RED};
use crate::stats::{Dist, round};
use crate::{Ctx, image_layout};
use registry_gateway_testkit::Conn;

pub(crate) fn p2(ctx: &mut Ctx) -> Result<Vec<Figure>, String> {
    let repo = "bench/p2";
    let image = image_layout(ctx, 3, 4096, 2);
    Conn::new(ctx.registry.addr).upload_layout_blobs(repo, &image)?;
    let modes: [(&str, SocketAddr); 3] = [
        ("envoy", ctx.envoy_alone.addr),
        ("envoy+sidecar", ctx.envoy_sidecar.addr),
        ("envoy+noop-ext_proc", ctx.envoy_noop.addr),
    ];
    const TAGS: usize = 16;
    let mut conns: Vec<Conn> = modes.iter().map(|(_, a)| Conn::new(*a)).collect();
    // Warm-up: every tag exists and the sidecar's tag book for the repository is filled.
    for (m, conn) in conns.iter_mut().enumerate() {
        for i in 0..TAGS + 100 {
            let status = conn.put_layout_manifest(repo, &format!("t{}", i % TAGS), &image)?;
            if status != 201 {
                return Err(format!("P2 warm-up through {}: HTTP {status}", modes[m].0));
            }
        }
    }
    const STREAMS: &str = "http.registry.ext_proc.streams_started";
    let streams0 = [&ctx.envoy_alone, &ctx.envoy_sidecar, &ctx.envoy_noop].map(|e| e.stat(STREAMS));
    let sum0 = ctx
        .gateway
        .metric("registry_gateway_decision_duration_seconds_sum")?;
    let count0 = ctx
        .gateway
        .metric("registry_gateway_decision_duration_seconds_count")?;
    let fetch0 = ctx
        .gateway
        .metric("registry_gateway_registry_tag_list_requests_total")?;
    let n = ctx.profile.p2_puts_per_mode;
    let mut samples: [Vec<u64>; 3] = Default::default();
    let mut errors = 0usize;
    let mut first_error = None;
    for i in 0..n {
        let tag = format!("t{}", i % TAGS);
        for k in 0..3 {
            let m = (i + k) % 3;
            let t = Instant::now();
            let status = conns[m].put_layout_manifest(repo, &tag, &image)?;
            let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
            if status == 201 {
                samples[m].push(ns);
            } else {
                errors += 1;
                first_error.get_or_insert(format!("{}: HTTP {status}", modes[m].0));
            }
        }
    }
    let sum1 = ctx
        .gateway
        .metric("registry_gateway_decision_duration_seconds_sum")?;
    let count1 = ctx
        .gateway
        .metric("registry_gateway_decision_duration_seconds_count")?;
    let fetch1 = ctx
        .gateway
        .metric("registry_gateway_registry_tag_list_requests_total")?;
    let streams1 = [&ctx.envoy_alone, &ctx.envoy_sidecar, &ctx.envoy_noop].map(|e| e.stat(STREAMS));
    let streams: Vec<Option<u64>> = (0..3)
        .map(|m| Some(streams1[m]?.saturating_sub(streams0[m].unwrap_or(0))))
        .collect();
    // Envoy alone must not have asked any processor; the others once per PUT.
    if streams[0].unwrap_or(0) != 0 {
        return Err(format!(
            "P2: Envoy alone opened ext_proc streams: {streams:?}"
        ));
    }
    let [alone, sidecar, noop] = samples.map(Dist::new);
    let added = |p: f64| sidecar.q(p) - alone.q(p);
    let quantiles = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];
    let diff = |a: &Dist, b: &Dist| -> Value {
        quantiles
            .iter()
            .map(|(name, p)| ((*name).to_owned(), json!(round(a.q(*p) - b.q(*p)))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let decisions = count1 - count0;
    let raw = json!({
        "puts_per_mode": n,
        "method": "PUT /v2/bench/p2/manifests/t<i%16> (existing tags, 3 x 4 KiB layers) on one keep-alive HTTP/1.1 connection per mode, modes rotated request by request; latency = request written to response read",
        "errors": errors,
        "first_error": first_error,
        "reconnects": conns.iter().map(|c| c.reconnects).sum::<u64>(),
        "envoy": alone.json(),
        "envoy+sidecar": sidecar.json(),
        "envoy+noop-ext_proc": noop.json(),
        "added_ms_sidecar_minus_envoy": diff(&sidecar, &alone),
        "added_ms_noop_ext_proc_minus_envoy": diff(&noop, &alone),
        "added_ms_sidecar_minus_noop_ext_proc": diff(&sidecar, &noop),
        "envoy_ext_proc_streams_started": {"envoy": streams[0], "envoy+sidecar": streams[1], "envoy+noop-ext_proc": streams[2]},
        "sidecar_decisions": decisions,
        "sidecar_mean_decision_ms": if decisions > 0.0 { round((sum1 - sum0) / decisions * 1e3) } else { f64::NAN },
        "sidecar_tag_list_fetches_during": fetch1 - fetch0,
    });
    ctx.plots.p2 = vec![
        ("envoy + sidecar".to_owned(), RED, sidecar.clone()),
        ("envoy alone".to_owned(), BLUE, alone.clone()),
        (
            "envoy + do-nothing ext_proc".to_owned(),
            GREEN,
            noop.clone(),
        ),
    ];
    let what =
        |q: &str| format!("manifest PUT: added latency {q}, envoy+sidecar - envoy ({n}/mode)");
    let mut figures = vec![
        Figure {
            id: "P2 p50".into(),
            what: what("p50"),
            value: added(0.5),
            unit: "ms",
            target: Some((Cmp::AtMost, 0.5)),
            raw,
        },
        Figure {
            id: "P2 p99".into(),
            what: what("p99"),
            value: added(0.99),
            unit: "ms",
            target: Some((Cmp::AtMost, 2.0)),
            raw: json!({"see": "P2 p50"}),
        },
        Figure {
            id: "P2 p99.9".into(),
            what: what("p99.9"),
            value: added(0.999),
            unit: "ms",
            target: None,
            raw: json!({"see": "P2 p50"}),
        },
    ];
    if errors > 0 {
        for f in &mut figures {
            f.value = f64::NAN;
        }
    }
    Ok(figures)
}
