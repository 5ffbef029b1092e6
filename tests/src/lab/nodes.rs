//! Lab nodes: a namespace on the underlay switch, its directories and
//! kubeconfig, its Node object, and (unless the lab has no agents or the
//! node is in `no_agent_on`) its `weft-agent`. Used by `up` for the first
//! nodes and by `node add` / `node del` afterwards.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::state::{self, NodeState};
use super::{cni, down, netns, netns_prefix, objects, Lab};

/// The underlay: IPv4 and IPv6 prefixes, private to the lab's namespaces.
const UNDERLAY_V4: &str = "172.30.0";
const UNDERLAY_V6: &str = "fd00:172:30:";
/// The switch's own address, where the emulator listens for the nodes.
pub(super) const SWITCH_HOST: u8 = 1;
pub(super) const EXTERNAL_HOST: u8 = 200;
/// Node indexes are 1..=MAX_NODES (10.244.N.0/24 and 172.30.0.(10+N) must fit).
pub const MAX_NODES: u8 = 50;

pub(super) fn v4(host: u8) -> Ipv4Addr {
    format!("{UNDERLAY_V4}.{host}").parse().expect("valid IPv4")
}

pub(super) fn v6(host: u8) -> Ipv6Addr {
    format!("{UNDERLAY_V6}:{host}").parse().expect("valid IPv6")
}

/// The name of node `index`.
pub fn node_name(index: u8) -> String {
    format!("node-{index}")
}

/// Parse `3` or `node-3` into a node index.
pub fn parse_node_index(s: &str) -> Result<u8> {
    let digits = s.strip_prefix("node-").unwrap_or(s);
    if digits.starts_with('+') {
        bail!("invalid node {s:?}: want N or node-N with N in 1..={MAX_NODES}");
    }
    match digits.parse::<u8>() {
        Ok(i) if (1..=MAX_NODES).contains(&i) => Ok(i),
        _ => bail!("invalid node {s:?}: want N or node-N with N in 1..={MAX_NODES}"),
    }
}

/// Record a namespace in the state, create it, record its identity.
pub(super) fn add_netns(lab: &Lab, name: &str) -> Result<()> {
    state::update(&lab.dir, |st| {
        st.netns.push(name.to_string());
        Ok(())
    })?;
    netns::add(name)?;
    let id = netns::id(name)?;
    state::update(&lab.dir, |st| {
        st.netns_ids.insert(name.to_string(), id);
        Ok(())
    })
}

/// A namespace hanging off the switch by a veth: `eth0` inside, `port` on br0.
pub(super) fn plug(lab: &Lab, ns: &str, port: &str, host: u8) -> Result<()> {
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
    netns::ip_in(ns, &["link", "set", "eth0", "up"])?;
    // A default route via the switch, as a real node has one through its
    // router: a node's own packets to a Service VIP are routed (then
    // dnat'ed on output), and forwarded packets to an unused VIP port reach
    // the forward hook that rejects them. The switch forwards nothing, so
    // nothing leaves the lab.
    netns::ip_in(
        ns,
        &[
            "route",
            "add",
            "default",
            "via",
            &v4(SWITCH_HOST).to_string(),
            "dev",
            "eth0",
        ],
    )?;
    netns::ip_in(
        ns,
        &[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &v6(SWITCH_HOST).to_string(),
            "dev",
            "eth0",
        ],
    )
    .map(drop)
}

/// Record node `i`, then build its namespace, directories and kubeconfig
/// (and, without agents, its CNI files). No Node object, no agent yet.
pub(super) fn make_node(lab: &Lab, i: u8) -> Result<NodeState> {
    let node = state::update(&lab.dir, |st| {
        let name = node_name(i);
        if st.node(&name).is_some() {
            bail!("node {name} already exists in lab {}", st.name);
        }
        let node = NodeState {
            netns: format!("{}{name}", netns_prefix(&lab.name)),
            internal_ipv4: v4(10 + i),
            internal_ipv6: v6(10 + i),
            pod_cidrs: vec![format!("10.244.{i}.0/24"), format!("fd00:10:244:{i}::/64")],
            dir: lab.dir.join("nodes").join(&name),
            index: i,
            lab_agent: st.agents && !st.no_agent_on.contains(&name),
            // Until the lab starts it: the supervisor must not start it first.
            agent_stopped: true,
            agent_extra_args: Vec::new(),
            agent_restarts: 0,
            name,
        };
        st.nodes.push(node.clone());
        Ok(node)
    })?;
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
    std::fs::write(node.kubeconfig(), objects::kubeconfig(&api.node_url))?;
    if !st.agents {
        check_status(&node)?;
    }
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
    std::fs::write(node.readiness_file(), b"weft-lab\n").context("write readiness file")
}

/// CNI STATUS, as a runtime asks before it schedules pods onto the network.
pub(super) fn check_status(node: &NodeState) -> Result<()> {
    let inv = cni::Invocation {
        command: "STATUS",
        container_id: "",
        pod_netns: None,
        pod_name: "",
        pod_namespace: "",
    };
    cni::invoke(node, &inv, None).map(drop).context("CNI STATUS")
}

impl Lab {
    /// The lowest node index not in use.
    pub fn next_node_index(&self) -> Result<u8> {
        let st = self.state()?;
        (1..=MAX_NODES)
            .find(|i| st.node(&node_name(*i)).is_none())
            .with_context(|| format!("lab {} has {MAX_NODES} nodes already", self.name))
    }

    /// Add node `index` (`node-INDEX`, underlay 172.30.0.(10+INDEX), pod
    /// CIDRs 10.244.INDEX.0/24 and fd00:10:244:INDEX::/64): namespace wired
    /// to the switch, directories, kubeconfig, Node object, and its agent
    /// (started, and waited for until ready) unless the lab has none or the
    /// node is in `no_agent_on`. Does not wait for the other nodes to add it
    /// as a peer ([`Lab::wait_peers`]). On failure, what was made is removed.
    pub fn add_node(&self, index: u8) -> Result<NodeState> {
        if !(1..=MAX_NODES).contains(&index) {
            bail!("node index {index}: want 1..={MAX_NODES}");
        }
        let name = node_name(index);
        if self.state()?.node(&name).is_some() {
            bail!("node {name} already exists in lab {}", self.name);
        }
        match self.build_node(index) {
            Ok(node) => Ok(node),
            Err(e) => match self.del_node(&name) {
                Ok(()) => Err(e),
                Err(undo) => Err(e.context(format!("removing the half-made node also failed: {undo:#}"))),
            },
        }
    }

    fn build_node(&self, index: u8) -> Result<NodeState> {
        let node = make_node(self, index).with_context(|| format!("create {}", node_name(index)))?;
        objects::create_nodes(&self.api_url()?, &self.name, std::slice::from_ref(&node))
            .context("create the Node object")?;
        if node.lab_agent {
            self.start_agents(&[&node])?;
            self.wait_agent_ready(&node.name)?;
            check_status(&node).with_context(|| format!("{} after its agent came up", node.name))?;
        }
        Ok(node)
    }

    /// Delete a node: its agent is stopped (not restarted), its pods deleted
    /// (CNI DEL), its Node object deleted, every process left in its
    /// namespace stopped (e.g. the userspace WireGuard), the namespace (and
    /// so its switch port) and its directory removed. Best-effort: keeps
    /// going past errors and reports them all.
    pub fn del_node(&self, node: &str) -> Result<()> {
        let st = self.state()?;
        let n = st
            .node(node)
            .with_context(|| format!("no node {node:?} in lab {}", self.name))?
            .clone();
        let mut errors = Vec::new();
        if let Err(e) = self.stop_agent(node) {
            errors.push(format!("{e:#}"));
        }
        for p in st.pods.iter().filter(|p| p.node == node) {
            if let Err(e) = self.del_pod(&p.name) {
                errors.push(format!("{e:#}"));
            }
        }
        if let Some(api) = &st.api {
            if let Err(e) = objects::delete_node(&api.host_url, node) {
                errors.push(format!("{e:#}"));
            }
        }
        // The switch port goes with the namespace only when the kernel
        // finishes destroying it, later: delete the pair now, so that the
        // index can be used again at once (`ip -n SW link del nN`).
        let port = format!("n{}", n.index);
        if netns::ip_in(&st.switch_netns, &["link", "show", &port]).is_ok() {
            if let Err(e) = netns::ip_in(&st.switch_netns, &["link", "del", &port]) {
                errors.push(format!("delete switch port {port}: {e:#}"));
            }
        }
        if let Err(e) = down::delete_netns(&n.netns) {
            errors.push(format!("delete netns {}: {e:#}", n.netns));
        }
        if n.dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&n.dir) {
                errors.push(format!("remove {}: {e}", n.dir.display()));
            }
        }
        let role = n.agent_role();
        state::update(&self.dir, |st| {
            st.nodes.retain(|x| x.name != node);
            st.netns.retain(|x| *x != n.netns);
            st.netns_ids.remove(&n.netns);
            st.procs.retain(|p| p.role != role);
            Ok(())
        })?;
        if !errors.is_empty() {
            bail!("delete node {node}: {}", errors.join("; "));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_indexes_parse() {
        assert_eq!(parse_node_index("3").unwrap(), 3);
        assert_eq!(parse_node_index("node-12").unwrap(), 12);
        for bad in ["0", "node-0", "51", "node-x", "", "node-", "-1"] {
            assert!(parse_node_index(bad).is_err(), "{bad}");
        }
    }
}
