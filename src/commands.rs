//! `check-config` and `explain`: configuration tools for operators and CI; and the entry of
//! `audit`, which reads its configuration the same way.
//!
//! Both read a configuration exactly as `serve` does (file, ConfigMap manifest or ConfigMap
//! directory) and return the process exit code instead of exiting, so they are testable with
//! in-memory writers. They never panic, whatever the input: every problem becomes a message on
//! `err` and a non-zero code.

use std::io::Write;
use std::path::Path;

use crate::config;
use crate::policy::{ConfigSource, Enforcement, Limits, LoadError, Policy, Rule};

/// Exit code: the configuration is valid (and, for `explain`, the answer was printed).
pub const EXIT_OK: u8 = 0;
/// Exit code: the configuration was read and is invalid; every problem is on stderr.
pub const EXIT_INVALID: u8 = 1;
/// Exit code: the configuration cannot be read (missing, unreadable, not UTF-8), or the output
/// cannot be written.
pub const EXIT_UNREADABLE: u8 = 2;

/// `registry-gateway check-config PATH`: validates the configuration and prints the effective
/// limits (the global ones, then every rule in order) to `out`. Returns the process exit code
/// (0 valid, 1 invalid config, 2 cannot read/other); on errors every problem, located, goes to
/// `err`.
pub fn check_config(path: &Path, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let (policy, hash) = match load(path) {
        Ok(loaded) => loaded,
        Err((code, error)) => return report(err, code, &error),
    };
    let text = describe(path, &policy, &hash);
    emit(out, err, &text)
}

/// `registry-gateway explain --config PATH [--json] REPOSITORY`: which rule applies to
/// `repository` (the first match, or the global limits) and its limits. With `json`, exactly one
/// line holding one JSON object:
/// `{"repository", "rule": {"index", "path", "line"} | null, "max_image_size": {"bytes",
/// "display"}, "tag_count_limit", "exclude_tags", "config_hash"}`. Returns the exit code as
/// [`check_config`] does.
pub fn explain(
    config: &Path,
    repository: &str,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let (policy, hash) = match load(config) {
        Ok(loaded) => loaded,
        Err((code, error)) => return report(err, code, &error),
    };
    let (rule, limits) = policy.limits_for(repository);
    let text = if json {
        explain_json(repository, rule, limits, &hash)
    } else {
        explain_text(repository, rule, limits)
    };
    emit(out, err, &text)
}

/// `registry-gateway audit --config PATH --registry-url URL …`: reads the configuration as
/// `check-config` does (the same messages), then audits the registry; see [`crate::audit`].
/// A configuration that cannot be read or is invalid exits 1: the audit could not run.
pub fn audit(args: &crate::cli::AuditArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    match load(&args.config) {
        Ok((policy, _)) => crate::audit::run(policy, args, out, err),
        Err((code, error)) => {
            report(err, code, &error);
            crate::audit::EXIT_INCOMPLETE
        }
    }
}

/// Reads, then compiles, keeping the two failures apart for the exit code.
fn load(path: &Path) -> Result<(Policy, String), (u8, LoadError)> {
    let source: ConfigSource = config::read(path).map_err(|e| (EXIT_UNREADABLE, e))?;
    let hash = config::fingerprint(&source);
    let policy = crate::policy::compile(&source).map_err(|e| (EXIT_INVALID, e))?;
    Ok((policy, hash))
}

fn report(err: &mut dyn Write, code: u8, error: &LoadError) -> u8 {
    // Nothing better to do if stderr is gone too; the exit code still says it.
    let _ = if code == EXIT_INVALID {
        writeln!(err, "{error}")
    } else {
        let problems: Vec<String> = error.problems.iter().map(|p| format!("\n  {p}")).collect();
        writeln!(err, "cannot read the configuration:{}", problems.concat())
    };
    code
}

fn emit(out: &mut dyn Write, err: &mut dyn Write, text: &str) -> u8 {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let _ = writeln!(err, "cannot write the output: {e}");
            EXIT_UNREADABLE
        }
    }
}

/// `20MB (20971520 bytes)`: every size shown with its exact bytes, since units are 1024-based.
fn size(limits: &Limits) -> String {
    let size = limits.max_image_size;
    format!("{size} ({} bytes)", size.bytes())
}

/// The tag patterns that do not count, comma-separated; `None` when every tag counts.
fn excluded(limits: &Limits) -> Option<String> {
    let filter = &limits.exclude_tags;
    (!filter.is_empty()).then(|| filter.patterns().join(", "))
}

/// The limits on one line, `key value` pairs joined by commas.
fn limits_text(limits: &Limits) -> String {
    let mut parts = vec![
        format!("max_image_size {}", size(limits)),
        format!("tag_count_limit {}", limits.tag_count_limit),
    ];
    parts.extend(excluded(limits).map(|excluded| format!("exclude_tags [{excluded}]")));
    // Shown only when set, so that a configuration without them reads as it always did.
    if !limits.enforcement.refuses() {
        parts.push(format!("enforcement {}", limits.enforcement));
    }
    parts.extend(limits.warn_at.map(|share| format!("warn_at {share}")));
    parts.join(", ")
}

fn describe(path: &Path, policy: &Policy, hash: &str) -> String {
    let mut text = format!(
        "valid configuration: {} (sha256 {hash})\nglobal: {}\n",
        path.display(),
        limits_text(policy.global())
    );
    if policy.rules().is_empty() {
        text.push_str("rules: none; the global limits apply to every repository\n");
    }
    for rule in policy.rules() {
        text.push_str(&format!(
            "rule {}: path `{}` (line {}): {}\n",
            rule.index,
            rule.path,
            rule.line,
            limits_text(&rule.limits)
        ));
    }
    text.push_str(
        "The first matching rule wins; a rule matches the repository name, or the name followed by `/`. \
         Sizes are 1024-based: 1KB = 1024 bytes, 1MB = 1048576 bytes, 1GB = 1073741824 bytes.\n",
    );
    text
}

fn explain_text(repository: &str, rule: Option<&Rule>, limits: &Limits) -> String {
    let which = match rule {
        Some(rule) => format!(
            "rule {} (path `{}`, line {}) applies",
            rule.index, rule.path, rule.line
        ),
        None => "no rule matches; the global limits apply".to_owned(),
    };
    let mut text = format!(
        "repository `{repository}`: {which}\n  max_image_size: {}\n  tag_count_limit: {}\n",
        size(limits),
        limits.tag_count_limit
    );
    if let Some(excluded) = excluded(limits) {
        text.push_str(&format!("  exclude_tags (not counted): {excluded}\n"));
    }
    match limits.enforcement {
        Enforcement::Enforce => {}
        Enforcement::Warn => text.push_str(
            "  enforcement: warn (pushes over a limit are let through; the client is warned, and the push logged and counted as a would-be denial)\n",
        ),
        Enforcement::DryRun => text.push_str(
            "  enforcement: dry-run (pushes over a limit are let through, logged and counted as would-be denials; the client is told nothing)\n",
        ),
    }
    if let Some(share) = limits.warn_at {
        text.push_str(&format!(
            "  warn_at: {share} (an allowed push that reaches {share} of a limit gets a Warning header)\n"
        ));
    }
    if let Some(hint) = name_hint(repository) {
        text.push_str(&format!("  note: {hint}\n"));
    }
    text
}

fn explain_json(repository: &str, rule: Option<&Rule>, limits: &Limits, hash: &str) -> String {
    let rule = rule.map(|r| {
        serde_json::json!({
            "index": r.index,
            "path": r.path,
            "line": r.line,
        })
    });
    let value = serde_json::json!({
        "repository": repository,
        "rule": rule,
        "max_image_size": {
            "bytes": limits.max_image_size.bytes(),
            "display": limits.max_image_size.to_string(),
        },
        "tag_count_limit": limits.tag_count_limit,
        "exclude_tags": limits.exclude_tags.patterns(),
        "enforcement": limits.enforcement.as_str(),
        "warn_at": limits.warn_at.map(|s| s.to_string()),
        "config_hash": hash,
    });
    format!("{value}\n")
}

/// A hint when the argument looks like more than a repository name: rules match the name as
/// the registry sees it in `/v2/<name>/manifests/...`, without host, tag or digest.
fn name_hint(repository: &str) -> Option<&'static str> {
    let first = repository.split('/').next().unwrap_or_default();
    if repository.contains('@')
        || repository
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
    {
        Some(
            "this looks like an image reference with a tag or digest; rules match the repository name alone, such as `project-1/app`",
        )
    } else if repository.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost")
    {
        Some(
            "the first component looks like a registry host; rules match the repository name without it, such as `project-1/app`",
        )
    } else if repository.chars().any(|c| c.is_ascii_uppercase()) {
        Some(
            "repository names are lowercase in OCI registries; a push to this name would be refused by the registry",
        )
    } else {
        None
    }
}

/// An error and every cause under it, `outer: inner: innermost`: errors keep their causes as
/// sources, and the operator reads the whole chain once.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let line = c.to_string();
        if !text.ends_with(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use registry_gateway_testkit::SEED_LIMITS;

    use super::*;

    const SEED: &str = "tests/fixtures/policy/valid/seed.yaml";
    const SEED_CONFIGMAP: &str = "tests/fixtures/policy/valid/seed-configmap.yaml";

    fn run(f: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>) -> u8) -> (u8, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = f(&mut out, &mut err);
        let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8 output");
        (code, text(out), text(err))
    }

    fn explain_json_of(config: &str, repository: &str) -> serde_json::Value {
        let (code, out, err) = run(|o, e| explain(Path::new(config), repository, true, o, e));
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.lines().count(), 1, "exactly one line: {out}");
        serde_json::from_str(&out).expect("one JSON object")
    }

    #[test]
    fn explain_answers_the_seed_table_in_both_file_shapes() {
        for config in [SEED, SEED_CONFIGMAP] {
            for seed in &SEED_LIMITS {
                let v = explain_json_of(config, seed.repository);
                seed.assert_explained(&v, &format!("{config} {}: {v}", seed.repository));
            }
        }
    }

    #[test]
    fn an_empty_config_explains_the_defaults() {
        let v = explain_json_of("tests/fixtures/policy/valid/empty.yaml", "any/repo");
        assert!(v["rule"].is_null());
        assert_eq!(v["max_image_size"]["bytes"], 1_073_741_824u64);
        assert_eq!(v["max_image_size"]["display"], "1GB");
        assert_eq!(v["tag_count_limit"], 1000);
    }

    #[test]
    fn explain_text_names_the_rule_or_the_global_limits() {
        let (code, out, _) = run(|o, e| explain(Path::new(SEED), "project-1/app", false, o, e));
        assert_eq!(code, 0);
        assert!(out.contains("rule 0 (path `^project-1/.*`"), "{out}");
        assert!(
            out.contains("20MB (20971520 bytes)") && out.contains("tag_count_limit: 3"),
            "{out}"
        );
        let (_, out, _) = run(|o, e| explain(Path::new(SEED), "library/nginx", false, o, e));
        assert!(
            out.contains("global limits apply") && out.contains("100MB (104857600 bytes)"),
            "{out}"
        );
        let (_, out, _) = run(|o, e| {
            explain(
                Path::new(SEED),
                "harbor.example.com/project-1/app:v1",
                false,
                o,
                e,
            )
        });
        assert!(out.contains("note:"), "{out}");
    }

    #[test]
    fn check_config_and_explain_show_enforcement_and_warn_at_only_when_set() {
        let rollout = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/policy/valid/rollout.yaml"
        );
        let (code, out, err) = run(|o, e| check_config(Path::new(rollout), o, e));
        assert_eq!(code, 0, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[1].ends_with("tag_count_limit 100, warn_at 90%"),
            "{out}"
        );
        assert!(
            lines[2].ends_with("enforcement dry-run, warn_at 90%"),
            "{out}"
        );
        assert!(lines[3].ends_with("enforcement warn, warn_at 80%"), "{out}");
        assert!(
            lines[4].ends_with("tag_count_limit 5, warn_at 90%"),
            "{out}"
        );
        let (_, out, _) = run(|o, e| explain(Path::new(rollout), "trial/app", false, o, e));
        assert!(
            out.contains("enforcement: dry-run (") && out.contains("warn_at: 90%"),
            "{out}"
        );
        let (_, out, _) = run(|o, e| explain(Path::new(rollout), "soon/app", true, o, e));
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(
            (v["enforcement"].as_str(), v["warn_at"].as_str()),
            (Some("warn"), Some("80%"))
        );
        // The original product's keys alone: nothing new is shown.
        let (_, out, _) = run(|o, e| check_config(Path::new(SEED), o, e));
        assert!(
            !out.contains("enforcement") && !out.contains("warn_at"),
            "{out}"
        );
        let (_, out, _) = run(|o, e| explain(Path::new(SEED), "project-1/app", true, o, e));
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(
            (v["enforcement"].as_str(), v["warn_at"].as_str()),
            (Some("enforce"), None)
        );
    }

    #[test]
    fn check_config_prints_global_then_every_rule_with_exact_bytes() {
        let (code, out, err) = run(|o, e| check_config(Path::new(SEED), o, e));
        assert_eq!(code, 0, "{err}");
        assert!(err.is_empty());
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[1]
                .starts_with("global: max_image_size 100MB (104857600 bytes), tag_count_limit 100"),
            "{out}"
        );
        assert!(
            lines[2].starts_with("rule 0: path `^project-1/.*`")
                && lines[2].contains("20MB (20971520 bytes), tag_count_limit 3"),
            "{out}"
        );
        assert!(
            lines[3].contains("rule 1: path `^project-2/big-image/.*`")
                && lines[3].contains("5GB (5368709120 bytes), tag_count_limit 200"),
            "{out}"
        );
        assert!(
            lines[4].contains("rule 2: path `^project-2/.*`")
                && lines[4].contains("50MB (52428800 bytes), tag_count_limit 10"),
            "{out}"
        );
    }

    #[test]
    fn check_config_shows_exclude_tags_when_set() {
        let (code, out, err) = run(|o, e| {
            check_config(
                Path::new("tests/fixtures/policy/valid/numbers-and-strings.yaml"),
                o,
                e,
            )
        });
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("global: max_image_size 1GB (1073741824 bytes), tag_count_limit 50, exclude_tags [^sha256-"), "{out}");
        assert!(
            out.contains("1.5GB (1610612736 bytes), tag_count_limit 7\n"),
            "an empty rule list excludes nothing: {out}"
        );
    }

    #[test]
    fn every_invalid_fixture_exits_1_with_its_located_fragments() {
        let dir = Path::new("tests/fixtures/policy/invalid");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("fixtures") {
            let yaml = entry.expect("entry").path();
            if yaml.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let expect =
                std::fs::read_to_string(yaml.with_extension("expect")).expect("paired .expect");
            for run_it in [true, false] {
                let (code, out, err) = if run_it {
                    run(|o, e| check_config(&yaml, o, e))
                } else {
                    run(|o, e| explain(&yaml, "project-1/app", true, o, e))
                };
                assert_eq!(code, 1, "{}: {err}", yaml.display());
                assert!(
                    out.is_empty(),
                    "{}: nothing on stdout: {out}",
                    yaml.display()
                );
                for fragment in expect.lines().filter(|l| !l.trim().is_empty()) {
                    assert!(
                        err.contains(fragment),
                        "{}: `{fragment}` missing from:\n{err}",
                        yaml.display()
                    );
                }
            }
            seen += 1;
        }
        assert!(seen >= 6, "only {seen} invalid fixtures");
    }

    #[test]
    fn unreadable_inputs_exit_2_and_never_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let garbage = dir.path().join("garbage.yaml");
        std::fs::write(&garbage, [0xff, 0xfe, 0x00, 0x9c, 0x80]).expect("write");
        for path in [dir.path().join("missing.yaml"), garbage] {
            let (code, out, err) = run(|o, e| check_config(&path, o, e));
            assert_eq!(code, 2, "{}", path.display());
            assert!(
                out.is_empty() && err.contains(&path.display().to_string()),
                "{err}"
            );
            let (code, _, _) = run(|o, e| explain(&path, "a/b", true, o, e));
            assert_eq!(code, 2);
        }
    }

    #[test]
    fn odd_but_readable_inputs_never_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = "[".repeat(100_000);
        let cases: [(&str, &[u8]); 6] = [
            ("control.yaml", b"\x01\x02\x03: [\x7f"),
            ("deep.yaml", deep.as_bytes()),
            ("tab.yaml", b"max_image_size:\t\t\n\t- x"),
            ("list.yaml", b"- 1\n- 2\n"),
            ("huge.yaml", &[b'a'; 2 * 1024 * 1024]),
            ("anchors.yaml", b"a: &a {b: *a}\n"),
        ];
        for (name, bytes) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).expect("write");
            let (code, _, err) = run(|o, e| check_config(&path, o, e));
            assert_ne!(code, 0, "{name}: {err}");
            assert!(!err.is_empty(), "{name}");
        }
    }

    #[test]
    fn a_directory_without_keys_has_the_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (code, out, err) = run(|o, e| check_config(dir.path(), o, e));
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("global: max_image_size 1GB (1073741824 bytes), tag_count_limit 1000"),
            "{out}"
        );
    }

    #[test]
    fn a_closed_output_is_exit_2_not_a_panic() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut err = Vec::new();
        assert_eq!(check_config(Path::new(SEED), &mut Closed, &mut err), 2);
        assert_eq!(
            explain(Path::new(SEED), "a", true, &mut Closed, &mut Closed),
            2
        );
    }
}
