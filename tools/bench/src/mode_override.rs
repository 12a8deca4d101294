//! P7: the mode_override probe. Does Envoy 1.40 honour `ProcessingResponse.mode_override` that
//! skips the response-headers message, when it rides on the reply to the request headers, and
//! when it rides on the reply to the (buffered) request body, where a manifest PUT is decided?
//! And what does the skipped message save?
//!
//! Three Envoys of `envoy/envoy.yaml` with `allow_mode_override: true` ([`MODE_OVERRIDE_DIFF`]),
//! each with its own do-nothing server: one that never overrides (the control), one that
//! attaches the override to its request-headers reply, one that attaches it to its body reply.
//! Envoy's own `ext_proc.stream_msgs_sent` says how many messages each PUT cost; latency is
//! measured as in P2, modes interleaved request by request, beside Envoy alone. They are started
//! for this phase and stopped at its end.

use std::net::SocketAddr;

use serde_json::json;

use crate::latency;
use crate::report::Figure;
use crate::stack::{self, Envoy, MODE_OVERRIDE_DIFF, NoopExtProc, Tweak};
use crate::stats::{Dist, round};
use crate::{Ctx, image_layout};
use registry_gateway_testkit::Conn;

const SENT: &str = "http.registry.ext_proc.stream_msgs_sent";
const SPURIOUS: &str = "http.registry.ext_proc.spurious_msgs_received";

pub(crate) fn p7(ctx: &mut Ctx) -> Result<Vec<Figure>, String> {
    let max_seconds = ctx.profile.watchdog_seconds + 60;
    let mut on_headers = NoopExtProc::start(
        &ctx.bins,
        &ctx.run_dir,
        "noop-override-headers",
        max_seconds,
        &["--mode-override", "request-headers"],
    )?;
    let mut on_body = NoopExtProc::start(
        &ctx.bins,
        &ctx.run_dir,
        "noop-override-body",
        max_seconds,
        &["--mode-override", "request-body"],
    )?;
    let envoy = |name: &str, processor: SocketAddr| -> Result<Envoy, String> {
        let config = stack::envoy_config(
            &ctx.envoy_template,
            ctx.registry.addr,
            processor,
            Tweak::AllowModeOverride,
        )?;
        Envoy::start(&ctx.bins, &ctx.run_dir, name, &config)
    };
    let mut control = envoy("envoy-override-control", ctx.noop.addr)?;
    let mut skip_headers = envoy("envoy-override-headers", on_headers.addr)?;
    let mut skip_body = envoy("envoy-override-body", on_body.addr)?;

    let repo = "bench/p7";
    let image = image_layout(ctx, 3, 4096, 7);
    Conn::new(ctx.registry.addr).upload_layout_blobs(repo, &image)?;
    let modes: [(&str, SocketAddr, Option<&Envoy>); 4] = [
        ("envoy", ctx.envoy_alone.addr, None),
        (
            "allow_mode_override, no override",
            control.addr,
            Some(&control),
        ),
        (
            "override on the request-headers reply",
            skip_headers.addr,
            Some(&skip_headers),
        ),
        (
            "override on the request-body reply",
            skip_body.addr,
            Some(&skip_body),
        ),
    ];
    const TAGS: usize = 16;
    let mut conns: Vec<Conn> = modes.iter().map(|(_, a, _)| Conn::new(*a)).collect();
    for (m, conn) in conns.iter_mut().enumerate() {
        for i in 0..TAGS + 20 {
            let status = conn.put_layout_manifest(repo, &format!("t{}", i % TAGS), &image)?;
            if status != 201 {
                return Err(format!("P7 warm-up through {}: HTTP {status}", modes[m].0));
            }
        }
    }
    let stat = |e: Option<&Envoy>, name: &str| e.and_then(|e| e.stat(name));
    let sent0: Vec<Option<u64>> = modes.iter().map(|(_, _, e)| stat(*e, SENT)).collect();
    let n = ctx.profile.p7_puts_per_mode;
    let latency::PutRounds {
        samples,
        errors,
        first_error,
    } = latency::timed_put_rounds(
        &mut conns,
        modes.map(|(name, _, _)| name),
        repo,
        &image,
        n,
        TAGS,
    )?;
    let per_put: Vec<Option<f64>> = modes
        .iter()
        .zip(&sent0)
        .map(|((_, _, e), before)| {
            let after = stat(*e, SENT)?;
            Some(after.saturating_sub(before.unwrap_or(0)) as f64 / n as f64)
        })
        .collect();
    let spurious: Vec<Option<u64>> = modes.iter().map(|(_, _, e)| stat(*e, SPURIOUS)).collect();
    for proc in [
        &mut control.proc,
        &mut skip_headers.proc,
        &mut skip_body.proc,
        &mut on_headers.proc,
        &mut on_body.proc,
    ] {
        proc.check_running("P7")?;
    }
    let [alone, plain, headers, body] = samples.map(Dist::new);
    let saved = |p: f64| plain.q(p) - headers.q(p);
    let mode_override = json!({
        "what": "does Envoy honour ProcessingResponse.mode_override {response_header_mode: SKIP} (whole mode spelled out: request body BUFFERED) from a do-nothing processor, and what does the skipped response-headers message save",
        "envoys_differ_by": MODE_OVERRIDE_DIFF,
        "puts_per_mode": n,
        "method": "PUT /v2/bench/p7/manifests/t<i%16> (existing tags, 3 x 4 KiB layers), one keep-alive connection per mode, modes rotated request by request; messages per PUT = delta of Envoy's http.registry.ext_proc.stream_msgs_sent / PUTs",
        "ext_proc_messages_per_put": {
            "no_override": per_put[1],
            "override_on_request_headers_reply": per_put[2],
            "override_on_request_body_reply": per_put[3],
        },
        "honoured_on_request_headers_reply": per_put[2].is_some_and(|v| v < 2.5),
        "honoured_on_request_body_reply": per_put[3].is_some_and(|v| v < 2.5),
        "spurious_msgs_received": {"no_override": spurious[1], "on_request_headers": spurious[2], "on_request_body": spurious[3]},
        "latency": {
            "envoy": alone.json(),
            "no_override": plain.json(),
            "override_on_request_headers_reply": headers.json(),
            "override_on_request_body_reply": body.json(),
        },
        "saved_ms_by_skipping_response_headers": {
            "p50": round(saved(0.5)),
            "p90": round(saved(0.9)),
            "p99": round(saved(0.99)),
        },
        "added_ms_over_envoy": {
            "no_override_p50": round(plain.q(0.5) - alone.q(0.5)),
            "override_on_request_headers_p50": round(headers.q(0.5) - alone.q(0.5)),
            "override_on_request_body_p50": round(body.q(0.5) - alone.q(0.5)),
        },
        "errors": errors,
        "first_error": first_error,
    });
    ctx.extra
        .insert("mode_override".to_owned(), mode_override.clone());
    drop((control, skip_headers, skip_body, on_headers, on_body));

    let nan_if_errors = |v: f64| if errors > 0 { f64::NAN } else { v };
    // The figures after the first point to its raw record rather than repeat it.
    let see_first = |id: &str, what: &str, value: f64, unit: &'static str| Figure {
        id: id.into(),
        what: what.into(),
        value: nan_if_errors(value),
        unit,
        target: None,
        raw: json!({"see": "P7 msgs hdr"}),
    };
    Ok(vec![
        Figure {
            id: "P7 msgs hdr".into(),
            what: "ext_proc messages per PUT, mode_override (skip response headers) on the request-headers reply".into(),
            value: nan_if_errors(per_put[2].unwrap_or(f64::NAN)),
            unit: "count",
            target: None,
            raw: mode_override,
        },
        see_first(
            "P7 msgs body",
            "ext_proc messages per PUT, the same override on the request-body reply",
            per_put[3].unwrap_or(f64::NAN),
            "count",
        ),
        see_first(
            "P7 saves p50",
            "latency saved by the skipped response-headers message, p50 (do-nothing server)",
            saved(0.5),
            "ms",
        ),
        see_first("P7 saves p99", "the same, p99", saved(0.99), "ms"),
    ])
}
