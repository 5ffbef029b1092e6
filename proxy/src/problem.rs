//! Bad data found in Services and EndpointSlices. A problem never stops the model: the bad
//! part (a port, an endpoint, a slice) is left out and everything else is computed.

use std::fmt;

use serde::Serialize;

/// What is wrong; stable names for a metric label (`kind.as_str()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ProblemKind {
    /// A Service (not headless, not ExternalName) without ports.
    NoPorts,
    /// A Service port number or nodePort outside 1–65535, or a duplicate (name, protocol).
    InvalidPort,
    /// A protocol other than TCP, UDP, SCTP.
    InvalidProtocol,
    /// A `clusterIP(s)` entry that is not an IP.
    InvalidClusterIp,
    /// An `externalIPs` entry that is not an IP.
    InvalidExternalIp,
    /// A `status.loadBalancer.ingress[].ip` that is not an IP.
    InvalidLoadBalancerIp,
    /// A `loadBalancerSourceRanges` entry that is not a CIDR.
    InvalidSourceRange,
    /// A `sessionAffinityConfig.clientIP.timeoutSeconds` outside 1–86400.
    InvalidAffinityTimeout,
    /// A bad `weft.io/lb-algorithm` annotation value; the default algorithm is used.
    InvalidLbAlgorithm,
    /// A LoadBalancer Service with `externalTrafficPolicy: Local` and no `healthCheckNodePort`.
    MissingHealthCheckNodePort,
    /// Slices with endpoints exist but none has a port with this Service port's name and protocol.
    PortNotInSlices,
    /// A slice port without a port number (or 0); kube-proxy ignores it.
    InvalidSlicePort,
    /// An endpoint whose first address is missing or not an IP.
    InvalidEndpointAddress,
    /// An endpoint address of another family than its slice's `addressType`, or a slice of a
    /// family the Service has no ClusterIP of.
    WrongAddressFamily,
    /// An EndpointSlice whose Service does not exist.
    SliceWithoutService,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::NoPorts => "no_ports",
            ProblemKind::InvalidPort => "invalid_port",
            ProblemKind::InvalidProtocol => "invalid_protocol",
            ProblemKind::InvalidClusterIp => "invalid_cluster_ip",
            ProblemKind::InvalidExternalIp => "invalid_external_ip",
            ProblemKind::InvalidLoadBalancerIp => "invalid_load_balancer_ip",
            ProblemKind::InvalidSourceRange => "invalid_source_range",
            ProblemKind::InvalidAffinityTimeout => "invalid_affinity_timeout",
            ProblemKind::InvalidLbAlgorithm => "invalid_lb_algorithm",
            ProblemKind::MissingHealthCheckNodePort => "missing_health_check_node_port",
            ProblemKind::PortNotInSlices => "port_not_in_slices",
            ProblemKind::InvalidSlicePort => "invalid_slice_port",
            ProblemKind::InvalidEndpointAddress => "invalid_endpoint_address",
            ProblemKind::WrongAddressFamily => "wrong_address_family",
            ProblemKind::SliceWithoutService => "slice_without_service",
        }
    }
}

/// The object a problem is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ObjectRef {
    Service { namespace: String, name: String },
    EndpointSlice { namespace: String, name: String },
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectRef::Service { namespace, name } => write!(f, "Service {namespace}/{name}"),
            ObjectRef::EndpointSlice { namespace, name } => write!(f, "EndpointSlice {namespace}/{name}"),
        }
    }
}

/// One piece of bad data, with a message that says what was left out.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub object: ObjectRef,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.kind.as_str(), self.message)
    }
}
