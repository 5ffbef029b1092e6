//! Endpoint selection, following kube-proxy's `CategorizeEndpoints` (pkg/proxy/topology.go):
//! which endpoints Cluster-policy and Local-policy traffic use on this node.

use std::net::IpAddr;

use crate::options::NodeFacts;
use crate::types::Backend;

/// An endpoint as read from a slice, with the hints selection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    pub local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub zone_hints: Vec<String>,
    pub node_hints: Vec<String>,
}

impl Endpoint {
    pub fn to_backend(&self) -> Backend {
        Backend {
            ip: self.ip,
            port: self.port,
            node_name: self.node_name.clone(),
            zone: self.zone.clone(),
            local: self.local,
            ready: self.ready,
            serving: self.serving,
            terminating: self.terminating,
        }
    }

    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// The traffic-policy facts of one Service port in one family.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PortPolicy {
    pub itp_local: bool,
    pub etp_local: bool,
    /// A NodePort, an externalIP or a LoadBalancer IP of this family exists.
    pub externally_accessible: bool,
}

impl PortPolicy {
    /// Cluster endpoints are needed for iTP Cluster, and for any external traffic (eTP Local
    /// still short-circuits in-cluster sources to Cluster endpoints).
    fn uses_cluster(&self) -> bool {
        !self.itp_local || self.externally_accessible
    }

    fn uses_local(&self) -> bool {
        self.itp_local || (self.etp_local && self.externally_accessible)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopologyMode {
    None,
    SameZone,
    SameNode,
}

/// The result of selection.
pub(crate) struct Categorized<'a> {
    /// Endpoints for Cluster policy (topology applied; ready, else serving-terminating).
    pub cluster: Vec<&'a Endpoint>,
    /// This node's endpoints for Local policy (ready, else serving-terminating).
    pub local: Vec<&'a Endpoint>,
    /// The Service has a usable endpoint somewhere in the cluster.
    pub has_any: bool,
}

/// kube-proxy's CategorizeEndpoints.
///
/// - Cluster: ready endpoints allowed by the topology mode; if none, serving-and-terminating
///   ones anywhere (no topology: a fallback only happens when nothing is ready anywhere).
/// - Local: this node's ready endpoints; if none, this node's serving-and-terminating ones.
/// - Never a not-serving endpoint.
pub(crate) fn categorize<'a>(
    eps: &[&'a Endpoint],
    policy: &PortPolicy,
    node: &NodeFacts,
    node_hints: bool,
) -> Categorized<'a> {
    let mut out = Categorized {
        cluster: Vec::new(),
        local: Vec::new(),
        has_any: false,
    };
    if eps.is_empty() {
        return out;
    }
    if policy.uses_cluster() {
        let mode = topology_mode(eps, node, node_hints);
        out.cluster = eps
            .iter()
            .copied()
            .filter(|e| e.ready && available(e, mode, node))
            .collect();
        if out.cluster.is_empty() {
            out.cluster = eps.iter().copied().filter(|e| e.serving_terminating()).collect();
        }
        out.has_any = !out.cluster.is_empty();
    }
    if !policy.uses_local() {
        return out;
    }
    let mut local_ready = false;
    let mut local_st = false;
    for e in eps {
        if e.ready {
            out.has_any = true;
            local_ready |= e.local;
        } else if e.serving_terminating() {
            out.has_any = true;
            local_st |= e.local;
        }
    }
    if local_ready {
        out.local = eps.iter().copied().filter(|e| e.local && e.ready).collect();
    } else if local_st {
        out.local = eps
            .iter()
            .copied()
            .filter(|e| e.local && e.serving_terminating())
            .collect();
    }
    out
}

/// kube-proxy's topologyModeFromHints. Hints are written by the EndpointSlice controller
/// from `trafficDistribution` (PreferClose/PreferSameZone → `forZones`, PreferSameNode →
/// `forNodes`) or the topology-mode annotation; kube-proxy reads only the hints.
///
/// - same node: every ready endpoint has a node hint and one names this node (feature gate);
/// - else same zone: every ready endpoint has a zone hint and one names this node's zone;
/// - else none.
fn topology_mode(eps: &[&Endpoint], node: &NodeFacts, node_hints: bool) -> TopologyMode {
    let ready: Vec<&&Endpoint> = eps.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return TopologyMode::None;
    }
    if node_hints
        && ready.iter().all(|e| !e.node_hints.is_empty())
        && ready.iter().any(|e| e.node_hints.contains(&node.name))
    {
        return TopologyMode::SameNode;
    }
    if let Some(zone) = node.zone.as_deref() {
        if ready.iter().all(|e| !e.zone_hints.is_empty())
            && ready.iter().any(|e| e.zone_hints.iter().any(|z| z == zone))
        {
            return TopologyMode::SameZone;
        }
    }
    TopologyMode::None
}

fn available(e: &Endpoint, mode: TopologyMode, node: &NodeFacts) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::SameNode => e.node_hints.contains(&node.name),
        TopologyMode::SameZone => node
            .zone
            .as_deref()
            .is_some_and(|z| e.zone_hints.iter().any(|h| h == z)),
    }
}
