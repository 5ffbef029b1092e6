//! Network namespaces and the `ip` tool.
//!
//! Namespaces are named ones (`ip netns add`, bind-mounted under
//! `/var/run/netns/`). Code that must run *inside* one runs on a dedicated,
//! short-lived thread that `setns`es and then ends, so no other thread — and
//! never a tokio worker — changes namespace.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Where iproute2 keeps named namespaces (what `CNI_NETNS` points into).
pub const NETNS_DIR: &str = "/var/run/netns";

/// The bind-mount path of a named namespace.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Run a command and fail with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// `ip ARGS…`
pub fn ip(args: &[&str]) -> Result<String> {
    let out = run(Command::new("ip").args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n NS ARGS…`: an `ip` command inside a namespace.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

/// `ip netns add NAME` and `ip -n NAME link set lo up`.
pub fn add(name: &str) -> Result<()> {
    ip(&["netns", "add", name]).with_context(|| format!("create netns {name}"))?;
    ip_in(name, &["link", "set", "lo", "up"]).map(drop)
}

/// `ip netns del NAME`; a namespace that is already gone is fine.
pub fn delete(name: &str) -> Result<()> {
    if !path(name).exists() {
        return Ok(());
    }
    ip(&["netns", "del", name]).map(drop)
}

/// Names of all named namespaces (`ip netns list`).
pub fn list() -> Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Pids of the processes inside a namespace (`ip netns pids NAME`).
pub fn pids(name: &str) -> Result<Vec<i32>> {
    if !path(name).exists() {
        return Ok(Vec::new());
    }
    let out = ip(&["netns", "pids", name])?;
    Ok(out.split_whitespace().filter_map(|p| p.parse().ok()).collect())
}

/// Run `f` on a fresh thread that has joined namespace `name`. Sockets created
/// there stay in that namespace after the thread ends.
pub fn run_in<T, F>(name: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let ns_path = path(name);
    let file = File::open(&ns_path).with_context(|| format!("open netns {}", ns_path.display()))?;
    let name = name.to_string();
    std::thread::spawn(move || {
        // This thread never switches back: it ends after `f`.
        setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {name}"))?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread inside netns panicked"))?
}

/// Write a sysctl of the namespace (`ip netns exec NS sysctl -w KEY=VALUE`);
/// `/proc/sys/net` shows the calling thread's namespace.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let file = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_string();
    run_in(ns, move || {
        std::fs::write(&file, &value).with_context(|| format!("write {file}"))
    })
}

/// `ip netns exec NS PROGRAM ARGS…` as a command to run or spawn.
pub fn exec_cmd(ns: &str, program: &str, args: &[String]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]).args(args);
    cmd
}
