//! The node's own facts and the agent's Service options: the inputs besides the API objects.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Serialize;

use crate::types::{IpFamily, LbAlgorithm};

/// What the model needs to know about the node it runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeFacts {
    /// The Node's name; endpoints with this `nodeName` are local.
    pub name: String,
    /// The node's `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
    /// The node's addresses NodePorts may be reached on: its InternalIPs for
    /// [`NodePortAddresses::Primary`], or the local addresses to filter for
    /// [`NodePortAddresses::Cidrs`]. Loopback addresses are never used.
    pub addresses: Vec<IpAddr>,
    /// This node's `spec.podCIDRs` (the local-traffic detector in [`LocalDetect::NodeCidr`]).
    pub pod_cidrs: Vec<IpNetwork>,
    /// The cluster's pod CIDRs (the local-traffic detector in [`LocalDetect::ClusterCidr`]).
    pub cluster_cidrs: Vec<IpNetwork>,
}

/// kube-proxy's `--nodeport-addresses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub enum NodePortAddresses {
    /// `primary`, the nftables mode's default: NodePorts on [`NodeFacts::addresses`].
    #[default]
    Primary,
    /// A CIDR list: the [`NodeFacts::addresses`] inside these CIDRs. As in kube-proxy, a
    /// family with no CIDR in the list, or with `0.0.0.0/0` / `::/0`, accepts NodePorts on every
    /// local address of that family ([`crate::FrontendAddr::AnyLocal`]).
    Cidrs(Vec<IpNetwork>),
}

/// Which sources count as "inside the cluster" (kube-proxy's `--detect-local-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum LocalDetect {
    /// Sources in [`NodeFacts::cluster_cidrs`] (kube-proxy's default `ClusterCIDR`).
    #[default]
    ClusterCidr,
    /// Sources in [`NodeFacts::pod_cidrs`] (`NodeCIDR`).
    NodeCidr,
}

/// Agent options that shape the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Options {
    pub nodeport_addresses: NodePortAddresses,
    /// kube-proxy's `--masquerade-all`: SNAT all ClusterIP traffic.
    pub masquerade_all: bool,
    pub local_detect: LocalDetect,
    /// The algorithm for Services without (or with a bad) `weft.io/lb-algorithm` annotation.
    pub default_algorithm: LbAlgorithm,
    /// Cluster-wide Maglev seed; must be the same on every node.
    pub maglev_seed: u64,
    /// kube-proxy's `PreferSameTrafficDistribution` feature gate (beta and on in 1.34):
    /// honour `hints.forNodes`. Off, only `hints.forZones` are used (1.33's default).
    pub node_hints: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            nodeport_addresses: NodePortAddresses::Primary,
            masquerade_all: false,
            local_detect: LocalDetect::ClusterCidr,
            default_algorithm: LbAlgorithm::Random,
            maglev_seed: 0,
            node_hints: true,
        }
    }
}

/// Where NodePorts of one family are accepted.
pub(crate) enum NodePortTargets {
    Addresses(Vec<IpAddr>),
    AnyLocal,
}

impl NodeFacts {
    /// The local-traffic detector's CIDRs of `family`.
    pub(crate) fn local_cidrs(&self, detect: LocalDetect, family: IpFamily) -> Vec<IpNetwork> {
        let list = match detect {
            LocalDetect::ClusterCidr => &self.cluster_cidrs,
            LocalDetect::NodeCidr => &self.pod_cidrs,
        };
        list.iter().filter(|n| IpFamily::of_net(n) == family).copied().collect()
    }

    pub(crate) fn addresses_of(&self, family: IpFamily) -> impl Iterator<Item = IpAddr> + '_ {
        self.addresses
            .iter()
            .copied()
            .filter(move |a| IpFamily::of(a) == family && !a.is_loopback())
    }

    pub(crate) fn nodeport_targets(&self, npa: &NodePortAddresses, family: IpFamily) -> NodePortTargets {
        let mut addrs: Vec<IpAddr> = match npa {
            NodePortAddresses::Primary => self.addresses_of(family).collect(),
            NodePortAddresses::Cidrs(cidrs) => {
                let fam: Vec<&IpNetwork> = cidrs.iter().filter(|c| IpFamily::of_net(c) == family).collect();
                if fam.is_empty() || fam.iter().any(|c| c.prefix() == 0) {
                    return NodePortTargets::AnyLocal;
                }
                self.addresses_of(family)
                    .filter(|a| fam.iter().any(|c| c.contains(*a)))
                    .collect()
            }
        };
        addrs.sort();
        addrs.dedup();
        NodePortTargets::Addresses(addrs)
    }
}
