//! Playing the container runtime: write a node's conflist, and call its CNI
//! plugins the way libcni (containerd, CRI-O) does.
//!
//! For each plugin of the conflist the runtime builds that plugin's network
//! config — the plugin object plus the list's `cniVersion` and `name` (and
//! `prevResult` when there is one) — and runs the plugin binary from
//! `CNI_PATH` with the `CNI_*` environment and the config on stdin. The plugin
//! runs in the *node's* namespace (`ip netns exec NODE weft`), as it would on
//! a real node, because it creates the bridge in the namespace it runs in.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::netns;
use super::state::NodeState;

/// The conflist file name the lab (and later the agent) writes.
pub const CONFLIST: &str = "10-weft.conflist";

/// The conflist for a node, as the agent will write it.
pub fn conflist(node: &NodeState) -> Value {
    let dir = node.dir.display().to_string();
    let ranges: Vec<Value> = node.pod_cidrs.iter().map(|c| json!([{"subnet": c}])).collect();
    json!({
        "cniVersion": "1.1.0",
        "name": "weft",
        "plugins": [{
            "type": "weft",
            "bridge": "weft0",
            "mtu": 1420,
            "hairpinMode": true,
            "logFile": format!("{dir}/weft.log"),
            "readinessFile": format!("{dir}/ready"),
            "ipam": {
                "type": "weft-ipam",
                "ranges": ranges,
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                "dataDir": format!("{dir}/ipam"),
            },
        }],
    })
}

/// Write `value` to `path` by atomic rename.
pub fn write_atomic(path: &Path, value: &Value) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

/// The first conflist in the node's conf dir, in name order (as runtimes pick).
pub fn load_conflist(node: &NodeState) -> Result<Value> {
    let dir = node.conf_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
        .collect();
    files.sort();
    let file = files
        .first()
        .with_context(|| format!("no conflist in {} (node not ready)", dir.display()))?;
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", file.display()))
}

/// One CNI call.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    /// Pod netns name, `None` for calls without one (STATUS).
    pub pod_netns: Option<&'a str>,
    pub pod_name: &'a str,
    pub pod_namespace: &'a str,
}

/// Run every plugin of the node's conflist for `inv`: in order for ADD (each
/// getting the previous result), in reverse for DEL. Returns the last result.
pub fn invoke(node: &NodeState, inv: &Invocation, prev: Option<&Value>) -> Result<Value> {
    let list = load_conflist(node)?;
    let plugins = list["plugins"].as_array().context("conflist has no plugins")?.clone();
    let ordered: Vec<Value> = if inv.command == "DEL" {
        plugins.into_iter().rev().collect()
    } else {
        plugins
    };
    let mut result = prev.cloned();
    for plugin in ordered {
        let mut conf = plugin.clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        if let Some(r) = &result {
            conf["prevResult"] = r.clone();
        }
        let out = run_plugin(node, inv, &conf)?;
        if inv.command == "ADD" {
            result = Some(out);
        }
    }
    Ok(result.unwrap_or(Value::Null))
}

/// Run one plugin binary with the CNI environment; parse its stdout.
fn run_plugin(node: &NodeState, inv: &Invocation, conf: &Value) -> Result<Value> {
    let ptype = conf["type"].as_str().context("plugin without a type")?;
    let bin = node.bin_dir().join(ptype);
    let mut cmd = netns::exec_cmd(&node.netns, &bin.display().to_string(), &[]);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", inv.command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", node.bin_dir())
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                inv.pod_namespace, inv.pod_name, inv.container_id
            ),
        );
    if let Some(ns) = inv.pod_netns {
        cmd.env("CNI_NETNS", netns::path(ns));
    }
    let stdout = feed(cmd, conf).with_context(|| format!("CNI {} {ptype} on {}", inv.command, node.name))?;
    if stdout.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&stdout).with_context(|| format!("parse {ptype} output {stdout:?}"))
}

/// Run the plugin with `conf` on stdin; on failure, surface the CNI error.
fn feed(mut cmd: Command, conf: &Value) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start plugin")?;
    let mut stdin = child.stdin.take().context("plugin stdin")?;
    stdin
        .write_all(conf.to_string().as_bytes())
        .context("write config to plugin")?;
    drop(stdin);
    let out = child.wait_with_output().context("wait for plugin")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let err: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        bail!(
            "plugin failed ({}): code {} msg {:?} details {:?} stderr {:?}",
            out.status,
            err["code"],
            err["msg"].as_str().unwrap_or(stdout.trim()),
            err["details"].as_str().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

/// The pod addresses of a CNI result (`ips[].address`, prefix dropped).
pub fn result_ips(result: &Value) -> Result<Vec<std::net::IpAddr>> {
    let ips = result["ips"].as_array().context("CNI result has no ips")?;
    let mut out = Vec::new();
    for ip in ips {
        let cidr = ip["address"].as_str().context("ips[].address missing")?;
        let addr = cidr.split('/').next().unwrap_or_default();
        out.push(addr.parse().with_context(|| format!("parse address {cidr}"))?);
    }
    out.sort_by_key(|ip: &std::net::IpAddr| ip.is_ipv6());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_has_the_nodes_ranges_and_paths() {
        let node = NodeState {
            name: "node-2".into(),
            index: 2,
            netns: "wl.t.node-2".into(),
            internal_ipv4: "172.30.0.12".parse().unwrap(),
            internal_ipv6: "fd00:172:30::12".parse().unwrap(),
            pod_cidrs: vec!["10.244.2.0/24".into(), "fd00:10:244:2::/64".into()],
            dir: "/run/weft-lab/t/nodes/node-2".into(),
            lab_agent: true,
            agent_stopped: false,
            agent_extra_args: vec![],
            agent_restarts: 0,
        };
        let c = conflist(&node);
        let p = &c["plugins"][0];
        assert_eq!(p["ipam"]["ranges"][1][0]["subnet"], "fd00:10:244:2::/64");
        assert_eq!(p["logFile"], "/run/weft-lab/t/nodes/node-2/weft.log");
        assert_eq!(p["ipam"]["dataDir"], "/run/weft-lab/t/nodes/node-2/ipam");
    }

    #[test]
    fn result_ips_puts_ipv4_first() {
        let r = json!({"ips": [{"address": "fd00:10:244:1::2/64"}, {"address": "10.244.1.2/24"}]});
        let ips = result_ips(&r).unwrap();
        assert_eq!(ips[0].to_string(), "10.244.1.2");
        assert_eq!(ips[1].to_string(), "fd00:10:244:1::2");
        assert!(result_ips(&json!({})).is_err());
    }
}
