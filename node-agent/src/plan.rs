//! The desired state of the node's mesh, as a pure function of the cluster's
//! Nodes and the settings. No side effects: unit-tested without root.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnetwork::IpNetwork;

use crate::key::PublicKey;
use crate::node::{NodeView, Problem};
use crate::peers::PeerSpec;

/// A route through the WireGuard device: `ip route add DST dev weft-wg src SRC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: IpNetwork,
    pub src: Option<IpAddr>,
}

/// Everything the mesh wants on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub listen_port: u16,
    pub peers: BTreeMap<PublicKey, PeerSpec>,
    /// Addresses on the WireGuard device.
    pub addresses: BTreeSet<IpNetwork>,
    pub routes: BTreeSet<Route>,
    /// This node's pod CIDRs (sources that may be masqueraded).
    pub pod_cidrs: Vec<IpNetwork>,
    /// Destinations that are never masqueraded.
    pub cluster_cidrs: Vec<IpNetwork>,
}

/// Inputs besides the Nodes.
#[derive(Debug, Clone)]
pub struct MeshParams {
    pub own_key: PublicKey,
    pub wg_port: u16,
    /// From `--cluster-cidr`; empty means "every node's pod CIDRs".
    pub cluster_cidrs: Vec<IpNetwork>,
}

/// The gateway address of a pod CIDR (its first host address), as weft-ipam
/// gives it to the bridge.
pub fn gateway(cidr: &IpNetwork) -> IpAddr {
    match cidr {
        IpNetwork::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()).wrapping_add(1))),
        IpNetwork::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n.network()).wrapping_add(1))),
    }
}

fn host_prefix(ip: IpAddr) -> IpNetwork {
    IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("host prefix is valid")
}

/// Compute the desired state. `own` is this node; `nodes` is every Node the
/// store has (this node included or not); `last_good` is the peer each node
/// had in the last applied state. Problems found on the way (a duplicate
/// key) are appended to `problems`.
///
/// A node that cannot be a peer now (no key, a malformed key, no pod CIDRs,
/// no address) keeps its last good peer if it had one — bad data in the API
/// never tears down a working tunnel — and is left out otherwise. Only a
/// node that is gone from the API loses its peer.
pub fn desired<N: std::borrow::Borrow<NodeView>>(
    own: &NodeView,
    nodes: &[N],
    params: &MeshParams,
    last_good: &BTreeMap<String, PeerSpec>,
    problems: &mut Vec<Problem>,
) -> Desired {
    // The node's address for traffic it sends into the tunnel is its own pod
    // CIDR's gateway (the address weft0 gets), put on the WireGuard device as
    // a /32 (/128) so it is local even before the first pod creates weft0,
    // and used as the routes' preferred source. The remote node then sees a
    // source inside our pod CIDR — inside the allowed IPs it keeps for us —
    // and routes the answer back through its tunnel. Our InternalIP would be
    // dropped by the remote's WireGuard (not in our allowed IPs).
    let gateways: Vec<IpAddr> = own.pod_cidrs.iter().map(gateway).collect();
    let src_for = |dst: &IpNetwork| gateways.iter().find(|g| g.is_ipv4() == dst.is_ipv4()).copied();

    let mut peers = BTreeMap::new();
    let mut owners: BTreeMap<PublicKey, &str> = BTreeMap::new();
    owners.insert(params.own_key, &own.name);
    let mut others: Vec<&NodeView> = nodes
        .iter()
        .map(|n| n.borrow())
        .filter(|n| n.name != own.name)
        .collect();
    others.sort_by(|a, b| a.name.cmp(&b.name));
    for n in others {
        let Some(spec) = peer_of(n, params.wg_port).or_else(|| last_good.get(&n.name).cloned()) else {
            continue;
        };
        if let Some(first) = owners.get(&spec.key) {
            problems.push(Problem::DuplicateKey {
                node: n.name.clone(),
                other: first.to_string(),
            });
            continue;
        }
        owners.insert(spec.key, &n.name);
        peers.insert(spec.key, spec);
    }
    let routes = peers
        .values()
        .flat_map(|p| p.allowed_ips.iter())
        .map(|dst| Route {
            dst: *dst,
            src: src_for(dst),
        })
        .collect();
    let cluster_cidrs = if params.cluster_cidrs.is_empty() {
        let all: BTreeSet<IpNetwork> = nodes
            .iter()
            .map(|n| n.borrow())
            .chain([own])
            .flat_map(|n| n.pod_cidrs.iter().copied())
            .collect();
        all.into_iter().collect()
    } else {
        params.cluster_cidrs.clone()
    };
    Desired {
        listen_port: params.wg_port,
        peers,
        addresses: gateways.into_iter().map(host_prefix).collect(),
        routes,
        pod_cidrs: own.pod_cidrs.clone(),
        cluster_cidrs,
    }
}

/// The peer for another node, if it has everything a peer needs.
pub fn peer_of(n: &NodeView, default_port: u16) -> Option<PeerSpec> {
    let key = n.key?;
    if n.pod_cidrs.is_empty() {
        return None;
    }
    let endpoint = n
        .endpoint
        .or_else(|| n.primary_ip().map(|ip| SocketAddr::new(ip, default_port)))?;
    Some(PeerSpec {
        node: n.name.clone(),
        key,
        endpoint,
        allowed_ips: n.pod_cidrs.iter().copied().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(i: u8, key: Option<u8>) -> NodeView {
        NodeView {
            name: format!("node-{i}"),
            pod_cidrs: vec![
                format!("10.244.{i}.0/24").parse().unwrap(),
                format!("fd00:10:244:{i}::/64").parse().unwrap(),
            ],
            internal_ips: vec![format!("172.30.0.{}", 10 + i).parse().unwrap()],
            key: key.map(|k| PublicKey([k; 32])),
            endpoint: None,
        }
    }

    fn params() -> MeshParams {
        MeshParams {
            own_key: PublicKey([1; 32]),
            wg_port: 51820,
            cluster_cidrs: vec![],
        }
    }

    #[test]
    fn three_nodes() {
        let nodes = vec![view(1, Some(1)), view(2, Some(2)), view(3, Some(3))];
        let mut p = Vec::new();
        let d = desired(&nodes[0], &nodes, &params(), &BTreeMap::new(), &mut p);
        assert!(p.is_empty());
        assert_eq!(d.peers.len(), 2);
        let p2 = &d.peers[&PublicKey([2; 32])];
        assert_eq!(p2.endpoint.to_string(), "172.30.0.12:51820");
        assert_eq!(p2.allowed_ips.len(), 2);
        let routes: Vec<String> = d.routes.iter().map(|r| format!("{} {:?}", r.dst, r.src)).collect();
        assert_eq!(
            routes,
            [
                "10.244.2.0/24 Some(10.244.1.1)",
                "10.244.3.0/24 Some(10.244.1.1)",
                "fd00:10:244:2::/64 Some(fd00:10:244:1::1)",
                "fd00:10:244:3::/64 Some(fd00:10:244:1::1)",
            ]
        );
        let addrs: Vec<String> = d.addresses.iter().map(ToString::to_string).collect();
        assert_eq!(addrs, ["10.244.1.1/32", "fd00:10:244:1::1/128"]);
        assert_eq!(d.cluster_cidrs.len(), 6);
    }

    #[test]
    fn nodes_that_cannot_be_peers_are_left_out() {
        let mut no_cidrs = view(3, Some(3));
        no_cidrs.pod_cidrs.clear();
        let mut no_ip = view(4, Some(4));
        no_ip.internal_ips.clear();
        let nodes = vec![view(1, Some(1)), view(2, None), no_cidrs, no_ip, view(5, Some(5))];
        let d = desired(&nodes[0], &nodes, &params(), &BTreeMap::new(), &mut Vec::new());
        let names: Vec<&str> = d.peers.values().map(|p| p.node.as_str()).collect();
        assert_eq!(names, ["node-5"]);
    }

    #[test]
    fn annotation_endpoint_wins_and_duplicate_keys_are_problems() {
        let mut two = view(2, Some(2));
        two.endpoint = Some("[fd00:172:30::12]:4000".parse().unwrap());
        let dup_of_own = view(3, Some(1));
        let dup_of_two = view(4, Some(2));
        let nodes = vec![view(1, Some(1)), two, dup_of_own, dup_of_two];
        let mut p = Vec::new();
        let d = desired(&nodes[0], &nodes, &params(), &BTreeMap::new(), &mut p);
        assert_eq!(d.peers.len(), 1);
        assert_eq!(d.peers[&PublicKey([2; 32])].endpoint.port(), 4000);
        let kinds: Vec<_> = p.iter().map(|x| x.to_string()).collect();
        assert_eq!(
            kinds,
            [
                "node node-3: publishes the same WireGuard key as node node-1; ignored",
                "node node-4: publishes the same WireGuard key as node node-2; ignored"
            ]
        );
    }

    #[test]
    fn configured_cluster_cidrs_win_and_a_v4_only_node_has_no_v6_source() {
        let mut own = view(1, Some(1));
        own.pod_cidrs.truncate(1);
        let nodes = vec![own.clone(), view(2, Some(2))];
        let mut params = params();
        params.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
        let d = desired(&own, &nodes, &params, &BTreeMap::new(), &mut Vec::new());
        assert_eq!(d.cluster_cidrs, params.cluster_cidrs);
        let v6 = d.routes.iter().find(|r| r.dst.is_ipv6()).unwrap();
        assert_eq!(v6.src, None);
    }

    #[test]
    fn bad_data_keeps_the_last_good_peer_and_only_deletion_removes_it() {
        let nodes = vec![view(1, Some(1)), view(2, Some(2)), view(3, Some(3))];
        let first = desired(&nodes[0], &nodes, &params(), &BTreeMap::new(), &mut Vec::new());
        let last_good: BTreeMap<String, PeerSpec> = first.peers.values().map(|p| (p.node.clone(), p.clone())).collect();
        // node-2's key annotation became garbage, node-3 lost its podCIDRs.
        let mut broken = nodes.clone();
        broken[1].key = None;
        broken[2].pod_cidrs.clear();
        let d = desired(&broken[0], &broken, &params(), &last_good, &mut Vec::new());
        assert_eq!(d.peers, first.peers);
        assert_eq!(d.routes, first.routes);
        // node-3 deleted from the API: its peer and routes go.
        let d = desired(&nodes[0], &nodes[..2], &params(), &last_good, &mut Vec::new());
        assert_eq!(d.peers.len(), 1);
        assert!(d
            .routes
            .iter()
            .all(|r| !r.dst.to_string().contains(":3::") && !r.dst.to_string().contains(".3.")));
    }

    #[test]
    fn gateway_is_the_first_host() {
        assert_eq!(gateway(&"10.244.1.0/24".parse().unwrap()).to_string(), "10.244.1.1");
        assert_eq!(gateway(&"fd00::/64".parse().unwrap()).to_string(), "fd00::1");
    }
}
