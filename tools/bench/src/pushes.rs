//! P4: small-image pushes with skopeo, one client, Envoy with the sidecar against Envoy alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::Ctx;
use crate::report::{Cmp, Figure};
use crate::stats::{median, round};
use registry_gateway_testkit as support;
use registry_gateway_testkit::ManagedChild;

fn skopeo_push(ctx: &Ctx, layout: &Path, dest: &str, log_dir: &Path) -> Result<f64, String> {
    let mut cmd = Command::new(&ctx.bins.skopeo);
    cmd.args([
        "--insecure-policy",
        "copy",
        "--dest-tls-verify=false",
        "--preserve-digests",
    ])
    .arg(format!("oci:{}", layout.display()))
    .arg(format!("docker://{dest}"));
    let t = Instant::now();
    let mut proc = ManagedChild::try_spawn("skopeo", cmd, log_dir)?;
    let status = proc.wait_exit(Duration::from_secs(60))?;
    let elapsed = t.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!(
            "skopeo copy to {dest} failed ({status})\n{}",
            proc.describe()
        ));
    }
    Ok(elapsed)
}

pub(crate) fn p4(ctx: &mut Ctx) -> Result<Vec<Figure>, String> {
    let n = ctx.profile.p4_pushes_per_mode;
    let dir = ctx.run_dir.join("p4");
    let modes = [
        ("envoy", ctx.envoy_alone.addr, "bench/p4-alone", 40_000u64),
        (
            "envoy+sidecar",
            ctx.envoy_sidecar.addr,
            "bench/p4-sidecar",
            50_000u64,
        ),
    ];
    // Distinct images (3 layers of 4 KiB each), so every push uploads its blobs.
    let mut layouts: [Vec<PathBuf>; 2] = Default::default();
    for (m, (name, _, _, seed)) in modes.iter().enumerate() {
        for i in 0..=n {
            let path = dir.join(name).join(i.to_string());
            support::oci_image_layout(&path, &[4096; 3], seed + i as u64);
            layouts[m].push(path);
        }
    }
    // Warm-up push per mode (index 0): skopeo's caches, the sidecar's tag book.
    for (m, (_, addr, repo, _)) in modes.iter().enumerate() {
        skopeo_push(ctx, &layouts[m][0], &format!("{addr}/{repo}:warm"), &dir)?;
    }
    let mut seconds: [Vec<f64>; 2] = Default::default();
    for (i, (alone, sidecar)) in layouts[0].iter().zip(&layouts[1]).enumerate().skip(1) {
        let pair = [alone, sidecar];
        for k in 0..2 {
            let m = (i + k) % 2;
            let (_, addr, repo, _) = modes[m];
            let s = skopeo_push(ctx, pair[m], &format!("{addr}/{repo}:v{i}"), &dir)?;
            seconds[m].push(s);
        }
    }
    let total = |m: usize| seconds[m].iter().sum::<f64>();
    let ratio = total(0) / total(1);
    let raw = json!({
        "pushes_per_mode": n,
        "method": "skopeo --insecure-policy copy --dest-tls-verify=false --preserve-digests oci:<layout> docker://<envoy>/<repo>:v<i>; a new image (3 x 4 KiB layers + config) and a new tag per push; modes alternate push by push; value = total time envoy / total time envoy+sidecar (throughput ratio)",
        "envoy_total_s": round(total(0)),
        "envoy+sidecar_total_s": round(total(1)),
        "envoy_median_s": round(median(&seconds[0])),
        "envoy+sidecar_median_s": round(median(&seconds[1])),
        "envoy_seconds": seconds[0].iter().map(|s| round(*s)).collect::<Vec<_>>(),
        "envoy+sidecar_seconds": seconds[1].iter().map(|s| round(*s)).collect::<Vec<_>>(),
    });
    let _ = std::fs::remove_dir_all(&dir);
    Ok(vec![Figure {
        id: "P4".into(),
        what: format!(
            "{n} skopeo pushes (3 x 4 KiB): throughput envoy+sidecar / envoy ({:.0} vs {:.0} ms/push)",
            median(&seconds[1]) * 1e3,
            median(&seconds[0]) * 1e3
        ),
        value: ratio,
        unit: "ratio",
        target: Some((Cmp::AtLeast, 0.90)),
        raw,
    }])
}
