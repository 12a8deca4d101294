//! The sidecar's Prometheus text, read the way the tests assert on it.

use crate::http::RegistryClient;

/// One scrape of the sidecar's `/metrics`.
#[derive(Clone, Debug)]
pub struct Scrape(pub String);

impl Scrape {
    /// `GET /metrics` on the sidecar's admin port.
    pub async fn take(admin: &RegistryClient) -> Scrape {
        let reply = admin.request("GET", "/metrics", &[], None).await;
        assert_eq!(reply.status, 200, "GET /metrics: {}", reply.text());
        Scrape(reply.text())
    }

    /// The sum of the series `name` whose labels include `labels` (0 when absent: counters
    /// appear on first use).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.rsplit_once(' '))
            .filter(|(series, _)| {
                let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
                series_name == name
                    && labels
                        .iter()
                        .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, value)| value.parse::<f64>().expect("numeric sample") as u64)
            .sum()
    }
}
