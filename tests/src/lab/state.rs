//! The lab's record of what it made, in `<root>/<name>/state.json`.
//!
//! Everything is recorded *before* it is created, so that `down` after a crash
//! half-way through `up` still finds it. Writers hold an exclusive `flock` on
//! `<root>/<name>/lock` and write the file by atomic rename.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::netns::NsId;
use super::process::ProcRecord;

/// How to reach the API emulator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiInfo {
    /// From the host (the machine running the lab): `http://127.0.0.1:PORT`.
    pub host_url: String,
    /// From node namespaces, over the underlay: `http://172.30.0.1:6443`.
    pub node_url: String,
}

/// One node of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    /// 1-based; picks the node's addresses and pod CIDRs.
    pub index: u8,
    pub netns: String,
    pub internal_ipv4: Ipv4Addr,
    pub internal_ipv6: Ipv6Addr,
    /// IPv4 then IPv6, as in `spec.podCIDRs`.
    pub pod_cidrs: Vec<String>,
    /// `<lab>/nodes/<name>`: bin/, net.d/, ipam/, weft.log, ready, kubeconfig.
    pub dir: PathBuf,
    /// The lab runs this node's `weft-agent` (false without agents, and for
    /// nodes in [`crate::lab::LabConfig::no_agent_on`], where a test runs it).
    #[serde(default)]
    pub lab_agent: bool,
    /// The agent was stopped on purpose ([`crate::lab::Lab::stop_agent`]): the
    /// supervisor leaves it stopped until [`crate::lab::Lab::start_agent`].
    #[serde(default)]
    pub agent_stopped: bool,
    /// Flags given to [`crate::lab::Lab::start_agent_with`], kept for restarts.
    #[serde(default)]
    pub agent_extra_args: Vec<String>,
    /// How often the supervisor restarted a dead agent (kubelet's restartCount).
    #[serde(default)]
    pub agent_restarts: u32,
}

impl NodeState {
    /// `CNI_PATH`: where the agent installs `weft` and `weft-ipam`.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }
    /// Where the conflist is written.
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }
    /// The agent's `--state-dir` (WireGuard key `wireguard.key`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// The agent's `--run-dir` (userspace WireGuard socket, pid and log).
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
    /// The readiness file the agent writes once the node's network is up.
    pub fn readiness_file(&self) -> PathBuf {
        self.dir.join("ready")
    }
    /// The agent's log (stdout and stderr, appended across restarts).
    pub fn agent_log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }
    /// A kubeconfig for the emulator over the underlay (for the node's agent).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }
    /// The role of the node's agent in [`LabState::procs`].
    pub fn agent_role(&self) -> String {
        format!("weft-agent {}", self.name)
    }
}

/// One pod of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub netns: String,
    pub container_id: String,
    /// The addresses the CNI plugin gave the pod (IPv4 first when present).
    pub ips: Vec<IpAddr>,
    /// The CNI ADD result, passed back as `prevResult` on DEL.
    pub result: Value,
    pub labels: BTreeMap<String, String>,
    pub http: Option<u16>,
    pub udp: Option<u16>,
}

impl PodState {
    /// The pod's first address of the given family.
    pub fn ip(&self, v6: bool) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| ip.is_ipv6() == v6)
    }
}

/// Everything the lab made.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    /// The `weft-lab` binary (runs the emulator and in-pod servers).
    pub lab_bin: PathBuf,
    /// Where `weft` and `weft-ipam` come from.
    pub cni_bin_dir: PathBuf,
    pub switch_netns: String,
    pub external_netns: Option<String>,
    /// Every namespace made, recorded before it was made.
    pub netns: Vec<String>,
    /// The identity of every namespace made, recorded right after: `down`
    /// finds processes inside it even when its name is gone.
    #[serde(default)]
    pub netns_ids: BTreeMap<String, NsId>,
    /// Every background process started.
    pub procs: Vec<ProcRecord>,
    pub api: Option<ApiInfo>,
    pub nodes: Vec<NodeState>,
    pub pods: Vec<PodState>,
    /// A `weft-agent` runs on every node (cross-node traffic is expected to work).
    #[serde(default)]
    pub agents: bool,
    /// A supervisor restarts dead agents, as kubelet restarts a crashed container.
    #[serde(default)]
    pub restart_agents: bool,
    /// Flags every agent gets after the lab's own.
    #[serde(default)]
    pub agent_args: Vec<String>,
    /// The agents' `RUST_LOG`; empty means `info`.
    #[serde(default)]
    pub agent_log_filter: String,
    /// Nodes whose agent the lab never starts (a test runs it there itself).
    #[serde(default)]
    pub no_agent_on: Vec<String>,
}

impl LabState {
    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }
    pub fn pod(&self, name: &str) -> Option<&PodState> {
        self.pods.iter().find(|p| p.name == name)
    }
    /// The running (recorded and alive) process with this role.
    pub fn live_proc(&self, role: &str) -> Option<&ProcRecord> {
        self.procs.iter().find(|p| p.role == role && p.alive())
    }
}

/// The state file of a lab directory.
pub fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// Read a lab's state.
pub fn load(dir: &Path) -> Result<LabState> {
    let file = state_file(dir);
    let text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", file.display()))
}

/// Write a lab's state by atomic rename.
pub fn save(dir: &Path, state: &LabState) -> Result<()> {
    let file = state_file(dir);
    let tmp = dir.join("state.json.tmp");
    let text = serde_json::to_string_pretty(state)?;
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &file).with_context(|| format!("rename to {}", file.display()))
}

/// Hold the lab's lock until the returned guard is dropped.
pub fn lock(dir: &Path) -> Result<Flock<File>> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("lock {}", path.display()))
}

/// Lock, load, change and save a lab's state; returns what `f` returns.
pub fn update<T>(dir: &Path, f: impl FnOnce(&mut LabState) -> Result<T>) -> Result<T> {
    let _guard = lock(dir)?;
    let mut state = load(dir)?;
    let out = f(&mut state)?;
    save(dir, &state)?;
    Ok(out)
}
