//! What the agent reads from a Node object, parsed once into [`NodeView`].
//!
//! Bad values never fail the whole node: each is reported as a [`Problem`]
//! (logged and counted by the caller) and the field is left out, so one
//! malformed annotation cannot take working peers down.

use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;

use crate::key::PublicKey;

/// Node annotation holding the node's WireGuard public key (base64).
pub const KEY_ANNOTATION: &str = "weft.io/wireguard-public-key";
/// Node annotation holding the node's WireGuard endpoint (`IP:port`).
pub const ENDPOINT_ANNOTATION: &str = "weft.io/wireguard-endpoint";

/// The parts of a Node the mesh needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub pod_cidrs: Vec<IpNetwork>,
    pub internal_ips: Vec<IpAddr>,
    pub key: Option<PublicKey>,
    pub endpoint: Option<SocketAddr>,
}

/// Something wrong with a Node's data; `kind` is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("node {node}: no spec.podCIDRs")]
    NoPodCidrs { node: String },
    #[error("node {node}: spec.podCIDRs entry {value:?} is not a CIDR")]
    BadPodCidr { node: String, value: String },
    #[error("node {node}: no InternalIP in status.addresses")]
    NoInternalIp { node: String },
    #[error("node {node}: InternalIP {value:?} is not a usable unicast address; ignored")]
    BadInternalIp { node: String, value: String },
    #[error("node {node}: annotation {KEY_ANNOTATION} is not a WireGuard public key: {reason}")]
    BadKey { node: String, reason: String },
    #[error("node {node}: annotation {ENDPOINT_ANNOTATION} {value:?} is not IP:port with a usable unicast IP and a non-zero port")]
    BadEndpoint { node: String, value: String },
    #[error("node {node}: publishes the same WireGuard key as node {other}; ignored")]
    DuplicateKey { node: String, other: String },
}

impl Problem {
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::NoPodCidrs { .. } => "no_pod_cidrs",
            Problem::BadPodCidr { .. } => "bad_pod_cidr",
            Problem::NoInternalIp { .. } => "no_internal_ip",
            Problem::BadInternalIp { .. } => "bad_internal_ip",
            Problem::BadKey { .. } => "bad_key",
            Problem::BadEndpoint { .. } => "bad_endpoint",
            Problem::DuplicateKey { .. } => "duplicate_key",
        }
    }
}

impl NodeView {
    /// Parse a Node; problems are appended to `problems`.
    pub fn from_node(node: &Node, problems: &mut Vec<Problem>) -> Self {
        let name = node.metadata.name.clone().unwrap_or_default();
        let spec = node.spec.as_ref();
        let raw_cidrs: Vec<String> = spec
            .and_then(|s| s.pod_cidrs.clone())
            .filter(|v| !v.is_empty())
            .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
            .unwrap_or_default();
        let pod_cidrs = parse_cidrs(&name, &raw_cidrs, problems);
        if raw_cidrs.is_empty() {
            problems.push(Problem::NoPodCidrs { node: name.clone() });
        }
        let mut internal_ips: Vec<IpAddr> = Vec::new();
        let raw_ips = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP");
        for a in raw_ips {
            match a.address.trim().parse::<IpAddr>() {
                Ok(ip) if usable(ip) => internal_ips.push(ip),
                _ => problems.push(Problem::BadInternalIp {
                    node: name.clone(),
                    value: a.address.clone(),
                }),
            }
        }
        if internal_ips.is_empty() {
            problems.push(Problem::NoInternalIp { node: name.clone() });
        }
        let ann = node.metadata.annotations.as_ref();
        let key = ann
            .and_then(|a| a.get(KEY_ANNOTATION))
            .and_then(|v| match PublicKey::from_base64(v) {
                Ok(k) => Some(k),
                Err(e) => {
                    problems.push(Problem::BadKey {
                        node: name.clone(),
                        reason: e.to_string(),
                    });
                    None
                }
            });
        let endpoint = ann.and_then(|a| a.get(ENDPOINT_ANNOTATION)).and_then(|v| {
            let parsed = v.trim().parse::<SocketAddr>().ok();
            parsed.filter(|e| usable(e.ip()) && e.port() != 0).or_else(|| {
                problems.push(Problem::BadEndpoint {
                    node: name.clone(),
                    value: v.clone(),
                });
                None
            })
        });
        NodeView {
            name,
            pod_cidrs,
            internal_ips,
            key,
            endpoint,
        }
    }

    /// The InternalIP peers should send to: the first IPv4 one, else the first.
    pub fn primary_ip(&self) -> Option<IpAddr> {
        self.internal_ips
            .iter()
            .find(|ip| ip.is_ipv4())
            .or(self.internal_ips.first())
            .copied()
    }
}

/// Can peers send WireGuard packets to `ip`? Not the unspecified address,
/// loopback, multicast, broadcast, link-local (it needs a scope a Node
/// address cannot carry) or documentation-only addresses.
pub fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            !(v.is_unspecified()
                || v.is_loopback()
                || v.is_multicast()
                || v.is_broadcast()
                || v.is_link_local()
                || v.octets()[0] == 0)
        }
        IpAddr::V6(v) => {
            let link_local = v.segments()[0] & 0xffc0 == 0xfe80;
            let v4_mapped = v.to_ipv4_mapped().is_some();
            !(v.is_unspecified() || v.is_loopback() || v.is_multicast() || link_local || v4_mapped)
        }
    }
}

/// CIDRs normalised to their network address (`10.244.1.5/24` → `10.244.1.0/24`).
fn parse_cidrs(node: &str, raw: &[String], problems: &mut Vec<Problem>) -> Vec<IpNetwork> {
    let mut out = Vec::new();
    for v in raw {
        match v.parse::<IpNetwork>() {
            Ok(n) => {
                let n = IpNetwork::new(n.network(), n.prefix()).expect("network of a valid CIDR is valid");
                if !out.contains(&n) {
                    out.push(n);
                }
            }
            Err(_) => problems.push(Problem::BadPodCidr {
                node: node.to_string(),
                value: v.clone(),
            }),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{json, Value};

    pub fn node_json(name: &str, cidrs: &[&str], ip: &str, ann: Value) -> Node {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": ann},
            "spec": {"podCIDRs": cidrs},
            "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]}
        }))
        .unwrap()
    }

    const KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    #[test]
    fn a_good_node_parses() {
        let n = node_json(
            "n1",
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
            "172.30.0.11",
            json!({KEY_ANNOTATION: KEY, ENDPOINT_ANNOTATION: "172.30.0.11:51820"}),
        );
        let mut p = Vec::new();
        let v = NodeView::from_node(&n, &mut p);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(v.pod_cidrs.len(), 2);
        assert_eq!(v.key.unwrap().to_base64(), KEY);
        assert_eq!(v.endpoint.unwrap().to_string(), "172.30.0.11:51820");
        assert_eq!(v.primary_ip().unwrap().to_string(), "172.30.0.11");
    }

    #[test]
    fn bad_values_are_problems_not_failures() {
        let cases: &[(&[&str], Value, &[&str])] = &[
            (&[], json!({}), &["no_pod_cidrs"]),
            (&["10.244.1.0/33", "10.244.2.0/24"], json!({}), &["bad_pod_cidr"]),
            (&["10.244.1.0/24"], json!({KEY_ANNOTATION: "short"}), &["bad_key"]),
            (&["10.244.1.0/24"], json!({KEY_ANNOTATION: "AAAA"}), &["bad_key"]),
            (&["10.244.1.0/24"], json!({KEY_ANNOTATION: ""}), &["bad_key"]),
            (
                &["10.244.1.0/24"],
                json!({ENDPOINT_ANNOTATION: "172.30.0.11"}),
                &["bad_endpoint"],
            ),
            (
                &["10.244.1.0/24"],
                json!({ENDPOINT_ANNOTATION: "host:51820"}),
                &["bad_endpoint"],
            ),
        ];
        for (cidrs, ann, want) in cases {
            let n = node_json("n1", cidrs, "172.30.0.11", ann.clone());
            let mut p = Vec::new();
            let v = NodeView::from_node(&n, &mut p);
            let kinds: Vec<_> = p.iter().map(Problem::kind).collect();
            assert_eq!(&kinds, want, "{cidrs:?} {ann}");
            assert_eq!(v.name, "n1");
        }
    }

    #[test]
    fn host_bits_are_cleared_and_legacy_pod_cidr_is_read() {
        let mut n = node_json("n1", &["10.244.1.7/24"], "172.30.0.11", json!({}));
        let v = NodeView::from_node(&n, &mut Vec::new());
        assert_eq!(v.pod_cidrs[0].to_string(), "10.244.1.0/24");
        n.spec.as_mut().unwrap().pod_cidrs = None;
        n.spec.as_mut().unwrap().pod_cidr = Some("10.244.9.0/24".into());
        let v = NodeView::from_node(&n, &mut Vec::new());
        assert_eq!(v.pod_cidrs[0].to_string(), "10.244.9.0/24");
    }

    #[test]
    fn unusable_internal_ips_are_problems_and_a_usable_one_beside_them_is_used() {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "spec": {"podCIDRs": ["10.244.1.0/24"]},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "0.0.0.0"},
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "InternalIP", "address": "fe80::1"},
                {"type": "InternalIP", "address": "not-an-ip"},
                {"type": "InternalIP", "address": "fd00:172:30::11"},
            ]}
        }))
        .unwrap();
        let mut p = Vec::new();
        let v = NodeView::from_node(&n, &mut p);
        let kinds: Vec<_> = p.iter().map(Problem::kind).collect();
        assert_eq!(kinds, ["bad_internal_ip"; 4]);
        assert_eq!(v.primary_ip().unwrap().to_string(), "fd00:172:30::11");
        // Only unusable ones: no IP at all, and that is a problem too.
        let n = node_json("n2", &["10.244.2.0/24"], "0.0.0.0", json!({}));
        let mut p = Vec::new();
        let v = NodeView::from_node(&n, &mut p);
        assert!(v.primary_ip().is_none());
        let kinds: Vec<_> = p.iter().map(Problem::kind).collect();
        assert_eq!(kinds, ["bad_internal_ip", "no_internal_ip"]);
    }

    #[test]
    fn an_unusable_endpoint_annotation_is_a_problem() {
        for bad in [
            "0.0.0.0:51820",
            "[::]:51820",
            "127.0.0.1:51820",
            "172.30.0.11:0",
            "224.0.0.1:51820",
        ] {
            let n = node_json(
                "n1",
                &["10.244.1.0/24"],
                "172.30.0.11",
                json!({ENDPOINT_ANNOTATION: bad}),
            );
            let mut p = Vec::new();
            let v = NodeView::from_node(&n, &mut p);
            assert_eq!(v.endpoint, None, "{bad}");
            let kinds: Vec<_> = p.iter().map(Problem::kind).collect();
            assert_eq!(kinds, ["bad_endpoint"], "{bad}");
        }
    }

    #[test]
    fn a_node_with_no_status_has_no_ip() {
        let n: Node = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
        let mut p = Vec::new();
        let v = NodeView::from_node(&n, &mut p);
        assert!(v.primary_ip().is_none());
        assert_eq!(p.len(), 2);
    }
}
