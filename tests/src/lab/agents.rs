//! The nodes' `weft-agent` processes: how the lab starts them (the same
//! command every time, so a test can also run it itself), stops, kills and
//! probes them (`/metrics`, `/healthz` inside the node's netns).
//!
//! An agent is recorded in the lab state under the role `weft-agent NODE`.
//! [`Lab::kill_agent`] is a crash: with `restart_agents` the supervisor
//! starts it again. [`Lab::stop_agent`] is deliberate: the node is marked
//! stopped and stays so until [`Lab::start_agent`].

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::process::spawn_detached;
use super::state::{self, LabState, NodeState};
use super::{cni, netns, Lab};

/// Where the lab's agents serve `/healthz` and `/livez` (inside the node
/// netns; kube-proxy's port, on loopback only).
pub const AGENT_HEALTHZ_ADDR: &str = "127.0.0.1:10256";
/// Where the lab's agents serve `/metrics` (kube-proxy's default).
pub const AGENT_METRICS_ADDR: &str = "127.0.0.1:10249";
/// Every node's pod CIDRs fall in these: traffic to them is never masqueraded.
pub const CLUSTER_CIDRS: &str = "10.244.0.0/16,fd00:10:244::/48";
/// Bound on an agent bringing its node's network up (mesh, conflist, ready).
pub const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one HTTP request to an agent.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// How the lab runs a node's agent: `ip netns exec NETNS PROGRAM ARGS…`
/// with `RUST_LOG=log_filter`, output appended to `log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCommand {
    pub netns: String,
    /// The `weft-agent` binary.
    pub program: PathBuf,
    /// Every flag, the lab's own first, then `LabConfig::agent_args`, then
    /// the node's `start_agent_with` extras.
    pub args: Vec<String>,
    pub log: PathBuf,
    /// `RUST_LOG`, `info` unless `LabConfig::agent_log_filter` says otherwise.
    pub log_filter: String,
}

impl AgentCommand {
    /// The command, ready to spawn (stdio not set).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(&self.program)
            .args(&self.args)
            .env("RUST_LOG", &self.log_filter)
            .env_remove("KUBECONFIG");
        cmd
    }
}

/// The agent command for `node` in a lab whose state is `st`. Every path is
/// under the node's directory (all nodes share one filesystem).
pub fn agent_command(st: &LabState, node: &NodeState) -> AgentCommand {
    let d = |p: PathBuf| p.display().to_string();
    let mut args: Vec<String> = vec![
        "--node-name".into(),
        node.name.clone(),
        "--kubeconfig".into(),
        d(node.kubeconfig()),
        "--cni-bin-dir".into(),
        d(node.bin_dir()),
        "--cni-conf-dir".into(),
        d(node.conf_dir()),
        "--cni-source-dir".into(),
        d(st.cni_bin_dir.clone()),
        "--state-dir".into(),
        d(node.state_dir()),
        "--run-dir".into(),
        d(node.run_dir()),
        "--readiness-file".into(),
        d(node.readiness_file()),
        "--cni-log-file".into(),
        d(node.dir.join("weft.log")),
        "--cluster-cidr".into(),
        CLUSTER_CIDRS.into(),
        // The lab's runtime runs one plugin, weft; no portmap in the nodes' bin dirs.
        "--chain-portmap=false".into(),
        "--healthz-bind-address".into(),
        AGENT_HEALTHZ_ADDR.into(),
        "--metrics-bind-address".into(),
        AGENT_METRICS_ADDR.into(),
    ];
    args.extend(st.agent_args.iter().cloned());
    args.extend(node.agent_extra_args.iter().cloned());
    AgentCommand {
        netns: node.netns.clone(),
        program: st.cni_bin_dir.join("weft-agent"),
        args,
        log: node.agent_log(),
        log_filter: if st.agent_log_filter.is_empty() {
            "info".into()
        } else {
            st.agent_log_filter.clone()
        },
    }
}

/// Start the agent of `node` unless one runs, and record it; the caller
/// holds the state (inside [`state::update`]). Returns the new pid.
pub(super) fn spawn_recorded(st: &mut LabState, node: &str) -> Result<i32> {
    let n = st.node(node).with_context(|| format!("no node {node:?}"))?.clone();
    if let Some(p) = st.live_proc(&n.agent_role()) {
        bail!("the agent of {node} already runs (pid {})", p.pid);
    }
    let cmd = agent_command(st, &n);
    let rec = spawn_detached(cmd.command(), &cmd.log, &n.agent_role())?;
    let pid = rec.pid;
    st.procs.retain(|p| p.role != rec.role);
    st.procs.push(rec);
    Ok(pid)
}

impl Lab {
    fn node_state(&self, node: &str) -> Result<NodeState> {
        self.state()?
            .node(node)
            .cloned()
            .with_context(|| format!("no node {node:?} in lab {}", self.name))
    }

    /// The command the lab runs (or would run) for `node`'s agent, so that a
    /// test can run the same agent itself (e.g. on a `no_agent_on` node).
    pub fn agent_command(&self, node: &str) -> Result<AgentCommand> {
        let st = self.state()?;
        let n = st.node(node).with_context(|| format!("no node {node:?}"))?;
        Ok(agent_command(&st, n))
    }

    /// Start `node`'s agent with the lab's flags (and the extras of an
    /// earlier [`Lab::start_agent_with`]); clears a [`Lab::stop_agent`].
    /// Fails when it already runs. Does not wait for readiness
    /// ([`Lab::wait_agent_ready`]).
    pub fn start_agent(&self, node: &str) -> Result<i32> {
        state::update(&self.dir, |st| {
            let n = st.nodes.iter_mut().find(|n| n.name == node);
            n.with_context(|| format!("no node {node:?}"))?.agent_stopped = false;
            spawn_recorded(st, node)
        })
    }

    /// Start the agent of every node in `nodes` unless it already runs.
    pub(super) fn start_agents(&self, nodes: &[&NodeState]) -> Result<()> {
        for n in nodes {
            self.start_agent(&n.name)
                .with_context(|| format!("start weft-agent on {}", n.name))?;
        }
        Ok(())
    }

    /// Start `node`'s agent with `extra` flags after the lab's; they are kept
    /// for later starts and supervisor restarts of this node.
    pub fn start_agent_with(&self, node: &str, extra: &[&str]) -> Result<i32> {
        state::update(&self.dir, |st| {
            let n = st.nodes.iter_mut().find(|n| n.name == node);
            let n = n.with_context(|| format!("no node {node:?}"))?;
            n.agent_stopped = false;
            n.agent_extra_args = extra.iter().map(|s| s.to_string()).collect();
            spawn_recorded(st, node)
        })
    }

    /// Stop `node`'s agent on purpose: SIGTERM, SIGKILL after a grace period,
    /// wait until it is gone. The supervisor does not restart it.
    pub fn stop_agent(&self, node: &str) -> Result<()> {
        let role = self.node_state(node)?.agent_role();
        let rec = state::update(&self.dir, |st| {
            if let Some(n) = st.nodes.iter_mut().find(|n| n.name == node) {
                n.agent_stopped = true;
            }
            Ok(st.procs.iter().find(|p| p.role == role).cloned())
        })?;
        if let Some(rec) = rec {
            rec.stop().with_context(|| format!("stop the agent of {node}"))?;
        }
        Ok(())
    }

    /// SIGKILL `node`'s agent (a crash) and wait until it is gone. With
    /// `restart_agents` the supervisor starts it again after its back-off.
    /// Fails when no agent runs there.
    pub fn kill_agent(&self, node: &str) -> Result<()> {
        let st = self.state()?;
        let n = st.node(node).with_context(|| format!("no node {node:?}"))?;
        let rec = st
            .live_proc(&n.agent_role())
            .with_context(|| format!("no agent runs on {node}"))?;
        rec.kill()
    }

    /// The pid of `node`'s running agent, `None` when none runs.
    pub fn agent_pid(&self, node: &str) -> Result<Option<i32>> {
        let role = self.node_state(node)?.agent_role();
        Ok(self.state()?.live_proc(&role).map(|p| p.pid))
    }

    /// How often the supervisor restarted `node`'s agent.
    pub fn agent_restarts(&self, node: &str) -> Result<u32> {
        Ok(self.node_state(node)?.agent_restarts)
    }

    /// `node`'s agent log so far (every run, appended); empty before the first.
    pub fn agent_log(&self, node: &str) -> Result<String> {
        let log = self.node_state(node)?.agent_log();
        match std::fs::read(&log) {
            Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e).with_context(|| format!("read {}", log.display())),
        }
    }

    /// The body of `GET /metrics` from `node`'s agent, inside its netns; an
    /// error unless the status is 200.
    pub fn metrics(&self, node: &str) -> Result<String> {
        match self.agent_http(node, AGENT_METRICS_ADDR, "/metrics")? {
            (200, body) => Ok(body),
            (code, body) => bail!("GET /metrics on {node}: HTTP {code}: {body}"),
        }
    }

    /// One gauge or counter sample from `node`'s `/metrics` (`name` with its
    /// labels as printed, e.g. `weft_agent_wireguard_peers`).
    pub fn metric(&self, node: &str, name: &str) -> Result<Option<f64>> {
        Ok(sample(&self.metrics(node)?, name))
    }

    /// `GET /healthz` of `node`'s agent: HTTP status and body.
    pub fn healthz(&self, node: &str) -> Result<(u16, String)> {
        self.agent_http(node, AGENT_HEALTHZ_ADDR, "/healthz")
    }

    /// `GET /livez` of `node`'s agent: HTTP status and body.
    pub fn livez(&self, node: &str) -> Result<(u16, String)> {
        self.agent_http(node, AGENT_HEALTHZ_ADDR, "/livez")
    }

    /// `GET PATH` on `addr` inside `node`'s netns (HTTP/1.0, bounded):
    /// status and body.
    pub fn agent_http(&self, node: &str, addr: &str, path: &str) -> Result<(u16, String)> {
        let ns = self.node_state(node)?.netns;
        let request = format!("GET {path} HTTP/1.0\r\nHost: weft-lab\r\n\r\n");
        let addr: SocketAddr = addr.parse().with_context(|| format!("address {addr:?}"))?;
        let text = netns::run_in(&ns, move || {
            let mut s =
                std::net::TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).with_context(|| format!("connect {addr}"))?;
            s.set_read_timeout(Some(HTTP_TIMEOUT))?;
            s.write_all(request.as_bytes())?;
            let mut out = Vec::new();
            s.read_to_end(&mut out)?;
            Ok(String::from_utf8_lossy(&out).into_owned())
        })
        .with_context(|| format!("GET {path} from the agent of {node}"))?;
        parse_http(&text).with_context(|| format!("GET {path} from the agent of {node}"))
    }

    /// Wait (bounded) until `node`'s agent wrote the conflist and the
    /// readiness file: only then would kubelet schedule pods on the node.
    pub fn wait_agent_ready(&self, node: &str) -> Result<()> {
        let n = self.node_state(node)?;
        let conflist = n.conf_dir().join(cni::CONFLIST);
        let deadline = Instant::now() + AGENT_READY_TIMEOUT;
        while Instant::now() < deadline {
            if conflist.is_file() && n.readiness_file().is_file() {
                return Ok(());
            }
            let st = self.state()?;
            if st.node(node).is_some_and(|n| n.lab_agent)
                && st.live_proc(&n.agent_role()).is_none()
                && !st.restart_agents
            {
                bail!("weft-agent exited; see {}", n.agent_log().display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "no conflist and readiness file within {AGENT_READY_TIMEOUT:?}; see {}",
            n.agent_log().display()
        )
    }

    /// Wait (bounded) until `node`'s agent reports `peers` WireGuard peers.
    pub fn wait_peers(&self, node: &str, peers: usize) -> Result<()> {
        let deadline = Instant::now() + AGENT_READY_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.metric(node, "weft_agent_wireguard_peers") {
                Ok(Some(n)) if n as usize == peers => return Ok(()),
                Ok(v) => last = format!("{v:?} peers"),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("{node}: no {peers} WireGuard peers within {AGENT_READY_TIMEOUT:?} (last: {last})")
    }
}

/// The value of the first sample named exactly `name` (labels included).
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Status code and body of an HTTP/1.x response.
fn parse_http(text: &str) -> Result<(u16, String)> {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP response: {:?}", head.lines().next().unwrap_or_default()))?;
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses_and_samples() {
        let (code, body) = parse_http("HTTP/1.1 503 Service Unavailable\r\nA: b\r\n\r\nnot ready").unwrap();
        assert_eq!((code, body.as_str()), (503, "not ready"));
        assert!(parse_http("garbage").is_err());
        let m = "# HELP x\nweft_agent_wireguard_peers 2\nweft_x{kind=\"a\"} 3\n";
        assert_eq!(sample(m, "weft_agent_wireguard_peers"), Some(2.0));
        assert_eq!(sample(m, "weft_x{kind=\"a\"}"), Some(3.0));
        assert_eq!(sample(m, "weft_agent_wireguard"), None);
    }
}
