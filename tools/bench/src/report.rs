//! The table, the figures' JSON and the plot.

use serde_json::{Value, json};

use crate::stats::{Dist, round};
use crate::{Ctx, Profile, svg};

#[derive(Clone, Copy, Debug)]
pub(crate) enum Cmp {
    AtLeast,
    AtMost,
}

/// One row of the table and one entry of summary.json.
pub(crate) struct Figure {
    pub(crate) id: String,
    pub(crate) what: String,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    pub(crate) target: Option<(Cmp, f64)>,
    pub(crate) raw: Value,
}

impl Figure {
    /// A figure without a target whose raw data is the figure (or section) `see` names.
    pub(crate) fn info(
        id: &str,
        what: impl Into<String>,
        value: f64,
        unit: &'static str,
        see: &str,
    ) -> Figure {
        Figure {
            id: id.to_owned(),
            what: what.into(),
            value,
            unit,
            target: None,
            raw: json!({ "see": see }),
        }
    }

    pub(crate) fn pass(&self) -> Option<bool> {
        let (cmp, t) = self.target?;
        if !self.value.is_finite() {
            return Some(false);
        }
        Some(match cmp {
            Cmp::AtLeast => self.value >= t,
            Cmp::AtMost => self.value <= t,
        })
    }

    pub(crate) fn target_text(&self) -> String {
        match self.target {
            Some((Cmp::AtLeast, t)) => format!(">= {t} {}", self.unit),
            Some((Cmp::AtMost, t)) => format!("<= {t} {}", self.unit),
            None => "(info)".to_owned(),
        }
        .replace(" ratio", "")
        .replace(" count", "")
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "id": self.id,
            "what": self.what,
            "value": round(self.value),
            "unit": self.unit,
            "target": self.target.map(|(c, t)| json!({
                "op": match c { Cmp::AtLeast => ">=", Cmp::AtMost => "<=" },
                "value": t,
            })),
            "pass": self.pass(),
            "raw": self.raw,
        })
    }
}

#[derive(Default)]
pub(crate) struct Plots {
    /// (label, colour, distribution)
    pub(crate) p2: Vec<(String, &'static str, Dist)>,
    pub(crate) p3: Vec<(String, &'static str, Dist)>,
}

/// Plot colours: the sidecar red, the baselines blue, the do-nothing processor green.
pub(crate) const RED: &str = "#d62728";
pub(crate) const BLUE: &str = "#1f77b4";
pub(crate) const GREEN: &str = "#2ca02c";
/// Redis mode.
pub(crate) const ORANGE: &str = "#ff7f0e";
/// ext_authz mode.
pub(crate) const PURPLE: &str = "#9467bd";

pub(crate) fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "ratio" => format!("{v:.3}"),
        "ms" => format!("{v:.3}"),
        "count" => format!("{v:.3}"),
        "MiB" => format!("{v:.1}"),
        "us" => format!("{v:.0}"),
        _ => format!("{v}"),
    }
}

pub(crate) fn short_unit(unit: &str) -> &str {
    if unit == "ratio" || unit == "count" {
        ""
    } else {
        unit
    }
}

pub(crate) fn print_table(figures: &[Figure], profile: &Profile, summary: &Value) {
    println!(
        "\nregistry-gateway performance budget ({} profile{}) on {} CPUs, {}",
        profile.name,
        if profile.name == "quick" {
            ": SMALLER SIZES/COUNTS, indicative only"
        } else {
            ""
        },
        summary["machine"]["nproc"],
        summary["machine"]["cpu_model"].as_str().unwrap_or("?")
    );
    println!(
        "load average at start {} / end {}",
        summary["machine"]["loadavg_start"].as_str().unwrap_or("?"),
        summary["machine"]["loadavg_end"].as_str().unwrap_or("?")
    );
    println!("{:-<122}", "");
    println!(
        "{:<14} {:<66} {:>14} {:>16} {:>7}",
        "figure", "measures", "value", "target", "result"
    );
    println!("{:-<122}", "");
    for f in figures {
        let result = match f.pass() {
            Some(true) => "pass",
            Some(false) => "MISS",
            None => "",
        };
        println!(
            "{:<14} {:<66} {:>14} {:>16} {:>7}",
            f.id,
            f.what,
            format!("{} {}", fmt_value(f.value, f.unit), short_unit(f.unit)).trim_end(),
            f.target_text(),
            result
        );
    }
    println!("{:-<122}", "");
}

pub(crate) fn plot(ctx: &Ctx, load_at_start: &str) -> String {
    fn series<'a>(items: &'a [(String, &'static str, Dist)]) -> Vec<svg::Series<'a>> {
        items
            .iter()
            .map(|(label, color, dist)| svg::Series {
                label: label.clone(),
                color,
                dist,
            })
            .collect()
    }
    let panels = vec![
        svg::Panel {
            title: "P2: manifest PUT latency through Envoy".to_owned(),
            series: series(&ctx.plots.p2),
        },
        svg::Panel {
            title: format!(
                "P3: ext_proc stream latency, {} in flight",
                ctx.profile.p3_concurrency
            ),
            series: series(&ctx.plots.p3),
        },
    ];
    svg::plot(
        &panels,
        &format!(
            "registry-gateway-bench, {} profile; machine load at start {}",
            ctx.profile.name, load_at_start
        ),
    )
}
