//! The model's vocabulary: keys, frontends, backends and the flags the renderer needs.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Serialize;

use crate::maglev::MaglevTable;

/// A Service's identity: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An EndpointSlice's identity: `namespace/name` (its own name, not the Service's).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SliceKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for SliceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Layer-4 protocol of a Service port (`inet_proto` in nft).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`); `None` is the API default, TCP.
    pub fn from_k8s(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(_) => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        })
    }
}

/// IP family; kube-proxy runs one proxier per family and so does the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    pub fn of_net(net: &IpNetwork) -> Self {
        match net {
            IpNetwork::V4(_) => IpFamily::V4,
            IpNetwork::V6(_) => IpFamily::V6,
        }
    }

    /// The EndpointSlice `addressType` for this family.
    pub fn address_type(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "ipv4",
            IpFamily::V6 => "ipv6",
        })
    }
}

/// Which kind of Service address a frontend captures.
///
/// ClusterIP traffic is "internal" (internalTrafficPolicy applies); the other three are
/// "external" (externalTrafficPolicy applies), as in kube-proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FrontendKind {
    ClusterIp,
    ExternalIp,
    LoadBalancer,
    NodePort,
}

impl FrontendKind {
    pub fn is_external(self) -> bool {
        !matches!(self, FrontendKind::ClusterIp)
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrontendKind::ClusterIp => "cluster-ip",
            FrontendKind::ExternalIp => "external-ip",
            FrontendKind::LoadBalancer => "load-balancer",
            FrontendKind::NodePort => "node-port",
        })
    }
}

/// The destination address a frontend matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FrontendAddr {
    /// One address (`ip daddr 10.96.0.10`).
    Ip(IpAddr),
    /// Any local address of the family except loopback: kube-proxy's NodePort form when
    /// `--nodeport-addresses` matches everything (`fib daddr type local ip daddr != 127.0.0.0/8`).
    AnyLocal(IpFamily),
}

impl FrontendAddr {
    pub fn family(&self) -> IpFamily {
        match self {
            FrontendAddr::Ip(ip) => IpFamily::of(ip),
            FrontendAddr::AnyLocal(f) => *f,
        }
    }
}

impl fmt::Display for FrontendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrontendAddr::Ip(ip) => write!(f, "{ip}"),
            FrontendAddr::AnyLocal(fam) => write!(f, "any-local-{fam}"),
        }
    }
}

/// One frontend: a Service port reached through one address of one kind.
///
/// The field order makes a `BTreeMap<FrontendKey, _>` group every frontend of a Service together.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct FrontendKey {
    pub service: ServiceKey,
    /// The Service port's `name` ("" for an unnamed single port).
    pub port_name: String,
    pub protocol: Protocol,
    pub kind: FrontendKind,
    pub addr: FrontendAddr,
    /// The destination port: `port` for ClusterIP/externalIP/LB, `nodePort` for NodePort.
    pub port: u16,
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = match self.addr {
            FrontendAddr::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
            other => other.to_string(),
        };
        write!(
            f,
            "{} {}:{}/{} ({}:{})",
            self.kind, addr, self.port, self.protocol, self.service, self.port_name
        )
    }
}

/// One endpoint chosen for a frontend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    /// `nodeName` equals this node's name.
    pub local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Backend {
    /// `ip:port` (`[ip]:port` for IPv6): the string kube-proxy keys endpoints by and Maglev hashes.
    pub fn endpoint_string(&self) -> String {
        match self.ip {
            IpAddr::V4(ip) => format!("{ip}:{}", self.port),
            IpAddr::V6(ip) => format!("[{ip}]:{}", self.port),
        }
    }
}

/// What happens to a new connection when the frontend's pool is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NoBackends {
    /// The Service has no usable endpoint anywhere: reject at once (TCP reset / ICMP port
    /// unreachable), kube-proxy's `no-endpoint-services` → `reject-chain`.
    Reject,
    /// The Service has endpoints, but none this traffic policy may use from this node
    /// (`internalTrafficPolicy: Local` or `externalTrafficPolicy: Local` with no local
    /// endpoint): kube-proxy drops.
    Drop,
}

/// When traffic to the pool is source-NATed to the node (kube-proxy's mark-for-masquerade).
///
/// Independent of this flag, every backend also masquerades hairpin traffic (source == the
/// backend's own IP), as kube-proxy's per-endpoint chains do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Masquerade {
    Never,
    Always,
    /// Masquerade unless the source is inside one of these CIDRs (the local-traffic
    /// detector: the cluster CIDRs by default), so traffic from outside the cluster to a
    /// ClusterIP is masqueraded and pod → ClusterIP → pod keeps the pod's source IP.
    UnlessSourceIn(Vec<IpNetwork>),
}

/// Load-balancing algorithm, from the `weft.io/lb-algorithm` annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
pub enum LbAlgorithm {
    #[default]
    Random,
    RoundRobin,
    SourceHash,
    Maglev,
}

impl LbAlgorithm {
    /// The annotation values: `random`, `round-robin`, `source-hash`, `maglev`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "random" => Some(LbAlgorithm::Random),
            "round-robin" => Some(LbAlgorithm::RoundRobin),
            "source-hash" => Some(LbAlgorithm::SourceHash),
            "maglev" => Some(LbAlgorithm::Maglev),
            _ => None,
        }
    }
}

impl fmt::Display for LbAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LbAlgorithm::Random => "random",
            LbAlgorithm::RoundRobin => "round-robin",
            LbAlgorithm::SourceHash => "source-hash",
            LbAlgorithm::Maglev => "maglev",
        })
    }
}

/// A list of backends and, for Maglev, its lookup table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pool {
    /// Sorted by (ip, port); the order is the index space of `maglev` and of `numgen` maps.
    pub backends: Vec<Backend>,
    /// Present when the algorithm is Maglev and `backends` is not empty.
    pub maglev: Option<MaglevTable>,
}

/// `externalTrafficPolicy: Local` exceptions, as kube-proxy's `external-…` chain has them:
/// traffic that starts inside the cluster is not subject to the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShortCircuit {
    /// Sources inside these CIDRs (pods; the local-traffic detector) go to `pool` without
    /// masquerade. Empty when no detector CIDR is known (kube-proxy: detector not implemented).
    pub pod_sources: Vec<IpNetwork>,
    /// Cluster-policy endpoints. Node-originated traffic (`fib saddr type local`) also goes
    /// here, masqueraded (the VIP is local, so it would be the source).
    pub pool: Pool,
}

/// Everything the renderer needs for one frontend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frontend {
    /// Where traffic goes (after the short-circuit below, if any).
    pub pool: Pool,
    /// Meaningful when `pool.backends` is empty.
    pub no_backends: NoBackends,
    /// Source NAT for traffic to `pool`.
    pub masquerade: Masquerade,
    /// Only for external frontends of an `externalTrafficPolicy: Local` Service that has
    /// endpoints somewhere.
    pub short_circuit: Option<ShortCircuit>,
    /// `sessionAffinity: ClientIP` timeout in seconds. As in kube-proxy, affinity belongs to
    /// the Service port (port name + protocol + family), whichever of its addresses a client
    /// used: the renderer should share one affinity state among those frontends.
    pub affinity_timeout: Option<u32>,
    pub algorithm: LbAlgorithm,
    /// `loadBalancerSourceRanges` of this family (LoadBalancer frontends only): when not
    /// empty, new connections from other sources are dropped. When a node address is in a
    /// range the LoadBalancer IPs themselves are added, as kube-proxy does for VIP-local LBs.
    pub source_ranges: Vec<IpNetwork>,
}
