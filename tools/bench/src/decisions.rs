//! P3: decisions per second with ext_proc streams driven directly (`extproc-load`), the sidecar
//! against the do-nothing server in alternating rounds; latency at that load.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::Ctx;
use crate::report::{Cmp, Figure, GREEN, RED};
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

pub(crate) fn p3(ctx: &mut Ctx) -> Result<Vec<Figure>, String> {
    let (seconds, warmup, conc) = (
        ctx.profile.p3_seconds,
        ctx.profile.p3_warmup_seconds,
        ctx.profile.p3_concurrency,
    );
    let targets = [
        ("noop", (ctx.noop.addr, ctx.noop.proc.pid())),
        ("sidecar", (ctx.gateway.grpc, ctx.gateway.proc.pid())),
    ];
    let mut rates: [Vec<f64>; 2] = Default::default();
    let mut samples: [Vec<u64>; 2] = Default::default();
    let mut reports: [Vec<Value>; 2] = Default::default();
    let mut cpu_us: [Vec<f64>; 2] = Default::default();
    let mut generator_busy: [Vec<f64>; 2] = Default::default();
    let mut errors = 0u64;
    let mut first_error = None;
    for round in 0..ctx.profile.p3_rounds {
        for k in 0..2 {
            let m = (round + k) % 2;
            let r = run_load(
                ctx,
                targets[m].1,
                seconds,
                warmup,
                conc,
                &format!("{}-{round}", targets[m].0),
            )?;
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
    let ratios: Vec<f64> = (0..ctx.profile.p3_rounds)
        .map(|r| rates[1][r] / rates[0][r])
        .collect();
    let [noop, sidecar] = samples.map(Dist::new);
    let ratio = median(&ratios);
    let raw = json!({
        "method": format!("extproc-load: {conc} concurrent ext_proc streams (request headers, 3-layer manifest body, 201 response headers, half-close) on 1 HTTP/2 connection, 1 generator thread; {} rounds of {seconds} s (+{warmup} s warm-up) alternating do-nothing server and sidecar; value = median of per-round ratios", ctx.profile.p3_rounds),
        "concurrency": conc,
        "sidecar_rates": rates[1].iter().map(|r| round(*r)).collect::<Vec<_>>(),
        "noop_rates": rates[0].iter().map(|r| round(*r)).collect::<Vec<_>>(),
        "ratio_per_round": ratios.iter().map(|r| round(*r)).collect::<Vec<_>>(),
        "sidecar_decisions_per_s_median": round(median(&rates[1])),
        "noop_decisions_per_s_median": round(median(&rates[0])),
        "sidecar_cpu_us_per_decision_median": round(median(&cpu_us[1])),
        "noop_cpu_us_per_decision_median": round(median(&cpu_us[0])),
        "generator_busy_share_sidecar_runs": generator_busy[1],
        "generator_busy_share_noop_runs": generator_busy[0],
        "sidecar_latency": sidecar.json(),
        "noop_latency": noop.json(),
        "unloaded_concurrency_1": unloaded,
        "errors": errors,
        "first_error": first_error,
        "reports": {"sidecar": reports[1], "noop": reports[0]},
    });
    let sidecar_rate = median(&rates[1]);
    let noop_rate = median(&rates[0]);
    let (p50, p99) = (sidecar.q(0.5), sidecar.q(0.99));
    ctx.plots.p3 = vec![
        (format!("sidecar ({sidecar_rate:.0}/s)"), RED, sidecar),
        (format!("do-nothing server ({noop_rate:.0}/s)"), GREEN, noop),
    ];
    Ok(vec![
        Figure {
            id: "P3".into(),
            what: format!(
                "ext_proc decisions/s: sidecar / do-nothing ({sidecar_rate:.0} vs {noop_rate:.0} /s)"
            ),
            value: if errors > 0 { f64::NAN } else { ratio },
            unit: "ratio",
            target: Some((Cmp::AtLeast, 0.8)),
            raw,
        },
        Figure {
            id: "P3 cpu".into(),
            what: format!(
                "sidecar CPU per decision (do-nothing server: {:.0} us)",
                median(&cpu_us[0])
            ),
            value: median(&cpu_us[1]),
            unit: "us",
            target: None,
            raw: json!({"see": "P3"}),
        },
        Figure {
            id: "P3 p50".into(),
            what: format!("sidecar stream latency p50 at that load ({conc} in flight)"),
            value: p50,
            unit: "ms",
            target: None,
            raw: json!({"see": "P3"}),
        },
        Figure {
            id: "P3 p99".into(),
            what: format!("sidecar stream latency p99 at that load ({conc} in flight)"),
            value: p99,
            unit: "ms",
            target: None,
            raw: json!({"see": "P3"}),
        },
    ])
}
