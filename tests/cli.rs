//! `check-config` and `explain` through the built binary: the seed's acceptance table in all
//! three configuration shapes, the defaults, and every invalid fixture exiting non-zero with a
//! line number and no panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use registry_gateway_testkit::SEED_LIMITS;

const BIN: &str = env!("CARGO_BIN_EXE_registry-gateway");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/policy");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("REGISTRY_GATEWAY_CONFIG")
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn explain_json(config: &Path, repository: &str) -> serde_json::Value {
    let config = config.to_str().expect("utf-8 path");
    let out = run(&["explain", "--config", config, "--json", repository]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{config} {repository}: {stderr}"
    );
    assert_eq!(stdout.lines().count(), 1, "exactly one line: {stdout}");
    let value: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert!(value.is_object(), "{stdout}");
    value
}

/// The seed as Kubernetes mounts it: `..<timestamp>/` holding the keys, `..data` pointing at it,
/// and one visible link per key.
fn seed_configmap_dir(root: &Path) -> PathBuf {
    let dir = root.join("config");
    let stamp = "..2026_01_01_00_00_00.123456789";
    std::fs::create_dir_all(dir.join(stamp)).expect("mkdir");
    let rules = "- path: ^project-1/.*\n  limit:\n    max_image_size: 20MB\n    tag_count_limit: 3\n- path: ^project-2/big-image/.*\n  limit:\n    max_image_size: 5GB\n    tag_count_limit: 200\n- path: ^project-2/.*\n  limit:\n    max_image_size: 50MB\n    tag_count_limit: 10\n";
    for (key, value) in [
        ("max_image_size", "100MB"),
        ("tag_count_limit", "100"),
        ("rules", rules),
    ] {
        std::fs::write(dir.join(stamp).join(key), value).expect("key");
        std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key)).expect("visible link");
    }
    std::os::unix::fs::symlink(stamp, dir.join("..data")).expect("..data");
    dir
}

#[test]
fn explain_answers_the_seed_table_in_all_three_shapes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shapes = [
        fixture("valid/seed.yaml"),
        fixture("valid/seed-configmap.yaml"),
        seed_configmap_dir(tmp.path()),
    ];
    for config in &shapes {
        for seed in &SEED_LIMITS {
            let v = explain_json(config, seed.repository);
            seed.assert_explained(
                &v,
                &format!("{} {}: {v}", config.display(), seed.repository),
            );
        }
    }
}

#[test]
fn explain_in_text_names_the_rule_and_the_exact_bytes() {
    let seed = fixture("valid/seed.yaml");
    let seed = seed.to_str().expect("utf-8 path");
    let out = run(&["explain", "--config", seed, "project-1/app"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    for fragment in ["rule 0", "^project-1/.*", "20MB (20971520 bytes)", "3"] {
        assert!(stdout.contains(fragment), "{fragment}: {stdout}");
    }
    let out = run(&["explain", "--config", seed, "library/nginx"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("global") && stdout.contains("100MB (104857600 bytes)"),
        "{stdout}"
    );
}

#[test]
fn explain_reads_the_config_from_the_environment_too() {
    let out = Command::new(BIN)
        .args(["explain", "--json", "project-2/api"])
        .env("REGISTRY_GATEWAY_CONFIG", fixture("valid/seed.yaml"))
        .output()
        .expect("the binary runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["tag_count_limit"], 10);
}

#[test]
fn check_config_prints_the_effective_limits_in_all_three_shapes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for config in [
        fixture("valid/seed.yaml"),
        fixture("valid/seed-configmap.yaml"),
        seed_configmap_dir(tmp.path()),
    ] {
        let out = run(&["check-config", config.to_str().expect("utf-8 path")]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{}: {stderr}", config.display());
        assert!(stderr.is_empty(), "{stderr}");
        let global = stdout.lines().position(|l| l.starts_with("global:"));
        let first_rule = stdout.lines().position(|l| l.starts_with("rule 0:"));
        assert!(
            global < first_rule && global.is_some(),
            "global first: {stdout}"
        );
        for fragment in [
            "global: max_image_size 100MB (104857600 bytes), tag_count_limit 100",
            "rule 0: path `^project-1/.*`",
            "20MB (20971520 bytes), tag_count_limit 3",
            "rule 1: path `^project-2/big-image/.*`",
            "5GB (5368709120 bytes), tag_count_limit 200",
            "rule 2: path `^project-2/.*`",
            "50MB (52428800 bytes), tag_count_limit 10",
        ] {
            assert!(
                stdout.contains(fragment),
                "{}: `{fragment}` in\n{stdout}",
                config.display()
            );
        }
    }
}

#[test]
fn a_config_with_no_keys_has_the_defaults_in_all_three_shapes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let manifest = tmp.path().join("configmap.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: empty\ndata: {}\n",
    )
    .expect("write");
    let dir = tmp.path().join("mount");
    std::fs::create_dir(&dir).expect("mkdir");
    for config in [fixture("valid/empty.yaml"), manifest, dir] {
        let v = explain_json(&config, "any/repository");
        assert!(v["rule"].is_null(), "{v}");
        assert_eq!(v["max_image_size"]["bytes"], 1_073_741_824u64, "{v}");
        assert_eq!(v["max_image_size"]["display"], "1GB", "{v}");
        assert_eq!(v["tag_count_limit"], 1000, "{v}");
        let out = run(&["check-config", config.to_str().expect("utf-8 path")]);
        assert_eq!(out.status.code(), Some(0));
        assert!(
            text(&out.stdout)
                .contains("global: max_image_size 1GB (1073741824 bytes), tag_count_limit 1000"),
            "{}",
            text(&out.stdout)
        );
    }
}

/// Every invalid fixture, through both commands: exit 1, nothing on stdout, every fragment of
/// its `.expect` file on stderr, a `:line:` location, and no panic.
#[test]
fn every_invalid_fixture_exits_non_zero_with_a_line_number_and_no_panic() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(fixture("invalid")).expect("fixtures") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            names.push(path);
        }
    }
    names.sort();
    for required in [
        "rule-missing-limit",
        "unknown-unit",
        "unknown-key",
        "bad-regex",
        "syntax-error",
        "alias-bomb",
    ] {
        assert!(
            names
                .iter()
                .any(|p| p.file_stem().is_some_and(|s| s == required)),
            "fixture {required} is missing"
        );
    }
    for path in names {
        let expect =
            std::fs::read_to_string(path.with_extension("expect")).expect("paired .expect");
        let config = path.to_str().expect("utf-8 path");
        for args in [
            vec!["check-config", config],
            vec!["explain", "--config", config, "project-1/app"],
            vec!["explain", "--config", config, "--json", "project-1/app"],
        ] {
            let out = run(&args);
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            let at = format!("{args:?}");
            assert_eq!(out.status.code(), Some(1), "{at}: {stderr}");
            assert!(stdout.is_empty(), "{at}: stdout {stdout}");
            assert!(!stderr.contains("panicked"), "{at}: {stderr}");
            assert!(
                has_line_number(&stderr),
                "{at}: no line number in\n{stderr}"
            );
            for fragment in expect.lines().filter(|l| !l.trim().is_empty()) {
                assert!(
                    stderr.contains(fragment),
                    "{at}: `{fragment}` missing from\n{stderr}"
                );
            }
        }
    }
}

/// `file.yaml:12:` somewhere in the text.
fn has_line_number(text: &str) -> bool {
    text.split(".yaml:").skip(1).any(|rest| {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        digits > 0 && rest[digits..].starts_with(':')
    })
}

#[test]
fn unreadable_and_hostile_inputs_exit_non_zero_without_panicking() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let garbage = tmp.path().join("garbage.yaml");
    let bytes: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&garbage, bytes).expect("write");
    let nested = tmp.path().join("nested.yaml");
    std::fs::write(&nested, "[".repeat(50_000)).expect("write");
    let stray = tmp.path().join("stray");
    std::fs::create_dir(&stray).expect("mkdir");
    std::fs::write(stray.join("config.yaml"), "max_image_size: 1GB\n").expect("write");
    let cases = [
        (tmp.path().join("missing.yaml"), 2),
        (garbage, 2),
        (nested, 1),
        // A directory is a ConfigMap mount: a file that is not a key is an unknown key.
        (stray, 1),
    ];
    for (path, code) in cases {
        let config = path.to_str().expect("utf-8 path");
        for args in [
            vec!["check-config", config],
            vec!["explain", "--config", config, "--json", "a/b"],
        ] {
            let out = run(&args);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
            assert!(out.stdout.is_empty(), "{args:?}");
            assert!(
                stderr.contains(config),
                "{args:?}: names the file: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        }
    }
}
