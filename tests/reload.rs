//! Hot reload against a real filesystem: every way an operator or the kubelet changes the
//! configuration applies within one second, an invalid edit keeps the old limits, and nothing
//! reloads when nothing changed. Waits are bounded polls of the snapshot channel, never sleeps.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use registry_gateway::metrics::{Metrics, ResultLabels};
use registry_gateway::reload::{self, ReloadHandle, ReloadOptions, SharedStatus, Snapshot};
use tokio::sync::watch;

const MB: u64 = 1024 * 1024;
/// The promise of DESIGN 5.
const DEADLINE: Duration = Duration::from_secs(1);

/// The seed's configuration with `project-1` limited to `project1_mb`.
fn seed(project1_mb: u64) -> String {
    format!(
        "max_image_size: 100MB\ntag_count_limit: 100\nrules:\n  - path: ^project-1/.*\n    limit:\n      max_image_size: {project1_mb}MB\n      tag_count_limit: 3\n  - path: ^project-2/.*\n    limit:\n      max_image_size: 50MB\n      tag_count_limit: 10\n"
    )
}

/// The same as a `kind: ConfigMap` manifest.
fn seed_manifest(project1_mb: u64) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: registry-gateway\ndata:\n  max_image_size: \"100MB\"\n  tag_count_limit: \"100\"\n  rules: |\n{}",
        rules_text(project1_mb)
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    )
}

/// The `rules` key as a ConfigMap holds it.
fn rules_text(project1_mb: u64) -> String {
    format!(
        "- path: ^project-1/.*\n  limit:\n    max_image_size: {project1_mb}MB\n    tag_count_limit: 3\n- path: ^project-2/.*\n  limit:\n    max_image_size: 50MB\n    tag_count_limit: 10\n"
    )
}

fn tracing_guard() -> tracing::subscriber::DefaultGuard {
    tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_test_writer()
            .with_max_level(tracing::Level::DEBUG)
            .finish(),
    )
}

struct Running {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    status: SharedStatus,
    metrics: Arc<Metrics>,
    _handle: ReloadHandle,
}

fn start(path: &Path, options: ReloadOptions) -> Running {
    let initial = reload::load_initial(path).expect("a valid initial configuration");
    assert_eq!(initial.version, 1);
    let metrics = Arc::new(Metrics::new());
    let (snapshots, status, handle) =
        reload::spawn(path.to_path_buf(), initial, Arc::clone(&metrics), options);
    Running {
        snapshots,
        status,
        metrics,
        _handle: handle,
    }
}

/// Watcher only: the safety-net re-read must not be what makes the tests pass.
fn watcher_only() -> ReloadOptions {
    ReloadOptions {
        resync: Duration::from_secs(3600),
        ..ReloadOptions::default()
    }
}

fn project1_bytes(snapshot: &Snapshot) -> u64 {
    snapshot
        .policy
        .limits_for("project-1/app")
        .1
        .max_image_size
        .bytes()
}

fn reloads(metrics: &Metrics, result: &'static str) -> u64 {
    metrics
        .reloads
        .get_or_create(&ResultLabels { result })
        .get()
}

/// Waits (bounded) until the snapshot in force limits `project-1/app` to `mb`, and returns the
/// time since `changed_at`, asserting the one-second promise.
async fn applies_within_a_second(
    running: &mut Running,
    mb: u64,
    changed_at: Instant,
    what: &str,
) -> Duration {
    let waited = tokio::time::timeout(
        DEADLINE * 3,
        running.snapshots.wait_for(|s| project1_bytes(s) == mb * MB),
    )
    .await
    .map(|r| r.is_ok());
    let elapsed = changed_at.elapsed();
    assert!(
        waited == Ok(true),
        "{what}: {mb}MB not applied after {elapsed:?}; in force: {}",
        project1_bytes(&running.snapshots.borrow())
    );
    assert!(elapsed < DEADLINE, "{what}: applied after {elapsed:?}");
    eprintln!("{what}: applied {elapsed:?} after the change");
    elapsed
}

/// Polls `check` every 5 ms until it holds, for at most `limit`.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A temporary directory holding the file `name` with `text`, and that file's path.
fn config_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    (dir, path)
}

/// [`config_file`], watched by a reload task with the watcher alone.
fn watched_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf, Running) {
    let (dir, path) = config_file(name, text);
    let running = start(&path, watcher_only());
    (dir, path, running)
}

/// Waits (bounded) until `/status` reports an error, and returns its text.
async fn reported_error(status: &SharedStatus, what: &str) -> String {
    eventually(DEADLINE, what, || {
        status.lock().expect("status").last_error.is_some()
    })
    .await;
    status
        .lock()
        .expect("status")
        .last_error
        .clone()
        .unwrap_or_default()
}

/// The applied and unchanged reload counts.
fn reload_counts(metrics: &Metrics) -> (u64, u64) {
    (reloads(metrics, "applied"), reloads(metrics, "unchanged"))
}

#[tokio::test]
async fn an_in_place_write_applies_within_one_second() {
    let _log = tracing_guard();
    let (_dir, path, mut running) = watched_file("config.yaml", &seed(20));
    assert_eq!(project1_bytes(&running.snapshots.borrow()), 20 * MB);

    for (i, mb) in [30, 40].into_iter().enumerate() {
        // Truncate and write the same inode, as `>` in a shell or most editors' "save" do.
        std::fs::write(&path, seed(mb)).expect("rewrite");
        let changed = Instant::now();
        applies_within_a_second(&mut running, mb, changed, "in-place write").await;
        let snapshot = Arc::clone(&running.snapshots.borrow());
        assert_eq!(snapshot.version, 2 + i as u64);
        assert_eq!(running.metrics.config_version.get(), 2 + i as i64);
    }
    assert_eq!(reloads(&running.metrics, "applied"), 2);
    assert_eq!(reloads(&running.metrics, "invalid"), 0);
}

#[tokio::test]
async fn a_rename_over_the_file_applies_within_one_second() {
    let _log = tracing_guard();
    let (dir, path, mut running) = watched_file("config.yaml", &seed(20));

    // Twice: the second rename replaces the inode the first one brought in, so a watch on the
    // file would be dead by now; the directory watch is not.
    for mb in [30, 40] {
        let next = dir.path().join("new.yaml");
        std::fs::write(&next, seed(mb)).expect("write new");
        std::fs::rename(&next, &path).expect("rename over");
        let changed = Instant::now();
        applies_within_a_second(&mut running, mb, changed, "rename-over").await;
    }
    assert_eq!(running.snapshots.borrow().version, 3);
}

/// A ConfigMap mounted as a volume, written exactly as the kubelet's atomic writer does.
struct ConfigMapVolume {
    dir: PathBuf,
    generation: u32,
    current: Option<String>,
    keys: Vec<String>,
}

impl ConfigMapVolume {
    fn new(dir: &Path, data: &[(&str, String)]) -> Self {
        let mut volume = Self {
            dir: dir.to_path_buf(),
            generation: 0,
            current: None,
            keys: Vec::new(),
        };
        volume.update(data);
        volume
    }

    /// New timestamped directory, `..data_tmp` link, `rename(..data_tmp, ..data)`, visible key
    /// links for new keys, stale visible links removed, old directory deleted.
    fn update(&mut self, data: &[(&str, String)]) {
        self.generation += 1;
        let stamp = format!(
            "..2026_01_01_00_00_{:02}.{}",
            self.generation,
            1000 + self.generation
        );
        let fresh = self.dir.join(&stamp);
        std::fs::create_dir(&fresh).expect("timestamped dir");
        for (key, value) in data {
            std::fs::write(fresh.join(key), value).expect("key file");
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&stamp, &tmp).expect("..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        for (key, _) in data {
            let visible = self.dir.join(key);
            if std::fs::symlink_metadata(&visible).is_err() {
                std::os::unix::fs::symlink(format!("..data/{key}"), &visible)
                    .expect("visible link");
            }
        }
        for stale in self
            .keys
            .iter()
            .filter(|k| !data.iter().any(|(key, _)| key == k))
        {
            std::fs::remove_file(self.dir.join(stale)).expect("stale link");
        }
        if let Some(old) = self.current.replace(stamp) {
            std::fs::remove_dir_all(self.dir.join(old)).expect("old timestamped dir");
        }
        self.keys = data.iter().map(|(k, _)| (*k).to_owned()).collect();
    }
}

fn seed_keys(project1_mb: u64) -> Vec<(&'static str, String)> {
    vec![
        ("max_image_size", "100MB".to_owned()),
        ("tag_count_limit", "100".to_owned()),
        ("rules", rules_text(project1_mb)),
    ]
}

#[tokio::test]
async fn a_configmap_directory_data_swap_applies_within_one_second() {
    let _log = tracing_guard();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut volume = ConfigMapVolume::new(dir.path(), &seed_keys(20));
    let mut running = start(dir.path(), watcher_only());
    assert_eq!(project1_bytes(&running.snapshots.borrow()), 20 * MB);
    assert_eq!(running.snapshots.borrow().policy.rules().len(), 2);

    for mb in [30, 40, 50] {
        volume.update(&seed_keys(mb));
        let changed = Instant::now();
        applies_within_a_second(&mut running, mb, changed, "ConfigMap directory ..data swap").await;
    }
    // A key removed from the ConfigMap: its visible link goes, and its default comes back.
    volume.update(&seed_keys(50)[..2]);
    let changed = Instant::now();
    let waited = tokio::time::timeout(
        DEADLINE,
        running.snapshots.wait_for(|s| s.policy.rules().is_empty()),
    )
    .await
    .map(|r| r.is_ok());
    assert!(
        waited == Ok(true),
        "removed key not applied after {:?}",
        changed.elapsed()
    );
    assert_eq!(running.snapshots.borrow().version, 5);
}

#[tokio::test]
async fn a_configmap_key_file_behind_data_applies_within_one_second() {
    let _log = tracing_guard();
    // The common mount: the whole YAML in one key, and `--config` names the key's visible link
    // (`config.yaml -> ..data/config.yaml`). The resolved file moves to a new directory on
    // every swap, and the old one is deleted.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut volume = ConfigMapVolume::new(dir.path(), &[("config.yaml", seed(20))]);
    let path = dir.path().join("config.yaml");
    let mut running = start(&path, watcher_only());

    for mb in [30, 40, 50] {
        volume.update(&[("config.yaml", seed(mb))]);
        let changed = Instant::now();
        applies_within_a_second(&mut running, mb, changed, "ConfigMap key file ..data swap").await;
    }
    assert_eq!(running.snapshots.borrow().version, 4);
}

#[tokio::test]
async fn a_configmap_manifest_file_applies_within_one_second() {
    let _log = tracing_guard();
    let (dir, path, mut running) = watched_file("configmap.yaml", &seed_manifest(20));
    assert_eq!(project1_bytes(&running.snapshots.borrow()), 20 * MB);

    std::fs::write(&path, seed_manifest(30)).expect("rewrite");
    let changed = Instant::now();
    applies_within_a_second(
        &mut running,
        30,
        changed,
        "ConfigMap manifest in-place write",
    )
    .await;
    let next = dir.path().join("next.yaml");
    std::fs::write(&next, seed_manifest(40)).expect("write");
    std::fs::rename(&next, &path).expect("rename over");
    let changed = Instant::now();
    applies_within_a_second(&mut running, 40, changed, "ConfigMap manifest rename-over").await;
}

#[tokio::test]
async fn an_invalid_edit_keeps_the_old_limits_until_a_valid_one_applies() {
    let _log = tracing_guard();
    let (_dir, path, mut running) = watched_file("config.yaml", &seed(20));
    let loaded_at = running.snapshots.borrow().loaded_at;

    // Line 2 has an unknown unit.
    std::fs::write(&path, "max_image_size: 100MB\ntag_count_limit: 10XB\n").expect("break it");
    let status = Arc::clone(&running.status);
    let error = reported_error(&status, "the invalid edit is reported").await;
    assert!(
        error.contains("config.yaml:2:18: tag_count_limit"),
        "{error}"
    );
    assert!(status.lock().expect("status").last_error_at.is_some());
    assert_eq!(reloads(&running.metrics, "invalid"), 1);
    {
        let snapshot = running.snapshots.borrow();
        assert_eq!(snapshot.version, 1, "the invalid edit replaced nothing");
        assert_eq!(project1_bytes(&snapshot), 20 * MB);
        assert_eq!(snapshot.loaded_at, loaded_at);
    }
    assert!(
        !running.snapshots.has_changed().expect("open"),
        "nothing was published"
    );

    std::fs::write(&path, seed(30)).expect("fix it");
    let changed = Instant::now();
    applies_within_a_second(&mut running, 30, changed, "valid edit after an invalid one").await;
    assert_eq!(running.snapshots.borrow().version, 2);
    assert!(
        status.lock().expect("status").last_error.is_none(),
        "the error is cleared"
    );
    assert!(status.lock().expect("status").last_error_at.is_none());
    assert_eq!(reloads(&running.metrics, "applied"), 1);
    assert_eq!(reloads(&running.metrics, "invalid"), 1);
}

#[tokio::test]
async fn an_invalid_configmap_swap_keeps_the_old_limits() {
    let _log = tracing_guard();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut volume = ConfigMapVolume::new(dir.path(), &seed_keys(20));
    let running = start(dir.path(), watcher_only());

    let mut keys = seed_keys(20);
    keys[0].1 = "lots".to_owned();
    volume.update(&keys);
    let status = Arc::clone(&running.status);
    let error = reported_error(&status, "the invalid swap is reported").await;
    assert!(
        error.contains("max_image_size:1:1: max_image_size: unknown unit `lots`"),
        "{error}"
    );
    assert_eq!(running.snapshots.borrow().version, 1);
    assert_eq!(
        running
            .snapshots
            .borrow()
            .policy
            .global()
            .max_image_size
            .bytes(),
        100 * MB
    );
}

#[tokio::test]
async fn rewriting_identical_contents_does_not_bump_the_version_nor_loop() {
    let _log = tracing_guard();
    let (_dir, path) = config_file("config.yaml", &seed(20));
    let debounce = Duration::from_millis(20);
    let running = start(
        &path,
        ReloadOptions {
            debounce,
            ..watcher_only()
        },
    );

    std::fs::write(&path, seed(20)).expect("same contents");
    let metrics = Arc::clone(&running.metrics);
    eventually(DEADLINE, "the re-read happens", || {
        reloads(&metrics, "unchanged") >= 1
    })
    .await;
    assert_eq!(running.snapshots.borrow().version, 1);
    assert_eq!(reloads(&metrics, "applied"), 0);
    // `touch`: only the modification time changes (inotify IN_ATTRIB).
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .expect("touch");
    eventually(DEADLINE, "the touch is re-read", || {
        reloads(&metrics, "unchanged") >= 2
    })
    .await;
    assert_eq!(running.snapshots.borrow().version, 1);
    assert_eq!(reloads(&metrics, "applied"), 0);

    // Our own reads open the file inside the watched directory (inotify IN_OPEN); they must not
    // schedule more reads. Fifteen debounce periods of quiet prove it.
    let settled = reloads(&metrics, "unchanged");
    tokio::time::sleep(debounce * 15).await;
    assert_eq!(
        reloads(&metrics, "unchanged"),
        settled,
        "reads feed themselves"
    );
    assert!(!running.snapshots.has_changed().expect("open"));
}

#[tokio::test]
async fn reads_of_a_configmap_mount_do_not_feed_themselves_either() {
    let _log = tracing_guard();
    let debounce = Duration::from_millis(20);
    let options = ReloadOptions {
        debounce,
        ..watcher_only()
    };
    // Listing the mount opens the watched directory itself; reading a key through `..data`
    // opens a file in the watched resolved-target directory.
    for key_file in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = |mb| {
            if key_file {
                vec![("config.yaml", seed(mb))]
            } else {
                seed_keys(mb)
            }
        };
        let mut volume = ConfigMapVolume::new(dir.path(), &data(20));
        let path = if key_file {
            dir.path().join("config.yaml")
        } else {
            dir.path().to_path_buf()
        };
        let mut running = start(&path, options.clone());
        volume.update(&data(30));
        applies_within_a_second(
            &mut running,
            30,
            Instant::now(),
            "swap with a short debounce",
        )
        .await;
        let before = reload_counts(&running.metrics);
        tokio::time::sleep(debounce * 15).await;
        let after = reload_counts(&running.metrics);
        assert_eq!(before, after, "key file {key_file}: reads feed themselves");
        assert_eq!(running.snapshots.borrow().version, 2);
    }
}

#[tokio::test]
async fn a_burst_of_writes_applies_once_with_the_last_contents() {
    let _log = tracing_guard();
    let (_dir, path, mut running) = watched_file("config.yaml", &seed(20));

    for mb in 21..=30 {
        std::fs::write(&path, seed(mb)).expect("rewrite");
    }
    let changed = Instant::now();
    applies_within_a_second(&mut running, 30, changed, "burst of ten writes").await;
    assert_eq!(
        running.snapshots.borrow().version,
        2,
        "one reload for the burst"
    );
}

#[tokio::test]
async fn an_invalid_config_at_start_up_is_an_error_with_its_location() {
    let (dir, path) = config_file(
        "config.yaml",
        "rules:\n  - path: ^a/.*\n    limit:\n      max_image_size: 1MB\n",
    );
    let error = reload::load_initial(&path).expect_err("invalid");
    let text = error.to_string();
    assert!(
        text.contains("config.yaml:3:") && text.contains("rules[0].limit.tag_count_limit"),
        "{text}"
    );
    assert!(reload::load_initial(&dir.path().join("missing.yaml")).is_err());
}

#[tokio::test]
async fn shutting_down_stops_reloading_and_closes_the_channel() {
    let _log = tracing_guard();
    let (_dir, path) = config_file("config.yaml", &seed(20));
    let Running {
        mut snapshots,
        _handle: handle,
        ..
    } = start(&path, watcher_only());

    handle.shutdown();
    std::fs::write(&path, seed(30)).expect("rewrite");
    let closed = tokio::time::timeout(DEADLINE, snapshots.changed()).await;
    assert!(
        matches!(closed, Ok(Err(_))),
        "the channel closes without a new value: {closed:?}"
    );
    assert_eq!(
        project1_bytes(&snapshots.borrow()),
        20 * MB,
        "the last snapshot stays readable"
    );
}
