//! P2: the latency a manifest PUT gains from the sidecar, warm tag cache: Envoy alone, Envoy with
//! the sidecar, Envoy with the do-nothing ext_proc server, Envoy with the Redis-mode sidecar and
//! Envoy with the shipped ext_authz file (memory-mode sidecar), interleaved request by request.
//! Around the Redis-mode requests, the store's own command count and the sidecar's store calls.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::report::{BLUE, Cmp, Figure, GREEN, ORANGE, PURPLE, RED};
use crate::stack::Gateway;
use crate::stats::{Dist, round};
use crate::{Ctx, image_layout};
use registry_gateway_testkit::{Conn, Layout};

const MODES: usize = 5;
const ALONE: usize = 0;
const SIDECAR: usize = 1;
const NOOP: usize = 2;
const REDIS: usize = 3;
const AUTHZ: usize = 4;

/// The Redis-mode sidecar's store calls (by `op`) and the server's commands (by name).
struct StoreCounts {
    calls: BTreeMap<String, f64>,
    commands: BTreeMap<String, u64>,
    decisions: f64,
    /// Decisions started on the request line, by result.
    early: BTreeMap<String, f64>,
}

fn store_counts(ctx: &Ctx) -> Result<StoreCounts, String> {
    let mut calls = BTreeMap::new();
    for (labels, value) in ctx
        .gateway_redis
        .samples("registry_gateway_state_store_calls_total")?
    {
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or("?")
                .trim_matches('"')
                .to_owned()
        };
        *calls
            .entry(format!("{}/{}", label("op"), label("result")))
            .or_insert(0.0) += value;
    }
    let early = ctx
        .gateway_redis
        .samples("registry_gateway_early_decisions_total")?
        .into_iter()
        .map(|(labels, value)| {
            (
                labels.replace("result=", "").trim_matches('"').to_owned(),
                value,
            )
        })
        .collect();
    Ok(StoreCounts {
        early,
        calls,
        commands: ctx.redis.command_calls()?,
        decisions: ctx
            .gateway_redis
            .metric("registry_gateway_decisions_total")?,
    })
}

fn delta_f(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

fn delta_u(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v != 0)
        .collect()
}

fn ops(calls: &BTreeMap<String, f64>, op: &str) -> f64 {
    calls
        .iter()
        .filter(|(k, _)| k.split('/').next() == Some(op))
        // `sum` of no floats is -0.0, which prints as "-0".
        .fold(0.0, |total, (_, v)| total + v)
}
/// `n` rounds of one manifest PUT through each connection, the first connection turning with the
/// round so that no mode always goes first (or always follows the same one). Per connection the
/// nanoseconds of each 201; the other answers are counted, the first one kept with its mode's name.
pub(crate) fn timed_put_rounds<const M: usize>(
    conns: &mut [Conn],
    names: [&str; M],
    repo: &str,
    image: &Layout,
    n: usize,
    tags: usize,
) -> Result<PutRounds<M>, String> {
    let mut samples: [Vec<u64>; M] = std::array::from_fn(|_| Vec::new());
    let mut errors = 0usize;
    let mut first_error = None;
    for i in 0..n {
        let tag = format!("t{}", i % tags);
        for k in 0..M {
            let m = (i + k) % M;
            let t = Instant::now();
            let status = conns[m].put_layout_manifest(repo, &tag, image)?;
            let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
            if status == 201 {
                samples[m].push(ns);
            } else {
                errors += 1;
                first_error.get_or_insert(format!("{}: HTTP {status}", names[m]));
            }
        }
    }
    Ok(PutRounds {
        samples,
        errors,
        first_error,
    })
}

/// The sidecar's decision time (sum and count, seconds) and its tag-list fetches so far.
fn sidecar_counters(gateway: &Gateway) -> Result<[f64; 3], String> {
    Ok([
        gateway.metric("registry_gateway_decision_duration_seconds_sum")?,
        gateway.metric("registry_gateway_decision_duration_seconds_count")?,
        gateway.metric("registry_gateway_registry_tag_list_requests_total")?,
    ])
}

pub(crate) struct PutRounds<const M: usize> {
    pub(crate) samples: [Vec<u64>; M],
    pub(crate) errors: usize,
    pub(crate) first_error: Option<String>,
}

pub(crate) fn p2(ctx: &mut Ctx) -> Result<Vec<Figure>, String> {
    let repo = "bench/p2";
    let image = image_layout(ctx, 3, 4096, 2);
    Conn::new(ctx.registry.addr).upload_layout_blobs(repo, &image)?;
    let modes: [(&str, SocketAddr); MODES] = [
        ("envoy", ctx.envoy_alone.addr),
        ("envoy+sidecar", ctx.envoy_sidecar.addr),
        ("envoy+noop-ext_proc", ctx.envoy_noop.addr),
        ("envoy+sidecar-redis", ctx.envoy_redis.addr),
        ("envoy+ext_authz", ctx.envoy_authz.addr),
    ];
    const TAGS: usize = 16;
    let mut conns: Vec<Conn> = modes.iter().map(|(_, a)| Conn::new(*a)).collect();
    // Warm-up: every tag exists and each sidecar's tag book for the repository is filled (the
    // Redis-mode one in the store).
    for (m, conn) in conns.iter_mut().enumerate() {
        for i in 0..TAGS + 100 {
            let status = conn.put_layout_manifest(repo, &format!("t{}", i % TAGS), &image)?;
            if status != 201 {
                return Err(format!("P2 warm-up through {}: HTTP {status}", modes[m].0));
            }
        }
    }
    const STREAMS: &str = "http.registry.ext_proc.streams_started";
    const AUTHZ_OK: &str = "http.registry.ext_authz.ok";
    let ext_proc_envoys = [
        &ctx.envoy_alone,
        &ctx.envoy_sidecar,
        &ctx.envoy_noop,
        &ctx.envoy_redis,
    ];
    let streams0 = ext_proc_envoys.map(|e| e.stat(STREAMS));
    let authz0 = ctx.envoy_authz.stat(AUTHZ_OK);
    let [sum0, count0, fetch0] = sidecar_counters(&ctx.gateway)?;
    let redis_sum0 = ctx
        .gateway_redis
        .metric("registry_gateway_decision_duration_seconds_sum")?;
    let store0 = store_counts(ctx)?;
    let n = ctx.profile.p2_puts_per_mode;
    let PutRounds {
        samples,
        errors,
        first_error,
    } = timed_put_rounds(
        &mut conns,
        modes.map(|(name, _)| name),
        repo,
        &image,
        n,
        TAGS,
    )?;
    let [sum1, count1, fetch1] = sidecar_counters(&ctx.gateway)?;
    // Settlements go to the store without waiting for it: let the last ones land.
    let mut store1 = store_counts(ctx)?;
    let deadline = Instant::now() + Duration::from_secs(3);
    while ops(&delta_f(&store1.calls, &store0.calls), "settle")
        < ops(&delta_f(&store1.calls, &store0.calls), "decide")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
        store1 = store_counts(ctx)?;
    }
    let redis_sum1 = ctx
        .gateway_redis
        .metric("registry_gateway_decision_duration_seconds_sum")?;
    let streams1 = ext_proc_envoys.map(|e| e.stat(STREAMS));
    let authz1 = ctx.envoy_authz.stat(AUTHZ_OK);
    let streams: Vec<Option<u64>> = (0..ext_proc_envoys.len())
        .map(|m| Some(streams1[m]?.saturating_sub(streams0[m].unwrap_or(0))))
        .collect();
    // Envoy alone must not have asked any processor; the others once per PUT.
    if streams[ALONE].unwrap_or(0) != 0 {
        return Err(format!(
            "P2: Envoy alone opened ext_proc streams: {streams:?}"
        ));
    }
    let authz_checks = authz1
        .zip(authz0)
        .map(|(after, before)| after.saturating_sub(before));

    // Redis commands per decision, counted by the server itself. The second INFO counted the
    // first one: one `info` of the delta is ours.
    let calls = delta_f(&store1.calls, &store0.calls);
    let mut commands = delta_u(&store1.commands, &store0.commands);
    if let Some(info) = commands.get_mut("info") {
        *info = info.saturating_sub(1);
    }
    commands.retain(|_, v| *v != 0);
    let redis_decisions = store1.decisions - store0.decisions;
    // INFO commandstats also counts the commands a script runs inside the server; the round
    // trips are the script calls (EVALSHA, or EVAL when the script cache was cold). The
    // sidecar's once-a-second dataset identity check (SET rg:epoch NX GET, INFO server) is not
    // per decision and is reported apart.
    let server_commands: u64 = commands.values().sum();
    let server_scripts: u64 = ["evalsha", "eval"]
        .iter()
        .filter_map(|c| commands.get(*c))
        .sum();
    let per = |x: f64| {
        if redis_decisions > 0.0 {
            x / redis_decisions
        } else {
            f64::NAN
        }
    };
    let decide_calls = ops(&calls, "decide");
    let settle_calls = ops(&calls, "settle");
    let sidecar_calls: f64 = calls.values().sum();

    let dists: Vec<Dist> = samples.into_iter().map(Dist::new).collect();
    let (alone, sidecar, noop, redis, authz) = (
        &dists[ALONE],
        &dists[SIDECAR],
        &dists[NOOP],
        &dists[REDIS],
        &dists[AUTHZ],
    );
    let quantiles = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];
    let diff = |a: &Dist, b: &Dist| -> Value {
        quantiles
            .iter()
            .map(|(name, p)| ((*name).to_owned(), json!(round(a.q(*p) - b.q(*p)))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let decisions = count1 - count0;
    let method = "PUT /v2/bench/p2/manifests/t<i%16> (existing tags, 3 x 4 KiB layers) on one keep-alive HTTP/1.1 connection per mode, modes rotated request by request; latency = request written to response read";
    let raw = json!({
        "puts_per_mode": n,
        "method": method,
        "errors": errors,
        "first_error": first_error,
        "reconnects": conns.iter().map(|c| c.reconnects).sum::<u64>(),
        "envoy": alone.json(),
        "envoy+sidecar": sidecar.json(),
        "envoy+noop-ext_proc": noop.json(),
        "envoy+sidecar-redis": redis.json(),
        "envoy+ext_authz": authz.json(),
        "added_ms_sidecar_minus_envoy": diff(sidecar, alone),
        "added_ms_noop_ext_proc_minus_envoy": diff(noop, alone),
        "added_ms_sidecar_minus_noop_ext_proc": diff(sidecar, noop),
        "added_ms_redis_minus_memory_sidecar": diff(redis, sidecar),
        "added_ms_ext_authz_minus_envoy": diff(authz, alone),
        "envoy_ext_proc_streams_started": {"envoy": streams[ALONE], "envoy+sidecar": streams[SIDECAR], "envoy+noop-ext_proc": streams[NOOP], "envoy+sidecar-redis": streams[REDIS]},
        "envoy_ext_authz_ok_checks": authz_checks,
        "sidecar_decisions": decisions,
        "sidecar_mean_decision_ms": if decisions > 0.0 { round((sum1 - sum0) / decisions * 1e3) } else { f64::NAN },
        "sidecar_redis_mean_decision_ms": round(per(redis_sum1 - redis_sum0) * 1e3),
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
        ("envoy + sidecar (redis)".to_owned(), ORANGE, redis.clone()),
        (
            "envoy (ext_authz) + sidecar".to_owned(),
            PURPLE,
            authz.clone(),
        ),
    ];

    let scripts_per_decision = per(server_scripts as f64);
    let redis_mode = json!({
        "what": "the Redis-mode sidecar (--state redis://) behind the shipped envoy/envoy.yaml, in the same P2 rotation as memory mode; and the store's commands per decision during those PUTs (warm cache: every tag exists, the book is in the store)",
        "p2_added_ms_redis_minus_memory": {
            "p50": round(redis.q(0.5) - sidecar.q(0.5)),
            "p99": round(redis.q(0.99) - sidecar.q(0.99)),
            "p99.9": round(redis.q(0.999) - sidecar.q(0.999)),
        },
        "p2_added_ms_redis_minus_envoy": diff(redis, alone),
        "decisions_measured": redis_decisions,
        "puts_sent": n,
        "redis_round_trips_per_decision": round(scripts_per_decision),
        "redis_script_calls_total": server_scripts,
        "redis_commands_per_decision_all": round(per(server_commands as f64)),
        "redis_commands_by_name": commands,
        "redis_commands_total": server_commands,
        "redis_commands_note": "INFO commandstats counts every command the server ran, those run inside scripts (HMGET, SISMEMBER, ZRANGE...) included; the client round trips are the EVALSHA/EVAL calls. set/info: the sidecar's dataset identity check, once a second, not per decision",
        "store_calls_by_op_result": calls,
        "store_calls_per_decision": round(per(sidecar_calls)),
        "store_decide_calls_per_decision": round(per(decide_calls)),
        "store_settle_calls_per_decision": round(per(settle_calls)),
        "server_script_calls_equal_store_calls": (server_scripts as f64 - sidecar_calls).abs() < 0.5,
        "early_decisions_by_result": delta_f(&store1.early, &store0.early),
        "note": "decide runs on the decision's path (one EVALSHA before Envoy lets the PUT through); for a push that re-writes counted tags it starts on the request headers, while Envoy gathers the body (early_decisions_by_result.used); settle runs after the registry's 201, without the PUT waiting for it",
    });
    ctx.extra.insert("redis_mode".to_owned(), redis_mode);
    ctx.extra.insert(
        "ext_authz".to_owned(),
        json!({
            "what": "envoy/ext-authz.yaml (ext_authz, body packed as bytes) with the memory-mode sidecar, in the same P2 rotation",
            "p2_added_ms_ext_authz_minus_envoy": diff(authz, alone),
            "p2_added_ms_ext_proc_minus_envoy": diff(sidecar, alone),
            "p2_ms_ext_authz_minus_ext_proc": diff(authz, sidecar),
            "ok_checks": authz_checks,
        }),
    );

    let added = |q: &str, at: f64, target: Option<(Cmp, f64)>, raw: Value| Figure {
        id: format!("P2 {q}"),
        what: format!("manifest PUT: added latency {q}, envoy+sidecar - envoy ({n}/mode)"),
        value: sidecar.q(at) - alone.q(at),
        unit: "ms",
        target,
        raw,
    };
    let mut figures = vec![
        added("p50", 0.5, Some((Cmp::AtMost, 0.5)), raw),
        added(
            "p99",
            0.99,
            Some((Cmp::AtMost, 2.0)),
            json!({"see": "P2 p50"}),
        ),
        added("p99.9", 0.999, None, json!({"see": "P2 p50"})),
        Figure {
            id: "P2 redis p50".into(),
            what: "Redis mode over memory mode, added p50: envoy+sidecar(redis) - envoy+sidecar"
                .into(),
            value: redis.q(0.5) - sidecar.q(0.5),
            unit: "ms",
            target: Some((Cmp::AtMost, 0.3)),
            raw: json!({"see": "redis_mode", "also": "P2 p50"}),
        },
        Figure::info(
            "P2 redis p99",
            "Redis mode over memory mode, added p99",
            redis.q(0.99) - sidecar.q(0.99),
            "ms",
            "redis_mode",
        ),
        Figure::info(
            "redis cmds",
            format!(
                "Redis round trips (EVALSHA, server-counted) per push, warm cache: {decide_calls:.0} decide + {settle_calls:.0} settle / {redis_decisions:.0}"
            ),
            scripts_per_decision,
            "count",
            "redis_mode",
        ),
        Figure {
            id: "redis rtt".into(),
            what:
                "of which on the decision's path, before Envoy lets the PUT through (op=\"decide\")"
                    .into(),
            value: per(decide_calls),
            unit: "count",
            target: Some((Cmp::AtMost, 1.0)),
            raw: json!({"see": "redis_mode"}),
        },
        Figure::info(
            "P2 authz p50",
            "ext_authz mode: added latency p50, envoy(ext-authz.yaml)+sidecar - envoy",
            authz.q(0.5) - alone.q(0.5),
            "ms",
            "ext_authz",
        ),
        Figure::info(
            "P2 authz p99",
            "ext_authz mode: added latency p99",
            authz.q(0.99) - alone.q(0.99),
            "ms",
            "ext_authz",
        ),
    ];
    if errors > 0 {
        for f in &mut figures {
            f.value = f64::NAN;
        }
    }
    Ok(figures)
}
