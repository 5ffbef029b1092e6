//! The cluster objects the lab creates in the emulator, playing kubelet and
//! the controller manager: Nodes with pod CIDRs and addresses, Pods with
//! their IPs. Calls go through the kube client, like the agent's.

use std::future::Future;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Config};
use serde_json::{json, Value};

use super::state::{NodeState, PodState};

/// Run `f` with a client for `url` on a private single-threaded runtime.
/// Blocking: call it from synchronous code, never from inside a tokio runtime.
pub fn with_client<T, Fut>(url: &str, f: impl FnOnce(Client) -> Fut) -> Result<T>
where
    Fut: Future<Output = Result<T>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start a tokio runtime")?;
    rt.block_on(async {
        let config = Config::new(url.parse().with_context(|| format!("parse API url {url}"))?);
        let client = Client::try_from(config).context("build kube client")?;
        f(client).await
    })
}

/// The Node object of a lab node.
pub fn node_object(lab: &str, node: &NodeState) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {
                "kubernetes.io/hostname": node.name,
                "kubernetes.io/os": "linux",
                "weft.io/lab": lab,
            },
        },
        "spec": {"podCIDR": node.pod_cidrs[0], "podCIDRs": node.pod_cidrs},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.internal_ipv4.to_string()},
                {"type": "InternalIP", "address": node.internal_ipv6.to_string()},
                {"type": "Hostname", "address": node.name},
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "weft-lab plays kubelet"}],
        },
    })
}

/// Create the Node objects.
pub fn create_nodes(url: &str, lab: &str, nodes: &[NodeState]) -> Result<()> {
    let objects: Vec<Node> = nodes
        .iter()
        .map(|n| serde_json::from_value(node_object(lab, n)))
        .collect::<Result<_, _>>()?;
    with_client(url, |client| async move {
        let api: Api<Node> = Api::all(client);
        for node in &objects {
            api.create(&PostParams::default(), node)
                .await
                .with_context(|| format!("create Node {:?}", node.metadata.name))?;
        }
        Ok(())
    })
}

/// The Pod object (spec) of a lab pod.
fn pod_object(pod: &PodState) -> Value {
    let mut ports = Vec::new();
    if let Some(p) = pod.http {
        ports.push(json!({"name": "http", "containerPort": p, "protocol": "TCP"}));
    }
    if let Some(p) = pod.udp {
        ports.push(json!({"name": "udp", "containerPort": p, "protocol": "UDP"}));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "labels": pod.labels,
            "annotations": {"weft.io/lab-container-id": pod.container_id},
        },
        "spec": {
            "nodeName": pod.node,
            "containers": [{"name": "server", "image": "weft-lab-serve", "ports": ports}],
        },
    })
}

/// The status kubelet would report for a running lab pod.
fn pod_status(pod: &PodState, node: &NodeState) -> Value {
    let ips: Vec<Value> = pod.ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
    json!({"status": {
        "phase": "Running",
        "hostIP": node.internal_ipv4.to_string(),
        "hostIPs": [{"ip": node.internal_ipv4.to_string()}, {"ip": node.internal_ipv6.to_string()}],
        "podIP": pod.ips.first().map(|ip| ip.to_string()),
        "podIPs": ips,
        "conditions": [{"type": "Ready", "status": "True"}],
    }})
}

/// Create the Pod object and set its status (create, then `/status`, like kubelet).
pub fn create_pod(url: &str, pod: &PodState, node: &NodeState) -> Result<()> {
    let obj: Pod = serde_json::from_value(pod_object(pod))?;
    let status = pod_status(pod, node);
    let (ns, name) = (pod.namespace.clone(), pod.name.clone());
    with_client(url, |client| async move {
        let api: Api<Pod> = Api::namespaced(client, &ns);
        api.create(&PostParams::default(), &obj)
            .await
            .with_context(|| format!("create Pod {ns}/{name}"))?;
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .with_context(|| format!("set status of Pod {ns}/{name}"))?;
        Ok(())
    })
}

/// Delete a Pod object; one that is already gone is fine.
pub fn delete_pod(url: &str, namespace: &str, name: &str) -> Result<()> {
    let (ns, name) = (namespace.to_string(), name.to_string());
    with_client(url, |client| async move {
        let api: Api<Pod> = Api::namespaced(client, &ns);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("delete Pod {ns}/{name}")),
        }
    })
}

/// Delete a Node object; one that is already gone is fine.
pub fn delete_node(url: &str, name: &str) -> Result<()> {
    let name = name.to_string();
    with_client(url, |client| async move {
        let api: Api<Node> = Api::all(client);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("delete Node {name}")),
        }
    })
}

/// A kubeconfig for a plain-HTTP server without authentication.
pub fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: weft-lab\n  cluster:\n    server: {server}\n\
         contexts:\n- name: weft-lab\n  context:\n    cluster: weft-lab\n    user: weft-lab\n    namespace: default\n\
         current-context: weft-lab\nusers:\n- name: weft-lab\n  user: {{}}\n"
    )
}
