//! The agent's Kubernetes side: the Node watcher feeding a reflector store,
//! the annotations it publishes on its own Node (JSON merge patch: only those
//! two keys, never a replace), and the `NetworkUnavailable` condition
//! (strategic merge patch on `/status`, merged by condition type).

use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Config};
use serde_json::json;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::node::{ENDPOINT_ANNOTATION, KEY_ANNOTATION};

const FIELD_MANAGER: &str = "weft-agent";
/// The condition kubelet (and the scheduler's taint) wait on.
pub const CONDITION: &str = "NetworkUnavailable";

/// A client from `kubeconfig` when given, else the usual inference
/// (`KUBECONFIG`, `~/.kube/config`, in-cluster service account).
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(p) => {
            let kc = Kubeconfig::read_from(p)?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// Start watching Nodes; `changed` is notified on every event. The store is
/// only replaced when a (re)list completes, so a dropped watch or an
/// unreachable API server leaves the last known Nodes in place.
pub fn watch_nodes(client: Client, changed: Arc<Notify>, metrics: Arc<Metrics>) -> Store<Node> {
    let api: Api<Node> = Api::all(client);
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => changed.notify_one(),
                Err(e) => {
                    metrics.error("api_watch");
                    tracing::warn!(error = %e, "watching Nodes failed; keeping the last known state and retrying");
                }
            }
        }
    });
    reader
}

/// Does `node` already carry these annotations?
pub fn has_annotations(node: &Node, key: &str, endpoint: &str) -> bool {
    let a = node.metadata.annotations.as_ref();
    let get = |k: &str| a.and_then(|a| a.get(k)).map(String::as_str);
    get(KEY_ANNOTATION) == Some(key) && get(ENDPOINT_ANNOTATION) == Some(endpoint)
}

/// `kubectl annotate node NAME weft.io/...=...` as a JSON merge patch.
pub async fn publish(client: &Client, node: &str, key: &str, endpoint: &str) -> kube::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let patch = json!({"metadata": {"annotations": {KEY_ANNOTATION: key, ENDPOINT_ANNOTATION: endpoint}}});
    api.patch(node, &PatchParams::apply(FIELD_MANAGER), &Patch::Merge(&patch))
        .await
        .map(drop)
}

/// Is `NetworkUnavailable` already `False` on `node`?
pub fn network_available(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == CONDITION && c.status == "False")
}

/// Set `NetworkUnavailable=False` (strategic merge: other conditions stay).
pub async fn set_network_available(client: &Client, node: &str) -> kube::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let now = k8s_openapi::jiff::Timestamp::now();
    let patch = json!({"status": {"conditions": [{
        "type": CONDITION, "status": "False", "reason": "WeftIsUp",
        "message": "weft-agent: WireGuard mesh and CNI config are in place",
        "lastTransitionTime": now, "lastHeartbeatTime": now,
    }]}});
    api.patch_status(node, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .map(drop)
}
