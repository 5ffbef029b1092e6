//! `weft-lab up`: switch, emulator, nodes, external client, Node objects.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::process::spawn_detached;
use super::state::{self, ApiInfo, LabState, NodeState};
use super::{check_name, check_root, cni, down, netns, netns_prefix, objects, Lab, LabConfig};

/// The underlay: IPv4 and IPv6 prefixes, private to the lab's namespaces.
const UNDERLAY_V4: &str = "172.30.0";
const UNDERLAY_V6: &str = "fd00:172:30:";
/// The switch's own address, where the emulator listens for the nodes.
const SWITCH_HOST: u8 = 1;
const EXTERNAL_HOST: u8 = 200;
/// Port of the emulator on the underlay.
const API_PORT: u16 = 6443;
/// Bound on waiting for the emulator to listen.
const API_START_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many nodes (10.244.N.0/24 and 172.30.0.(10+N) must fit).
const MAX_NODES: u8 = 50;
/// Bound on an agent bringing its node's network up (mesh, conflist, ready).
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Every node's pod CIDRs fall in these: traffic to them is never masqueraded.
const CLUSTER_CIDRS: &str = "10.244.0.0/16,fd00:10:244::/48";

fn v4(host: u8) -> Ipv4Addr {
    format!("{UNDERLAY_V4}.{host}").parse().expect("valid IPv4")
}

fn v6(host: u8) -> Ipv6Addr {
    format!("{UNDERLAY_V6}:{host}").parse().expect("valid IPv6")
}

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
    start_apiserver(lab).context("start the API emulator")?;
    let mut made = Vec::new();
    for i in 1..=nodes {
        made.push(make_node(lab, i).with_context(|| format!("create node-{i}"))?);
    }
    make_external(lab).context("create the external client")?;
    let url = lab.api_url()?;
    objects::create_nodes(&url, &lab.name, &made).context("create Node objects")?;
    if lab.state()?.agents {
        for node in &made {
            start_agent(lab, node).with_context(|| format!("start weft-agent on {}", node.name))?;
        }
        for node in &made {
            wait_agent_ready(lab, node).with_context(|| format!("weft-agent on {}", node.name))?;
            check_status(node).with_context(|| format!("{} after its agent came up", node.name))?;
        }
        for node in &made {
            wait_mesh(node, made.len() - 1).with_context(|| format!("mesh on {}", node.name))?;
        }
    }
    Ok(())
}

/// Wait (bounded) until the node's agent has a WireGuard peer for every
/// other node. A node is ready as soon as its own device is up; its peers
/// arrive as the other nodes publish their keys. A packet sent before the
/// other side knows this node has its handshake dropped, and WireGuard
/// retries only after 5 s (REKEY_TIMEOUT): a converged mesh avoids that in
/// the demo, as it would be on a cluster that has been up for a while.
fn wait_mesh(node: &NodeState, peers: usize) -> Result<()> {
    let deadline = Instant::now() + AGENT_READY_TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        match agent_metric(node, "weft_agent_wireguard_peers") {
            Ok(Some(n)) if n as usize == peers => return Ok(()),
            Ok(v) => last = format!("{v:?} peers"),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("no {peers} WireGuard peers within {AGENT_READY_TIMEOUT:?} (last: {last})")
}

/// One gauge from the agent's `/metrics`, read inside the node's netns.
fn agent_metric(node: &NodeState, name: &str) -> Result<Option<f64>> {
    use std::io::{Read, Write};
    let text = netns::run_in(&node.netns, || {
        let addr = "127.0.0.1:10256".parse().expect("valid address");
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: weft-lab\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()))
}

/// `weft-agent` inside the node's netns, as the DaemonSet runs it on a real
/// node, with every path under the node's directory (all nodes share one
/// filesystem). It installs `weft`/`weft-ipam` into the node's CNI bin dir,
/// writes the conflist and the readiness file once the mesh is up.
fn start_agent(lab: &Lab, node: &NodeState) -> Result<()> {
    let st = lab.state()?;
    let d = |s: &str| node.dir.join(s);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.netns])
        .arg(st.cni_bin_dir.join("weft-agent"))
        .args(["--node-name", &node.name])
        .arg("--kubeconfig")
        .arg(d("kubeconfig"))
        .arg("--cni-bin-dir")
        .arg(node.bin_dir())
        .arg("--cni-conf-dir")
        .arg(node.conf_dir())
        .arg("--cni-source-dir")
        .arg(&st.cni_bin_dir)
        .arg("--state-dir")
        .arg(d("state"))
        .arg("--run-dir")
        .arg(d("run"))
        .arg("--readiness-file")
        .arg(d("ready"))
        .arg("--cni-log-file")
        .arg(d("weft.log"))
        .args(["--cluster-cidr", CLUSTER_CIDRS])
        // The lab's runtime runs one plugin, weft; no portmap in the nodes' bin dirs.
        .arg("--chain-portmap=false")
        .args(["--metrics-addr", "127.0.0.1:10256"])
        .env("RUST_LOG", "info");
    let rec = spawn_detached(cmd, &d("agent.log"), &format!("weft-agent {}", node.name))?;
    state::update(&lab.dir, |st| {
        st.procs.push(rec);
        Ok(())
    })
}

/// Wait (bounded) for the agent to have written the conflist and the
/// readiness file: only then would kubelet schedule pods on the node.
fn wait_agent_ready(lab: &Lab, node: &NodeState) -> Result<()> {
    let conflist = node.conf_dir().join(cni::CONFLIST);
    let ready = node.dir.join("ready");
    let deadline = Instant::now() + AGENT_READY_TIMEOUT;
    while Instant::now() < deadline {
        if conflist.is_file() && ready.is_file() {
            return Ok(());
        }
        let st = lab.state()?;
        let role = format!("weft-agent {}", node.name);
        if st.procs.iter().any(|p| p.role == role && !p.alive()) {
            bail!("weft-agent exited; see {}", node.dir.join("agent.log").display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "no conflist and readiness file within {AGENT_READY_TIMEOUT:?}; see {}",
        node.dir.join("agent.log").display()
    )
}

/// Record a namespace in the state, then create it.
fn add_netns(lab: &Lab, name: &str) -> Result<()> {
    state::update(&lab.dir, |st| {
        st.netns.push(name.to_string());
        Ok(())
    })?;
    netns::add(name)
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

/// A namespace hanging off the switch by a veth: `eth0` inside, `port` on br0.
fn plug(lab: &Lab, ns: &str, port: &str, host: u8) -> Result<()> {
    let sw = lab.state()?.switch_netns;
    add_netns(lab, ns)?;
    // ip -n SW link add PORT type veth peer name eth0 netns NS
    netns::ip_in(
        &sw,
        &["link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns],
    )?;
    netns::ip_in(&sw, &["link", "set", port, "master", "br0", "up"])?;
    netns::ip_in(ns, &["addr", "add", &format!("{}/24", v4(host)), "dev", "eth0"])?;
    netns::ip_in(
        ns,
        &["addr", "add", &format!("{}/64", v6(host)), "dev", "eth0", "nodad"],
    )?;
    netns::ip_in(ns, &["link", "set", "eth0", "up"]).map(drop)
}

fn make_node(lab: &Lab, i: u8) -> Result<NodeState> {
    let name = format!("node-{i}");
    let node = NodeState {
        netns: format!("{}{name}", netns_prefix(&lab.name)),
        internal_ipv4: v4(10 + i),
        internal_ipv6: v6(10 + i),
        pod_cidrs: vec![format!("10.244.{i}.0/24"), format!("fd00:10:244:{i}::/64")],
        dir: lab.dir.join("nodes").join(&name),
        index: i,
        name,
    };
    plug(lab, &node.netns, &format!("n{i}"), 10 + i)?;
    // A node routes for its pods.
    netns::sysctl(&node.netns, "net.ipv4.ip_forward", "1")?;
    netns::sysctl(&node.netns, "net.ipv6.conf.all.forwarding", "1")?;
    let st = lab.state()?;
    if st.agents {
        for d in [node.bin_dir(), node.conf_dir(), node.dir.join("ipam")] {
            std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
        }
    } else {
        install_cni(&node, &st.cni_bin_dir)?;
    }
    let api = st.api.context("emulator not started")?;
    std::fs::write(node.dir.join("kubeconfig"), objects::kubeconfig(&api.node_url))?;
    if !st.agents {
        check_status(&node)?;
    }
    state::update(&lab.dir, |st| {
        st.nodes.push(node.clone());
        Ok(())
    })?;
    Ok(node)
}

/// Without agents, the lab does what the agent would: per-node CNI dirs,
/// binaries linked from the build, the conflist, and the readiness file.
fn install_cni(node: &NodeState, from: &Path) -> Result<()> {
    for d in [node.bin_dir(), node.conf_dir(), node.dir.join("ipam")] {
        std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
    }
    // weft-ipam is linked into weft; the standalone binary is installed when built.
    for bin in ["weft", "weft-ipam"].into_iter().filter(|b| from.join(b).is_file()) {
        std::os::unix::fs::symlink(from.join(bin), node.bin_dir().join(bin))
            .with_context(|| format!("link {bin} into {}", node.bin_dir().display()))?;
    }
    cni::write_atomic(&node.conf_dir().join(cni::CONFLIST), &cni::conflist(node))?;
    std::fs::write(node.dir.join("ready"), b"weft-lab\n").context("write readiness file")
}

/// CNI STATUS, as a runtime asks before it schedules pods onto the network.
fn check_status(node: &NodeState) -> Result<()> {
    let inv = cni::Invocation {
        command: "STATUS",
        container_id: "",
        pod_netns: None,
        pod_name: "",
        pod_namespace: "",
    };
    cni::invoke(node, &inv, None).map(drop).context("CNI STATUS")
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
fn start_apiserver(lab: &Lab) -> Result<()> {
    let st = lab.state()?;
    let api_dir = lab.dir.join("apiserver");
    std::fs::create_dir_all(&api_dir)?;
    let underlay = format!("{}:{API_PORT}", v4(SWITCH_HOST));
    let mut cmd = Command::new(&st.lab_bin);
    cmd.args(["apiserver", "--log-requests", "--listen", "127.0.0.1:0", "--listen"])
        .arg(format!("{}@{underlay}", st.switch_netns))
        .arg("--state")
        .arg(&api_dir);
    let rec = spawn_detached(cmd, &api_dir.join("apiserver.log"), "apiserver")?;
    state::update(&lab.dir, |st| {
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
