use super::*;

fn fixture(kind: &str, name: &str) -> ConfigSource {
    let path = format!(
        "{}/../../tests/fixtures/policy/{kind}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("fixture present");
    ConfigSource::File {
        name: name.to_owned(),
        text,
    }
}

fn text(yaml: &str) -> ConfigSource {
    ConfigSource::File {
        name: "test.yaml".to_owned(),
        text: yaml.to_owned(),
    }
}

fn effective(policy: &Policy, repository: &str) -> (Option<usize>, u64, u64) {
    let (rule, limits) = policy.limits_for(repository);
    (
        rule.map(|r| r.index),
        limits.max_image_size.bytes(),
        limits.tag_count_limit,
    )
}

const MB: u64 = 1024 * 1024;
const GB: u64 = 1024 * MB;

#[test]
fn seed_examples_give_the_documented_limits_in_both_file_shapes() {
    for name in ["seed.yaml", "seed-configmap.yaml"] {
        let policy = compile(&fixture("valid", name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let table: &[(&str, Option<usize>, u64, u64)] = &[
            ("project-1/app", Some(0), 20 * MB, 3),
            ("project-2/big-image", Some(1), 5 * GB, 200),
            ("project-2/big-image/sub", Some(1), 5 * GB, 200),
            ("project-2/api", Some(2), 50 * MB, 10),
            ("library/nginx", None, 100 * MB, 100),
            // `^project-1/.*` matches "project-1/": the name followed by a slash.
            ("project-1", Some(0), 20 * MB, 3),
            ("project-10/x", None, 100 * MB, 100),
        ];
        for (repo, rule, size, tags) in table {
            assert_eq!(
                effective(&policy, repo),
                (*rule, *size, *tags),
                "{name} {repo}"
            );
        }
        assert_eq!(
            policy
                .limits_for("project-1/app")
                .0
                .map(|r| r.path.as_str()),
            Some("^project-1/.*")
        );
    }
}

#[test]
fn no_keys_at_all_gives_the_defaults() {
    for yaml in ["", "# nothing\n", "---\n", "{}"] {
        let policy = compile(&text(yaml)).unwrap_or_else(|e| panic!("{yaml:?}: {e}"));
        assert_eq!(effective(&policy, "any/repo"), (None, GB, 1000), "{yaml:?}");
    }
    let policy = compile(&fixture("valid", "empty.yaml")).expect("valid");
    assert_eq!(effective(&policy, "x"), (None, 1_073_741_824, 1000));
}

#[test]
fn values_may_be_numbers_or_strings_and_rules_a_string() {
    let policy = compile(&fixture("valid", "numbers-and-strings.yaml")).expect("valid");
    assert_eq!(
        effective(&policy, "library/nginx"),
        (Some(0), 1_610_612_736, 7)
    );
    assert_eq!(effective(&policy, "library/nginx-extra"), (None, GB, 50));
    assert!(policy.limits_for("library/nginx").1.exclude_tags.is_empty());
    assert!(!policy.global().exclude_tags.is_empty());
    let policy = compile(&fixture("valid", "rules-as-string.yaml")).expect("valid");
    assert_eq!(effective(&policy, "team/a"), (Some(0), 1024, 1));
}

#[test]
fn a_rule_without_exclude_tags_inherits_the_global_list() {
    let policy = compile(&text(
        "exclude_tags: ['^sha256-']\nrules:\n  - path: ^a/\n    limit: {max_image_size: 1MB, tag_count_limit: 1}\n",
    ))
    .expect("valid");
    assert!(!policy.limits_for("a/b").1.exclude_tags.counts("sha256-x"));
}

#[test]
fn every_invalid_fixture_reports_its_fragments() {
    let dir = format!(
        "{}/../../tests/fixtures/policy/invalid",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut seen = 0;
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    for name in names {
        let expect_path = format!("{dir}/{}", name.replace(".yaml", ".expect"));
        let expected = std::fs::read_to_string(&expect_path)
            .unwrap_or_else(|_| panic!("{name} needs a .expect file"));
        let err = compile(&fixture("invalid", &name))
            .expect_err(&name)
            .to_string();
        for fragment in expected.lines().filter(|l| !l.is_empty()) {
            assert!(
                err.contains(fragment),
                "{name}: missing {fragment:?} in:\n{err}"
            );
        }
        // Every problem carries a line number.
        let located = LoadError { problems: vec![] };
        let _ = located;
        seen += 1;
    }
    assert!(seen >= 8);
}

#[test]
fn every_problem_is_collected_with_a_line() {
    let err = compile(&fixture("invalid", "many-problems.yaml")).expect_err("invalid");
    assert_eq!(err.problems.len(), 6, "{err}");
    assert!(err.problems.iter().all(|p| p.line.is_some()), "{err}");
}

#[test]
fn a_missing_limit_names_the_rule_index_and_line() {
    let err = compile(&fixture("invalid", "rule-missing-limit.yaml")).expect_err("invalid");
    let p = &err.problems[0];
    assert_eq!(p.field, "rules[1].limit.tag_count_limit");
    assert_eq!(p.line, Some(8), "{err}");
}

#[test]
fn configmap_rule_lines_map_back_to_the_manifest() {
    let err = compile(&fixture("invalid", "configmap-bad-rule.yaml")).expect_err("invalid");
    let lines: Vec<_> = err
        .problems
        .iter()
        .map(|p| (p.field.as_str(), p.line))
        .collect();
    assert_eq!(
        lines,
        [
            ("tag_count_limit", Some(7)),
            ("rules[1].limit.max_image_size", Some(15))
        ],
        "{err}"
    );
}

#[test]
fn bad_shapes_are_explained() {
    let table: &[(&str, &str)] = &[
        ("- a\n- b\n", "expected a mapping of configuration keys"),
        ("rules: 5\n", "expected a list of rules"),
        ("rules:\n  - 5\n", "rules[0]: expected a rule"),
        (
            "rules:\n  - path: ^a\n    limit: 3\n",
            "rules[0].limit: expected a mapping",
        ),
        (
            "rules:\n  - path: [a]\n    limit: {max_image_size: 1, tag_count_limit: 1}\n",
            "rules[0].path: expected a regex string",
        ),
        ("max_image_size: true\n", "expected a size"),
        ("max_image_size: \n", "expected a size"),
        ("tag_count_limit: 1.5\n", "found 1.5"),
        ("tag_count_limit: '10 tags'\n", "found `10 tags`"),
        ("kind: Deployment\n", "expected `ConfigMap`"),
        (
            "kind: ConfigMap\ndata:\n  max_image_size: 5\n",
            "must be strings",
        ),
        (
            "kind: ConfigMap\ndata:\n  colour: red\n",
            "unknown key `colour`",
        ),
        (
            "kind: ConfigMap\nmax_image_size: 1MB\n",
            "belongs under `data`",
        ),
        (
            "kind: ConfigMap\nspec: {}\n",
            "unknown ConfigMap field `spec`",
        ),
        ("exclude_tags: '^x'\n", "expected a list of tag regexes"),
        ("exclude_tags: ['(']\n", "exclude_tags[0]: invalid regex"),
        ("a: 1\n---\nb: 2\n", "YAML error"),
        (
            "rules:\n  - path: ^a\n    path: ^b\n    limit: {max_image_size: 1, tag_count_limit: 1}\n",
            "YAML error",
        ),
    ];
    for (yaml, fragment) in table {
        let err = compile(&text(yaml)).expect_err(yaml).to_string();
        assert!(err.contains(fragment), "{yaml:?}: {err}");
    }
}

#[test]
fn oversized_configuration_is_refused_without_parsing() {
    let big = format!("# {}\n", "x".repeat(MAX_CONFIG_BYTES));
    let err = compile(&text(&big)).expect_err("too big").to_string();
    assert!(err.contains("1 MiB"), "{err}");
}

#[test]
fn directory_keys_are_read_as_configmap_values() {
    let source = ConfigSource::Directory {
        name: "cm".into(),
        keys: vec![
            KeyFile {
                key: "max_image_size".into(),
                name: "cm/max_image_size".into(),
                text: "20MB\n".into(),
            },
            KeyFile {
                key: "rules".into(),
                name: "cm/rules".into(),
                text: "- path: ^p/.*\n  limit:\n    max_image_size: 1MB\n    tag_count_limit: x\n"
                    .into(),
            },
            KeyFile {
                key: "tag_count_limit".into(),
                name: "cm/tag_count_limit".into(),
                text: "7".into(),
            },
            KeyFile {
                key: "extra".into(),
                name: "cm/extra".into(),
                text: "1".into(),
            },
        ],
    };
    let err = compile(&source).expect_err("invalid").to_string();
    assert!(
        err.contains("cm/rules:4:") && err.contains("rules[0].limit.tag_count_limit"),
        "{err}"
    );
    assert!(
        err.contains("cm/extra: extra: unknown key `extra`"),
        "{err}"
    );
}
