//! Unit tests for the watched-directory set, echo filtering, debounce, the `..data` marker and the
//! start-up and periodic re-reads.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::EventKind;
use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RemoveKind};

use super::debounce::Burst;
use super::read::chain_marker;
use super::task::spawn_inner;
use super::watcher::{is_read_only, watch_dirs};
use super::{ReloadOptions, Snapshot, load_initial, lock, spawn};
use crate::metrics::Metrics;

fn real(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).expect("exists")
}

/// A temporary `config.yaml` holding `text`, and the snapshot it loads as at start-up.
fn loaded(text: &str) -> (tempfile::TempDir, PathBuf, Snapshot) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("config.yaml");
    std::fs::write(&path, text).expect("write");
    let initial = load_initial(&path).expect("valid");
    (tmp, path, initial)
}

#[test]
fn watched_directories_follow_the_path_its_links_and_its_target() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = real(tmp.path());
    let mkdir = |name: &str| {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    };
    let plain = mkdir("plain");
    std::fs::write(plain.join("config.yaml"), "").expect("write");
    // A ConfigMap mount with one key, `--config` naming the key's visible link.
    let mount = mkdir("mount");
    let stamp = mkdir("mount/..2026_01_01_00_00_00.1");
    std::fs::write(stamp.join("config.yaml"), "").expect("write");
    symlink("..2026_01_01_00_00_00.1", mount.join("..data")).expect("link");
    symlink("..data/config.yaml", mount.join("config.yaml")).expect("link");
    // A chain across three directories, and a symlinked directory.
    let (a, b, c) = (mkdir("a"), mkdir("b"), mkdir("c"));
    std::fs::write(c.join("real.yaml"), "").expect("write");
    symlink("../c/real.yaml", b.join("hop.yaml")).expect("link");
    symlink("../b/hop.yaml", a.join("config.yaml")).expect("link");
    symlink(&mount, root.join("mount-link")).expect("link");

    let table: [(PathBuf, Vec<PathBuf>); 6] = [
        (plain.join("config.yaml"), vec![plain.clone()]),
        (plain.join("missing.yaml"), vec![plain.clone()]),
        (mount.clone(), vec![mount.clone()]),
        (
            mount.join("config.yaml"),
            vec![mount.clone(), stamp.clone()],
        ),
        (a.join("config.yaml"), vec![a.clone(), b.clone(), c.clone()]),
        (root.join("mount-link"), vec![mount.clone(), root.clone()]),
    ];
    for (path, expected) in table {
        assert_eq!(watch_dirs(&path), expected, "{}", path.display());
    }
}

#[test]
fn only_opens_and_reads_can_be_echoes_of_our_own_read() {
    let table = [
        (EventKind::Access(AccessKind::Open(AccessMode::Any)), true),
        (EventKind::Access(AccessKind::Read), true),
        (EventKind::Access(AccessKind::Close(AccessMode::Read)), true),
        (
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            false,
        ),
        (EventKind::Access(AccessKind::Close(AccessMode::Any)), false),
        (EventKind::Modify(ModifyKind::Data(DataChange::Any)), false),
        (EventKind::Modify(ModifyKind::Any), false),
        (EventKind::Create(CreateKind::Any), false),
        (EventKind::Remove(RemoveKind::Folder), false),
        (EventKind::Any, false),
        (EventKind::Other, false),
    ];
    for (kind, echo) in table {
        assert_eq!(is_read_only(&kind), echo, "{kind:?}");
    }
}

#[test]
fn a_burst_settles_after_the_quiet_time_or_at_its_cap() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut burst = Burst::new(t0, ms(200));
    assert_eq!(burst.deadline(), t0 + ms(200));
    burst.event(t0 + ms(150));
    assert_eq!(burst.deadline(), t0 + ms(350));
    // A late-delivered, earlier event does not move the deadline back.
    burst.event(t0 + ms(10));
    assert_eq!(burst.deadline(), t0 + ms(350));
    // A directory that never goes quiet is cut off at three debounce periods.
    burst.event(t0 + ms(550));
    assert_eq!(burst.deadline(), t0 + ms(600));
}

#[test]
fn a_swapped_configmap_is_marked_by_its_data_link() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(tmp.path().join("..v1")).expect("mkdir");
    symlink("..v1", tmp.path().join("..data")).expect("link");
    assert_eq!(chain_marker(tmp.path()), Some(PathBuf::from("..v1")));
    assert_eq!(chain_marker(&tmp.path().join("missing.yaml")), None);
}

#[tokio::test]
async fn without_a_watcher_the_periodic_re_read_applies_changes() {
    let (_tmp, path, initial) = loaded("tag_count_limit: 5\n");
    let metrics = Arc::new(Metrics::new());
    let options = ReloadOptions {
        debounce: Duration::from_millis(200),
        resync: Duration::from_millis(50),
    };
    let (mut rx, status, _handle) =
        spawn_inner(path.clone(), initial, Arc::clone(&metrics), options, false);
    assert_eq!(metrics.config_version.get(), 1);

    std::fs::write(&path, "tag_count_limit: x\n").expect("break it");
    let start = Instant::now();
    while lock(&status).last_error.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "invalid edit not seen"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::fs::write(&path, "tag_count_limit: 7\n").expect("fix it");
    let applied = tokio::time::timeout(
        Duration::from_secs(2),
        rx.wait_for(|s| s.policy.global().tag_count_limit == 7),
    )
    .await;
    assert!(matches!(applied, Ok(Ok(_))), "not applied by the re-read");
    assert_eq!(metrics.config_version.get(), 2);
    assert!(lock(&status).last_error.is_none());
    assert!(
        metrics
            .reloads
            .get_or_create(&crate::metrics::ResultLabels { result: "invalid" })
            .get()
            >= 1
    );
}

#[tokio::test]
async fn a_change_before_spawn_is_caught_by_the_start_re_read() {
    let (_tmp, path, initial) = loaded("tag_count_limit: 5\n");
    std::fs::write(&path, "tag_count_limit: 6\n").expect("rewrite");
    let options = ReloadOptions {
        resync: Duration::from_secs(3600),
        ..ReloadOptions::default()
    };
    let (rx, _status, _handle) = spawn(path, initial, Arc::new(Metrics::new()), options);
    let snapshot = Arc::clone(&rx.borrow());
    assert_eq!(
        (snapshot.version, snapshot.policy.global().tag_count_limit),
        (2, 6)
    );
}
