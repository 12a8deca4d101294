//! Client programs (docker, podman, buildah) run to completion with a deadline, their output
//! captured in files so a chatty client cannot fill a pipe and stall.

use std::fs::File;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::process::read_lossy;

/// Runs `cmd` with stdin closed until it exits, and returns its output. Past `timeout` the process
/// is killed by PID and this panics with what it printed, naming `what`, so no test waits on a
/// hung client.
pub async fn run_bounded(mut cmd: Command, timeout: Duration, what: &str) -> Output {
    let dir = crate::process::temp_dir("rg-client-");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("temp dir is writable"))
        .stderr(File::create(&err_path).expect("temp dir is writable"));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {what} ({cmd:?}) failed: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a client") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {timeout:?} ({cmd:?})\nstdout: {}\nstderr: {}",
                read_lossy(&out_path),
                read_lossy(&err_path)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

/// stdout then stderr of a client run, as text: docker prints its progress to stdout and the
/// registry's refusal to stderr, and an assertion should see both.
pub fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Panics with the client's output unless it exited 0.
pub fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}",
        output.status,
        output_text(output)
    );
}
