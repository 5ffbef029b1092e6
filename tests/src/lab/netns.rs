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

/// A network namespace's identity: device and inode of its nsfs file, as
/// `stat /var/run/netns/NAME` and `stat -L /proc/PID/ns/net` show them. It
/// outlives the name: a namespace deleted with `ip netns del` while a
/// process is inside keeps its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct NsId {
    pub dev: u64,
    pub ino: u64,
}

/// The identity of a named namespace.
pub fn id(name: &str) -> Result<NsId> {
    use std::os::unix::fs::MetadataExt;
    let p = path(name);
    let m = std::fs::metadata(&p).with_context(|| format!("stat {}", p.display()))?;
    Ok(NsId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// Pids of every process whose network namespace is one of `ids`, found
/// through `/proc/*/ns/net` (what `ip netns pids` does, but also for a
/// namespace whose name is already gone). Never this process.
pub fn pids_in(ids: &[NsId]) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            // A process that exits meanwhile is simply not listed.
            std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| {
                ids.contains(&NsId {
                    dev: m.dev(),
                    ino: m.ino(),
                })
            })
        })
        .collect()
}

/// Pids of the processes inside a named namespace (`ip netns pids NAME`).
pub fn pids(name: &str) -> Result<Vec<i32>> {
    if !path(name).exists() {
        return Ok(Vec::new());
    }
    Ok(pids_in(&[id(name)?]))
}

/// Run `f` on a fresh thread that has joined namespace `name`. Sockets created
/// there stay in that namespace after the thread ends.
pub fn run_in<T, F>(name: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    spawn_in(name, f)?
        .join()
        .map_err(|_| anyhow::anyhow!("thread inside netns panicked"))?
}

/// Start `f` on a fresh thread that joins namespace `name` first; the
/// caller joins it (a server accepting in the background, a long stream).
pub fn spawn_in<T, F>(name: &str, f: F) -> Result<std::thread::JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let ns_path = path(name);
    let file = File::open(&ns_path).with_context(|| format!("open netns {}", ns_path.display()))?;
    let name = name.to_string();
    Ok(std::thread::spawn(move || {
        // This thread never switches back: it ends after `f`.
        setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {name}"))?;
        f()
    }))
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

/// `ip netns exec NS ARGV…`, run to completion: its stdout, or an error
/// with its stderr when it fails.
pub fn exec(ns: &str, argv: &[&str]) -> Result<String> {
    let (program, args) = argv.split_first().context("empty command")?;
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = run(&mut exec_cmd(ns, program, &args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip netns exec NS PROGRAM ARGS…` as a command to run or spawn.
pub fn exec_cmd(ns: &str, program: &str, args: &[String]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]).args(args);
    cmd
}
