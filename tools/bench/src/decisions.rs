//! P3: decisions per second with ext_proc streams driven directly (`extproc-load`), the sidecar in
//! memory mode and in Redis mode against the do-nothing server, in rotating rounds; latency at
//! that load.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::Ctx;
use crate::report::{Cmp, Figure, GREEN, ORANGE, RED};
use crate::stats::{self, Dist, median, round};
use registry_gateway_testkit::{ManagedChild, cpu_seconds};

struct LoadResult {
    rate: f64,
    errors: u64,
    first_error: Option<String>,
    report: Value,
    samples: Vec<u64>,
}

/// One `extproc-load load` run against `target` (served by process `server_pid`).
fn run_load(
    ctx: &Ctx,
    (target, server_pid): (SocketAddr, u32),
    seconds: f64,
    warmup: f64,
    concurrency: usize,
    label: &str,
) -> Result<LoadResult, String> {
    let cpu_before = cpu_seconds(server_pid);
    let samples_path = ctx.run_dir.join(format!("p3-{label}.samples"));
    let mut cmd = Command::new(&ctx.bins.load);
    cmd.arg("load")
        .arg("--target")
        .arg(target.to_string())
        .arg("--seconds")
        .arg(seconds.to_string())
        .arg("--warmup-seconds")
        .arg(warmup.to_string())
        .arg("--concurrency")
        .arg(concurrency.to_string())
        .args(["--repository", "bench/p3", "--tags", "64"])
        .arg("--samples-out")
        .arg(&samples_path);
    let mut proc = ManagedChild::try_spawn(&format!("extproc-load-{label}"), cmd, &ctx.run_dir)?;
    let status = proc.wait_exit(Duration::from_secs_f64(seconds + warmup + 30.0))?;
    if !status.success() {
        return Err(format!(
            "extproc-load {label} failed ({status})\n{}",
            proc.describe()
        ));
    }
    let mut report: Value = serde_json::from_str(proc.stdout().trim())
        .map_err(|e| format!("extproc-load {label} output: {e}\n{}", proc.describe()))?;
    // CPU per decision: the server's CPU over the whole run over every decision it completed;
    // the generator's busy share says whether it, not the server, set the pace.
    let server_cpu = cpu_seconds(server_pid)
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let total = report["decisions_total"].as_f64().unwrap_or(0.0);
    if let (Some(cpu), true) = (server_cpu, total > 0.0) {
        report["server_cpu_seconds"] = json!(round(cpu));
        report["server_cpu_us_per_decision"] = json!(round(cpu / total * 1e6));
    }
    if let (Some(cpu), Some(elapsed)) = (
        report["generator_cpu_seconds"].as_f64(),
        report["elapsed_total_seconds"].as_f64(),
    ) {
        report["generator_busy_share"] = json!(round(cpu / elapsed));
    }
    let samples = stats::read_samples(&samples_path)?;
    let _ = std::fs::remove_file(&samples_path);
    Ok(LoadResult {
        rate: report["rate"].as_f64().unwrap_or(f64::NAN),
        errors: report["errors"].as_u64().unwrap_or(0),
        first_error: report["first_error"].as_str().map(str::to_owned),
        report,
        samples,
    })
}

const NOOP: usize = 0;
const SIDECAR: usize = 1;
const REDIS: usize = 2;

pub(crate) fn p3(ctx: &mut Ctx) -> Result<Vec<Figure>, String> {
    let (seconds, warmup, conc) = (
        ctx.profile.p3_seconds,
        ctx.profile.p3_warmup_seconds,
        ctx.profile.p3_concurrency,
    );
    let targets = [
        ("noop", (ctx.noop.addr, ctx.noop.proc.pid())),
        ("sidecar", (ctx.gateway.grpc, ctx.gateway.proc.pid())),
        (
            "sidecar-redis",
            (ctx.gateway_redis.grpc, ctx.gateway_redis.proc.pid()),
        ),
    ];
    const N: usize = 3;
    let redis_pid = ctx.redis.pid();
    let mut rates: [Vec<f64>; N] = Default::default();
    let mut samples: [Vec<u64>; N] = Default::default();
    let mut reports: [Vec<Value>; N] = Default::default();
    let mut cpu_us: [Vec<f64>; N] = Default::default();
    let mut generator_busy: [Vec<f64>; N] = Default::default();
    let mut redis_cpu_us: Vec<f64> = Vec::new();
    let mut redis_commands_per_decision: Vec<f64> = Vec::new();
    let mut errors = 0u64;
    let mut first_error = None;
    for round in 0..ctx.profile.p3_rounds {
        for k in 0..N {
            let m = (round + k) % N;
            let redis_before = (m == REDIS).then(|| {
                (
                    redis_pid.and_then(cpu_seconds),
                    ctx.redis.command_calls().ok(),
                )
            });
            let r = run_load(
                ctx,
                targets[m].1,
                seconds,
                warmup,
                conc,
                &format!("{}-{round}", targets[m].0),
            )?;
            if let Some((cpu_before, calls_before)) = redis_before {
                let total = r.report["decisions_total"].as_f64().unwrap_or(0.0);
                if let (Some(before), Some(after), true) =
                    (cpu_before, redis_pid.and_then(cpu_seconds), total > 0.0)
                {
                    redis_cpu_us.push((after - before) / total * 1e6);
                }
                if let (Some(before), Ok(after), true) =
                    (calls_before, ctx.redis.command_calls(), total > 0.0)
                {
                    // Every command but our own INFO (the later one counts the earlier one).
                    let commands: u64 = after
                        .iter()
                        .map(|(k, v)| v.saturating_sub(before.get(k).copied().unwrap_or(0)))
                        .sum::<u64>()
                        .saturating_sub(1);
                    redis_commands_per_decision.push(commands as f64 / total);
                }
            }
            rates[m].push(r.rate);
            if let Some(us) = r.report["server_cpu_us_per_decision"].as_f64() {
                cpu_us[m].push(us);
            }
            if let Some(b) = r.report["generator_busy_share"].as_f64() {
                generator_busy[m].push(b);
            }
            errors += r.errors;
            if first_error.is_none() {
                first_error = r.first_error.clone();
            }
            samples[m].extend(r.samples);
            reports[m].push(r.report);
        }
    }
    // Unloaded latency, one stream at a time, for reference.
    let mut unloaded = serde_json::Map::new();
    for (name, addr) in targets {
        let r = run_load(ctx, addr, 1.0, 0.2, 1, &format!("{name}-c1"))?;
        errors += r.errors;
        unloaded.insert(
            name.to_owned(),
            json!({"rate": round(r.rate), "latency": Dist::new(r.samples).json()}),
        );
    }
    let ratios_of = |m: usize| -> Vec<f64> {
        (0..ctx.profile.p3_rounds)
            .map(|r| rates[m][r] / rates[NOOP][r])
            .collect()
    };
    let ratios = ratios_of(SIDECAR);
    let redis_ratios = ratios_of(REDIS);
    let [noop, sidecar, redis] = samples.map(Dist::new);
    let ratio = median(&ratios);
    let redis_ratio = median(&redis_ratios);
    let rounded = |v: &[f64]| v.iter().map(|r| round(*r)).collect::<Vec<_>>();
    let raw = json!({
        "method": format!("extproc-load: {conc} concurrent ext_proc streams (request headers, 3-layer manifest body, 201 response headers, half-close) on 1 HTTP/2 connection, 1 generator thread; {} rounds of {seconds} s (+{warmup} s warm-up), each round the do-nothing server, the memory-mode sidecar and the Redis-mode sidecar in rotating order; value = median of per-round ratios", ctx.profile.p3_rounds),
        "concurrency": conc,
        "sidecar_rates": rounded(&rates[SIDECAR]),
        "sidecar_redis_rates": rounded(&rates[REDIS]),
        "noop_rates": rounded(&rates[NOOP]),
        "ratio_per_round": rounded(&ratios),
        "redis_ratio_per_round": rounded(&redis_ratios),
        "sidecar_decisions_per_s_median": round(median(&rates[SIDECAR])),
        "sidecar_redis_decisions_per_s_median": round(median(&rates[REDIS])),
        "noop_decisions_per_s_median": round(median(&rates[NOOP])),
        "sidecar_cpu_us_per_decision_median": round(median(&cpu_us[SIDECAR])),
        "sidecar_redis_cpu_us_per_decision_median": round(median(&cpu_us[REDIS])),
        "redis_server_cpu_us_per_decision_median": round(median(&redis_cpu_us)),
        "redis_commands_per_decision_per_round": rounded(&redis_commands_per_decision),
        "noop_cpu_us_per_decision_median": round(median(&cpu_us[NOOP])),
        "generator_busy_share_sidecar_runs": generator_busy[SIDECAR],
        "generator_busy_share_sidecar_redis_runs": generator_busy[REDIS],
        "generator_busy_share_noop_runs": generator_busy[NOOP],
        "sidecar_latency": sidecar.json(),
        "sidecar_redis_latency": redis.json(),
        "noop_latency": noop.json(),
        "unloaded_concurrency_1": unloaded,
        "errors": errors,
        "first_error": first_error,
        "reports": {"sidecar": reports[SIDECAR], "sidecar-redis": reports[REDIS], "noop": reports[NOOP]},
    });
    let sidecar_rate = median(&rates[SIDECAR]);
    let redis_rate = median(&rates[REDIS]);
    let noop_rate = median(&rates[NOOP]);
    if let Some(Value::Object(redis_mode)) = ctx.extra.get_mut("redis_mode") {
        redis_mode.insert(
            "p3_decisions_per_s_redis_over_noop".to_owned(),
            json!(round(redis_ratio)),
        );
        redis_mode.insert(
            "p3_decisions_per_s_redis_over_memory".to_owned(),
            json!(round(redis_rate / sidecar_rate)),
        );
        redis_mode.insert(
            "p3_decisions_per_s".to_owned(),
            json!({"redis": round(redis_rate), "memory": round(sidecar_rate), "noop": round(noop_rate)}),
        );
        redis_mode.insert(
            "p3_redis_commands_per_decision_per_round".to_owned(),
            json!(rounded(&redis_commands_per_decision)),
        );
    } else {
        ctx.extra.insert(
            "redis_mode".to_owned(),
            json!({
                "p3_decisions_per_s_redis_over_noop": round(redis_ratio),
                "p3_decisions_per_s_redis_over_memory": round(redis_rate / sidecar_rate),
                "p3_decisions_per_s": {"redis": round(redis_rate), "memory": round(sidecar_rate), "noop": round(noop_rate)},
                "p3_redis_commands_per_decision_per_round": rounded(&redis_commands_per_decision),
            }),
        );
    }
    let (p50, p99) = (sidecar.q(0.5), sidecar.q(0.99));
    let (redis_p50, redis_p99) = (redis.q(0.5), redis.q(0.99));
    let latency = |q: &str, value: f64| {
        let what = format!("sidecar stream latency {q} at that load ({conc} in flight)");
        Figure::info(&format!("P3 {q}"), what, value, "ms", "P3")
    };
    let (noop_cpu, redis_server_cpu) = (median(&cpu_us[NOOP]), median(&redis_cpu_us));
    ctx.plots.p3 = vec![
        (format!("sidecar ({sidecar_rate:.0}/s)"), RED, sidecar),
        (format!("sidecar, redis ({redis_rate:.0}/s)"), ORANGE, redis),
        (format!("do-nothing server ({noop_rate:.0}/s)"), GREEN, noop),
    ];
    let value = |v: f64| if errors > 0 { f64::NAN } else { v };
    Ok(vec![
        Figure {
            id: "P3".into(),
            what: format!(
                "ext_proc decisions/s: sidecar / do-nothing ({sidecar_rate:.0} vs {noop_rate:.0} /s)"
            ),
            value: value(ratio),
            unit: "ratio",
            target: Some((Cmp::AtLeast, 0.8)),
            raw,
        },
        Figure::info(
            "P3 cpu",
            format!("sidecar CPU per decision (do-nothing server: {noop_cpu:.0} us)"),
            median(&cpu_us[SIDECAR]),
            "us",
            "P3",
        ),
        latency("p50", p50),
        latency("p99", p99),
        Figure {
            id: "P3 redis".into(),
            what: format!(
                "ext_proc decisions/s, Redis mode / do-nothing ({redis_rate:.0} vs {noop_rate:.0} /s)"
            ),
            value: value(redis_ratio),
            unit: "ratio",
            target: Some((Cmp::AtLeast, 0.6)),
            raw: json!({"see": "P3", "also": "redis_mode"}),
        },
        Figure::info(
            "P3 redis cpu",
            format!(
                "Redis-mode sidecar CPU per decision (redis-server: {redis_server_cpu:.0} us more)"
            ),
            median(&cpu_us[REDIS]),
            "us",
            "P3",
        ),
        Figure::info(
            "P3 redis p50",
            format!("Redis-mode stream latency p50 at that load (p99 {redis_p99:.3} ms)"),
            redis_p50,
            "ms",
            "P3",
        ),
    ])
}
