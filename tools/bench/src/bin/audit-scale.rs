//! `audit-scale`: `registry-gateway audit` over a registry of 1,000 repositories of 20 tags (by
//! default), its wall time, CPU time and peak RSS, and whether it found every repository and tag.
//!
//! Starts a real docker-registry on loopback (through the test kit) and fills it fast: one small
//! image pushed once to `seed/base`, its blobs mounted into every repository and its manifest PUT
//! under every tag with raw HTTP (`--fill-concurrency` requests in flight). Then runs the
//! `registry-gateway` binary of the same build profile, `audit --json` with the default
//! `--concurrency` and limits nothing breaks, under `/usr/bin/time -f "%e %M %U %S"`.
//!
//! Prints one JSON object. Exits 1 when the audit does not exit 0, when its counts are not every
//! repository and tag (the seed's included) with no violation, or when it takes longer than
//! `--max-seconds` or its peak RSS exceeds `--max-rss-mib`; 2 when the measurement cannot run.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use registry_gateway_testkit::{
    Registry, RegistryOptions, gateway_bin, mount_layout_blobs_many, oci_image_layout,
    put_manifest_many,
};
use serde_json::{Value, json};

const KB: u64 = 1024;
/// Limits nothing in the fill breaks: every finding would be a miscount.
const GENEROUS: &str = "max_image_size: 1GB\ntag_count_limit: 100000\n";
const MAX_REPOSITORIES: usize = 100_000;
const MAX_TAGS: usize = 1_000;

#[derive(Parser, Debug)]
#[command(about = "registry-gateway audit over a filled registry: wall time, peak RSS, counts")]
struct Args {
    /// Repositories to fill (`scale/repo-NNNN`), besides the seed repository.
    #[arg(long, default_value_t = 1000)]
    repositories: usize,
    /// Tags of each repository.
    #[arg(long, default_value_t = 20)]
    tags: usize,
    /// Requests in flight while filling the registry.
    #[arg(long, default_value_t = 16)]
    fill_concurrency: usize,
    /// Fail when the audit takes longer than this (wall time).
    #[arg(long, default_value_t = 60.0)]
    max_seconds: f64,
    /// Fail when the audit's peak RSS exceeds this many MiB.
    #[arg(long, default_value_t = 64)]
    max_rss_mib: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok((report, failures)) => {
            println!("{report}");
            for failure in &failures {
                eprintln!("audit-scale: FAILED: {failure}");
            }
            if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("audit-scale: {e}");
            ExitCode::from(2)
        }
    }
}

/// `/usr/bin/time -f "%e %M %U %S"`'s last stderr line.
struct Usage {
    seconds: f64,
    max_rss_kib: u64,
    cpu_seconds: f64,
}

impl Usage {
    fn parse(stderr: &str) -> Option<Usage> {
        let mut parts = stderr.lines().last()?.split_whitespace();
        let seconds = parts.next()?.parse().ok()?;
        let max_rss_kib = parts.next()?.parse().ok()?;
        let cpu_seconds = parts.filter_map(|s| s.parse::<f64>().ok()).sum();
        Some(Usage {
            seconds,
            max_rss_kib,
            cpu_seconds,
        })
    }
}

async fn run(args: &Args) -> Result<(Value, Vec<String>), String> {
    if args.repositories == 0 || args.repositories > MAX_REPOSITORIES {
        return Err(format!("--repositories must be 1..={MAX_REPOSITORIES}"));
    }
    if args.tags == 0 || args.tags > MAX_TAGS {
        return Err(format!("--tags must be 1..={MAX_TAGS}"));
    }
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let registry = Registry::start(RegistryOptions::open()).await;
    let client = registry.client();
    let image = oci_image_layout(&dir.path().join("image"), &[4 * KB, 2 * KB], 7);
    let reply = client.push_layout("seed/base", "v0", &image).await;
    if reply.status != 201 {
        return Err(format!("push seed/base:v0: {}", reply.text()));
    }
    let repos: Vec<String> = (0..args.repositories)
        .map(|i| format!("scale/repo-{i:04}"))
        .collect();
    let started = Instant::now();
    mount_layout_blobs_many(&client, &repos, "seed/base", &image, args.fill_concurrency).await;
    let tags = args.tags;
    let targets = repos
        .iter()
        .flat_map(|repo| (0..tags).map(move |t| (repo.clone(), format!("v{t:02}"))));
    put_manifest_many(
        &client,
        targets,
        &image.media_type,
        &image.manifest,
        args.fill_concurrency,
    )
    .await;
    let fill_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "audit-scale: filled {} x {tags} in {fill_seconds:.1} s",
        args.repositories
    );

    let config = dir.path().join("config.yaml");
    std::fs::write(&config, GENEROUS).map_err(|e| format!("{}: {e}", config.display()))?;
    let mut audit = std::process::Command::new("/usr/bin/time");
    audit
        .args(["-f", "%e %M %U %S"])
        .arg(gateway_bin())
        .args(["audit", "--json", "--config"])
        .arg(&config)
        .args(["--registry-url", &registry.url()]);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REGISTRY_GATEWAY_") {
            audit.env_remove(key);
        }
    }
    let out = tokio::task::spawn_blocking(move || audit.output())
        .await
        .map_err(|e| format!("audit task: {e}"))?
        .map_err(|e| format!("/usr/bin/time: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let usage = Usage::parse(&stderr)
        .ok_or_else(|| format!("no `%e %M %U %S` line from /usr/bin/time: {stderr}"))?;
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let catalog_pages = registry.count_requests("GET", "/v2/_catalog");

    let want_repositories = args.repositories + 1;
    let want_tags = args.repositories * tags + 1;
    let mut failures = Vec::new();
    if out.status.code() != Some(0) {
        failures.push(format!("the audit exited {}: {stderr}", out.status));
    }
    let found = |key: &str| doc[key].as_u64();
    if found("repositories_scanned") != Some(want_repositories as u64) {
        failures.push(format!(
            "repositories_scanned {:?}, want {want_repositories}",
            found("repositories_scanned")
        ));
    }
    if found("tags_scanned") != Some(want_tags as u64) {
        failures.push(format!(
            "tags_scanned {:?}, want {want_tags}",
            found("tags_scanned")
        ));
    }
    let violations = doc["violations"].as_array().map_or(0, Vec::len);
    if violations != 0 {
        failures.push(format!(
            "{violations} violations under limits nothing breaks"
        ));
    }
    if usage.seconds > args.max_seconds {
        failures.push(format!(
            "the audit took {} s, over {} s",
            usage.seconds, args.max_seconds
        ));
    }
    if usage.max_rss_kib > args.max_rss_mib * 1024 {
        failures.push(format!(
            "the audit's peak RSS was {} KiB, over {} MiB",
            usage.max_rss_kib, args.max_rss_mib
        ));
    }
    let report = json!({
        "repositories_filled": want_repositories,
        "tags_filled": want_tags,
        "fill_seconds": fill_seconds,
        "audit_seconds": usage.seconds,
        "audit_cpu_seconds": usage.cpu_seconds,
        "audit_peak_rss_kib": usage.max_rss_kib,
        "catalog_pages": catalog_pages,
        "repositories_scanned": doc["repositories_scanned"],
        "tags_scanned": doc["tags_scanned"],
        "violations": violations,
        "complete": doc["complete"],
    });
    Ok((report, failures))
}
