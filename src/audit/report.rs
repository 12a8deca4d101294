//! What an audit found, and its two renderings: a table for people, one JSON document for
//! scripts.

use serde_json::{Value, json};

use crate::policy::{ByteSize, RuleRef};

/// Which limit a finding is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    ImageSize,
    TagCount,
}

impl Kind {
    /// The stable spelling in the JSON output.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ImageSize => "image_size",
            Self::TagCount => "tag_count",
        }
    }
}

/// A limit broken (a violation), or reached short of breaking it (a `warn_at` warning).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub repository: String,
    /// The tag; `None` for a tag count.
    pub tag: Option<String>,
    pub kind: Kind,
    /// Bytes of the image, or tags that count.
    pub measured: u64,
    /// `max_image_size` in bytes, or `tag_count_limit`.
    pub limit: u64,
    /// The rule that set the limit; `None`: the global limits.
    pub rule: Option<RuleRef>,
    /// The enforcement of the limit (`enforce`, `warn`, `dry-run`), when the policy has one.
    pub enforcement: Option<&'static str>,
    /// For a warning: the share of the limit that flagged it, as written (`90%`).
    pub warn_at: Option<String>,
    /// The measured manifest: the tagged image, or an index's child.
    pub digest: Option<String>,
    /// For an index's child: `os/architecture[/variant]`.
    pub platform: Option<String>,
}

impl Finding {
    fn sort_key(&self) -> (&str, Kind, Option<&str>, Option<&str>) {
        (
            &self.repository,
            self.kind,
            self.tag.as_deref(),
            self.digest.as_deref(),
        )
    }
}

/// A repository, tag or catalog page the audit could not read or measure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `None` for the catalog itself.
    pub repository: Option<String>,
    pub tag: Option<String>,
    pub cause: String,
}

/// The whole result.
#[derive(Debug, Default)]
pub struct Report {
    /// Repositories whose tag list was read.
    pub repositories_scanned: u64,
    /// Tags whose manifest was read and measured.
    pub tags_scanned: u64,
    pub violations: Vec<Finding>,
    pub warnings: Vec<Finding>,
    pub errors: Vec<Problem>,
    /// Whether the catalog was read to its last page.
    pub catalog_complete: bool,
}

impl Report {
    /// Everything was read: the whole catalog, and no repository or tag failed.
    pub fn is_complete(&self) -> bool {
        self.catalog_complete && self.errors.is_empty()
    }

    /// Puts every list in its documented order: repository, kind, tag (then digest).
    pub fn sort(&mut self) {
        for list in [&mut self.violations, &mut self.warnings] {
            list.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        }
        self.errors.sort_by(|a, b| {
            (&a.repository, &a.tag, &a.cause).cmp(&(&b.repository, &b.tag, &b.cause))
        });
    }

    /// The one JSON document of `--json`, on one line.
    pub fn to_json(&self) -> String {
        let findings = |list: &[Finding]| list.iter().map(finding_json).collect::<Vec<_>>();
        let errors: Vec<Value> = self
            .errors
            .iter()
            .map(|p| json!({"repository": p.repository, "tag": p.tag, "cause": p.cause}))
            .collect();
        let value = json!({
            "repositories_scanned": self.repositories_scanned,
            "tags_scanned": self.tags_scanned,
            "complete": self.is_complete(),
            "violations": findings(&self.violations),
            "warnings": findings(&self.warnings),
            "errors": errors,
        });
        format!("{value}\n")
    }

    /// The table of violations, then warnings, then a summary and every error.
    pub fn to_table(&self) -> String {
        let mut text = String::new();
        if self.violations.is_empty() {
            text.push_str("no violations\n");
        } else {
            text.push_str(&table(&self.violations));
        }
        if !self.warnings.is_empty() {
            text.push_str("\nwarnings (warn_at reached, within the limit):\n");
            text.push_str(&table(&self.warnings));
        }
        text.push_str(&format!(
            "\naudited {} repositories and {} tags: {} violations, {} warnings, {} errors\n",
            self.repositories_scanned,
            self.tags_scanned,
            self.violations.len(),
            self.warnings.len(),
            self.errors.len()
        ));
        for p in &self.errors {
            let place = match (&p.repository, &p.tag) {
                (None, _) => "catalog".to_owned(),
                (Some(r), None) => r.clone(),
                (Some(r), Some(t)) => format!("{r}:{t}"),
            };
            text.push_str(&format!("error: {place}: {}\n", p.cause));
        }
        if !self.is_complete() {
            text.push_str("the audit is incomplete: what could not be read was not checked\n");
        }
        text
    }
}

fn finding_json(f: &Finding) -> Value {
    let mut value = json!({
        "repository": f.repository,
        "tag": f.tag,
        "kind": f.kind.as_str(),
        "measured": f.measured,
        "limit": f.limit,
        "rule": f.rule,
        "digest": f.digest,
        "platform": f.platform,
    });
    if let Some(enforcement) = f.enforcement {
        value["enforcement"] = json!(enforcement);
    }
    if let Some(share) = &f.warn_at {
        value["warn_at"] = json!(share);
    }
    value
}

fn quantity(kind: Kind, n: u64) -> String {
    match kind {
        Kind::ImageSize => ByteSize::from_bytes(n).exact(),
        Kind::TagCount => format!("{n} tags"),
    }
}

fn table(findings: &[Finding]) -> String {
    let header = [
        "REPOSITORY",
        "TAG",
        "KIND",
        "MEASURED",
        "LIMIT",
        "RULE",
        "IMAGE",
    ];
    let rows: Vec<[String; 7]> = findings
        .iter()
        .map(|f| {
            let rule = match &f.rule {
                Some(r) => format!("rule {} ({})", r.index, r.path),
                None => "global".to_owned(),
            };
            let rule = match f.enforcement {
                Some(e) if e != "enforce" => format!("{rule}, {e}"),
                _ => rule,
            };
            let image = match (&f.platform, &f.digest) {
                (Some(p), Some(d)) => format!("{p} {d}"),
                (None, Some(d)) => d.clone(),
                (_, None) => "-".to_owned(),
            };
            let limit = match (&f.warn_at, quantity(f.kind, f.limit)) {
                (Some(share), limit) => format!("{limit}, warn_at {share}"),
                (None, limit) => limit,
            };
            [
                f.repository.clone(),
                f.tag.clone().unwrap_or_else(|| "-".to_owned()),
                f.kind.as_str().to_owned(),
                quantity(f.kind, f.measured),
                limit,
                rule,
                image,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut text = line(&header);
    for row in &rows {
        text.push_str(&line(&row.each_ref().map(String::as_str)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(repository: &str, tag: Option<&str>, kind: Kind) -> Finding {
        Finding {
            repository: repository.into(),
            tag: tag.map(str::to_owned),
            kind,
            measured: 30 * 1024,
            limit: 20 * 1024,
            rule: None,
            enforcement: None,
            warn_at: None,
            digest: None,
            platform: None,
        }
    }

    #[test]
    fn findings_sort_by_repository_kind_tag() {
        let mut report = Report {
            violations: vec![
                finding("b", Some("v1"), Kind::ImageSize),
                finding("a", None, Kind::TagCount),
                finding("a", Some("v2"), Kind::ImageSize),
                finding("a", Some("v1"), Kind::ImageSize),
            ],
            ..Report::default()
        };
        report.sort();
        let order: Vec<(&str, Option<&str>)> = report
            .violations
            .iter()
            .map(|f| (f.repository.as_str(), f.tag.as_deref()))
            .collect();
        assert_eq!(
            order,
            [
                ("a", Some("v1")),
                ("a", Some("v2")),
                ("a", None),
                ("b", Some("v1"))
            ]
        );
    }

    #[test]
    fn json_is_one_line_with_exact_bytes_and_null_rule_for_global() {
        let report = Report {
            repositories_scanned: 1,
            tags_scanned: 1,
            violations: vec![finding("a", Some("v1"), Kind::ImageSize)],
            catalog_complete: true,
            ..Report::default()
        };
        let text = report.to_json();
        assert_eq!(text.lines().count(), 1);
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["violations"][0]["measured"], 30 * 1024);
        assert_eq!(v["violations"][0]["limit"], 20 * 1024);
        assert!(v["violations"][0]["rule"].is_null());
        assert_eq!(v["complete"], true);
    }

    #[test]
    fn the_table_shows_sizes_with_exact_bytes_and_the_rule() {
        let mut f = finding("team/app", Some("v1"), Kind::ImageSize);
        f.rule = Some(RuleRef {
            index: 0,
            path: "^team/.*".into(),
        });
        let report = Report {
            violations: vec![f, finding("team/app", None, Kind::TagCount)],
            catalog_complete: true,
            ..Report::default()
        };
        let text = report.to_table();
        assert!(text.starts_with("REPOSITORY"), "{text}");
        assert!(
            text.contains("30720 bytes (30KB)") && text.contains("rule 0 (^team/.*)"),
            "{text}"
        );
        assert!(
            text.contains("30720 tags") && text.contains("global"),
            "{text}"
        );
        assert!(!text.contains("incomplete"), "{text}");
    }
}
