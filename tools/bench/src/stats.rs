//! Latency distributions and medians.

use serde_json::{Value, json};

/// Latency samples in nanoseconds, sorted.
#[derive(Clone, Debug, Default)]
pub(crate) struct Dist {
    sorted: Vec<u64>,
}

impl Dist {
    pub(crate) fn new(mut samples: Vec<u64>) -> Dist {
        samples.sort_unstable();
        Dist { sorted: samples }
    }

    pub(crate) fn len(&self) -> usize {
        self.sorted.len()
    }

    /// The `p` quantile (nearest rank), in milliseconds; 0 when empty.
    pub(crate) fn q(&self, p: f64) -> f64 {
        if self.sorted.is_empty() {
            return 0.0;
        }
        let n = self.sorted.len();
        let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
        self.sorted[rank - 1] as f64 / 1e6
    }

    pub(crate) fn mean(&self) -> f64 {
        if self.sorted.is_empty() {
            return 0.0;
        }
        self.sorted.iter().map(|&s| s as f64).sum::<f64>() / self.sorted.len() as f64 / 1e6
    }

    /// Summary in milliseconds.
    pub(crate) fn json(&self) -> Value {
        json!({
            "n": self.len(),
            "mean_ms": round(self.mean()),
            "p50_ms": round(self.q(0.50)),
            "p90_ms": round(self.q(0.90)),
            "p99_ms": round(self.q(0.99)),
            "p999_ms": round(self.q(0.999)),
            "max_ms": round(self.q(1.0)),
        })
    }
}

/// Six significant decimals are plenty for milliseconds and ratios.
pub(crate) fn round(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

pub(crate) fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Reads a file of little-endian u64 nanoseconds (written by `extproc-load --samples-out`).
pub(crate) fn read_samples(path: &std::path::Path) -> Result<Vec<u64>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("chunks of 8")))
        .collect())
}
