//! Child processes owned by the benchmark: logs in files, killed by PID when dropped, and listed
//! in a PID file (`PID STARTTIME NAME` per line) so that `scripts/bench` can kill what is left if
//! this process itself is killed. Also `/proc` readings: peak RSS and its reset.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Live children: (pid, start time from /proc, name).
static LIVE: Mutex<Vec<(u32, String, String)>> = Mutex::new(Vec::new());
static PID_FILE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Where the list of live children is kept for the wrapper script.
pub(crate) fn set_pid_file(path: Option<PathBuf>) {
    *PID_FILE.lock().unwrap_or_else(|p| p.into_inner()) = path;
    write_pid_file();
}

fn write_pid_file() {
    let path = PID_FILE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(path) = path else { return };
    let live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    let text: String = live
        .iter()
        .map(|(pid, start, name)| format!("{pid} {start} {name}\n"))
        .collect();
    // Best effort: the wrapper's clean-up is a backstop, not the main path.
    let _ = std::fs::write(&path, text);
}

/// The start time of `pid` (field 22 of /proc/<pid>/stat, clock ticks since boot): with the PID
/// it names one process even after the PID is reused.
pub(crate) fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; fields after it are not.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(str::to_owned)
}

/// SIGKILL every live child; for the watchdog. Checks the start time so a reused PID is never hit.
pub(crate) fn kill_all_live() {
    let live = LIVE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (pid, start, _) in live {
        if start_time(pid).as_deref() == Some(start.as_str()) {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A spawned child with stdout and stderr in `<dir>/<name>.stdout.log` / `.stderr.log`.
pub(crate) struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Proc, String> {
        let stdout = log_dir.join(format!("{name}.stdout.log"));
        let stderr = log_dir.join(format!("{name}.stderr.log"));
        let out = File::create(&stdout).map_err(|e| format!("{}: {e}", stdout.display()))?;
        let err = File::create(&stderr).map_err(|e| format!("{}: {e}", stderr.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawning {name} ({cmd:?}): {e}"))?;
        let pid = child.id();
        let start = start_time(pid).unwrap_or_default();
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((pid, start, name.to_owned()));
        write_pid_file();
        Ok(Proc {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn stdout_text(&self) -> String {
        read_lossy(&self.stdout)
    }

    pub(crate) fn stderr_text(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// `Err` with the log tails if the process has exited.
    pub(crate) fn check_running(&mut self, during: &str) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}) during {during}\n{}",
                self.name,
                self.describe()
            )),
            Err(e) => Err(format!("waiting for {}: {e}", self.name)),
        }
    }

    /// The last lines of both logs.
    pub(crate) fn describe(&self) -> String {
        format!(
            "--- {name} stderr (tail) ---\n{}\n--- {name} stdout (tail) ---\n{}",
            tail(&self.stderr_text(), 25),
            tail(&self.stdout_text(), 10),
            name = self.name,
        )
    }

    /// Waits up to `timeout` for the child to exit by itself; kills it after that.
    pub(crate) fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() >= deadline => {
                    self.kill();
                    return Err(format!("{} did not finish within {timeout:?}", self.name));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(format!("waiting for {}: {e}", self.name)),
            }
        }
    }

    /// SIGKILL (by PID, through std) and reap. Idempotent.
    pub(crate) fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let pid = self.child.id();
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(p, _, _)| *p != pid);
        write_pid_file();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A `kB` field of /proc/<pid>/status (`VmHWM`, `VmRSS`), in KiB.
pub(crate) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Resets the peak RSS (`VmHWM`) of `pid` to its current RSS (`echo 5 > /proc/<pid>/clear_refs`,
/// Linux 4.0+). `false` if the kernel or permissions do not allow it.
pub(crate) fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// User plus system CPU time of `pid` so far, in seconds (fields 14 and 15 of /proc/<pid>/stat,
/// in clock ticks of 1/100 s, Linux's USER_HZ on every architecture it ships).
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}
