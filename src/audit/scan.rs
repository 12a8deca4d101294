//! The walk: catalog pages in order, repositories and their tags concurrently, every request
//! behind one semaphore of `--concurrency` permits.
//!
//! At most `concurrency` repositories are in progress, and each has at most `concurrency` tags
//! in progress, so memory holds a few hundred small tasks whatever the registry's size; what
//! grows with the registry is only the list of findings.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::children::{CAPACITY, Child, ChildCache, ChildRef, Measurement};
use super::report::{Finding, Kind, Problem, Report};
use super::retry::with_retries;
use crate::check::TagSource;
use crate::policy::{Measured, Policy, RuleRef, Share, manifest};
use crate::registry::{FetchedManifest, RegistryClient};

/// A `Link` chain longer than this is a loop, not a catalog.
const MAX_CATALOG_PAGES: usize = 100_000;
/// Indexes inside indexes are followed this deep; deeper is reported, not walked.
const MAX_INDEX_DEPTH: usize = 4;

/// What to audit and how hard to press the registry.
pub(super) struct ScanOptions {
    pub(super) concurrency: usize,
    pub(super) catalog_page_size: Option<u32>,
    pub(super) repositories: Option<regex::Regex>,
}

/// The limits of one repository, owned so tag tasks can carry them.
#[derive(Clone)]
struct Applied {
    rule: Option<RuleRef>,
    max_image_bytes: u64,
    enforcement: &'static str,
    warn_at: Option<Share>,
}

impl Applied {
    /// A finding of `measured` against `limit`: a violation when over it, a warning when it
    /// reaches `warn_at` short of that, nothing otherwise.
    fn judge(&self, part: &mut Part, measured: u64, limit: u64, finding: impl FnOnce() -> Finding) {
        if measured > limit {
            part.violations.push(finding());
        } else if let Some(share) = self.warn_at.filter(|s| s.reached(measured, limit)) {
            let mut warning = finding();
            warning.warn_at = Some(share.to_string());
            part.warnings.push(warning);
        }
    }
}

struct Scan {
    registry: Arc<RegistryClient>,
    policy: Arc<Policy>,
    permits: Semaphore,
    concurrency: usize,
    children: ChildCache,
    progress: Progress,
}

/// What one repository or tag contributed.
#[derive(Default)]
struct Part {
    repositories: u64,
    tags: u64,
    violations: Vec<Finding>,
    warnings: Vec<Finding>,
    errors: Vec<Problem>,
}

impl Part {
    fn absorb(&mut self, other: Part) {
        self.repositories += other.repositories;
        self.tags += other.tags;
        self.violations.extend(other.violations);
        self.warnings.extend(other.warnings);
        self.errors.extend(other.errors);
    }

    fn problem(repository: &str, tag: Option<&str>, cause: String) -> Self {
        Part {
            errors: vec![Problem {
                repository: Some(repository.to_owned()),
                tag: tag.map(str::to_owned),
                cause,
            }],
            ..Part::default()
        }
    }
}

/// Audits the registry behind `registry` against `policy`.
pub(super) async fn scan(
    registry: Arc<RegistryClient>,
    policy: Arc<Policy>,
    options: ScanOptions,
) -> Report {
    let scan = Arc::new(Scan {
        registry,
        policy,
        permits: Semaphore::new(options.concurrency),
        concurrency: options.concurrency,
        children: ChildCache::new(CAPACITY),
        progress: Progress::default(),
    });
    let ticker = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(progress_ticker(scan.clone())));

    let mut total = Part::default();
    let mut repositories: JoinSet<Part> = JoinSet::new();
    let mut catalog_complete = false;
    let mut catalog_error = None;
    match scan.registry.catalog_start(options.catalog_page_size) {
        Err(e) => catalog_error = Some(e.to_string()),
        Ok(mut url) => {
            for page in 1..=MAX_CATALOG_PAGES {
                let read = with_retries(&scan.permits, || scan.registry.catalog_page(&url)).await;
                let read = match read {
                    Ok(read) => read,
                    Err(failure) => {
                        catalog_error = Some(format!("catalog page {page}: {failure}"));
                        break;
                    }
                };
                for name in read.repositories {
                    if options
                        .repositories
                        .as_ref()
                        .is_some_and(|filter| !filter.is_match(&name))
                    {
                        continue;
                    }
                    while repositories.len() >= scan.concurrency {
                        join_one(&mut repositories, &mut total).await;
                    }
                    let scan = scan.clone();
                    repositories.spawn(async move { scan.repository(name).await });
                }
                match read.next {
                    None => {
                        catalog_complete = true;
                        break;
                    }
                    Some(next) if next == url => {
                        catalog_error = Some(format!("catalog page {page} links to itself"));
                        break;
                    }
                    Some(next) => url = next,
                }
            }
            if !catalog_complete && catalog_error.is_none() {
                catalog_error = Some(format!(
                    "the catalog has more than {MAX_CATALOG_PAGES} pages"
                ));
            }
        }
    }
    while !repositories.is_empty() {
        join_one(&mut repositories, &mut total).await;
    }
    if let Some(ticker) = ticker {
        ticker.abort();
        // Leaves the terminal line clean for what is printed next.
        eprint!("\r\x1b[2K");
    }
    if let Some(cause) = catalog_error {
        total.errors.push(Problem {
            repository: None,
            tag: None,
            cause,
        });
    }
    let mut report = Report {
        repositories_scanned: total.repositories,
        tags_scanned: total.tags,
        violations: total.violations,
        warnings: total.warnings,
        errors: total.errors,
        catalog_complete,
    };
    report.sort();
    report
}

async fn join_one(set: &mut JoinSet<Part>, total: &mut Part) {
    match set.join_next().await {
        Some(Ok(part)) => total.absorb(part),
        // A task panicked: a bug, and the audit cannot claim to be complete.
        Some(Err(e)) => total.errors.push(Problem {
            repository: None,
            tag: None,
            cause: format!("an audit task failed: {e}"),
        }),
        None => {}
    }
}

impl Scan {
    async fn repository(self: Arc<Self>, name: String) -> Part {
        let listed = with_retries(&self.permits, || async {
            self.registry.list_tags(&name).await.map_err(Into::into)
        })
        .await;
        let tags = match listed {
            Ok(tags) => tags,
            Err(failure) => {
                self.progress.errors.fetch_add(1, Ordering::Relaxed);
                return Part::problem(&name, None, format!("tag list: {failure}"));
            }
        };
        let (rule, limits) = self.policy.limits_for(&name);
        let rule = rule.map(crate::policy::Rule::reference);
        let applied = Applied {
            rule,
            max_image_bytes: limits.max_image_size.bytes(),
            enforcement: limits.enforcement.as_str(),
            warn_at: limits.warn_at,
        };
        let mut part = Part {
            repositories: 1,
            ..Part::default()
        };
        let counted = tags
            .iter()
            .filter(|t| limits.exclude_tags.counts(t))
            .count() as u64;
        applied.judge(&mut part, counted, limits.tag_count_limit, || Finding {
            repository: name.clone(),
            tag: None,
            kind: Kind::TagCount,
            measured: counted,
            limit: limits.tag_count_limit,
            rule: applied.rule.clone(),
            enforcement: Some(applied.enforcement),
            warn_at: None,
            digest: None,
            platform: None,
        });

        let name: Arc<str> = name.into();
        let mut pending: JoinSet<Part> = JoinSet::new();
        for tag in tags {
            while pending.len() >= self.concurrency {
                join_one(&mut pending, &mut part).await;
            }
            let (scan, name, applied) = (self.clone(), name.clone(), applied.clone());
            pending.spawn(async move { scan.tag(&name, tag, &applied).await });
        }
        while !pending.is_empty() {
            join_one(&mut pending, &mut part).await;
        }
        self.progress.repositories.fetch_add(1, Ordering::Relaxed);
        part
    }

    async fn tag(&self, repository: &str, tag: String, applied: &Applied) -> Part {
        let read = with_retries(&self.permits, || {
            self.registry.get_manifest(repository, &tag)
        });
        let fetched = match read.await {
            // Deleted since the tag list was read: nothing left to measure.
            Ok(None) => return Part::default(),
            Ok(Some(fetched)) => fetched,
            Err(failure) => return self.problem(repository, &tag, format!("manifest: {failure}")),
        };
        let digest = sha256_digest(&fetched.body);
        let measured = match measure(&fetched) {
            Ok(m) => m,
            Err(cause) => return self.problem(repository, &tag, cause),
        };
        let mut part = Part {
            tags: 1,
            ..Part::default()
        };
        let finding = |measured: u64, digest: String, platform: Option<String>| Finding {
            repository: repository.to_owned(),
            tag: Some(tag.clone()),
            kind: Kind::ImageSize,
            measured,
            limit: applied.max_image_bytes,
            rule: applied.rule.clone(),
            enforcement: Some(applied.enforcement),
            warn_at: None,
            digest: Some(digest),
            platform,
        };
        match measured {
            Measured::Image { layer_bytes, .. } => {
                applied.judge(&mut part, layer_bytes, applied.max_image_bytes, || {
                    finding(layer_bytes, digest, None)
                });
            }
            Measured::Index { .. } => {
                let mut queue: Vec<(ChildRef, usize)> = index_children(&fetched.body)
                    .into_iter()
                    .map(|c| (c, 1))
                    .collect();
                while let Some((child, depth)) = queue.pop() {
                    let measured = self
                        .children
                        .get_or_measure(&child.digest, || self.child(repository, &child.digest))
                        .await;
                    match measured {
                        Ok(Child::Image { bytes }) => {
                            applied.judge(&mut part, bytes, applied.max_image_bytes, || {
                                finding(bytes, child.digest.clone(), child.platform.clone())
                            });
                        }
                        Ok(Child::Index { children }) if depth < MAX_INDEX_DEPTH => {
                            queue.extend(children.into_iter().map(|c| (c, depth + 1)));
                        }
                        Ok(Child::Index { .. }) => part.errors.push(Problem {
                            repository: Some(repository.to_owned()),
                            tag: Some(tag.clone()),
                            cause: format!(
                                "{}: indexes nested more than {MAX_INDEX_DEPTH} deep are not measured",
                                child.digest
                            ),
                        }),
                        Err(cause) => part.errors.push(Problem {
                            repository: Some(repository.to_owned()),
                            tag: Some(tag.clone()),
                            cause: format!("child {}: {cause}", child.digest),
                        }),
                    }
                }
            }
        }
        let progress = &self.progress;
        progress.tags.fetch_add(1, Ordering::Relaxed);
        progress
            .violations
            .fetch_add(part.violations.len() as u64, Ordering::Relaxed);
        progress
            .errors
            .fetch_add(part.errors.len() as u64, Ordering::Relaxed);
        part
    }

    /// Reads and measures one index child by digest.
    async fn child(&self, repository: &str, digest: &str) -> Measurement {
        let read = with_retries(&self.permits, || {
            self.registry.get_manifest(repository, digest)
        });
        let fetched = match read.await {
            Ok(Some(fetched)) => fetched,
            Ok(None) => return Err("the index names a manifest the registry does not have".into()),
            Err(failure) => return Err(failure.to_string()),
        };
        if sha256_digest(&fetched.body) != digest {
            return Err("the registry answered with a manifest of another digest".into());
        }
        match measure(&fetched)? {
            Measured::Image { layer_bytes, .. } => Ok(Child::Image { bytes: layer_bytes }),
            Measured::Index { .. } => Ok(Child::Index {
                children: index_children(&fetched.body),
            }),
        }
    }

    fn problem(&self, repository: &str, tag: &str, cause: String) -> Part {
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
        Part::problem(repository, Some(tag), cause)
    }
}

/// `sha256:<hex>`: the manifest's digest, what a pull by digest names.
fn sha256_digest(body: &[u8]) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(body);
    let mut text = String::with_capacity(71);
    text.push_str("sha256:");
    for byte in hash {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// Measures as a push of the same bytes with the same `Content-Type` would be measured.
fn measure(fetched: &FetchedManifest) -> Result<Measured, String> {
    manifest::measure(fetched.content_type.as_deref(), &fetched.body)
        .map_err(|e| format!("the manifest cannot be measured: {e}"))
}

/// The entries of an index already measured (so its shape is known good): digest and
/// platform. An entry without a digest string is skipped; the registry would not store it.
fn index_children(body: &[u8]) -> Vec<ChildRef> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let Some(entries) = value.get("manifests").and_then(|m| m.as_array()) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let digest = entry.get("digest")?.as_str()?.to_owned();
            let platform = entry.get("platform").and_then(|p| {
                let os = p.get("os")?.as_str()?;
                let arch = p.get("architecture")?.as_str()?;
                Some(match p.get("variant").and_then(|v| v.as_str()) {
                    Some(variant) if !variant.is_empty() => format!("{os}/{arch}/{variant}"),
                    _ => format!("{os}/{arch}"),
                })
            });
            Some(ChildRef { digest, platform })
        })
        .collect()
}

/// Counters for the progress line.
#[derive(Default)]
struct Progress {
    repositories: AtomicU64,
    tags: AtomicU64,
    violations: AtomicU64,
    errors: AtomicU64,
}

/// Rewrites one stderr line five times a second; only started when stderr is a terminal, so
/// logs and pipes never see it.
async fn progress_ticker(scan: Arc<Scan>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let p = &scan.progress;
        eprint!(
            "\r\x1b[2Kaudit: {} repositories, {} tags, {} violations, {} errors",
            p.repositories.load(Ordering::Relaxed),
            p.tags.load(Ordering::Relaxed),
            p.violations.load(Ordering::Relaxed),
            p.errors.load(Ordering::Relaxed),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_children_carry_digest_and_platform() {
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,"platform":{"os":"linux","architecture":"arm","variant":"v7"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":1},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1}]}"#;
        assert_eq!(
            index_children(body),
            [
                ChildRef {
                    digest: "sha256:aa".into(),
                    platform: Some("linux/arm/v7".into())
                },
                ChildRef {
                    digest: "sha256:bb".into(),
                    platform: None
                },
            ]
        );
    }
}
