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
}

impl NodeState {
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
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
    /// Every background process started.
    pub procs: Vec<ProcRecord>,
    pub api: Option<ApiInfo>,
    pub nodes: Vec<NodeState>,
    pub pods: Vec<PodState>,
    /// A `weft-agent` runs on every node (cross-node traffic is expected to work).
    #[serde(default)]
    pub agents: bool,
}

impl LabState {
    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }
    pub fn pod(&self, name: &str) -> Option<&PodState> {
        self.pods.iter().find(|p| p.name == name)
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
