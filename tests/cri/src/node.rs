//! A private containerd running as a "node" of its own: a fresh network
//! namespace (so the CNI bridge and veths never touch the host's
//! interfaces), a private mount namespace, and all state under one temp dir.
//! Dropping the [`Node`] stops everything and removes every trace, also
//! when the test panics.

use std::fs::{self, File};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cleanup::{collect_cgroup_pids, remove_cgroup_tree, remove_if_exists, unmount_under};
use crate::cmd;
use crate::cni::{self, Network};
use crate::require::Tools;

/// Makes the started process a node process; see the script's comments.
const ENTER_NODE_SCRIPT: &str = include_str!("../scripts/enter-node.sh");

/// The CRI's namespace in containerd.
pub const K8S_NAMESPACE: &str = "k8s.io";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// A running private containerd and everything it owns.
pub struct Node {
    /// Random suffix of every name this node uses.
    pub id: String,
    /// Temp dir holding all of the node's files.
    pub root: PathBuf,
    /// Name of the node's network namespace (`ip netns` name).
    pub netns: String,
    pub network: Network,
    /// `overlayfs` where the temp dir's filesystem supports it, else `native`.
    pub snapshotter: &'static str,
    /// The sandbox image; containerd's config names it before it exists.
    pub image: String,
    tools: Tools,
    containerd: Option<Child>,
    netns_created: bool,
    var_lib_cni_existed: bool,
}

impl Node {
    /// Create the node and start containerd in it; return once its CRI
    /// socket accepts connections. `image` is the sandbox image reference.
    pub fn start(tools: &Tools, network: Network, image: &str) -> Result<Node> {
        let id = random_hex(8)?;
        let mut node = Node {
            root: std::env::temp_dir().join(format!("weft-cri-{id}")),
            netns: format!("cri-{id}"),
            id,
            network,
            snapshotter: "native",
            image: image.to_owned(),
            tools: tools.clone(),
            containerd: None,
            netns_created: false,
            var_lib_cni_existed: Path::new("/var/lib/cni").exists(),
        };
        // From here on, an early return drops `node`, which cleans up.
        node.create_dirs()?;
        node.create_netns()?;
        node.snapshotter = pick_snapshotter(&node.root.join("overlay-probe"));
        cni::populate_bin_dir(&node.cni_bin_dir(), &tools.cni_dir, network)?;
        let conflist = network.conflist(&node.weft_log(), &node.ipam_dir());
        cni::write_conflist(&node.cni_conf_dir(), &conflist)?;
        fs::write(node.config_path(), node.containerd_config()).context("write containerd config")?;
        node.spawn_containerd()?;
        node.wait_for_socket()?;
        Ok(node)
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join("containerd.sock")
    }
    /// The node netns as a file, for `setns`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }
    /// weft's `dataDir`, also host-local's.
    pub fn ipam_dir(&self) -> PathBuf {
        self.root.join("ipam")
    }
    pub fn weft_log(&self) -> PathBuf {
        self.root.join("weft.log")
    }
    pub fn containerd_log(&self) -> PathBuf {
        self.root.join("containerd.log")
    }
    /// The parent of pod log directories (CRI `log_directory`).
    pub fn pod_log_dir(&self) -> PathBuf {
        self.root.join("pod-logs")
    }
    /// The pods' cgroup parent (cgroupfs driver), removed on drop.
    pub fn cgroup_parent(&self) -> String {
        format!("/weft-cri-{}", self.id)
    }
    fn config_path(&self) -> PathBuf {
        self.root.join("containerd.toml")
    }
    fn cni_bin_dir(&self) -> PathBuf {
        self.root.join("cni-bin")
    }
    fn cni_conf_dir(&self) -> PathBuf {
        self.root.join("cni-conf")
    }
    fn runc_root(&self) -> PathBuf {
        self.root.join("runc")
    }
    fn scratch_dir(&self) -> PathBuf {
        self.root.join("scratch")
    }

    /// Import a docker-archive into the CRI's namespace and unpack it for
    /// the CRI's snapshotter (`ctr -n k8s.io images import`).
    pub fn import_image(&self, archive: &Path) -> Result<()> {
        cmd::run(
            Command::new(&self.tools.ctr)
                .arg("--address")
                .arg(self.socket())
                .args(["--namespace", K8S_NAMESPACE, "images", "import"])
                .args(["--snapshotter", self.snapshotter])
                .arg(archive),
            Duration::from_secs(120),
        )
        .map(drop)
        .context("import the test image")
    }

    fn create_dirs(&self) -> Result<()> {
        // create_dir, not create_dir_all: the root must be new, ours alone.
        fs::create_dir(&self.root).with_context(|| format!("create {}", self.root.display()))?;
        for dir in [
            self.cni_bin_dir(),
            self.cni_conf_dir(),
            self.ipam_dir(),
            self.pod_log_dir(),
            self.runc_root(),
            self.scratch_dir(),
        ] {
            fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        }
        Ok(())
    }

    /// `ip netns add cri-ID; ip -n cri-ID link set lo up` (the CRI stream
    /// server listens on 127.0.0.1, which needs `lo` up).
    fn create_netns(&mut self) -> Result<()> {
        let ip = &self.tools.ip;
        cmd::run(Command::new(ip).args(["netns", "add", &self.netns]), TOOL_TIMEOUT)?;
        self.netns_created = true;
        cmd::run(
            Command::new(ip).args(["-n", &self.netns, "link", "set", "lo", "up"]),
            TOOL_TIMEOUT,
        )?;
        Ok(())
    }

    /// containerd's config: every path under the temp dir, so nothing is
    /// shared with a system containerd (runc's root included).
    fn containerd_config(&self) -> String {
        let q = |p: &Path| serde_json::Value::from(p.to_string_lossy()).to_string();
        let root = &self.root;
        format!(
            r#"version = 2
root = {croot}
state = {cstate}

[grpc]
  address = {sock}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {image}
  restrict_oom_score_adj = true
  # Pod netns handles under the state dir, not /run/netns.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = {snapshotter}
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = {runc}
        Root = {runc_root}
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {bin_dir}
    conf_dir = {conf_dir}
    max_conf_num = 1
"#,
            croot = q(&root.join("containerd-root")),
            cstate = q(&root.join("containerd-state")),
            sock = q(&self.socket()),
            opt = q(&root.join("opt")),
            image = q(Path::new(&self.image)),
            snapshotter = q(Path::new(self.snapshotter)),
            runc = q(&self.tools.runc),
            runc_root = q(&self.runc_root()),
            bin_dir = q(&self.cni_bin_dir()),
            conf_dir = q(&self.cni_conf_dir()),
        )
    }

    /// `unshare -m -- nsenter --net=NETNS -- sh enter-node.sh SCRATCH
    /// containerd --config ...`: every exec replaces the previous program,
    /// so the child's pid is containerd's.
    fn spawn_containerd(&mut self) -> Result<()> {
        let script = self.root.join("enter-node.sh");
        fs::write(&script, ENTER_NODE_SCRIPT).context("write enter-node.sh")?;
        let log = File::create(self.containerd_log()).context("create containerd log")?;
        let child = Command::new(&self.tools.unshare)
            .args(["--mount", "--propagation", "private", "--"])
            .arg(&self.tools.nsenter)
            .arg(format!("--net={}", self.netns_path().display()))
            .args(["--", "/bin/sh"])
            .arg(&script)
            .arg(self.scratch_dir())
            .arg(&self.tools.containerd)
            .arg("--config")
            .arg(self.config_path())
            .args(["--log-level", "debug"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start containerd")?;
        self.containerd = Some(child);
        Ok(())
    }

    fn wait_for_socket(&mut self) -> Result<()> {
        let socket = self.socket();
        let log = self.containerd_log();
        let child = self.containerd.as_mut().context("containerd not started")?;
        cmd::poll(
            "containerd's socket",
            STARTUP_TIMEOUT,
            Duration::from_millis(100),
            || {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "containerd exited ({status}) before serving; its log:\n{}",
                        tail(&log, 40)
                    );
                }
                Ok(UnixStream::connect(&socket).ok().map(drop))
            },
        )
    }

    /// What containerd and weft logged about networking: printed by the
    /// test so odd CNI calls (DEL twice, DEL without netns) are visible.
    pub fn network_log(&self) -> String {
        let containerd = fs::read_to_string(self.containerd_log()).unwrap_or_default();
        let mut out = String::from("--- containerd log, network and error lines ---\n");
        for line in containerd.lines().filter(|l| is_network_line(l)) {
            out.push_str(line);
            out.push('\n');
        }
        if self.network == Network::Weft {
            out.push_str("--- weft log ---\n");
            out.push_str(&fs::read_to_string(self.weft_log()).unwrap_or_default());
        }
        out
    }

    /// The last lines of containerd's log and weft's log, for failures.
    pub fn log_tails(&self) -> String {
        format!(
            "--- containerd log (tail) ---\n{}\n--- weft log (tail) ---\n{}",
            tail(&self.containerd_log(), 80),
            tail(&self.weft_log(), 80)
        )
    }

    /// Best effort, in dependency order; every failure is reported, none
    /// stops the rest.
    fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut note = |what: &str, r: Result<()>| {
            if let Err(e) = r {
                errors.push(format!("{what}: {e:#}"));
            }
        };
        note("stop containerd", self.stop_containerd());
        let swept = self.sweep_runc_containers();
        let leftover = swept.as_ref().cloned().unwrap_or_default();
        note("remove leftover containers", swept.map(drop));
        note("kill the node's processes", self.kill_node_processes());
        note("kill the pods' processes", self.kill_cgroup_processes());
        if self.netns_created {
            note(
                "delete netns",
                cmd::run(
                    Command::new(&self.tools.ip).args(["netns", "del", &self.netns]),
                    TOOL_TIMEOUT,
                )
                .map(drop),
            );
        }
        note("unmount", unmount_under(&self.root));
        note("remove temp dir", remove_if_exists(&self.root));
        note("remove cgroups", self.remove_cgroups());
        note("remove libcni cache", self.remove_libcni_cache(&leftover));
        errors
    }

    /// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`].
    fn stop_containerd(&mut self) -> Result<()> {
        let Some(mut child) = self.containerd.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(100));
        }
        child.kill()?;
        child.wait()?;
        bail!("containerd ignored SIGTERM for {STOP_TIMEOUT:?}; killed it")
    }

    /// Containers still in our runc roots (only after a failed test): kill
    /// and delete them. Returns their IDs. The runc shim keeps one root per
    /// containerd namespace: `<Root>/k8s.io`.
    fn sweep_runc_containers(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(self.runc_root())? {
            let root = entry?.path();
            let runc = |args: &[&str]| {
                cmd::run(
                    Command::new(&self.tools.runc).arg("--root").arg(&root).args(args),
                    TOOL_TIMEOUT,
                )
            };
            for id in runc(&["list", "-q"])?.lines() {
                runc(&["delete", "--force", id])?;
                ids.push(id.to_owned());
            }
        }
        Ok(ids)
    }

    /// containerd's shims outlive it; kill whatever still runs in the node
    /// netns (`ip netns pids`) and wait until nothing does.
    fn kill_node_processes(&self) -> Result<()> {
        if !self.netns_created {
            return Ok(());
        }
        cmd::poll(
            "processes in the node netns to exit",
            STOP_TIMEOUT,
            Duration::from_millis(100),
            || {
                let pids = cmd::run(
                    Command::new(&self.tools.ip).args(["netns", "pids", &self.netns]),
                    TOOL_TIMEOUT,
                )?;
                let mut any = false;
                for pid in pids.split_whitespace() {
                    any = true;
                    let _ = kill(Pid::from_raw(pid.parse()?), Signal::SIGKILL);
                }
                Ok((!any).then_some(()))
            },
        )
    }

    /// The pods' cgroups in every hierarchy (`/sys/fs/cgroup/*/weft-cri-ID`).
    fn cgroup_dirs(&self) -> Result<Vec<PathBuf>> {
        let name = self.cgroup_parent();
        let mut dirs = Vec::new();
        for hierarchy in fs::read_dir("/sys/fs/cgroup")? {
            let dir = hierarchy?.path().join(name.trim_start_matches('/'));
            if dir.is_dir() {
                dirs.push(dir);
            }
        }
        Ok(dirs)
    }

    /// Backstop for containers runc could not delete: every process in the
    /// pods' cgroups is ours; kill them and wait until none is left.
    fn kill_cgroup_processes(&self) -> Result<()> {
        let dirs = self.cgroup_dirs()?;
        cmd::poll(
            "processes in the pods' cgroups to exit",
            STOP_TIMEOUT,
            Duration::from_millis(100),
            || {
                let mut pids = Vec::new();
                for dir in &dirs {
                    collect_cgroup_pids(dir, &mut pids)?;
                }
                for pid in &pids {
                    let _ = kill(*pid, Signal::SIGKILL);
                }
                Ok(pids.is_empty().then_some(()))
            },
        )
    }

    /// runc's cgroupfs driver leaves the pods' parent cgroup in every
    /// hierarchy; remove it, innermost first (cgroupfs only allows rmdir).
    /// A cgroup whose last task just died can stay busy for a moment, so
    /// retry briefly.
    fn remove_cgroups(&self) -> Result<()> {
        cmd::poll(
            "remove the pods' cgroups",
            STOP_TIMEOUT,
            Duration::from_millis(100),
            || {
                for dir in self.cgroup_dirs()? {
                    remove_cgroup_tree(&dir)?;
                }
                Ok(Some(()))
            },
        )
    }

    /// libcni's cache on the host for containers we had to sweep, and the
    /// cache dirs themselves if the test created them (and they are empty).
    fn remove_libcni_cache(&self, ids: &[String]) -> Result<()> {
        for id in ids {
            for file in cni::libcni_cache_files(id)? {
                remove_if_exists(&file)?;
            }
        }
        if !self.var_lib_cni_existed {
            let _ = fs::remove_dir(cni::LIBCNI_RESULTS_DIR);
            let _ = fs::remove_dir("/var/lib/cni");
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.log_tails());
        }
        for e in self.teardown() {
            eprintln!("weft-cri-test cleanup of {}: {e}", self.root.display());
        }
    }
}

/// containerd's overlayfs snapshotter needs overlay mounts of directories of
/// the temp dir's filesystem (not possible when /tmp itself is an overlay,
/// as in some containers). Try one; fall back to the native snapshotter,
/// which copies layers but works everywhere.
fn pick_snapshotter(probe: &Path) -> &'static str {
    match overlay_mount_works(probe) {
        Ok(()) => "overlayfs",
        Err(e) => {
            eprintln!("overlay mounts do not work here ({e:#}); using the native snapshotter");
            "native"
        }
    }
}

fn overlay_mount_works(probe: &Path) -> Result<()> {
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|d| probe.join(d));
    for dir in [&lower, &upper, &work, &merged] {
        fs::create_dir_all(dir)?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .context("mount overlay")?;
    umount2(&merged, MntFlags::empty()).context("unmount overlay")?;
    fs::remove_dir_all(probe)?;
    Ok(())
}

/// Lines worth showing from containerd's log: CNI and network handling,
/// and every warning or error; not the OCI spec and config dumps, which
/// merely mention netns paths.
fn is_network_line(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    let dump = ["spec: (*specs.spec)", "start cri plugin with config", "oci runtime"]
        .iter()
        .any(|k| lower.contains(k));
    let wanted = ["cni", "network", "netns", "level=error", "level=warning"]
        .iter()
        .any(|k| lower.contains(k));
    wanted && !dump
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `n` random hex digits, from the kernel's UUID generator.
pub fn random_hex(n: usize) -> Result<String> {
    let uuid = fs::read_to_string("/proc/sys/kernel/random/uuid").context("read a random UUID")?;
    let hex: String = uuid.chars().filter(char::is_ascii_hexdigit).take(n).collect();
    if hex.len() < n {
        bail!("random UUID too short: {uuid:?}");
    }
    Ok(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_names_differ() {
        assert_ne!(random_hex(8).unwrap(), random_hex(8).unwrap());
    }
}
