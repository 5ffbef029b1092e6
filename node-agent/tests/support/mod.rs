//! What the agent's lab tests share on top of `weft_tests::lab`: a lab with
//! the agents these tests want (fast resync, no automatic restarts: the
//! tests kill and start agents themselves), and reading a node's WireGuard
//! device through the agent's own UAPI client.
#![allow(dead_code, reason = "each test file uses a different part")]

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use weft_tests::lab::{self, netns, objects, Lab, LabConfig, NodeState};
use weft_tests::traffic;

/// Bound on waiting for the mesh to converge after a change.
pub const WAIT: Duration = Duration::from_secs(30);

/// Panic unless running as root with every tool the tests need.
pub fn require_root_and_tools(tools: &[&str]) {
    lab::require_root();
    for t in tools {
        assert!(
            traffic::have_command(t),
            "required tool {t:?} is not installed (see tests/setup.sh)"
        );
    }
}

/// The directory of the built binaries (where cargo put `weft-agent`):
/// `weft-lab`, `weft`, `weft-ipam`, `weft-wg` must be there too.
pub fn bin_dir() -> PathBuf {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_weft-agent"));
    let dir = agent.parent().expect("binary has a directory").to_path_buf();
    for b in ["weft", "weft-ipam", "weft-lab", "weft-wg"] {
        assert!(
            dir.join(b).is_file(),
            "{} is missing: build it first (cargo build -p weft-agent -p weft-wg -p weft-cni -p weft-ipam \
             -p weft-tests --bins, same target dir)",
            dir.join(b).display()
        );
    }
    dir
}

/// A lab for one test; torn down on drop. When the test failed, the agents'
/// logs are kept under `/tmp/<lab>-logs/` first.
pub struct MeshLab(pub Lab);

impl std::ops::Deref for MeshLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.0
    }
}

impl Drop for MeshLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let keep = PathBuf::from(format!("/tmp/{}-logs", self.0.name));
            if let Ok(st) = self.0.state() {
                let _ = std::fs::create_dir_all(&keep);
                for n in &st.nodes {
                    let _ = std::fs::copy(n.agent_log(), keep.join(format!("{}.log", n.name)));
                }
                eprintln!("agent logs kept in {}", keep.display());
            }
        }
        if self.0.dir.exists() {
            if let Err(e) = self.0.down() {
                eprintln!("lab down: {e:#}");
            }
        }
    }
}

/// A lab named `<prefix><pid>` with `nodes` nodes, every agent ready and
/// meshed; agents resync every 2 s, are not restarted when killed, and log
/// each reconcile pass (also "up to date", a debug line).
pub fn mesh_lab(prefix: &str, nodes: u8) -> MeshLab {
    lab_with(prefix, nodes, 2, false)
}

/// [`mesh_lab`] with another resync period, and with the lab restarting
/// killed agents (as kubelet would) when `restart_agents`.
pub fn lab_with(prefix: &str, nodes: u8, resync_seconds: u64, restart_agents: bool) -> MeshLab {
    let mut config = LabConfig::new(
        &format!("{prefix}{}", std::process::id() % 100_000),
        nodes,
        bin_dir().join("weft-lab"),
    );
    config.restart_agents = restart_agents;
    config.agent_args = vec!["--resync-seconds".into(), resync_seconds.to_string()];
    config.agent_log_filter = "info,weft_agent::runloop=debug".into();
    MeshLab(Lab::up(&config).unwrap_or_else(|e| panic!("lab up: {e:#}")))
}

/// A node's recorded state.
pub fn node(lab: &Lab, name: &str) -> NodeState {
    lab.state()
        .unwrap()
        .node(name)
        .cloned()
        .unwrap_or_else(|| panic!("no node {name}"))
}

/// A pod's namespace and first address of a family.
pub fn pod(lab: &Lab, name: &str, v6: bool) -> (String, IpAddr) {
    let st = lab.state().unwrap();
    let p = st.pod(name).unwrap_or_else(|| panic!("no pod {name}"));
    (
        p.netns.clone(),
        p.ip(v6).unwrap_or_else(|| panic!("pod {name} has no such address")),
    )
}

/// The agent's WireGuard key file.
pub fn key_file(n: &NodeState) -> PathBuf {
    n.state_dir().join("wireguard.key")
}

/// The userspace WireGuard's UAPI socket (under the agent's run dir).
pub fn wg_socket(n: &NodeState) -> PathBuf {
    n.run_dir().join("wireguard/weft-wg.sock")
}

/// The node's WireGuard peers, read from its device.
pub fn peers(lab: &Lab, name: &str) -> Vec<weft_agent::peers::PeerState> {
    let sock = wg_socket(&node(lab, name));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(weft_agent::uapi::get(&sock))
        .map(|d| d.peers)
        .unwrap_or_default()
}

/// Wait until `name` has exactly `want` peers on its device.
pub fn wait_peers(lab: &Lab, name: &str, want: usize) {
    wait_for(&format!("{name} to have {want} peers"), WAIT, || {
        (peers(lab, name).len() == want).then_some(())
    });
}

/// Routes through weft-wg on a node (`ip route` + `ip -6 route`).
pub fn wg_routes(lab: &Lab, name: &str) -> String {
    let ns = node(lab, name).netns;
    sh_in(&ns, &["ip", "route", "show", "dev", "weft-wg"])
        + &sh_in(&ns, &["ip", "-6", "route", "show", "dev", "weft-wg"])
}

/// `ip netns exec NS ARGV…`; panics with its stderr when it fails.
pub fn sh_in(ns: &str, argv: &[&str]) -> String {
    netns::exec(ns, argv).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A command on the host (tools reading files, `wg genkey`); panics when it fails.
pub fn sh(argv: &[&str]) -> String {
    let out = netns::run(std::process::Command::new(argv[0]).args(&argv[1..])).unwrap_or_else(|e| panic!("{e:#}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Poll `f` every 100 ms until it returns `Some`; panic after `timeout`.
pub fn wait_for<T>(what: &str, timeout: std::time::Duration, f: impl FnMut() -> Option<T>) -> T {
    weft_tests::traffic::poll(what, timeout, f).unwrap_or_else(|e| panic!("{e}"))
}

/// Ping from a namespace until it answers (bounded).
pub fn ping(ns: &str, dst: IpAddr) {
    traffic::retry(Duration::from_secs(15), || traffic::ping(ns, dst)).unwrap_or_else(|e| panic!("{e:#}"));
}

/// The Node object.
pub fn get_node(lab: &Lab, name: &str) -> Node {
    let name = name.to_string();
    objects::with_client(&lab.api_url().unwrap(), |c| async move {
        Ok(Api::<Node>::all(c).get(&name).await?)
    })
    .unwrap()
}

/// A JSON merge patch of a Node object.
pub fn patch_node(lab: &Lab, name: &str, patch: serde_json::Value) {
    let name = name.to_string();
    objects::with_client(&lab.api_url().unwrap(), |c| async move {
        Api::<Node>::all(c)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    })
    .unwrap()
}

/// A JSON merge patch of a Node's status (the `/status` subresource).
pub fn patch_node_status(lab: &Lab, name: &str, patch: serde_json::Value) {
    let name = name.to_string();
    objects::with_client(&lab.api_url().unwrap(), |c| async move {
        Api::<Node>::all(c)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    })
    .unwrap()
}

/// Stop the node's userspace WireGuard process (by its pid file).
pub fn kill_wireguard(n: &NodeState) {
    let pidfile = n.run_dir().join("weft-wg.pid");
    if let Ok(pid) = std::fs::read_to_string(&pidfile) {
        let _ = std::process::Command::new("kill").args(["-9", pid.trim()]).status();
    }
    let _ = std::fs::remove_file(pidfile);
}
