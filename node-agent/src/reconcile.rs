//! The mesh loop's pass: Nodes → desired state → the smallest change to the
//! device, links, routes, bridge addresses, nftables and files, then
//! readiness. [`crate::runloop`] runs it on every Node event, after a
//! failure (with backoff) and every resync period, so anything the agent
//! owns that someone else changes (a route moved to another device, a peer
//! removed, the bridge's gateway address deleted, a flushed chain) is put
//! back within one resync period at the latest, and counted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::Store;
use kube::Client;
use tokio::sync::Notify;

use crate::bootstrap::{self, BootstrapError};
use crate::config::Settings;
use crate::key::PrivateKey;
use crate::metrics::Metrics;
use crate::mtu::{self, MtuError};
use crate::net::{self as nl, Net, NetError};
use crate::nft::{self, MeshRules, NftError, TableSync};
use crate::node::{NodeView, Problem};
use crate::peers::{self, PeerSpec};
use crate::plan::{self, Desired, MeshParams, Route};
use crate::runloop::{self, ErrorKind, Pacing, Reconcile};
use crate::uapi::{DeviceState, Update};
use crate::wg::{self, Device, WgError};
use crate::{conflist, kube as k8s};

/// The underlay MTU assumed when the underlay link cannot be found.
const FALLBACK_UNDERLAY_MTU: u32 = 1500;

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

impl ErrorKind for ReconcileError {
    /// The metric label.
    fn kind(&self) -> &'static str {
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
    store: Store<Node>,
    /// Which Nodes changed since the last pass (from the watch).
    changes: k8s::Changes,
    /// Problems of the previous pass (each is logged and counted once).
    seen_problems: BTreeSet<String>,
    /// The peer each node had in the last applied state.
    last_good: BTreeMap<String, PeerSpec>,
    /// What the last successful pass left in place: a later pass that finds
    /// one of these gone (or moved) counts a repair.
    applied: Applied,
    nft: TableSync,
    views: std::collections::HashMap<String, CachedView>,
    /// Set by whoever knows the kernel state changed under us (the userspace
    /// WireGuard died): the next pass is a full one whatever triggered it.
    force_full: Arc<std::sync::atomic::AtomicBool>,
    /// The last full recompute found two Nodes with one key: event passes
    /// then recompute everything (which node wins depends on all of them).
    had_duplicates: bool,
    /// Why a chained plugin was left out of the conflist (logged once).
    chain_note: Option<String>,
    ready: bool,
}

#[derive(Debug, Default)]
struct Applied {
    routes: BTreeSet<Route>,
    bridge_addresses: BTreeSet<IpNetwork>,
    /// The endpoint each peer was last set to (see [`peers::diff`]).
    endpoints: BTreeMap<crate::key::PublicKey, SocketAddr>,
    /// The peers, addresses and own node of the last successful pass: an
    /// event pass diffs the new desired state against these instead of
    /// reading the device and the routing table back.
    peers: BTreeMap<crate::key::PublicKey, PeerSpec>,
    addresses: BTreeSet<IpNetwork>,
    own: Option<NodeView>,
    mtu: Option<u32>,
    device: Option<(Device, u32)>,
}

/// A Node whose parsed view changed in an event pass.
struct ViewChange {
    name: String,
    old: Option<NodeView>,
    new: Option<NodeView>,
}

/// A Node parsed once per resourceVersion.
struct CachedView {
    version: Option<String>,
    view: NodeView,
    problems: Vec<Problem>,
}

impl Agent {
    pub fn new(
        settings: Settings,
        key: PrivateKey,
        client: Client,
        net: Net,
        metrics: Arc<Metrics>,
        store: Store<Node>,
        changes: k8s::Changes,
    ) -> Self {
        Agent {
            settings,
            key,
            client,
            net,
            metrics,
            store,
            changes,
            seen_problems: BTreeSet::new(),
            last_good: BTreeMap::new(),
            applied: Applied::default(),
            nft: TableSync::default(),
            views: Default::default(),
            force_full: Default::default(),
            had_duplicates: false,
            chain_note: None,
            ready: false,
        }
    }

    /// Set to make the next pass a full one (see [`crate::wg::watch_userspace`]).
    pub fn force_full(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.force_full.clone()
    }

    /// Parse the Nodes named in `names` again (when their resourceVersion
    /// moved); returns those that changed what the mesh reads (another view,
    /// other problems, deleted, or this node itself), with their view before
    /// and after. A Node status heartbeat changes nothing here and costs one
    /// parse.
    fn parse_changed(&mut self, names: &std::collections::BTreeSet<String>) -> Vec<ViewChange> {
        let mut relevant = Vec::new();
        for name in names {
            let obj = self.store.get(&kube::runtime::reflector::ObjectRef::new(name));
            let Some(n) = obj else {
                if let Some(old) = self.views.remove(name) {
                    relevant.push(ViewChange {
                        name: name.clone(),
                        old: Some(old.view),
                        new: None,
                    });
                }
                continue;
            };
            let version = n.metadata.resource_version.clone();
            if let Some(c) = self.views.get(name) {
                if c.version.is_some() && c.version == version {
                    continue;
                }
            }
            let mut problems = Vec::new();
            let view = NodeView::from_node(&n, &mut problems);
            let old = self.views.get(name);
            let same = old.is_some_and(|c| c.view == view && c.problems == problems);
            if !same || *name == self.settings.node_name {
                relevant.push(ViewChange {
                    name: name.clone(),
                    old: old.map(|c| c.view.clone()),
                    new: Some(view.clone()),
                });
            }
            self.views.insert(
                name.clone(),
                CachedView {
                    version,
                    view,
                    problems,
                },
            );
        }
        relevant
    }

    /// The common event: other nodes' keys or endpoints changed, nothing
    /// else (no pod CIDR, no own-node change, no key shared by two nodes).
    /// Applies exactly those peers, in time that follows the change, not the
    /// number of Nodes. `None` when the change is not of that kind: the
    /// caller recomputes the whole desired state.
    async fn peers_only(&mut self, changed: &[ViewChange]) -> Option<Result<Vec<String>, ReconcileError>> {
        if self.had_duplicates {
            return None;
        }
        let (device, _) = self.applied.device.clone()?;
        let port = self.settings.wg_port;
        let mut updates: Vec<(String, PeerSpec, PeerSpec)> = Vec::new();
        for c in changed {
            let (Some(old), Some(new)) = (&c.old, &c.new) else {
                return None; // a Node added or deleted
            };
            if c.name == self.settings.node_name || old.pod_cidrs != new.pod_cidrs {
                return None;
            }
            let had = self.last_good.get(&c.name).cloned();
            let Some(want) = plan::peer_of(new, port).or_else(|| had.clone()) else {
                continue;
            };
            if had.as_ref() == Some(&want) {
                continue;
            }
            // A node that becomes a peer now (its first key), or whose
            // allowed IPs differ, needs routes and nftables sets too: the
            // whole desired state.
            let had = match had {
                Some(h) if h.allowed_ips == want.allowed_ips => h,
                _ => return None,
            };
            let key_taken =
                self.applied.peers.get(&want.key).is_some_and(|p| p.node != c.name) || want.key == self.key.public();
            if key_taken {
                return None;
            }
            updates.push((c.name.clone(), had, want));
        }
        let problems = self.problems();
        self.report_problems(&problems);
        let mut u = Update::default();
        let mut keys_changed = false;
        for (_, had, want) in &updates {
            if had.key != want.key {
                u.peers.push(peers::PeerChange::Remove(had.key));
                u.peers.push(peers::PeerChange::Add(want.clone()));
                keys_changed = true;
            } else {
                u.peers.push(peers::PeerChange::Update(want.clone()));
            }
        }
        if u.is_empty() {
            return Some(Ok(Vec::new()));
        }
        let changes: Vec<String> = u.peers.iter().map(ToString::to_string).collect();
        if let Err(e) = device.apply(&u).await {
            return Some(Err(e.into()));
        }
        for (node, had, want) in updates {
            self.applied.peers.remove(&had.key);
            self.applied.endpoints.remove(&had.key);
            self.applied.endpoints.insert(want.key, want.endpoint);
            self.applied.peers.insert(want.key, want.clone());
            self.last_good.insert(node, want);
        }
        if keys_changed {
            let nodes: BTreeMap<_, _> = self.applied.peers.iter().map(|(k, p)| (*k, p.node.clone())).collect();
            self.metrics.set_device(device, nodes);
        }
        Some(Ok(changes))
    }

    /// The problems found in every cached Node.
    fn problems(&self) -> Vec<Problem> {
        let mut problems: Vec<Problem> = self.views.values().flat_map(|c| c.problems.iter().cloned()).collect();
        problems.sort_by_key(|p| p.to_string());
        problems
    }

    /// Every Node parsed (each only when its resourceVersion changed), and
    /// the problems found in them.
    fn parse(&mut self, nodes: &[Arc<Node>]) -> Vec<Problem> {
        let mut seen = std::collections::HashSet::with_capacity(nodes.len());
        for n in nodes {
            let name = n.metadata.name.clone().unwrap_or_default();
            let version = n.metadata.resource_version.clone();
            let fresh = self
                .views
                .get(&name)
                .is_some_and(|c| c.version.is_some() && c.version == version);
            if !fresh {
                let mut problems = Vec::new();
                let view = NodeView::from_node(n, &mut problems);
                self.views.insert(
                    name.clone(),
                    CachedView {
                        version,
                        view,
                        problems,
                    },
                );
            }
            seen.insert(name);
        }
        self.views.retain(|name, _| seen.contains(name));
        self.problems()
    }

    /// Count and log something the agent owns that someone else changed.
    fn repaired(&self, kind: &str, what: &str) {
        self.metrics.repaired(kind);
        tracing::warn!(kind, what, "put back what someone else changed");
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
    ///
    /// A full pass reads the device, addresses, routes, bridge and nftables
    /// back and repairs whatever differs. An event pass (a Node changed)
    /// diffs the new desired state against what the last pass applied and
    /// sends only that: its cost follows the change, not the cluster size.
    pub async fn pass(&mut self, full: bool) -> Result<Vec<String>, ReconcileError> {
        let changed = self.changes.take();
        let full = full
            || changed.all
            || self.force_full.swap(false, std::sync::atomic::Ordering::SeqCst)
            || self.applied.device.is_none();
        let mut problems = if full {
            let nodes = self.store.state();
            self.parse(&nodes)
        } else {
            let relevant = self.parse_changed(&changed.names);
            if relevant.is_empty() {
                return Ok(Vec::new());
            }
            if let Some(done) = self.peers_only(&relevant).await {
                return done;
            }
            self.problems()
        };
        let node_name = self.settings.node_name.clone();
        let own_node = self
            .store
            .get(&kube::runtime::reflector::ObjectRef::new(&node_name))
            .ok_or_else(|| ReconcileError::OwnNodeMissing(node_name.clone()))?;
        let own = match self.views.get(&node_name) {
            Some(c) => c.view.clone(),
            None => return Err(ReconcileError::OwnNodeMissing(node_name)),
        };
        let params = MeshParams {
            own_key: self.key.public(),
            wg_port: self.settings.wg_port,
            cluster_cidrs: self.settings.cluster_cidrs.clone(),
        };
        let desired = {
            let views: Vec<&NodeView> = self.views.values().map(|c| &c.view).collect();
            plan::desired(&own, &views, &params, &self.last_good, &mut problems)
        };
        self.had_duplicates = problems.iter().any(|p| matches!(p, Problem::DuplicateKey { .. }));
        self.report_problems(&problems);
        let ip = own
            .primary_ip()
            .ok_or_else(|| ReconcileError::NoInternalIp(own.name.clone()))?;
        self.publish(&own_node, SocketAddr::new(ip, self.settings.wg_port))
            .await;
        if own.pod_cidrs.is_empty() {
            return Err(ReconcileError::NoPodCidrs(own.name.clone()));
        }
        let own_changed = self.applied.own.as_ref() != Some(&own);
        let mtu = match self.applied.mtu {
            Some(m) if !full && !own_changed => m,
            _ => self.mtu(ip).await?,
        };
        let mut changes = Vec::new();
        let (device, index) = match &self.applied.device {
            Some(d) if !full && self.applied.mtu == Some(mtu) => d.clone(),
            _ => self.device(mtu, &mut changes).await?,
        };
        if full || desired.addresses != self.applied.addresses {
            self.addresses(index, &desired, &mut changes).await?;
        }
        let state = if full {
            Some(self.peers(&device, &desired, &mut changes).await?)
        } else {
            self.peers_changed(&device, &desired, &mut changes).await?;
            None
        };
        if full {
            self.routes(index, &desired, &mut changes).await?;
        } else {
            self.routes_changed(index, &desired, &mut changes).await?;
        }
        if full || own_changed {
            self.bridge_gateways(&own, &mut changes).await?;
        }
        let remote: Vec<IpNetwork> = desired.routes.iter().map(|r| r.dst).collect();
        let rules = MeshRules {
            wg_iface: &self.settings.wg_iface,
            pod_cidrs: &desired.pod_cidrs,
            cluster_cidrs: &desired.cluster_cidrs,
            remote_pod_cidrs: &remote,
            strict: self.settings.strict,
        };
        let outcome = self.nft.apply(nft::table(&rules)).await?;
        if outcome.repaired {
            self.repaired("nftables", &format!("table inet {}", nft::TABLE));
        }
        changes.extend(outcome.changes);
        if full || own_changed || self.applied.mtu != Some(mtu) || !self.ready {
            self.bootstrap(&own, mtu, &mut changes).await?;
        }
        if !k8s::network_available(&own_node) {
            match k8s::set_network_available(&self.client, &own.name).await {
                Ok(()) => changes.push(format!("node {}: {}=False", own.name, k8s::CONDITION)),
                Err(e) => self.api_error("api_patch_status", e),
            }
        }
        if full || desired.peers != self.applied.peers {
            self.peer_metrics(&device, state, &desired);
        }
        self.last_good = desired.peers.values().map(|p| (p.node.clone(), p.clone())).collect();
        self.applied.endpoints = desired.peers.iter().map(|(k, p)| (*k, p.endpoint)).collect();
        self.applied.routes = desired.routes;
        self.applied.peers = desired.peers;
        self.applied.addresses = desired.addresses;
        self.applied.own = Some(own);
        self.applied.mtu = Some(mtu);
        self.applied.device = Some((device, index));
        Ok(changes)
    }

    /// Event pass: only the peers that changed since the last pass.
    async fn peers_changed(&self, dev: &Device, d: &Desired, changes: &mut Vec<String>) -> Result<(), ReconcileError> {
        let u = Update {
            peers: peers::diff_wanted(&self.applied.peers, &d.peers),
            ..Default::default()
        };
        if u.is_empty() {
            return Ok(());
        }
        changes.extend(u.peers.iter().map(ToString::to_string));
        dev.apply(&u).await?;
        Ok(())
    }

    /// Event pass: only the routes that changed since the last pass (a
    /// route someone else moved is taken back by the next full pass; strict
    /// mode keeps pod traffic off the underlay meanwhile).
    async fn routes_changed(&self, index: u32, d: &Desired, changes: &mut Vec<String>) -> Result<(), ReconcileError> {
        let iface = &self.settings.wg_iface;
        for r in self.applied.routes.difference(&d.routes) {
            self.net.del_route(&nl::through(r, index)).await?;
            changes.push(format!("ip route del {} dev {iface}", r.dst));
        }
        for r in d.routes.difference(&self.applied.routes) {
            self.net.add_route(&nl::through(r, index)).await?;
            let src = r.src.map(|s| format!(" src {s}")).unwrap_or_default();
            changes.push(format!("ip route add {} dev {iface}{src}", r.dst));
        }
        Ok(())
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
            ReconcileError::Wg(WgError::Net(nl::invalid(
                format!("ip link show {iface}"),
                "the WireGuard device has no link",
            )))
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
            peers: peers::diff(&state.peers, &d.peers, &self.applied.endpoints),
            ..Default::default()
        };
        for c in &u.peers {
            if let peers::PeerChange::Add(p) = c {
                if self.applied.endpoints.contains_key(&p.key) {
                    self.repaired("wireguard_peer", &format!("peer {} ({})", p.key, p.node));
                }
            }
        }
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

    /// Routes to other nodes' pod CIDRs. The agent owns these prefixes in the
    /// main table: a route for one of them through any other link (someone
    /// ran `ip route replace 10.244.2.0/24 via … dev eth0`) would send pod
    /// traffic in clear text, so it is replaced, counted and logged.
    async fn routes(&mut self, index: u32, d: &Desired, changes: &mut Vec<String>) -> Result<(), ReconcileError> {
        let iface = self.settings.wg_iface.clone();
        let all = nl::main_routes(&self.net).await?;
        let have: BTreeSet<Route> = all
            .iter()
            .filter(|(_, oif)| *oif == Some(index))
            .map(|(r, _)| *r)
            .collect();
        for r in have.difference(&d.routes) {
            self.net.del_route(&nl::through(r, index)).await?;
            changes.push(format!("ip route del {} dev {iface}", r.dst));
        }
        for r in d.routes.difference(&have) {
            let src = r.src.map(|s| format!(" src {s}")).unwrap_or_default();
            let foreign = all.iter().find(|(x, oif)| x.dst == r.dst && *oif != Some(index));
            if let Some((_, oif)) = foreign {
                self.net.replace_route(&nl::through(r, index)).await?;
                let what = format!(
                    "ip route replace {} dev {iface}{src} (the prefix was routed through link {})",
                    r.dst,
                    oif.map(|i| i.to_string()).unwrap_or_else(|| "(none)".into())
                );
                self.repaired("route", &what);
                changes.push(what);
            } else {
                self.net.add_route(&nl::through(r, index)).await?;
                if self.applied.routes.contains(r) {
                    self.repaired("route", &format!("ip route add {} dev {iface}", r.dst));
                }
                changes.push(format!("ip route add {} dev {iface}{src}", r.dst));
            }
        }
        Ok(())
    }

    /// The bridge's gateway addresses (the first host of each pod CIDR, with
    /// the CIDR's prefix length, as `weft` ADD puts them there). The bridge is
    /// the plugin's to create; once it exists, its gateways are the agent's
    /// to keep: without them every pod on the node is cut off.
    async fn bridge_gateways(&mut self, own: &NodeView, changes: &mut Vec<String>) -> Result<(), ReconcileError> {
        let name = self.settings.bridge.clone();
        let Some(link) = self.net.link(&name).await? else {
            return Ok(());
        };
        if link.kind != Some(netlink_packet_route::link::InfoKind::Bridge) {
            return Ok(());
        }
        let have: BTreeSet<IpNetwork> = self.net.addresses(link.index).await?.into_iter().collect();
        let want: BTreeSet<IpNetwork> = own
            .pod_cidrs
            .iter()
            .filter_map(|c| IpNetwork::new(plan::gateway(c), c.prefix()).ok())
            .collect();
        for a in want.difference(&have) {
            self.net.add_address(link.index, *a).await?;
            let what = format!("ip addr add {a} dev {name}");
            if self.applied.bridge_addresses.contains(a) || self.ready {
                self.repaired("bridge_address", &what);
            }
            changes.push(what);
        }
        self.applied.bridge_addresses = want;
        Ok(())
    }

    /// CNI binaries, conflist and readiness file (only reached once the
    /// device, peers and routes are in place).
    async fn bootstrap(&mut self, own: &NodeView, mtu: u32, changes: &mut Vec<String>) -> Result<(), ReconcileError> {
        let chain = self.chain().await;
        let s = &self.settings;
        changes.extend(bootstrap::install_binaries(s)?);
        let list = conflist::render_chain(s, &own.pod_cidrs, mtu, &chain);
        changes.extend(bootstrap::write_conflist(s, &list)?);
        changes.extend(bootstrap::mark_ready(s)?);
        if !self.ready {
            self.ready = true;
            self.metrics.set_ready();
        }
        Ok(())
    }

    /// The plugins to chain after weft, as installed on the node (asked for
    /// their versions; a problem is logged once per change).
    async fn chain(&mut self) -> conflist::Chain {
        if !self.settings.chain_portmap {
            return conflist::Chain::default();
        }
        let bin = self.settings.cni_bin_dir.join("portmap");
        let (portmap, note) = match conflist::plugin_versions(&bin).await {
            Ok(Some(v)) if conflist::common_version(&[&v]).is_some() => (Some(v), None),
            Ok(Some(v)) => (
                None,
                Some(format!(
                    "{} shares no CNI version with weft ({v:?}): not chained",
                    bin.display()
                )),
            ),
            Ok(None) => (
                None,
                Some(format!(
                    "{} is not installed: not chained (hostPort needs it)",
                    bin.display()
                )),
            ),
            Err(e) => (None, Some(format!("{e}: portmap not chained"))),
        };
        if note != self.chain_note {
            if let Some(n) = &note {
                self.metrics.error("cni_chain");
                tracing::warn!("{n}");
            }
            self.chain_note = note;
        }
        conflist::Chain { portmap }
    }

    /// The device and peer names `/metrics` reads at scrape time, and the
    /// numbers of a full pass's device read.
    fn peer_metrics(&self, dev: &Device, state: Option<DeviceState>, d: &Desired) {
        let nodes: BTreeMap<_, _> = d.peers.iter().map(|(k, p)| (*k, p.node.clone())).collect();
        if let Some(state) = state {
            self.metrics
                .set_peers(crate::metrics::peer_stats(state.peers, &nodes), dev.kind());
        }
        self.metrics.set_device(dev.clone(), nodes);
    }
}

impl Reconcile for Agent {
    type Error = ReconcileError;

    async fn reconcile(&mut self, full: bool) -> Result<Vec<String>, ReconcileError> {
        self.pass(full).await
    }
}

/// The mesh loop: reconcile on every Node event (batched), after a failure
/// (with backoff) and at least every resync period, until `stop` resolves.
/// Nothing is torn down on exit: the device, routes and rules outlive the
/// process.
/// `listed` is notified once the first list of Nodes arrived (the Services
/// loop waits for it: kube-rs wakes only one waiter of a store's readiness).
pub async fn run(agent: Agent, changed: Arc<Notify>, listed: Arc<Notify>, stop: impl std::future::Future<Output = ()>) {
    let metrics = agent.metrics.clone();
    let pacing = Pacing::new(agent.settings.resync);
    let store = agent.store.clone();
    tokio::pin!(stop);
    tracing::info!("waiting for the first list of Nodes");
    tokio::select! {
        r = store.wait_until_ready() => if r.is_err() { return },
        _ = &mut stop => return,
    }
    listed.notify_one();
    runloop::run("mesh", agent, changed, pacing, metrics, stop).await;
}
