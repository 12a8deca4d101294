//! The policy core: configuration, measurement and decisions.
//!
//! This crate is pure, and its manifest keeps it so: it depends on parsing crates only, never on
//! tokio, tonic, reqwest or notify, and it uses no `std::fs`, `std::net` or clock; callers hand it
//! texts, requests and tag books, and gets values back. That keeps every rule testable as a table and every adapter a translation.
//!
//! A decision takes two steps, so that the network is only used when a tag count is needed:
//! [`Policy::evaluate`] returns a final [`Decision`] or a [`TagQuery`]; the caller then locks the
//! repository's [`TagBook`] and calls [`TagQuery::finish`], which decides and reserves in one step.

pub mod decision;
pub mod file;
pub mod manifest;
pub mod push;
pub mod rollout;
pub mod rule;
pub mod size;
pub mod tags;

use regex::RegexSet;

pub use decision::{Decision, Denial, DenyReason, Facts, RuleRef, Verdict};
pub use file::{ConfigSource, KeyFile, LoadError, Problem, compile};
pub use manifest::{ManifestError, Measured, MediaType};
pub use push::{ManifestPush, ManifestWrite, Reference, WriteKind, is_harbor_tag_write};
pub use rollout::{Enforcement, Share, warning_headers};
pub use rule::{Rule, TagFilter};
pub use size::ByteSize;
pub use tags::TagBook;

/// The largest manifest body a registry accepts (distribution and Harbor: 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// The limits that apply to a repository.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_image_size: ByteSize,
    pub tag_count_limit: u64,
    /// Tags that do not count toward `tag_count_limit`.
    pub exclude_tags: TagFilter,
    /// Whether a push over these limits is refused, or only reported.
    pub enforcement: Enforcement,
    /// The share of a limit at which an allowed push is warned.
    pub warn_at: Option<Share>,
}

impl Limits {
    /// Those of `tags` that count toward `tag_count_limit`.
    pub fn counted_tags(&self, tags: &[String]) -> Vec<String> {
        let counts = |t: &&String| self.exclude_tags.counts(t);
        tags.iter().filter(counts).cloned().collect()
    }
}

/// One compiled configuration version.
#[derive(Debug)]
pub struct Policy {
    global: Limits,
    rules: Vec<Rule>,
    /// All rule paths in order, so the first match is one pass over the name.
    matcher: RegexSet,
}

/// The outcome of the first step of a decision.
#[derive(Debug)]
pub enum Evaluation<'p> {
    /// Decided without the repository's tags.
    Done(Decision),
    /// The push creates tags: finish with the repository's tag book.
    NeedTags(TagQuery<'p>),
}

/// What a shared store found and did for one decision; see [`TagQuery::conclude`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: usize,
    pub new_tags: Vec<String>,
    pub reserved: Vec<String>,
}

/// A decision waiting for the repository's tags.
#[derive(Debug)]
pub struct TagQuery<'p> {
    facts: Facts,
    limits: &'p Limits,
    tags: Vec<String>,
    /// An image-size refusal a `warn`/`dry-run` limit let through: the one `enforce` gives.
    waived: Option<Denial>,
}

impl Policy {
    /// Assembles a policy; the rule paths were validated one by one already.
    pub(crate) fn new(global: Limits, rules: Vec<Rule>) -> Result<Self, regex::Error> {
        let matcher = RegexSet::new(rules.iter().map(|r| r.path.as_str()))?;
        Ok(Self {
            global,
            rules,
            matcher,
        })
    }

    /// The global limits.
    pub fn global(&self) -> &Limits {
        &self.global
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule that applies to `repository` (`None`: the global limits) and its limits. A rule
    /// matches the name, or the name followed by `/`, so `^team/app/.*` covers `team/app`.
    pub fn limits_for(&self, repository: &str) -> (Option<&Rule>, &Limits) {
        if self.rules.is_empty() {
            return (None, &self.global);
        }
        let first_match = |name: &str| self.matcher.matches(name).iter().next();
        let index = match first_match(repository) {
            // No rule comes before the first: the `name/` spelling cannot win.
            Some(0) => Some(0),
            direct => direct
                .into_iter()
                .chain(first_match(&format!("{repository}/")))
                .min(),
        };
        match index.and_then(|i| self.rules.get(i)) {
            Some(rule) => (Some(rule), &rule.limits),
            None => (None, &self.global),
        }
    }

    /// First step of a decision on a manifest `PUT`.
    pub fn evaluate<'p>(&'p self, push: &ManifestPush<'_>) -> Evaluation<'p> {
        let write = push.write;
        let (rule, limits) = self.limits_for(&write.repository);
        let mut facts = Facts {
            repository: write.repository.clone(),
            reference: write.reference.as_str().to_owned(),
            rule: rule.map(Rule::reference),
            max_image_bytes: Some(limits.max_image_size.bytes()),
            tag_count_limit: Some(limits.tag_count_limit),
            enforcement: limits.enforcement,
            ..Facts::default()
        };
        // Only the limits follow `enforcement`: a push that cannot be judged at all (bad name,
        // unreadable or schema 1 manifest) is refused in every mode.
        let deny = |facts: Facts, denial: Denial| Evaluation::Done(Decision::denied(facts, denial));
        if let Err(e) = write.grammar() {
            let reason = if e.is_name() {
                DenyReason::NameInvalid
            } else {
                DenyReason::TagInvalid
            };
            let denial = decision::invalid(&facts, reason, &e.to_string());
            return deny(facts, denial);
        }
        if push.body.len() > MAX_MANIFEST_BYTES {
            let what = format!(
                "the manifest is {} bytes; registries accept manifests of at most {MAX_MANIFEST_BYTES} bytes (4 MiB)",
                push.body.len()
            );
            let denial = decision::invalid(&facts, DenyReason::ManifestTooLarge, &what);
            return deny(facts, denial);
        }
        // Logged with a refusal too: a schema 1 push says which type was refused.
        facts.media_type = push
            .content_type
            .and_then(MediaType::from_content_type)
            .map(MediaType::as_str);
        let measured = match manifest::measure(push.content_type, push.body) {
            Ok(m) => m,
            Err(e) => {
                let reason = match e {
                    ManifestError::Schema1 => DenyReason::Schema1,
                    _ => DenyReason::ManifestInvalid,
                };
                let denial = decision::invalid(&facts, reason, &e.to_string());
                return deny(facts, denial);
            }
        };
        facts.media_type = Some(measured.media_type().as_str());
        let bytes = ByteSize::from_bytes(measured.image_bytes());
        facts.image_bytes = Some(bytes.bytes());
        let mut waived = None;
        if bytes > limits.max_image_size {
            let denial = decision::image_too_large(&facts, bytes, limits.max_image_size);
            if limits.enforcement.refuses() {
                return deny(facts, denial);
            }
            // Counted and reserved all the same, so that a dry run's tag count stays true.
            waived = Some(denial);
        }
        let tags = write.tags();
        if tags.iter().all(|t| !limits.exclude_tags.counts(t)) {
            // By digest, or only uncounted tags: nothing to count.
            return Evaluation::Done(Decision::allowed(facts, Vec::new(), waived, limits));
        }
        Evaluation::NeedTags(TagQuery {
            facts,
            limits,
            tags,
            waived,
        })
    }
}

impl TagQuery<'_> {
    /// The repository whose tags are needed.
    pub fn repository(&self) -> &str {
        &self.facts.repository
    }

    /// The facts so far (for a refusal that never reaches [`finish`](Self::finish)).
    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// The tags this push names that count toward the limit, without repeats: what a shared
    /// store counts and reserves for [`conclude`](Self::conclude).
    pub fn counted_tags(&self) -> Vec<String> {
        self.limits.counted_tags(&self.tags)
    }

    /// The limit the count is held to.
    pub fn tag_count_limit(&self) -> u64 {
        self.limits.tag_count_limit
    }

    /// The count up to which a store reserves this push's tags: the limit when it is enforced,
    /// else no bound, since a push let through past a `warn`/`dry-run` limit still holds its
    /// slots (the verdict comes from [`conclude`](Self::conclude) against the real limit).
    pub fn reservation_limit(&self) -> u64 {
        if self.limits.enforcement.refuses() {
            self.limits.tag_count_limit
        } else {
            u64::MAX
        }
    }

    /// The exclusion list in force: a store keeps one confirmed set per list, since the same
    /// tags count differently under another.
    pub fn exclude_tags(&self) -> &TagFilter {
        &self.limits.exclude_tags
    }

    /// A decision a shared store made atomically by the rule of [`finish`](Self::finish): the
    /// repository held `count` counted tags, `new_tags` of this push's counted tags were neither
    /// confirmed nor reserved, and, when it fit, `reserved` were reserved. The verdict and the
    /// message come from here, so every store answers in the same words.
    pub fn conclude(self, tally: Tally) -> Decision {
        let Self {
            mut facts,
            limits,
            mut waived,
            ..
        } = self;
        facts.tag_count = Some(tally.count);
        facts.new_tags = tally.new_tags.len();
        let after = tally.count as u64 + tally.new_tags.len() as u64;
        if !tally.new_tags.is_empty() && after > limits.tag_count_limit {
            let denial =
                decision::tag_limit(&facts, tally.count, &tally.new_tags, limits.tag_count_limit);
            if limits.enforcement.refuses() {
                return Decision::denied(facts, denial);
            }
            waived.get_or_insert(denial);
        }
        Decision::allowed(facts, tally.reserved, waived, limits)
    }

    /// Decides against the repository's tags and, when allowed, reserves the new tags' slots in
    /// `book`. A tag the repository already holds moves and adds nothing; a tag reserved by a
    /// concurrent push shares that push's slot.
    pub fn finish(self, book: &mut TagBook) -> Decision {
        self.decide(book, true)
    }

    /// Decides like [`finish`](Self::finish) but reserves nothing: for "what would happen"
    /// questions that must not take a slot from a real push.
    pub fn judge(self, book: &mut TagBook) -> Decision {
        self.decide(book, false)
    }

    fn decide(self, book: &mut TagBook, reserve: bool) -> Decision {
        let filter = &self.limits.exclude_tags;
        let count = book.count(filter);
        let new_tags: Vec<String> = self
            .tags
            .iter()
            .filter(|t| filter.counts(t) && !book.contains(t))
            .cloned()
            .collect();
        let fits =
            new_tags.is_empty() || count as u64 + new_tags.len() as u64 <= self.reservation_limit();
        // Reserve every counted tag not yet confirmed, including ones a concurrent push holds:
        // if that push fails, this one still holds the slot.
        let reserved: Vec<String> = if reserve && fits {
            self.tags
                .iter()
                .filter(|t| filter.counts(t) && !book.is_confirmed(t))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        book.reserve(&reserved);
        self.conclude(Tally {
            count,
            new_tags,
            reserved,
        })
    }
}

#[cfg(test)]
mod tests;
