//! `weft-lab up`: switch, emulator, nodes, external client, Node objects,
//! agents, and the supervisor that restarts dead agents.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::nodes::{self, add_netns, check_status, make_node, plug, v4, v6, EXTERNAL_HOST, MAX_NODES, SWITCH_HOST};
use super::process::spawn_detached;
use super::state::{self, ApiInfo, LabState};
use super::{check_name, check_root, down, netns, netns_prefix, objects, supervisor, Lab, LabConfig};

/// The emulator's role in the lab's process records.
pub(super) const APISERVER_ROLE: &str = "apiserver";
/// Port of the emulator on the underlay.
const API_PORT: u16 = 6443;
/// Bound on waiting for the emulator to listen.
const API_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Find `weft` (and `weft-ipam`, optional): the flag, `WEFT_BIN_DIR`, or next to `weft-lab`.
fn cni_bin_dir(config: &LabConfig) -> Result<PathBuf> {
    let dir = match (&config.cni_bin_dir, std::env::var_os("WEFT_BIN_DIR")) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => PathBuf::from(d),
        (None, None) => config
            .lab_bin
            .parent()
            .context("weft-lab binary has no parent directory")?
            .to_path_buf(),
    };
    if config.agents && !dir.join("weft-agent").is_file() {
        bail!(
            "weft-agent not found in {}: build it (cargo build --workspace --bins) or run without agents (--no-agent)",
            dir.display()
        );
    }
    if !dir.join("weft").is_file() {
        bail!(
            "weft not found in {}: build it (cargo build -p weft-cni -p weft-ipam) \
             or point --bin-dir / WEFT_BIN_DIR at it",
            dir.display()
        );
    }
    std::fs::canonicalize(&dir).with_context(|| format!("resolve {}", dir.display()))
}

/// Build a lab; on failure, tear down what was built.
pub fn up(config: &LabConfig) -> Result<Lab> {
    check_root()?;
    check_name("lab", &config.name, 16)?;
    if config.nodes == 0 || config.nodes > MAX_NODES {
        bail!("--nodes must be 1..={MAX_NODES}");
    }
    for n in &config.no_agent_on {
        nodes::parse_node_index(n).context("no_agent_on")?;
    }
    let dir = config.root.join(&config.name);
    if dir.exists() {
        bail!(
            "lab {:?} already exists at {} (run weft-lab down --name {})",
            config.name,
            dir.display(),
            config.name
        );
    }
    let lab_bin = std::fs::canonicalize(&config.lab_bin)
        .with_context(|| format!("find weft-lab binary {}", config.lab_bin.display()))?;
    let cni_bin_dir = cni_bin_dir(config)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let prefix = netns_prefix(&config.name);
    let initial = LabState {
        name: config.name.clone(),
        lab_bin,
        cni_bin_dir,
        switch_netns: format!("{prefix}sw"),
        agents: config.agents,
        restart_agents: config.agents && config.restart_agents,
        agent_args: config.agent_args.clone(),
        agent_log_filter: config.agent_log_filter.clone(),
        no_agent_on: config.no_agent_on.clone(),
        ..LabState::default()
    };
    state::save(&dir, &initial)?;
    let lab = Lab {
        name: config.name.clone(),
        dir,
    };
    if let Err(e) = build(&lab, config.nodes) {
        if let Err(cleanup) = down(&config.root, &config.name) {
            return Err(e.context(format!("cleanup after the failed up also failed: {cleanup:#}")));
        }
        return Err(e);
    }
    Ok(lab)
}

fn build(lab: &Lab, nodes: u8) -> Result<()> {
    make_switch(lab).context("create the underlay switch")?;
    start_apiserver(lab, "127.0.0.1:0").context("start the API emulator")?;
    let mut made = Vec::new();
    for i in 1..=nodes {
        made.push(make_node(lab, i).with_context(|| format!("create node-{i}"))?);
    }
    make_external(lab).context("create the external client")?;
    let url = lab.api_url()?;
    objects::create_nodes(&url, &lab.name, &made).context("create Node objects")?;
    let with_agent: Vec<_> = made.iter().filter(|n| n.lab_agent).collect();
    lab.start_agents(&with_agent)?;
    for node in &with_agent {
        lab.wait_agent_ready(&node.name)
            .with_context(|| format!("weft-agent on {}", node.name))?;
        check_status(node).with_context(|| format!("{} after its agent came up", node.name))?;
    }
    // A node is ready as soon as its own device is up; its peers arrive as
    // the other nodes publish their keys. A packet sent before the other
    // side knows this node has its handshake dropped, and WireGuard retries
    // only after 5 s (REKEY_TIMEOUT): a converged mesh avoids that, as it
    // would be on a cluster that has been up for a while.
    for node in &with_agent {
        lab.wait_peers(&node.name, with_agent.len() - 1)
            .with_context(|| format!("mesh on {}", node.name))?;
    }
    if lab.state()?.restart_agents {
        supervisor::start(lab).context("start the agent supervisor")?;
    }
    Ok(())
}

fn make_switch(lab: &Lab) -> Result<()> {
    let sw = lab.state()?.switch_netns;
    add_netns(lab, &sw)?;
    // ip -n SW link add br0 type bridge; addresses; up
    netns::ip_in(&sw, &["link", "add", "br0", "type", "bridge"])?;
    netns::ip_in(&sw, &["addr", "add", &format!("{}/24", v4(SWITCH_HOST)), "dev", "br0"])?;
    netns::ip_in(
        &sw,
        &["addr", "add", &format!("{}/64", v6(SWITCH_HOST)), "dev", "br0", "nodad"],
    )?;
    netns::ip_in(&sw, &["link", "set", "br0", "up"]).map(drop)
}

fn make_external(lab: &Lab) -> Result<()> {
    let ns = format!("{}ext", netns_prefix(&lab.name));
    plug(lab, &ns, "ext", EXTERNAL_HOST)?;
    state::update(&lab.dir, |st| {
        st.external_netns = Some(ns);
        Ok(())
    })
}

/// Start `weft-lab apiserver` on the host, listening on host loopback and
/// (bound from inside the switch netns) on the underlay.
pub(super) fn start_apiserver(lab: &Lab, host_listen: &str) -> Result<()> {
    let st = lab.state()?;
    let api_dir = lab.dir.join("apiserver");
    std::fs::create_dir_all(&api_dir)?;
    // A restart must not read the previous incarnation's addresses as its own.
    let _ = std::fs::remove_file(api_dir.join(crate::apiserver::LISTENING_FILE));
    let underlay = format!("{}:{API_PORT}", v4(SWITCH_HOST));
    let mut cmd = Command::new(&st.lab_bin);
    cmd.args(["apiserver", "--log-requests", "--listen", host_listen, "--listen"])
        .arg(format!("{}@{underlay}", st.switch_netns))
        .arg("--state")
        .arg(&api_dir);
    let rec = spawn_detached(cmd, &api_dir.join("apiserver.log"), APISERVER_ROLE)?;
    state::update(&lab.dir, |st| {
        st.procs.retain(|p| p.role != APISERVER_ROLE);
        st.procs.push(rec.clone());
        Ok(())
    })?;
    let listening = wait_listening(&api_dir, || rec.alive())?;
    let host = listening["addresses"][0]
        .as_str()
        .context("emulator wrote no host address")?;
    let api = ApiInfo {
        host_url: format!("http://{host}"),
        node_url: format!("http://{underlay}"),
    };
    std::fs::write(lab.dir.join("kubeconfig"), objects::kubeconfig(&api.host_url))?;
    state::update(&lab.dir, |st| {
        st.api = Some(api);
        Ok(())
    })
}

/// Wait (bounded) for the emulator's `listening.json`.
fn wait_listening(api_dir: &Path, alive: impl Fn() -> bool) -> Result<Value> {
    let file = api_dir.join(crate::apiserver::LISTENING_FILE);
    let deadline = Instant::now() + API_START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&file) {
            return serde_json::from_str(&text).with_context(|| format!("parse {}", file.display()));
        }
        if !alive() {
            bail!("the emulator exited; see {}/apiserver.log", api_dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the emulator did not listen within {API_START_TIMEOUT:?}")
}
