//! Processes the lab starts in the background, recorded so that `down` can
//! stop them later — also from another invocation, after a crash.
//!
//! A record holds the pid and the process's start time (field 22 of
//! `/proc/PID/stat`), so a recycled pid is never mistaken for ours.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// How long a process gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// A background process the lab started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRecord {
    pub pid: i32,
    pub start_time: u64,
    /// What it is, e.g. `apiserver` or `server pod/web-1`.
    pub role: String,
}

/// The start time of a live (non-zombie) process, if there is one with this pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    // Field 22 overall is index 19 after (pid, comm).
    fields.get(19)?.parse().ok()
}

impl ProcRecord {
    /// Whether the recorded process is still running.
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }

    /// SIGTERM, then SIGKILL after a grace period; reaps it if it is our child.
    /// A process that is already gone is fine.
    pub fn stop(&self) -> Result<()> {
        stop_pid(self.pid, Some(self.start_time))
    }

    /// SIGKILL (a crash, as far as the process can tell), then wait until it
    /// is gone; reaps it if it is our child. A process already gone is fine.
    pub fn kill(&self) -> Result<()> {
        if !self.alive() {
            return Ok(());
        }
        let pid = Pid::from_raw(self.pid);
        let _ = kill(pid, Signal::SIGKILL);
        let deadline = Instant::now() + TERM_GRACE;
        while self.alive() && Instant::now() < deadline {
            reap(pid);
            std::thread::sleep(Duration::from_millis(10));
        }
        reap(pid);
        if self.alive() {
            anyhow::bail!("process {} ({}) survived SIGKILL", self.pid, self.role);
        }
        Ok(())
    }
}

/// Collect every exited child of this process (a supervisor's restarted agents).
pub fn reap_children() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == nix::sys::wait::WaitStatus::StillAlive {
            break;
        }
    }
}

/// Stop a pid (checking its start time when given), bounded in time.
pub fn stop_pid(pid: i32, expect_start: Option<u64>) -> Result<()> {
    let matches = || match start_time(pid) {
        None => false,
        Some(t) => expect_start.is_none_or(|e| e == t),
    };
    if !matches() {
        return Ok(());
    }
    let pid_t = Pid::from_raw(pid);
    let _ = kill(pid_t, Signal::SIGTERM);
    let deadline = Instant::now() + TERM_GRACE;
    while matches() && Instant::now() < deadline {
        reap(pid_t);
        std::thread::sleep(Duration::from_millis(20));
    }
    if matches() {
        let _ = kill(pid_t, Signal::SIGKILL);
        let deadline = Instant::now() + TERM_GRACE;
        while matches() && Instant::now() < deadline {
            reap(pid_t);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    reap(pid_t);
    if matches() {
        anyhow::bail!("process {pid} survived SIGKILL");
    }
    Ok(())
}

/// Collect the exit status if `pid` is our child (ECHILD otherwise: ignored).
fn reap(pid: Pid) {
    let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
}

/// Start `cmd` in its own process group, detached from our stdio (output
/// appended to `log`, so a restarted process continues its log), and return
/// its record.
pub fn spawn_detached(mut cmd: Command, log: &Path, role: &str) -> Result<ProcRecord> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let err = out.try_clone()?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("start {role}: {cmd:?}"))?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    let start_time =
        start_time(pid).with_context(|| format!("{role} (pid {pid}) exited at once; see {}", log.display()))?;
    Ok(ProcRecord {
        pid,
        start_time,
        role: role.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_stops_a_process() {
        let dir = std::env::temp_dir().join(format!("weft-lab-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let rec = spawn_detached(cmd, &dir.join("log"), "sleep").unwrap();
        assert!(rec.alive());
        let other = ProcRecord {
            start_time: rec.start_time + 1,
            ..rec.clone()
        };
        assert!(!other.alive(), "a different start time is another process");
        rec.stop().unwrap();
        assert!(!rec.alive());
        rec.stop().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
