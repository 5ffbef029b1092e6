//! One reconcile pass: Nodes → desired state → the smallest change to the
//! device, links, routes, nftables and files, then readiness.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::Store;
use kube::Client;
use tokio::sync::Notify;

use crate::bootstrap::{self, BootstrapError};
use crate::config::Settings;
use crate::key::PrivateKey;
use crate::metrics::{Metrics, PeerStat};
use crate::mtu::{self, MtuError};
use crate::net::{Net, NetError};
use crate::nft::{self, MeshRules, NftError};
use crate::node::{NodeView, Problem};
use crate::peers::{self, PeerSpec};
use crate::plan::{self, Desired, MeshParams};
use crate::uapi::{DeviceState, Update};
use crate::wg::{self, Device, WgError};
use crate::{conflist, kube as k8s};

/// The underlay MTU assumed when the underlay link cannot be found.
const FALLBACK_UNDERLAY_MTU: u32 = 1500;
/// How soon a failed pass is retried.
const RETRY_AFTER: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("own node {0} is not in the API (yet)")]
    OwnNodeMissing(String),
    #[error("own node {0} has no usable spec.podCIDRs")]
    NoPodCidrs(String),
    #[error("own node {0} has no InternalIP")]
    NoInternalIp(String),
    #[error("MTU: {0}")]
    Mtu(#[from] MtuError),
    #[error("WireGuard device: {0}")]
    Wg(#[from] WgError),
    #[error("netlink: {0}")]
    Net(#[from] NetError),
    #[error("nftables: {0}")]
    Nft(#[from] NftError),
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] BootstrapError),
}

impl ReconcileError {
    /// The metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ReconcileError::OwnNodeMissing(_) => "own_node_missing",
            ReconcileError::NoPodCidrs(_) => "own_node_no_pod_cidrs",
            ReconcileError::NoInternalIp(_) => "own_node_no_internal_ip",
            ReconcileError::Mtu(_) => "mtu",
            ReconcileError::Wg(_) => "wireguard",
            ReconcileError::Net(_) => "netlink",
            ReconcileError::Nft(_) => "nftables",
            ReconcileError::Bootstrap(_) => "bootstrap",
        }
    }
}

pub struct Agent {
    pub settings: Settings,
    key: PrivateKey,
    client: Client,
    net: Net,
    metrics: Arc<Metrics>,
    /// Problems of the previous pass (each is logged and counted once).
    seen_problems: BTreeSet<String>,
    /// The peer each node had in the last applied state.
    last_good: BTreeMap<String, PeerSpec>,
    ready: bool,
}

impl Agent {
    pub fn new(settings: Settings, key: PrivateKey, client: Client, net: Net, metrics: Arc<Metrics>) -> Self {
        Agent {
            settings,
            key,
            client,
            net,
            metrics,
            seen_problems: BTreeSet::new(),
            last_good: BTreeMap::new(),
            ready: false,
        }
    }

    /// Log and count problems that are new since the last pass.
    fn report_problems(&mut self, problems: &[Problem]) {
        let mut now_by_kind: BTreeMap<String, u64> = BTreeMap::new();
        let mut new_kinds = Vec::new();
        let mut seen = BTreeSet::new();
        for p in problems {
            *now_by_kind.entry(p.kind().to_string()).or_default() += 1;
            let text = p.to_string();
            if !self.seen_problems.contains(&text) {
                tracing::warn!(kind = p.kind(), "{text}");
                new_kinds.push(p.kind());
            }
            seen.insert(text);
        }
        self.metrics.problems(&now_by_kind, &new_kinds);
        self.seen_problems = seen;
    }

    /// One pass. Returns the change list (empty: up to date).
    pub async fn reconcile(&mut self, nodes: &[Arc<Node>]) -> Result<Vec<String>, ReconcileError> {
        let s = &self.settings;
        let mut problems = Vec::new();
        let views: Vec<NodeView> = nodes.iter().map(|n| NodeView::from_node(n, &mut problems)).collect();
        let own_node = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(&s.node_name))
            .ok_or_else(|| ReconcileError::OwnNodeMissing(s.node_name.clone()))?
            .clone();
        let own = views
            .iter()
            .find(|v| v.name == s.node_name)
            .expect("own node was parsed")
            .clone();
        let params = MeshParams {
            own_key: self.key.public(),
            wg_port: s.wg_port,
            cluster_cidrs: s.cluster_cidrs.clone(),
        };
        let desired = plan::desired(&own, &views, &params, &self.last_good, &mut problems);
        self.report_problems(&problems);
        let ip = own
            .primary_ip()
            .ok_or_else(|| ReconcileError::NoInternalIp(own.name.clone()))?;
        self.publish(&own_node, SocketAddr::new(ip, self.settings.wg_port))
            .await;
        if own.pod_cidrs.is_empty() {
            return Err(ReconcileError::NoPodCidrs(own.name.clone()));
        }
        let mtu = self.mtu(ip).await?;
        let mut changes = Vec::new();
        let (device, index) = self.device(mtu, &mut changes).await?;
        self.addresses(index, &desired, &mut changes).await?;
        let state = self.peers(&device, &desired, &mut changes).await?;
        self.routes(index, &desired, &mut changes).await?;
        let rules = MeshRules {
            wg_iface: &self.settings.wg_iface,
            pod_cidrs: &desired.pod_cidrs,
            cluster_cidrs: &desired.cluster_cidrs,
        };
        if nft::apply(&rules).await? {
            changes.push(format!(
                "nft table inet {}: mesh rules {}",
                nft::TABLE,
                nft::state_hash(&rules)
            ));
        }
        self.bootstrap(&own, mtu, &mut changes)?;
        if !k8s::network_available(&own_node) {
            match k8s::set_network_available(&self.client, &own.name).await {
                Ok(()) => changes.push(format!("node {}: {}=False", own.name, k8s::CONDITION)),
                Err(e) => self.api_error("api_patch_status", e),
            }
        }
        self.peer_metrics(&device, state, &desired);
        self.last_good = desired.peers.values().map(|p| (p.node.clone(), p.clone())).collect();
        Ok(changes)
    }

    fn api_error(&self, kind: &str, e: kube::Error) {
        self.metrics.error(kind);
        tracing::warn!(error = %e, kind, "API call failed; will retry");
    }

    /// Publish our key and endpoint on our Node when they differ.
    async fn publish(&self, own: &Node, endpoint: SocketAddr) {
        let key = self.key.public().to_base64();
        let endpoint = endpoint.to_string();
        if k8s::has_annotations(own, &key, &endpoint) {
            return;
        }
        match k8s::publish(&self.client, &self.settings.node_name, &key, &endpoint).await {
            Ok(()) => tracing::info!(public_key = %key, %endpoint, "published WireGuard key and endpoint"),
            Err(e) => self.api_error("api_patch", e),
        }
    }

    async fn mtu(&self, ip: IpAddr) -> Result<u32, ReconcileError> {
        let underlay = match self.net.mtu_of_link_with(ip).await? {
            Some(m) => m,
            None => {
                tracing::warn!(%ip, "no local link has the node's InternalIP; assuming underlay MTU {FALLBACK_UNDERLAY_MTU}");
                FALLBACK_UNDERLAY_MTU
            }
        };
        Ok(mtu::overlay_mtu(underlay, ip.is_ipv6(), self.settings.mtu)?)
    }

    /// The device exists, is up and has the MTU.
    async fn device(&self, mtu: u32, changes: &mut Vec<String>) -> Result<(Device, u32), ReconcileError> {
        let iface = &self.settings.wg_iface;
        let (device, created) = wg::ensure(&self.settings, &self.net).await?;
        if created {
            changes.push(format!("create {} WireGuard device {iface}", device.kind()));
        }
        let link = self.net.link(iface).await?.ok_or_else(|| {
            ReconcileError::Wg(WgError::Net(NetError::Invalid {
                op: format!("ip link show {iface}"),
                msg: "the WireGuard device has no link".into(),
            }))
        })?;
        if link.mtu != mtu || !link.up {
            self.net.set_mtu_up(link.index, mtu).await?;
            changes.push(format!("ip link set {iface} mtu {mtu} up"));
        }
        Ok((device, link.index))
    }

    async fn addresses(&self, index: u32, d: &Desired, changes: &mut Vec<String>) -> Result<(), ReconcileError> {
        let iface = &self.settings.wg_iface;
        // Link-local addresses are the kernel's, not ours.
        let have: BTreeSet<IpNetwork> = self
            .net
            .addresses(index)
            .await?
            .into_iter()
            .filter(|a| !matches!(a.ip(), IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
            .collect();
        for a in have.difference(&d.addresses) {
            self.net.del_address(index, *a).await?;
            changes.push(format!("ip addr del {a} dev {iface}"));
        }
        for a in d.addresses.difference(&have) {
            self.net.add_address(index, *a).await?;
            changes.push(format!("ip addr add {a} dev {iface}"));
        }
        Ok(())
    }

    async fn peers(&self, dev: &Device, d: &Desired, changes: &mut Vec<String>) -> Result<DeviceState, ReconcileError> {
        let state = dev.get().await?;
        let mut u = Update {
            peers: peers::diff(&state.peers, &d.peers),
            ..Default::default()
        };
        if state.private_key.as_ref() != Some(&self.key) {
            u.private_key = Some(self.key.clone());
            changes.push("set WireGuard private key".into());
        }
        if state.listen_port != d.listen_port {
            u.listen_port = Some(d.listen_port);
            changes.push(format!("set WireGuard listen port {}", d.listen_port));
        }
        changes.extend(u.peers.iter().map(ToString::to_string));
        if u.is_empty() {
            return Ok(state);
        }
        dev.apply(&u).await?;
        Ok(dev.get().await?)
    }

    async fn routes(&self, index: u32, d: &Desired, changes: &mut Vec<String>) -> Result<(), ReconcileError> {
        let iface = &self.settings.wg_iface;
        let have: BTreeSet<_> = self.net.routes_via(index).await?.into_iter().collect();
        for r in have.difference(&d.routes) {
            self.net.del_route(r, index).await?;
            changes.push(format!("ip route del {} dev {iface}", r.dst));
        }
        for r in d.routes.difference(&have) {
            self.net.add_route(r, index).await?;
            let src = r.src.map(|s| format!(" src {s}")).unwrap_or_default();
            changes.push(format!("ip route add {} dev {iface}{src}", r.dst));
        }
        Ok(())
    }

    /// CNI binaries, conflist and readiness file (only reached once the
    /// device, peers and routes are in place).
    fn bootstrap(&mut self, own: &NodeView, mtu: u32, changes: &mut Vec<String>) -> Result<(), ReconcileError> {
        let s = &self.settings;
        changes.extend(bootstrap::install_binaries(s)?);
        let list = conflist::render(s, &own.pod_cidrs, mtu);
        changes.extend(bootstrap::write_conflist(s, &list)?);
        changes.extend(bootstrap::mark_ready(s)?);
        if !self.ready {
            self.ready = true;
            self.metrics.set_ready();
        }
        Ok(())
    }

    fn peer_metrics(&self, dev: &Device, state: DeviceState, d: &Desired) {
        let stats = state
            .peers
            .into_iter()
            .filter_map(|p| {
                let key = p.key?;
                let node = d
                    .peers
                    .get(&key)
                    .map(|s| s.node.clone())
                    .unwrap_or_else(|| key.to_base64());
                Some((
                    node,
                    PeerStat {
                        public_key: key.to_base64(),
                        last_handshake: p.last_handshake,
                        rx_bytes: p.rx_bytes,
                        tx_bytes: p.tx_bytes,
                    },
                ))
            })
            .collect();
        self.metrics.set_peers(stats, dev.kind());
    }
}

/// Reconcile on every Node event (batched) and at least every `resync`,
/// until `stop` resolves. Nothing is torn down on exit: the device, routes
/// and rules outlive the process.
pub async fn run(
    mut agent: Agent,
    store: Store<Node>,
    changed: Arc<Notify>,
    stop: impl std::future::Future<Output = ()>,
) {
    let metrics = agent.metrics.clone();
    tokio::pin!(stop);
    tracing::info!("waiting for the first list of Nodes");
    tokio::select! {
        r = store.wait_until_ready() => if r.is_err() { return },
        _ = &mut stop => return,
    }
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = changed.notified() => {
                // Let a burst of events (a relist) land before computing.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stop => {
                tracing::info!("stopping; the mesh stays up");
                return;
            }
        }
        let nodes = store.state();
        let started = Instant::now();
        let result = agent.reconcile(&nodes).await;
        let took = started.elapsed();
        metrics.observe_reconcile(took, result.is_ok());
        wait = match result {
            Ok(changes) if changes.is_empty() => {
                tracing::info!(took_ms = took.as_millis() as u64, nodes = nodes.len(), "up to date");
                agent.settings.resync
            }
            Ok(changes) => {
                for c in &changes {
                    tracing::info!(change = %c, "applied");
                }
                tracing::info!(took_ms = took.as_millis() as u64, count = changes.len(), "reconciled");
                agent.settings.resync
            }
            Err(e) => {
                metrics.error(e.kind());
                tracing::warn!(error = %e, kind = e.kind(), "reconcile failed; working peers are left as they are");
                RETRY_AFTER
            }
        };
    }
}
