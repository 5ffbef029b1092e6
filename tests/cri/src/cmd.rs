//! Running helper programs with a deadline, so that no step of the test can
//! hang it.

use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Run `cmd` to completion within `timeout`; return its stdout. A non-zero
/// exit is an error carrying stderr. On timeout the process is killed.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let out = output(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{cmd:?} printed invalid UTF-8"))
}

/// Run `cmd` within `timeout` and return its output whatever the exit code.
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
    // wait_with_output drains both pipes, so a chatty child cannot block on
    // a full pipe; it runs on a thread so we can give up on it.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.with_context(|| format!("wait for {cmd:?}")),
        Err(_) => {
            // Not reaped yet (the thread still waits for it), so the pid
            // cannot have been reused.
            let _ = kill(pid, Signal::SIGKILL);
            bail!("{cmd:?} did not finish within {timeout:?}")
        }
    }
}

/// Call `probe` every `interval` until it returns `Ok(Some(_))`, or fail
/// after `timeout` with the last error it gave.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if Instant::now() >= deadline {
            return Err(match last {
                Some(e) => e.context(format!("{what}: not done within {timeout:?}")),
                None => anyhow::anyhow!("{what}: not done within {timeout:?}"),
            });
        }
        thread::sleep(interval);
    }
}
