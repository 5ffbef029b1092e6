//! The multi-node lab: an underlay switch, N node namespaces, the API
//! emulator, per-node CNI directories, and pods wired by the real `weft`.
//!
//! ```text
//!   host netns:  weft-lab apiserver  (127.0.0.1:PORT for the host, and
//!                                     172.30.0.1:6443 bound in the switch netns)
//!   wl.NAME.sw:      br0 172.30.0.1/24 fd00:172:30::1/64
//!                     ├─ n1 ── eth0 172.30.0.11   wl.NAME.node-1  (weft0, pods)
//!                     ├─ n2 ── eth0 172.30.0.12   wl.NAME.node-2
//!                     └─ ext ─ eth0 172.30.0.200  wl.NAME.ext     (outside client)
//!   wl.NAME.pod.POD: eth0 from weft, on the node's weft0 bridge
//! ```
//!
//! Every interface lives inside a namespace the lab made; the host's own
//! interfaces, routes and tables are never touched. All lab state is under
//! `<root>/<name>/` (default root `/run/weft-lab`), recorded in `state.json`
//! before anything is created, so [`down`] also cleans up after a crash.

pub mod agents;
pub mod cni;
pub mod netns;
pub mod nodes;
pub mod objects;
pub mod process;
pub mod state;
pub mod supervisor;

mod api;
mod down;
mod pods;
mod up;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub use agents::AgentCommand;
pub use down::down;
pub use nodes::{node_name, parse_node_index, MAX_NODES};
pub use pods::PodSpec;
pub use state::{LabState, NodeState, PodState};

use crate::traffic::{self, Reply};

/// Default directory holding one sub-directory per lab.
pub const DEFAULT_ROOT: &str = "/run/weft-lab";

/// What `up` builds.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Lab name: 1–16 of `[a-z0-9-]`; part of every namespace name.
    pub name: String,
    pub nodes: u8,
    /// Parent of the lab directory.
    pub root: PathBuf,
    /// The `weft-lab` binary (runs the emulator and pod servers).
    pub lab_bin: PathBuf,
    /// Where `weft` and `weft-ipam` are; default: `WEFT_BIN_DIR`, else next to `lab_bin`.
    pub cni_bin_dir: Option<PathBuf>,
    /// Run one `weft-agent` per node (found next to `weft`): it builds the
    /// WireGuard mesh and writes the node's conflist and readiness file.
    /// Without agents the lab writes those itself and pods only reach pods
    /// on their own node.
    pub agents: bool,
    /// A supervisor restarts an agent that died (crash, SIGKILL), as kubelet
    /// restarts a crashed container, with a back-off (see [`supervisor`]).
    /// Tests that need a dead agent turn it off. [`Lab::stop_agent`] is never
    /// undone by the supervisor.
    pub restart_agents: bool,
    /// Flags every agent gets after the lab's own (e.g. `--resync-seconds 2`).
    pub agent_args: Vec<String>,
    /// The agents' `RUST_LOG` (default `info`).
    pub agent_log_filter: String,
    /// Nodes (`node-N`) that get their namespace, Node object, directories and
    /// kubeconfig but no agent from the lab: a test runs one there itself
    /// (see [`Lab::agent_command`]). Applies to nodes added later too.
    pub no_agent_on: Vec<String>,
}

impl LabConfig {
    /// A config with defaults for everything but the name, node count and binary.
    pub fn new(name: &str, nodes: u8, lab_bin: impl Into<PathBuf>) -> Self {
        LabConfig {
            name: name.to_string(),
            nodes,
            root: std::env::var_os("WEFT_LAB_ROOT")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)),
            lab_bin: lab_bin.into(),
            cni_bin_dir: None,
            agents: true,
            restart_agents: true,
            agent_args: Vec::new(),
            agent_log_filter: "info".into(),
            no_agent_on: Vec::new(),
        }
    }
}

/// Who sends traffic, or where a command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Pod(String),
    Node(String),
    /// The machine outside the cluster, on the underlay.
    External,
    /// The underlay switch (where the emulator listens for nodes).
    Switch,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Pod(p) => write!(f, "pod/{p}"),
            Endpoint::Node(n) => write!(f, "node/{n}"),
            Endpoint::External => write!(f, "external"),
            Endpoint::Switch => write!(f, "switch"),
        }
    }
}

/// Fail unless running as root (the lab creates namespaces and interfaces).
pub fn check_root() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("weft-lab needs root: it creates network namespaces, veths and bridges (run it with sudo)");
    }
    Ok(())
}

/// For privileged tests: panic with a clear message when not root. Never skip.
pub fn require_root() {
    if let Err(e) = check_root() {
        panic!("this test is privileged and must run as root: {e}");
    }
}

/// Check a lab or pod name: 1–`max` of `[a-z0-9-]`, starting with a letter or digit.
fn check_name(what: &str, name: &str, max: usize) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if !ok {
        bail!("invalid {what} name {name:?}: use 1-{max} characters of a-z, 0-9 and '-'");
    }
    Ok(())
}

/// The namespace-name prefix of a lab; lab names have no '.', so it is unambiguous.
pub fn netns_prefix(lab: &str) -> String {
    format!("wl.{lab}.")
}

/// A lab that is up, addressed by its directory. Methods are blocking; the
/// state is re-read from disk on every call, so several processes can share a lab.
#[derive(Debug, Clone)]
pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
}

impl Lab {
    /// Build a lab (see [`LabConfig`]); on failure, what was built is removed.
    pub fn up(config: &LabConfig) -> Result<Lab> {
        up::up(config)
    }

    /// Open a lab that is up.
    pub fn open(root: &Path, name: &str) -> Result<Lab> {
        let dir = root.join(name);
        if !state::state_file(&dir).exists() {
            bail!("no lab {name:?} under {} (run weft-lab up)", root.display());
        }
        Ok(Lab {
            name: name.to_string(),
            dir,
        })
    }

    /// Remove everything this lab made.
    pub fn down(&self) -> Result<()> {
        let root = self.dir.parent().context("lab dir has no parent")?;
        down(root, &self.name)
    }

    /// The lab's recorded state.
    pub fn state(&self) -> Result<LabState> {
        state::load(&self.dir)
    }

    /// The emulator URL from the host, e.g. `http://127.0.0.1:40123`.
    pub fn api_url(&self) -> Result<String> {
        Ok(self.state()?.api.context("lab has no API emulator")?.host_url)
    }

    /// The host kubeconfig (for kubectl and kube clients on the host).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The namespace an endpoint lives in.
    pub fn netns_of(&self, who: &Endpoint) -> Result<String> {
        let st = self.state()?;
        Ok(match who {
            Endpoint::Pod(p) => st.pod(p).with_context(|| format!("no pod {p}"))?.netns.clone(),
            Endpoint::Node(n) => st.node(n).with_context(|| format!("no node {n}"))?.netns.clone(),
            Endpoint::External => st.external_netns.context("lab has no external client")?,
            Endpoint::Switch => st.switch_netns,
        })
    }

    /// A command run inside an endpoint's namespace (`ip netns exec NS CMD…`).
    pub fn command(&self, who: &Endpoint, program: &str, args: &[String]) -> Result<Command> {
        Ok(netns::exec_cmd(&self.netns_of(who)?, program, args))
    }

    /// A pod's address of one family with a port.
    pub fn pod_addr(&self, pod: &str, v6: bool, port: u16) -> Result<SocketAddr> {
        let st = self.state()?;
        let p = st.pod(pod).with_context(|| format!("no pod {pod}"))?;
        let ip = p
            .ip(v6)
            .with_context(|| format!("pod {pod} has no IPv{} address", if v6 { 6 } else { 4 }))?;
        Ok(SocketAddr::new(ip, port))
    }

    /// HTTP GET from `from` to a lab server; the reply names the server and the
    /// source address it saw.
    pub fn http_get(&self, from: &Endpoint, to: SocketAddr) -> Result<Reply> {
        traffic::http_get(&self.netns_of(from)?, to).with_context(|| format!("{from} -> {to} (tcp)"))
    }

    /// A UDP datagram from `from` to a lab server, and its echo.
    pub fn udp_echo(&self, from: &Endpoint, to: SocketAddr) -> Result<Reply> {
        traffic::udp_echo(&self.netns_of(from)?, to).with_context(|| format!("{from} -> {to} (udp)"))
    }

    /// One ping from `from` to `to`.
    pub fn ping(&self, from: &Endpoint, to: IpAddr) -> Result<()> {
        traffic::ping(&self.netns_of(from)?, to)
    }
}
