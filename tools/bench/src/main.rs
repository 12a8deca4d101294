//! `registry-gateway-bench`: the performance budget, measured in one run against real processes.
//! Run it through `scripts/bench`, which builds, sets up the binaries and cleans up after a kill;
//! `docs/PERFORMANCE.md` explains the method and keeps the latest figures.
//!
//! One registry (CNCF distribution 2.8), one Redis (`redis-server`), two sidecars (memory mode,
//! and Redis mode: `--state redis://…`), one do-nothing ext_proc server, and five Envoys built
//! from the shipped files with the test harness's structural substitutions:
//! - **envoy+sidecar**: `envoy/envoy.yaml`, ext_proc cluster → the memory-mode sidecar;
//! - **envoy** ("Envoy alone"): the same file with the `manifest-write` route's ext_proc
//!   FilterConfig removed ([`stack::ENVOY_ALONE_DIFF`]);
//! - **envoy+noop**: `envoy/envoy.yaml`, ext_proc cluster → the do-nothing server (a diagnostic
//!   for P2: what the ext_proc protocol itself costs);
//! - **envoy+redis**: `envoy/envoy.yaml`, ext_proc cluster → the Redis-mode sidecar;
//! - **envoy+ext_authz**: `envoy/ext-authz.yaml`, ext_authz cluster → the memory-mode sidecar.
//!
//! The mode_override probe (P7) starts two more do-nothing servers and Envoys of its own, and
//! stops them when it ends.
//!
//! Every comparative figure interleaves its modes request by request (or round by round), so
//! noise from other work on this shared machine lands on all modes alike, and reports ratios or
//! differences. Every loop is bounded by a count, and the whole run by a watchdog.
#![allow(clippy::print_stdout)]

mod blob;
mod decisions;
mod latency;
mod mode_override;
mod pushes;
mod report;
mod stack;
mod stats;
mod svg;
mod tags;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use registry_gateway_testkit::{self as support, Layout, Redis};
use serde_json::{Value, json};

use crate::report::{Cmp, Figure, Plots, fmt_value, plot, print_table, short_unit};
use crate::stack::{Bins, Envoy, Gateway, NoopExtProc, Registry, Tweak};
use crate::stats::round;

#[derive(Parser)]
#[command(about = "registry-gateway performance budget (docs/PERFORMANCE.md), one interleaved run")]
struct Args {
    /// Smaller sizes and counts: finishes in under 2 minutes; figures are indicative.
    #[arg(long)]
    quick: bool,
    /// Only these figures (comma-separated, e.g. `P2,P3`); P6 needs P3 and/or P5.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where summary.json, latency.svg and run/ (logs, configs) go.
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
    /// The registry's storage (default: <out-dir>/run/storage). Removed at the end.
    #[arg(long)]
    storage_dir: Option<PathBuf>,
    /// Live child PIDs are listed here (`PID STARTTIME NAME`), for the wrapper's clean-up.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// The sidecar's `--log` filter. The default is the sidecar's own default, `info`, with one
    /// audit line per decision (written to a file); `warn` measures without them.
    #[arg(long, default_value = "info")]
    sidecar_log: String,
    /// Exit non-zero (2) when a target is missed.
    #[arg(long)]
    strict: bool,
    #[arg(long, env = "ENVOY_BIN")]
    envoy_bin: PathBuf,
    #[arg(long, env = "REGISTRY_BIN", default_value = "/usr/bin/docker-registry")]
    registry_bin: PathBuf,
    #[arg(long, env = "SKOPEO_BIN", default_value = "/usr/bin/skopeo")]
    skopeo_bin: PathBuf,
    /// Default: `registry-gateway` next to this binary.
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Default: `extproc-load` next to this binary.
    #[arg(long)]
    load_bin: Option<PathBuf>,
    /// The Envoy configuration to measure.
    #[arg(long, default_value = "envoy/envoy.yaml")]
    envoy_config: PathBuf,
    /// The ext_authz Envoy configuration to measure beside it.
    #[arg(long, default_value = "envoy/ext-authz.yaml")]
    ext_authz_config: PathBuf,
}

/// Sizes and counts.
#[derive(Clone, Debug, serde::Serialize)]
struct Profile {
    name: &'static str,
    p1_blob_bytes: usize,
    p1_rounds: usize,
    p2_puts_per_mode: usize,
    p3_rounds: usize,
    p3_seconds: f64,
    p3_warmup_seconds: f64,
    p3_concurrency: usize,
    p4_pushes_per_mode: usize,
    p5_tags: usize,
    p5_pushes: usize,
    p7_puts_per_mode: usize,
    watchdog_seconds: u64,
}

const MIB: usize = 1024 * 1024;

impl Profile {
    fn full() -> Profile {
        Profile {
            name: "full",
            p1_blob_bytes: 200 * MIB,
            p1_rounds: 21,
            p2_puts_per_mode: 4000,
            p3_rounds: 5,
            p3_seconds: 4.0,
            p3_warmup_seconds: 0.5,
            p3_concurrency: 32,
            p4_pushes_per_mode: 100,
            p5_tags: 10_000,
            p5_pushes: 1000,
            p7_puts_per_mode: 2000,
            watchdog_seconds: 720,
        }
    }

    fn quick() -> Profile {
        Profile {
            name: "quick",
            p1_blob_bytes: 100 * MIB,
            p1_rounds: 15,
            p2_puts_per_mode: 600,
            p3_rounds: 2,
            p3_seconds: 2.0,
            p3_warmup_seconds: 0.5,
            p3_concurrency: 32,
            p4_pushes_per_mode: 20,
            p5_tags: 10_000,
            p5_pushes: 200,
            p7_puts_per_mode: 400,
            watchdog_seconds: 200,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(all_pass) => {
            if args.strict && !all_pass {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("registry-gateway-bench: {e}");
            ExitCode::from(1)
        }
    }
}

/// Everything the figures use.
struct Ctx {
    profile: Profile,
    run_dir: PathBuf,
    bins: Bins,
    /// The shipped ext_proc Envoy file (`--envoy-config`).
    envoy_template: PathBuf,
    registry: Registry,
    /// The memory-mode sidecar.
    gateway: Gateway,
    noop: NoopExtProc,
    /// The Redis-mode sidecar's store.
    redis: Redis,
    /// The Redis-mode sidecar (`--state redis://…`).
    gateway_redis: Gateway,
    /// Envoy with the sidecar (the shipped config).
    envoy_sidecar: Envoy,
    /// Envoy alone (manifest route's ext_proc FilterConfig removed).
    envoy_alone: Envoy,
    /// Envoy with the do-nothing ext_proc server.
    envoy_noop: Envoy,
    /// Envoy (the shipped config) with the Redis-mode sidecar.
    envoy_redis: Envoy,
    /// Envoy with the shipped ext_authz config and the memory-mode sidecar.
    envoy_authz: Envoy,
    /// Latency distributions for the plot.
    plots: Plots,
    /// The Redis, ext_authz and mode_override figures by name, for summary.json.
    extra: serde_json::Map<String, Value>,
}

impl Ctx {
    /// Stops every process (each is killed by PID on drop): the Envoys first, then the servers
    /// behind them, then the registry.
    fn stop(self) {
        drop((
            self.envoy_sidecar,
            self.envoy_alone,
            self.envoy_noop,
            self.envoy_redis,
            self.envoy_authz,
        ));
        drop((self.gateway, self.gateway_redis, self.noop, self.redis));
        drop(self.registry);
    }
}

fn run(args: &Args) -> Result<bool, String> {
    let began = Instant::now();
    let profile = if args.quick {
        Profile::quick()
    } else {
        Profile::full()
    };
    let wants =
        |id: &str| args.only.is_empty() || args.only.iter().any(|o| o.eq_ignore_ascii_case(id));

    // Watchdog: whatever happens, the run ends and the children die.
    let watchdog = Duration::from_secs(profile.watchdog_seconds);
    std::thread::spawn(move || {
        std::thread::sleep(watchdog);
        eprintln!(
            "registry-gateway-bench: watchdog: the run exceeded {watchdog:?}; killing its processes"
        );
        support::kill_all_listed();
        std::process::exit(124);
    });
    support::set_pid_file(args.pid_file.clone());

    if args.quick {
        println!(
            "QUICK PROFILE: smaller sizes and counts (P1 {} MiB x {} rounds, P2 {} PUTs per mode, P3 {} x {} s rounds, P4 {} pushes per mode, P5 {} tags / {} pushes): indicative figures, not the acceptance run (drop --quick for that).",
            profile.p1_blob_bytes / MIB,
            profile.p1_rounds,
            profile.p2_puts_per_mode,
            profile.p3_rounds,
            profile.p3_seconds,
            profile.p4_pushes_per_mode,
            profile.p5_tags,
            profile.p5_pushes
        );
    }

    let run_dir = args.out_dir.join("run");
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
    }
    std::fs::create_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
    let run_dir = run_dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", run_dir.display()))?;
    let storage = args
        .storage_dir
        .clone()
        .unwrap_or_else(|| run_dir.join("storage"));

    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
        .unwrap_or_default();
    let bins = Bins {
        envoy: args.envoy_bin.clone(),
        registry: args.registry_bin.clone(),
        skopeo: args.skopeo_bin.clone(),
        gateway: args
            .gateway_bin
            .clone()
            .unwrap_or_else(|| exe_dir.join("registry-gateway")),
        load: args
            .load_bin
            .clone()
            .unwrap_or_else(|| exe_dir.join("extproc-load")),
    };
    for (what, path) in [
        ("Envoy (ENVOY_BIN)", &bins.envoy),
        ("docker-registry (REGISTRY_BIN)", &bins.registry),
        ("skopeo (SKOPEO_BIN)", &bins.skopeo),
        ("registry-gateway", &bins.gateway),
        ("extproc-load", &bins.load),
    ] {
        if !path.is_file() {
            return Err(format!(
                "{what} not found at {}; run scripts/bench (it runs scripts/setup and cargo build --release)",
                path.display()
            ));
        }
    }

    let machine = machine_info(&bins);
    println!(
        "machine: {} CPUs ({}), load average {}",
        machine["nproc"],
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["loadavg_start"].as_str().unwrap_or("?")
    );

    // The policy: 100 rules, the bench repositories matched by the last one.
    let policy_dir = run_dir.join("policy");
    std::fs::create_dir_all(&policy_dir).map_err(|e| e.to_string())?;
    let policy_path = policy_dir.join("config.yaml");
    std::fs::write(&policy_path, bench_policy()).map_err(|e| e.to_string())?;

    println!(
        "starting: registry, redis-server, 2 sidecars (memory, redis), do-nothing ext_proc server, 5 Envoys ..."
    );
    let registry = Registry::start(&bins, &run_dir, &storage)?;
    let noop = NoopExtProc::start(
        &bins,
        &run_dir,
        "noop-extproc",
        profile.watchdog_seconds + 60,
        &[],
    )?;
    // No persistence: what is measured is the store's round trip, not its disk.
    let redis = Redis::start_in(&run_dir.join("redis"), "redis-server")?;
    let gateway = Gateway::start(
        &bins,
        &run_dir,
        "registry-gateway",
        &policy_path,
        registry.addr,
        &args.sidecar_log,
        &[],
    )?;
    let gateway_redis = Gateway::start(
        &bins,
        &run_dir,
        "registry-gateway-redis",
        &policy_path,
        registry.addr,
        &args.sidecar_log,
        &["--state".to_owned(), redis.url()],
    )?;
    let envoy = |name: &str, template: &Path, processor, tweak| {
        let config = stack::envoy_config(template, registry.addr, processor, tweak)?;
        Envoy::start(&bins, &run_dir, name, &config)
    };
    let shipped = args.envoy_config.as_path();
    let envoy_sidecar = envoy("envoy-sidecar", shipped, gateway.grpc, Tweak::None)?;
    let envoy_alone = envoy("envoy-alone", shipped, gateway.grpc, Tweak::Alone)?;
    let envoy_noop = envoy("envoy-noop", shipped, noop.addr, Tweak::None)?;
    let envoy_redis = envoy("envoy-redis", shipped, gateway_redis.grpc, Tweak::None)?;
    let envoy_authz = envoy(
        "envoy-ext-authz",
        &args.ext_authz_config,
        gateway.grpc,
        Tweak::None,
    )?;
    let idle_rss_kib = support::status_kib(gateway.proc.pid(), "VmRSS");
    println!(
        "  registry {}  redis {}  sidecar grpc {} admin {}  sidecar-redis grpc {} admin {}  noop {}  envoy+sidecar {}  envoy {}  envoy+noop {}  envoy+redis {}  envoy+ext_authz {}  (started in {:.1} s)",
        registry.addr,
        redis.port(),
        gateway.grpc,
        gateway.admin,
        gateway_redis.grpc,
        gateway_redis.admin,
        noop.addr,
        envoy_sidecar.addr,
        envoy_alone.addr,
        envoy_noop.addr,
        envoy_redis.addr,
        envoy_authz.addr,
        began.elapsed().as_secs_f64()
    );

    let mut ctx = Ctx {
        profile: profile.clone(),
        run_dir: run_dir.clone(),
        bins,
        envoy_template: args.envoy_config.clone(),
        registry,
        gateway,
        noop,
        redis,
        gateway_redis,
        envoy_sidecar,
        envoy_alone,
        envoy_noop,
        envoy_redis,
        envoy_authz,
        plots: Plots::default(),
        extra: serde_json::Map::new(),
    };

    let mut figures: Vec<Figure> = Vec::new();
    let mut phase_seconds = serde_json::Map::new();
    let mut rss_p3 = None;
    let mut rss_p5 = None;
    type Phase = fn(&mut Ctx) -> Result<Vec<Figure>, String>;
    let phases: [(&str, Phase); 6] = [
        ("P1", blob::p1),
        ("P2", latency::p2),
        ("P3", decisions::p3),
        ("P4", pushes::p4),
        ("P5", tags::p5),
        ("P7", mode_override::p7),
    ];
    for (id, phase) in phases {
        let needed_for_p6 = (id == "P3" || id == "P5") && wants("P6");
        if !wants(id) && !needed_for_p6 {
            continue;
        }
        let t = Instant::now();
        let pid = ctx.gateway.proc.pid();
        let reset = support::reset_peak_rss(pid);
        println!("{id} ...");
        let mut got = phase(&mut ctx)?;
        let hwm = support::status_kib(pid, "VmHWM");
        if id == "P3" {
            rss_p3 = Some((hwm, reset));
        }
        if id == "P5" {
            rss_p5 = Some((hwm, reset));
        }
        for proc in [
            &mut ctx.registry.proc,
            &mut ctx.gateway.proc,
            &mut ctx.gateway_redis.proc,
            &mut ctx.noop.proc,
            &mut ctx.envoy_sidecar.proc,
            &mut ctx.envoy_alone.proc,
            &mut ctx.envoy_noop.proc,
            &mut ctx.envoy_redis.proc,
            &mut ctx.envoy_authz.proc,
        ] {
            proc.check_running(id)?;
        }
        if ctx.redis.pid().is_none() || ctx.redis.cli(&["PING"]).as_deref() != Some("PONG") {
            return Err(format!("redis-server stopped answering during {id}"));
        }
        if wants(id) {
            for f in &got {
                println!(
                    "  {:<14} {:>12} {:<6} {}",
                    f.id,
                    fmt_value(f.value, f.unit),
                    short_unit(f.unit),
                    f.what
                );
            }
            figures.append(&mut got);
        }
        phase_seconds.insert(id.to_owned(), json!(round(t.elapsed().as_secs_f64())));
    }
    if wants("P6") {
        for (during, reading) in [("P3", rss_p3), ("P5", rss_p5)] {
            let Some((hwm, reset)) = reading else {
                continue;
            };
            let mib = hwm.map_or(f64::NAN, |k| k as f64 / 1024.0);
            figures.push(Figure {
                id: format!("P6 {during}"),
                what: format!("sidecar peak RSS (VmHWM) during {during}"),
                value: mib,
                unit: "MiB",
                target: Some((Cmp::AtMost, 32.0)),
                raw: json!({
                    "vm_hwm_kib": hwm,
                    "peak_reset_before_phase": reset,
                    "note": if reset { "VmHWM reset (clear_refs 5) when the phase began: the peak of that phase" } else { "VmHWM could not be reset: peak since the sidecar started" },
                    "idle_rss_after_start_kib": idle_rss_kib,
                }),
            });
        }
    }

    // Stop everything before writing results (children are killed by PID on drop).
    let svg_doc = plot(&ctx, machine["loadavg_start"].as_str().unwrap_or("?"));
    let extra = std::mem::take(&mut ctx.extra);
    let logs_dir = run_dir.clone();
    let storage_dir = ctx.registry.storage.clone();
    ctx.stop();
    let _ = std::fs::remove_dir_all(&storage_dir);

    let mut machine = machine;
    machine["loadavg_end"] = json!(loadavg());
    let all_pass = figures.iter().all(|f| f.pass() != Some(false));
    let summary = json!({
        "schema": "registry-gateway-bench/1",
        "profile": profile,
        "quick": args.quick,
        "started_unix": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) - began.elapsed().as_secs(),
        "duration_seconds": round(began.elapsed().as_secs_f64()),
        "phase_seconds": phase_seconds,
        "machine": machine,
        "setup": {
            "envoy_config": args.envoy_config.display().to_string(),
            "envoy_flags": "--disable-hot-restart --concurrency 1 --log-level warn",
            "envoy_alone_differs_by": stack::ENVOY_ALONE_DIFF,
            "ext_authz_envoy_config": args.ext_authz_config.display().to_string(),
            "redis": "redis-server (Debian) on 127.0.0.1:<ephemeral> --save '' --appendonly no; the Redis-mode sidecar adds --state redis://127.0.0.1:<port>",
            "mode_override_probe_envoys_differ_by": stack::MODE_OVERRIDE_DIFF,
            "sidecar_flags": format!("--registry-insecure --log {} (defaults otherwise: tag cache TTL 5m)", args.sidecar_log),
            "policy": "100 rules ^team-<i>/.* then ^bench/.* (max_image_size 1GB, tag_count_limit 100000): every bench repository takes the last rule",
            "registry": "distribution 2.8 (docker-registry), filesystem storage, log level info, access log on",
            "logs": logs_dir.display().to_string(),
        },
        "all_pass": all_pass,
        "figures": figures.iter().map(Figure::json).collect::<Vec<_>>(),
        "redis_mode": extra.get("redis_mode").cloned().unwrap_or(Value::Null),
        "ext_authz": extra.get("ext_authz").cloned().unwrap_or(Value::Null),
        "mode_override": extra.get("mode_override").cloned().unwrap_or(Value::Null),
    });
    let summary_path = args.out_dir.join("summary.json");
    std::fs::write(
        &summary_path,
        serde_json::to_vec_pretty(&summary).expect("JSON value serialises"),
    )
    .map_err(|e| format!("{}: {e}", summary_path.display()))?;
    let svg_path = args.out_dir.join("latency.svg");
    std::fs::write(&svg_path, svg_doc).map_err(|e| format!("{}: {e}", svg_path.display()))?;

    print_table(&figures, &profile, &summary);
    println!(
        "\nwrote {} and {} (logs and configs in {}); {:.0} s in all",
        summary_path.display(),
        svg_path.display(),
        logs_dir.display(),
        began.elapsed().as_secs_f64()
    );
    Ok(all_pass)
}

/// A single-image layout of `layers` layers of `layer_size` bytes, content from `seed`, written
/// under the run directory (the kit's layouts: the benchmark pushes what the tests push).
fn image_layout(ctx: &Ctx, layers: usize, layer_size: u64, seed: u64) -> Layout {
    let dir = ctx.run_dir.join("images").join(seed.to_string());
    support::oci_image_layout(&dir, &vec![layer_size; layers], seed)
}

fn bench_policy() -> String {
    let mut yaml = String::from(
        "# registry-gateway-bench policy: 100 rules; the bench repositories take the last one.\nmax_image_size: 1GB\ntag_count_limit: 1000\nrules:\n",
    );
    for i in 0..99 {
        yaml.push_str(&format!(
            "  - path: ^team-{i}/.*\n    limit: {{max_image_size: {}MB, tag_count_limit: {}}}\n",
            100 + i,
            100 + i
        ));
    }
    yaml.push_str(
        "  - path: ^bench/.*\n    limit: {max_image_size: 1GB, tag_count_limit: 100000}\n",
    );
    yaml
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn command_output(program: &Path, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.trim().to_owned()
        })
        .unwrap_or_default()
}

fn machine_info(bins: &Bins) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let envoy = command_output(&bins.envoy, &["--version"]);
    let envoy = envoy
        .split("version: ")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("")
        .to_owned();
    let git = |args: &[&str]| command_output(Path::new("git"), args);
    json!({
        "nproc": nproc,
        "cpu_model": cpu_model,
        "mem_total": mem_total,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "loadavg_start": loadavg(),
        "envoy": envoy,
        "registry": command_output(&bins.registry, &["--version"]),
        "skopeo": command_output(&bins.skopeo, &["--version"]),
        "git_commit": git(&["rev-parse", "HEAD"]),
        "git_dirty": !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty(),
    })
}
