//! A child process owned by a test: logs in files, killed by PID on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How many log lines a failure report shows per stream.
const TAIL_LINES: usize = 60;

/// A spawned process whose stdout and stderr go to `<log_dir>/<name>.stdout.log` and
/// `<name>.stderr.log`. Dropping it kills the process (SIGKILL to its PID) and reaps it; if the
/// thread is panicking, the log tails are printed first so a failed test shows what the process
/// said.
pub(crate) struct ManagedChild {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl ManagedChild {
    /// Spawns `cmd` with stdin closed and output to log files in `log_dir`. Panics with the program
    /// name if it cannot be spawned.
    pub(crate) fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> ManagedChild {
        let stdout = log_dir.join(format!("{name}.stdout.log"));
        let stderr = log_dir.join(format!("{name}.stderr.log"));
        let out = File::create(&stdout).expect("log dir is writable");
        let err = File::create(&stderr).expect("log dir is writable");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({cmd:?}) failed: {e}"));
        ManagedChild {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited (without blocking).
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("waiting for {} failed: {e}", self.name))
    }

    /// Everything the process wrote to stdout so far.
    pub(crate) fn stdout(&self) -> String {
        read_lossy(&self.stdout)
    }

    /// Everything the process wrote to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        read_lossy(&self.stderr)
    }

    pub(crate) fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    pub(crate) fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// The last lines of both logs, for failure messages.
    pub(crate) fn describe(&self) -> String {
        format!(
            "--- {name} (pid {pid}) stderr, last {n} lines ---\n{err}\n--- {name} stdout, last {n} lines ---\n{out}",
            name = self.name,
            pid = self.child.id(),
            n = TAIL_LINES,
            err = tail(&self.stderr(), TAIL_LINES),
            out = tail(&self.stdout(), TAIL_LINES),
        )
    }

    /// Panics with the logs if the process has already exited; `during` says what was going on.
    pub(crate) fn assert_running(&mut self, during: &str) {
        if let Some(status) = self.exited() {
            panic!(
                "{} exited with {status} during {during}\n{}",
                self.name,
                self.describe()
            );
        }
    }

    /// Sends SIGTERM (through `kill -TERM <pid>`; no extra crates) and waits up to `grace` for the
    /// process to exit. Returns its exit status; after `grace` the process is killed and this
    /// panics, since a process that ignores SIGTERM is a bug worth a failed test.
    pub(crate) async fn terminate(&mut self, grace: Duration) -> ExitStatus {
        if let Some(status) = self.exited() {
            return status;
        }
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("`kill` is available");
        assert!(sent.success(), "kill -TERM {} failed", self.child.id());
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "{} did not exit within {grace:?} of SIGTERM\n{}",
                    self.name,
                    self.describe()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL and reap. Idempotent.
    pub(crate) fn kill(&mut self) {
        if self.exited().is_none() {
            // The process may exit between the check and the kill; both outcomes are fine.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.describe());
        }
        self.kill();
    }
}

pub(crate) fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
