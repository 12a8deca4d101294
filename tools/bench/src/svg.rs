//! A hand-written SVG of latency distributions: one panel per figure, latency (log scale) against
//! percentile on a "nines" axis (p50, p90, p99, p99.9 ... equally spaced), so tails are visible.

use std::fmt::Write;

use crate::stats::Dist;

pub(crate) struct Series<'a> {
    pub(crate) label: String,
    pub(crate) color: &'static str,
    pub(crate) dist: &'a Dist,
}

pub(crate) struct Panel<'a> {
    pub(crate) title: String,
    pub(crate) series: Vec<Series<'a>>,
}

const W: f64 = 560.0;
const H: f64 = 400.0;
const ML: f64 = 70.0;
const MR: f64 = 34.0;
const MT: f64 = 40.0;
const MB: f64 = 110.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn fmt_ms(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else if v >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The whole document: panels side by side, `note` under them.
pub(crate) fn plot(panels: &[Panel<'_>], note: &str) -> String {
    let width = W * panels.len().max(1) as f64;
    let height = H + 30.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, panel) in panels.iter().enumerate() {
        panel_svg(&mut out, panel, W * i as f64);
    }
    let _ = writeln!(
        out,
        r##"<text x="10" y="{}" fill="#555">{}</text>"##,
        height - 10.0,
        esc(note)
    );
    out.push_str("</svg>\n");
    out
}

fn panel_svg(out: &mut String, panel: &Panel<'_>, x0: f64) {
    let series: Vec<&Series<'_>> = panel.series.iter().filter(|s| s.dist.len() > 0).collect();
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" font-size="14" font-weight="bold">{}</text>"#,
        x0 + ML,
        esc(&panel.title)
    );
    if series.is_empty() {
        let _ = writeln!(out, r#"<text x="{}" y="80">no data</text>"#, x0 + ML);
        return;
    }
    // x: nines = -log10(1 - p), up to what the smallest series supports (at most p99.99).
    let min_n = series.iter().map(|s| s.dist.len()).min().unwrap_or(1) as f64;
    let x_max = min_n.log10().clamp(1.0, 4.0);
    let lo = series
        .iter()
        .map(|s| s.dist.q(0.0))
        .fold(f64::INFINITY, f64::min)
        .max(1e-3);
    let hi = series
        .iter()
        .map(|s| s.dist.q(1.0 - 10f64.powf(-x_max)))
        .fold(0.0, f64::max)
        .max(lo * 1.5);
    let (ly0, ly1) = (lo.log10().floor(), hi.log10().ceil());
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let px = |nines: f64| x0 + ML + nines / x_max * pw;
    let py = |ms: f64| MT + ph - (ms.max(1e-6).log10() - ly0) / (ly1 - ly0) * ph;

    let _ = writeln!(
        out,
        r##"<rect x="{}" y="{MT}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##,
        x0 + ML
    );
    // y grid: 1, 2, 5 per decade.
    let mut decade = ly0;
    while decade < ly1 + 0.5 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powf(decade);
            let l = v.log10();
            if l < ly0 - 1e-9 || l > ly1 + 1e-9 {
                continue;
            }
            let y = py(v);
            let _ = writeln!(
                out,
                r##"<line x1="{}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#{}"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                x0 + ML,
                x0 + ML + pw,
                if m == 1.0 { "ccc" } else { "eee" },
                x0 + ML - 6.0,
                y + 4.0,
                fmt_ms(v)
            );
        }
        decade += 1.0;
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" transform="rotate(-90 {} {})" text-anchor="middle">latency (ms, log)</text>"#,
        x0 + 18.0,
        MT + ph / 2.0,
        x0 + 18.0,
        MT + ph / 2.0
    );
    // x ticks.
    for (nines, label) in [
        (0.0, "p0"),
        (0.301, "p50"),
        (1.0, "p90"),
        (2.0, "p99"),
        (3.0, "p99.9"),
        (4.0, "p99.99"),
    ] {
        if nines > x_max + 1e-9 {
            continue;
        }
        let x = px(nines);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{MT}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            MT + ph,
            MT + ph + 16.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        x0 + ML + pw / 2.0,
        MT + ph + 32.0
    );
    for (i, s) in series.iter().enumerate() {
        let mut points = String::new();
        let steps = 400;
        for k in 0..=steps {
            let nines = x_max * k as f64 / steps as f64;
            let p = 1.0 - 10f64.powf(-nines);
            let _ = write!(points, "{:.1},{:.1} ", px(nines), py(s.dist.q(p)));
        }
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.8" points="{}"/>"#,
            s.color,
            points.trim_end()
        );
        let ly = MT + ph + 50.0 + 16.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{} (n={}, p50 {} ms, p99 {} ms)</text>"#,
            x0 + ML,
            x0 + ML + 24.0,
            s.color,
            x0 + ML + 30.0,
            ly + 4.0,
            esc(&s.label),
            s.dist.len(),
            fmt_ms(s.dist.q(0.5)),
            fmt_ms(s.dist.q(0.99))
        );
    }
}
