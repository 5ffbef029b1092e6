//! Pods: a namespace per pod, wired by the node's CNI plugins exactly as a
//! runtime would, a Pod object with its IPs, and optionally a server inside.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::cni::{self, Invocation};
use super::process::spawn_detached;
use super::state::{self, NodeState, PodState};
use super::{check_name, down, netns, netns_prefix, objects, Lab};

/// Bound on waiting for a pod's server to listen.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// A pod to add.
#[derive(Debug, Clone, Default)]
pub struct PodSpec {
    pub node: String,
    pub name: String,
    /// Kubernetes namespace; empty means `default`.
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Run the lab's HTTP server on this port.
    pub http: Option<u16>,
    /// Run the lab's UDP echo server on this port.
    pub udp: Option<u16>,
}

impl PodSpec {
    /// A pod on `node` with no labels and no servers.
    pub fn new(node: &str, name: &str) -> Self {
        PodSpec {
            node: node.into(),
            name: name.into(),
            ..PodSpec::default()
        }
    }

    /// Add a label.
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }

    /// Serve HTTP on `http` and UDP echo on `udp`.
    pub fn serve(mut self, http: Option<u16>, udp: Option<u16>) -> Self {
        self.http = http;
        self.udp = udp;
        self
    }
}

/// A runtime-style container id: 64 hex digits, unique per call.
fn container_id(pod: &str) -> String {
    let nanos = jiff::Timestamp::now().as_nanosecond();
    let pid = std::process::id();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pod.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:032x}{pid:016x}{h:016x}", nanos as u128)
}

fn invocation<'a>(command: &'a str, pod: &'a PodState) -> Invocation<'a> {
    Invocation {
        command,
        container_id: &pod.container_id,
        pod_netns: Some(&pod.netns),
        pod_name: &pod.name,
        pod_namespace: &pod.namespace,
    }
}

impl Lab {
    fn pod_dir(&self, name: &str) -> PathBuf {
        self.dir.join("pods").join(name)
    }

    /// Add a pod: namespace, CNI ADD on its node, server, Pod object. On
    /// failure everything done so far is undone.
    pub fn add_pod(&self, spec: &PodSpec) -> Result<PodState> {
        check_name("pod", &spec.name, 40)?;
        let namespace = if spec.namespace.is_empty() {
            "default"
        } else {
            &spec.namespace
        };
        let (node, pod) = state::update(&self.dir, |st| {
            let node = st
                .node(&spec.node)
                .with_context(|| format!("no node {:?} in lab {}", spec.node, st.name))?
                .clone();
            if st.pod(&spec.name).is_some() {
                bail!("pod {:?} already exists", spec.name);
            }
            let pod = PodState {
                name: spec.name.clone(),
                namespace: namespace.to_string(),
                node: node.name.clone(),
                netns: format!("{}pod.{}", netns_prefix(&st.name), spec.name),
                container_id: container_id(&spec.name),
                ips: Vec::new(),
                result: serde_json::Value::Null,
                labels: spec.labels.clone(),
                http: spec.http,
                udp: spec.udp,
            };
            st.netns.push(pod.netns.clone());
            st.pods.push(pod.clone());
            Ok((node, pod))
        })?;
        match self.start_pod(&node, pod) {
            Ok(pod) => Ok(pod),
            Err(e) => match self.del_pod(&spec.name) {
                Ok(()) => Err(e),
                Err(undo) => Err(e.context(format!("undoing the pod also failed: {undo:#}"))),
            },
        }
    }

    fn start_pod(&self, node: &NodeState, mut pod: PodState) -> Result<PodState> {
        netns::add(&pod.netns)?;
        let id = netns::id(&pod.netns)?;
        state::update(&self.dir, |st| {
            st.netns_ids.insert(pod.netns.clone(), id);
            Ok(())
        })?;
        pod.result = cni::invoke(node, &invocation("ADD", &pod), None)?;
        pod.ips = cni::result_ips(&pod.result)?;
        state::update(&self.dir, |st| {
            if let Some(p) = st.pods.iter_mut().find(|p| p.name == pod.name) {
                *p = pod.clone();
            }
            Ok(())
        })?;
        if pod.http.is_some() || pod.udp.is_some() {
            self.start_server(&pod)?;
        }
        let url = self.api_url()?;
        objects::create_pod(&url, &pod, node)?;
        Ok(pod)
    }

    /// `weft-lab serve` inside the pod namespace, recorded; waits until it listens.
    fn start_server(&self, pod: &PodState) -> Result<()> {
        let dir = self.pod_dir(&pod.name);
        std::fs::create_dir_all(&dir)?;
        let ready = dir.join("server.ready");
        let lab_bin = self.state()?.lab_bin;
        let mut args = vec!["serve".to_string(), "--server-name".into(), pod.name.clone()];
        if let Some(p) = pod.http {
            args.extend(["--http".into(), p.to_string()]);
        }
        if let Some(p) = pod.udp {
            args.extend(["--udp".into(), p.to_string()]);
        }
        args.extend(["--ready-file".into(), ready.display().to_string()]);
        let cmd: Command = netns::exec_cmd(&pod.netns, &lab_bin.display().to_string(), &args);
        let rec = spawn_detached(cmd, &dir.join("server.log"), &format!("server pod/{}", pod.name))?;
        state::update(&self.dir, |st| {
            st.procs.push(rec.clone());
            Ok(())
        })?;
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        while !ready.exists() {
            if !rec.alive() {
                bail!("server in pod {} exited; see {}/server.log", pod.name, dir.display());
            }
            if Instant::now() > deadline {
                bail!("server in pod {} not ready within {SERVER_START_TIMEOUT:?}", pod.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Delete a pod: stop its server, CNI DEL (with the ADD result as
    /// `prevResult`), delete its namespace and Pod object. Best-effort: keeps
    /// going past errors and reports them all.
    pub fn del_pod(&self, name: &str) -> Result<()> {
        let st = self.state()?;
        let pod = st.pod(name).with_context(|| format!("no pod {name:?}"))?.clone();
        let role = format!("server pod/{name}");
        let mut errors = Vec::new();
        for p in st.procs.iter().filter(|p| p.role == role) {
            if let Err(e) = p.stop() {
                errors.push(format!("stop server: {e:#}"));
            }
        }
        if let Some(node) = st.node(&pod.node) {
            let prev = (!pod.result.is_null()).then_some(&pod.result);
            if let Err(e) = cni::invoke(node, &invocation("DEL", &pod), prev) {
                errors.push(format!("{e:#}"));
            }
        }
        if let Err(e) = down::delete_netns(&pod.netns) {
            errors.push(format!("delete netns: {e:#}"));
        }
        if let Some(api) = &st.api {
            if let Err(e) = objects::delete_pod(&api.host_url, &pod.namespace, name) {
                errors.push(format!("{e:#}"));
            }
        }
        let _ = std::fs::remove_dir_all(self.pod_dir(name));
        state::update(&self.dir, |st| {
            st.pods.retain(|p| p.name != name);
            st.netns.retain(|n| *n != pod.netns);
            st.netns_ids.remove(&pod.netns);
            st.procs.retain(|p| p.role != role);
            Ok(())
        })?;
        if !errors.is_empty() {
            bail!("delete pod {name}: {}", errors.join("; "));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_64_hex_and_differ() {
        let a = container_id("a");
        let b = container_id("b");
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
