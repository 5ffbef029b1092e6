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

/// Which objects changed since a loop last looked: names (`namespace/name`
/// for namespaced objects), or "everything" after a (re)list. A loop takes
/// it at the start of a pass, so an event pass works on what changed only.
#[derive(Debug, Default)]
pub struct ChangeSet {
    pub names: std::collections::BTreeSet<String>,
    /// A list or relist happened: treat every object as changed.
    pub all: bool,
}

/// A [`ChangeSet`] shared between a watch and its loop.
#[derive(Debug, Clone, Default)]
pub struct Changes(Arc<std::sync::Mutex<ChangeSet>>);

impl Changes {
    fn record(&self, f: impl FnOnce(&mut ChangeSet)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// What changed since the last call, leaving the set empty.
    pub fn take(&self) -> ChangeSet {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn key_of<K: kube::Resource>(o: &K) -> String {
    let m = o.meta();
    match &m.namespace {
        Some(ns) => format!("{ns}/{}", m.name.as_deref().unwrap_or_default()),
        None => m.name.clone().unwrap_or_default(),
    }
}

/// Watch any resource into a reflector store; `changed` is notified on
/// every event and `changes` records which objects changed. The store is only replaced when a (re)list completes, so a
/// dropped watch or an unreachable API server leaves the last known objects
/// in place. Watch errors are counted as `api_watch` and logged once per
/// distinct message until the watch recovers (the watcher retries with
/// backoff). Each loop runs its own watches: the Services loop watches
/// Services and EndpointSlices beside the mesh's Nodes.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: Arc<Notify>,
    changes: Changes,
    metrics: Arc<Metrics>,
) -> Store<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        let mut last_error: Option<String> = None;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    if last_error.take().is_some() {
                        tracing::info!("watching {kind}s recovered");
                    }
                    match &ev {
                        watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                            let k = key_of(o);
                            changes.record(|c| {
                                c.names.insert(k);
                            });
                        }
                        watcher::Event::Init | watcher::Event::InitApply(_) => {}
                        watcher::Event::InitDone => changes.record(|c| c.all = true),
                    }
                    changed.notify_one();
                }
                Err(e) => {
                    metrics.error("api_watch");
                    let text = e.to_string();
                    if last_error.as_deref() != Some(&text) {
                        tracing::warn!(error = %text, "watching {kind}s failed; keeping the last known state and retrying");
                        last_error = Some(text);
                    }
                }
            }
        }
    });
    reader
}

/// Start watching Nodes (see [`watch`]).
pub fn watch_nodes(client: Client, changed: Arc<Notify>, changes: Changes, metrics: Arc<Metrics>) -> Store<Node> {
    watch(Api::all(client), watcher::Config::default(), changed, changes, metrics)
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
