//! One Service (plus its EndpointSlices) → its frontends, problems and health check.
//!
//! Pure and per Service, so the model recomputes only the Services that changed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::maglev::MaglevTable;
use crate::options::{NodeFacts, NodePortTargets, Options};
use crate::problem::{ObjectRef, Problem, ProblemKind};
use crate::topology::{categorize, Endpoint, PortPolicy};
use crate::types::{
    Backend, Frontend, FrontendAddr, FrontendKey, FrontendKind, IpFamily, LbAlgorithm, Masquerade, NoBackends, Pool,
    Protocol, ServiceKey, ShortCircuit,
};

/// The annotation that picks a Service's load-balancing algorithm.
pub const LB_ALGORITHM_ANNOTATION: &str = "weft.io/lb-algorithm";
/// Services and slices with this label belong to another proxy (kube-proxy ignores them too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Set on the slices (and by some tools on Services) of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Names the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (the API server's default).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
const MAX_AFFINITY_TIMEOUT: i32 = 86400;

/// kube-proxy's informers select `!service.kubernetes.io/service-proxy-name,
/// !service.kubernetes.io/headless`: objects with either label do not exist for it.
pub fn ignored_by_labels(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL) || l.contains_key(HEADLESS_LABEL))
}

/// What the health-check server needs for a LoadBalancer Service with
/// `externalTrafficPolicy: Local`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HealthCheck {
    pub node_port: u16,
    /// Distinct IPs of this node's ready (not terminating) endpoints, over all ports and
    /// families, as kube-proxy counts them; 0 → the check answers 503.
    pub local_endpoints: usize,
}

#[derive(Debug, Default, PartialEq)]
pub(crate) struct ServiceOutput {
    pub frontends: Vec<(FrontendKey, Frontend)>,
    pub problems: Vec<Problem>,
    pub health_check: Option<HealthCheck>,
}

struct Ctx<'a> {
    key: &'a ServiceKey,
    node: &'a NodeFacts,
    opts: &'a Options,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn service_problem(&mut self, kind: ProblemKind, message: String) {
        let object = ObjectRef::Service {
            namespace: self.key.namespace.clone(),
            name: self.key.name.clone(),
        };
        self.problems.push(Problem { kind, object, message });
    }

    fn slice_problem(&mut self, slice: &str, kind: ProblemKind, message: String) {
        let object = ObjectRef::EndpointSlice {
            namespace: self.key.namespace.clone(),
            name: slice.to_string(),
        };
        self.problems.push(Problem { kind, object, message });
    }
}

/// A validated Service port.
struct PortSpec {
    name: String,
    protocol: Protocol,
    port: u16,
    node_port: u16,
}

/// Endpoints of one family, by (port name, protocol), deduplicated by (ip, port).
/// (A short list: Services have few ports, so a linear search beats hashing.)
#[derive(Default)]
struct EndpointsByPort(Vec<(PortId, EndpointSet)>);

/// A slice port's identity: (name, protocol).
type PortId = (String, Protocol);
/// Endpoints deduplicated by (ip, port).
type EndpointSet = BTreeMap<(IpAddr, u16), Endpoint>;

impl EndpointsByPort {
    fn get(&self, name: &str, protocol: Protocol) -> Option<&EndpointSet> {
        self.0
            .iter()
            .find(|((n, p), _)| n == name && *p == protocol)
            .map(|(_, m)| m)
    }

    fn entry(&mut self, name: &str, protocol: Protocol) -> &mut EndpointSet {
        let i = match self.0.iter().position(|((n, p), _)| n == name && *p == protocol) {
            Some(i) => i,
            None => {
                self.0.push(((name.to_string(), protocol), BTreeMap::new()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }
}

/// Computes everything for one Service. `slices` are the Service's slices by slice name
/// (already without the ignored-by-label ones).
pub(crate) fn compute_service(
    key: &ServiceKey,
    svc: Option<&Service>,
    slices: Option<&BTreeMap<String, EndpointSlice>>,
    node: &NodeFacts,
    opts: &Options,
) -> ServiceOutput {
    let empty = BTreeMap::new();
    let slices = slices.unwrap_or(&empty);
    let mut cx = Ctx {
        key,
        node,
        opts,
        problems: Vec::new(),
    };
    let Some(svc) = svc else {
        for name in slices.keys() {
            cx.slice_problem(
                name,
                ProblemKind::SliceWithoutService,
                format!(
                    "label {SERVICE_NAME_LABEL}={} names a Service that does not exist",
                    key.name
                ),
            );
        }
        return ServiceOutput {
            problems: cx.problems,
            ..Default::default()
        };
    };
    if ignored_by_labels(&svc.metadata) {
        return ServiceOutput::default();
    }
    let Some(spec) = svc.spec.as_ref() else {
        cx.service_problem(ProblemKind::NoPorts, "Service has no spec".into());
        return ServiceOutput {
            problems: cx.problems,
            ..Default::default()
        };
    };
    // kube-proxy's ShouldSkipService: headless (clusterIP None or unset) and ExternalName.
    if spec.type_.as_deref() == Some("ExternalName") {
        return ServiceOutput::default();
    }
    let primary = spec
        .cluster_ip
        .as_deref()
        .or_else(|| spec.cluster_ips.as_ref().and_then(|v| v.first()).map(|s| s.as_str()));
    match primary {
        None | Some("") | Some("None") => return ServiceOutput::default(),
        Some(_) => {}
    }

    let cluster_ips = cluster_ips_by_family(&mut cx, spec);
    if cluster_ips.is_empty() {
        return ServiceOutput {
            problems: cx.problems,
            ..Default::default()
        };
    }
    let ports = port_specs(&mut cx, spec.ports.as_deref().unwrap_or_default());
    if spec.ports.as_ref().is_none_or(|p| p.is_empty()) {
        cx.service_problem(ProblemKind::NoPorts, "Service has no ports: nothing to proxy".into());
    }

    let external_ips = parse_ips(
        &mut cx,
        spec.external_ips.as_deref().unwrap_or_default(),
        ProblemKind::InvalidExternalIp,
        "externalIPs",
    );
    let lb_vips = load_balancer_vips(&mut cx, svc);
    let source_ranges = source_ranges(&mut cx, spec.load_balancer_source_ranges.as_deref().unwrap_or_default());
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    let etp_local = matches!(type_, "NodePort" | "LoadBalancer") || !external_ips.is_empty();
    let etp_local = etp_local && spec.external_traffic_policy.as_deref() == Some("Local");
    let itp_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let affinity = affinity(&mut cx, spec);
    let algorithm = algorithm(&mut cx, svc);

    // Slices by family.
    let mut by_family: BTreeMap<IpFamily, EndpointsByPort> = BTreeMap::new();
    let mut local_ready_ips: BTreeSet<IpAddr> = BTreeSet::new();
    for (slice_name, slice) in slices {
        let family = match slice.address_type.as_str() {
            "IPv4" => IpFamily::V4,
            "IPv6" => IpFamily::V6,
            // FQDN slices are not for proxies (kube-proxy skips them too).
            _ => continue,
        };
        if !cluster_ips.contains_key(&family) {
            cx.slice_problem(
                slice_name,
                ProblemKind::WrongAddressFamily,
                format!(
                    "addressType {} but the Service has no {family} ClusterIP",
                    slice.address_type
                ),
            );
            continue;
        }
        let endpoints = slice_endpoints(&mut cx, slice_name, slice, family);
        for ep in endpoints.iter().filter(|e| e.local && e.ready) {
            local_ready_ips.insert(ep.ip);
        }
        let map = by_family.entry(family).or_default();
        add_slice(&mut cx, slice_name, slice, &endpoints, map);
    }

    // Ports no slice names (only meaningful when some slice has endpoints).
    for (family, map) in &by_family {
        let has_endpoints = slices
            .values()
            .any(|s| s.address_type == family.address_type() && s.endpoints.as_ref().is_some_and(|e| !e.is_empty()));
        for p in &ports {
            if has_endpoints && map.get(&p.name, p.protocol).is_none() {
                cx.service_problem(
                    ProblemKind::PortNotInSlices,
                    format!(
                        "port {:?}/{} is in no {family} EndpointSlice: it has no endpoints",
                        p.name, p.protocol
                    ),
                );
            }
        }
    }

    let facts = ServiceFacts {
        key,
        node,
        opts,
        itp_local,
        etp_local,
        affinity,
        algorithm,
        external_ips,
        lb_vips,
        source_ranges,
    };
    let mut frontends = Vec::new();
    for p in &ports {
        for (&family, &cluster_ip) in &cluster_ips {
            let eps = by_family.get(&family).and_then(|m| m.get(&p.name, p.protocol));
            port_frontends(&facts, p, family, cluster_ip, eps, &mut frontends);
        }
    }

    let health_check = if type_ == "LoadBalancer" && etp_local {
        match spec
            .health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        {
            Some(node_port) => Some(HealthCheck {
                node_port,
                local_endpoints: local_ready_ips.len(),
            }),
            None => {
                cx.service_problem(
                    ProblemKind::MissingHealthCheckNodePort,
                    "LoadBalancer with externalTrafficPolicy Local has no valid healthCheckNodePort".into(),
                );
                None
            }
        }
    } else {
        None
    };

    let mut problems = cx.problems;
    problems.sort();
    problems.dedup();
    ServiceOutput {
        frontends,
        problems,
        health_check,
    }
}

/// The Service-wide facts every port's frontends are built from.
struct ServiceFacts<'a> {
    key: &'a ServiceKey,
    node: &'a NodeFacts,
    opts: &'a Options,
    itp_local: bool,
    etp_local: bool,
    affinity: Option<u32>,
    algorithm: LbAlgorithm,
    external_ips: Vec<IpAddr>,
    lb_vips: Vec<IpAddr>,
    source_ranges: Vec<IpNetwork>,
}

/// The frontends of one Service port in one family: its ClusterIP, and when reachable from
/// outside its externalIPs, LoadBalancer IPs and NodePorts (kube-proxy's syncProxyRules, per
/// service port).
fn port_frontends(
    sf: &ServiceFacts<'_>,
    p: &PortSpec,
    family: IpFamily,
    cluster_ip: IpAddr,
    eps: Option<&EndpointSet>,
    out: &mut Vec<(FrontendKey, Frontend)>,
) {
    let (node, opts) = (sf.node, sf.opts);
    let ext: Vec<IpAddr> = sf
        .external_ips
        .iter()
        .copied()
        .filter(|a| IpFamily::of(a) == family)
        .collect();
    let lbs: Vec<IpAddr> = sf
        .lb_vips
        .iter()
        .copied()
        .filter(|a| IpFamily::of(a) == family)
        .collect();
    let policy = PortPolicy {
        itp_local: sf.itp_local,
        etp_local: sf.etp_local,
        externally_accessible: p.node_port != 0 || !ext.is_empty() || !lbs.is_empty(),
    };
    let eps: Vec<&Endpoint> = eps.map(|m| m.values().collect()).unwrap_or_default();
    let cat = categorize(&eps, &policy, node, opts.node_hints);
    let pool = |list: &[&Endpoint]| make_pool(list, sf.algorithm, opts.maglev_seed);
    let detector = node.local_cidrs(opts.local_detect, family);
    let fkey = |kind, addr, port| FrontendKey {
        service: sf.key.clone(),
        port_name: p.name.clone(),
        protocol: p.protocol,
        kind,
        addr,
        port,
    };
    let base = Frontend {
        pool: Pool {
            backends: Vec::new(),
            maglev: None,
        },
        no_backends: if cat.has_any {
            NoBackends::Drop
        } else {
            NoBackends::Reject
        },
        masquerade: Masquerade::Never,
        short_circuit: None,
        affinity_timeout: sf.affinity,
        algorithm: sf.algorithm,
        source_ranges: Vec::new(),
    };

    // ClusterIP: internal traffic.
    let mut internal = base.clone();
    let internal_eps = if sf.itp_local { &cat.local } else { &cat.cluster };
    if cat.has_any && !internal_eps.is_empty() {
        internal.pool = pool(internal_eps);
    }
    internal.masquerade = if opts.masquerade_all {
        Masquerade::Always
    } else if detector.is_empty() {
        Masquerade::Never
    } else {
        Masquerade::UnlessSourceIn(detector.clone())
    };
    out.push((
        fkey(FrontendKind::ClusterIp, FrontendAddr::Ip(cluster_ip), p.port),
        internal,
    ));

    if !policy.externally_accessible {
        return;
    }
    // External traffic: externalIPs, LoadBalancer IPs, NodePorts.
    let mut external = base;
    if cat.has_any {
        if sf.etp_local {
            external.pool = pool(&cat.local);
            external.short_circuit = Some(ShortCircuit {
                pod_sources: detector,
                pool: pool(&cat.cluster),
            });
        } else {
            external.pool = pool(&cat.cluster);
            external.masquerade = Masquerade::Always;
        }
    }
    for ip in &ext {
        out.push((
            fkey(FrontendKind::ExternalIp, FrontendAddr::Ip(*ip), p.port),
            external.clone(),
        ));
    }
    if !lbs.is_empty() {
        let mut lb = external.clone();
        lb.source_ranges = lb_source_ranges(&sf.source_ranges, &lbs, node, family);
        for ip in &lbs {
            out.push((
                fkey(FrontendKind::LoadBalancer, FrontendAddr::Ip(*ip), p.port),
                lb.clone(),
            ));
        }
    }
    if p.node_port != 0 {
        match node.nodeport_targets(&opts.nodeport_addresses, family) {
            NodePortTargets::AnyLocal => out.push((
                fkey(FrontendKind::NodePort, FrontendAddr::AnyLocal(family), p.node_port),
                external.clone(),
            )),
            NodePortTargets::Addresses(addrs) => {
                for a in addrs {
                    out.push((
                        fkey(FrontendKind::NodePort, FrontendAddr::Ip(a), p.node_port),
                        external.clone(),
                    ));
                }
            }
        }
    }
}

/// kube-proxy's GetClusterIPByFamily: the first `clusterIPs` entry of each family.
fn cluster_ips_by_family(
    cx: &mut Ctx<'_>,
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
) -> BTreeMap<IpFamily, IpAddr> {
    let list: Vec<&str> = match spec.cluster_ips.as_ref().filter(|v| !v.is_empty()) {
        Some(v) => v.iter().map(|s| s.as_str()).collect(),
        None => spec.cluster_ip.iter().map(|s| s.as_str()).collect(),
    };
    let mut out = BTreeMap::new();
    for s in list {
        match s.trim().parse::<IpAddr>() {
            Ok(ip) => {
                out.entry(IpFamily::of(&ip)).or_insert(ip);
            }
            Err(_) => cx.service_problem(
                ProblemKind::InvalidClusterIp,
                format!("clusterIP {s:?} is not an IP address"),
            ),
        }
    }
    out
}

fn port_specs(cx: &mut Ctx<'_>, ports: &[k8s_openapi::api::core::v1::ServicePort]) -> Vec<PortSpec> {
    let mut out: Vec<PortSpec> = Vec::new();
    for sp in ports {
        let name = sp.name.clone().unwrap_or_default();
        let Some(protocol) = Protocol::from_k8s(sp.protocol.as_deref()) else {
            cx.service_problem(
                ProblemKind::InvalidProtocol,
                format!(
                    "port {name:?}: protocol {:?} is not TCP, UDP or SCTP; port left out",
                    sp.protocol.as_deref().unwrap_or("")
                ),
            );
            continue;
        };
        let Some(port) = u16::try_from(sp.port).ok().filter(|p| *p != 0) else {
            cx.service_problem(
                ProblemKind::InvalidPort,
                format!("port {name:?}: port {} is not in 1-65535; port left out", sp.port),
            );
            continue;
        };
        let Ok(node_port) = u16::try_from(sp.node_port.unwrap_or(0)) else {
            cx.service_problem(
                ProblemKind::InvalidPort,
                format!(
                    "port {name:?}: nodePort {} is not in 0-65535; port left out",
                    sp.node_port.unwrap_or(0)
                ),
            );
            continue;
        };
        if out.iter().any(|o| o.name == name && o.protocol == protocol) {
            cx.service_problem(
                ProblemKind::InvalidPort,
                format!("port {name:?}/{protocol} is listed twice; the second is left out"),
            );
            continue;
        }
        out.push(PortSpec {
            name,
            protocol,
            port,
            node_port,
        });
    }
    out
}

fn parse_ips(cx: &mut Ctx<'_>, list: &[String], kind: ProblemKind, field: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for s in list {
        match s.trim().parse::<IpAddr>() {
            Ok(ip) => {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
            Err(_) => cx.service_problem(kind, format!("{field} entry {s:?} is not an IP address; left out")),
        }
    }
    out
}

/// `status.loadBalancer.ingress[].ip` with `ipMode` unset or `VIP`. `Proxy` mode LBs deliver to
/// the nodes themselves, so their IPs are not captured (kube-proxy's IsVIPMode).
fn load_balancer_vips(cx: &mut Ctx<'_>, svc: &Service) -> Vec<IpAddr> {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref());
    let ips: Vec<String> = ingress
        .into_iter()
        .flatten()
        .filter(|i| i.ip_mode.as_deref().is_none_or(|m| m == "VIP"))
        .filter_map(|i| i.ip.clone().filter(|ip| !ip.is_empty()))
        .collect();
    parse_ips(
        cx,
        &ips,
        ProblemKind::InvalidLoadBalancerIp,
        "status.loadBalancer.ingress ip",
    )
}

fn source_ranges(cx: &mut Ctx<'_>, list: &[String]) -> Vec<IpNetwork> {
    let mut out = Vec::new();
    for s in list {
        // Validation accepts whitespace padding; kube-proxy trims it.
        match s.trim().parse::<IpNetwork>() {
            // Normalised to the network address (`10.0.0.1/8` → `10.0.0.0/8`).
            Ok(n) => out.push(IpNetwork::new(n.network(), n.prefix()).unwrap_or(n)),
            Err(_) => cx.service_problem(
                ProblemKind::InvalidSourceRange,
                format!("loadBalancerSourceRanges entry {s:?} is not a CIDR; left out"),
            ),
        }
    }
    out
}

/// The source ranges of `family`; when a node address is inside one, the LB IPs too (a node
/// reaching its own VIP-local LB IP sources from the VIP).
fn lb_source_ranges(ranges: &[IpNetwork], lbs: &[IpAddr], node: &NodeFacts, family: IpFamily) -> Vec<IpNetwork> {
    let mut out: Vec<IpNetwork> = ranges
        .iter()
        .copied()
        .filter(|r| IpFamily::of_net(r) == family)
        .collect();
    if out.is_empty() {
        return out;
    }
    if node.addresses_of(family).any(|a| out.iter().any(|r| r.contains(a))) {
        for ip in lbs {
            let host = IpNetwork::from(*ip);
            if !out.contains(&host) {
                out.push(host);
            }
        }
    }
    out
}

fn affinity(cx: &mut Ctx<'_>, spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Option<u32> {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return None;
    }
    let t = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    match t {
        None => Some(DEFAULT_AFFINITY_TIMEOUT),
        Some(t) if (1..=MAX_AFFINITY_TIMEOUT).contains(&t) => Some(t as u32),
        Some(t) => {
            cx.service_problem(
                ProblemKind::InvalidAffinityTimeout,
                format!("sessionAffinityConfig.clientIP.timeoutSeconds {t} is not in 1-86400; using {DEFAULT_AFFINITY_TIMEOUT}"),
            );
            Some(DEFAULT_AFFINITY_TIMEOUT)
        }
    }
}

fn algorithm(cx: &mut Ctx<'_>, svc: &Service) -> LbAlgorithm {
    let default = cx.opts.default_algorithm;
    let Some(value) = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LB_ALGORITHM_ANNOTATION))
    else {
        return default;
    };
    match LbAlgorithm::parse(value.trim()) {
        Some(a) => a,
        None => {
            cx.service_problem(
                ProblemKind::InvalidLbAlgorithm,
                format!(
                    "annotation {LB_ALGORITHM_ANNOTATION}={value:?} is not random, round-robin, source-hash or maglev; using {default}"
                ),
            );
            default
        }
    }
}

/// A slice's endpoints of `family`, parsed once (the first address counts, as in kube-proxy).
fn slice_endpoints(cx: &mut Ctx<'_>, slice_name: &str, slice: &EndpointSlice, family: IpFamily) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for ep in slice.endpoints.iter().flatten() {
        let Some(first) = ep.addresses.first() else {
            cx.slice_problem(
                slice_name,
                ProblemKind::InvalidEndpointAddress,
                "endpoint without addresses; left out".into(),
            );
            continue;
        };
        let Ok(ip) = first.trim().parse::<IpAddr>() else {
            cx.slice_problem(
                slice_name,
                ProblemKind::InvalidEndpointAddress,
                format!("endpoint address {first:?} is not an IP address; left out"),
            );
            continue;
        };
        if IpFamily::of(&ip) != family {
            cx.slice_problem(
                slice_name,
                ProblemKind::WrongAddressFamily,
                format!(
                    "endpoint address {ip} in a slice of addressType {}; left out",
                    slice.address_type
                ),
            );
            continue;
        }
        let cond = ep.conditions.as_ref();
        let hints = ep.hints.as_ref();
        out.push(Endpoint {
            ip,
            port: 0,
            node_name: ep.node_name.clone(),
            zone: ep.zone.clone(),
            local: !cx.node.name.is_empty() && ep.node_name.as_deref() == Some(cx.node.name.as_str()),
            // EndpointConditions: ready and serving default to true, terminating to false.
            ready: cond.and_then(|c| c.ready).unwrap_or(true),
            serving: cond.and_then(|c| c.serving).unwrap_or(true),
            terminating: cond.and_then(|c| c.terminating).unwrap_or(false),
            zone_hints: hints
                .and_then(|h| h.for_zones.as_ref())
                .map(|z| z.iter().map(|z| z.name.clone()).collect())
                .unwrap_or_default(),
            node_hints: hints
                .and_then(|h| h.for_nodes.as_ref())
                .map(|n| n.iter().map(|n| n.name.clone()).collect())
                .unwrap_or_default(),
        });
    }
    out
}

/// Adds a slice's endpoints under each of its ports (the port number comes from this slice:
/// a named targetPort may resolve differently per slice).
fn add_slice(
    cx: &mut Ctx<'_>,
    slice_name: &str,
    slice: &EndpointSlice,
    endpoints: &[Endpoint],
    map: &mut EndpointsByPort,
) {
    for port in slice.ports.iter().flatten() {
        let name = port.name.as_deref().unwrap_or_default();
        let Some(protocol) = Protocol::from_k8s(port.protocol.as_deref()) else {
            cx.slice_problem(
                slice_name,
                ProblemKind::InvalidProtocol,
                format!(
                    "port {name:?}: protocol {:?} is not TCP, UDP or SCTP; left out",
                    port.protocol.as_deref().unwrap_or("")
                ),
            );
            continue;
        };
        let Some(number) = port.port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) else {
            cx.slice_problem(
                slice_name,
                ProblemKind::InvalidSlicePort,
                format!(
                    "port {name:?}/{protocol} has no valid port number ({:?}); left out",
                    port.port
                ),
            );
            continue;
        };
        let set = map.entry(name, protocol);
        for ep in endpoints {
            // The same ip:port in two slices (an endpoint moving between slices, or an IP
            // reused by a new pod while the old one terminates): prefer the non-terminating one.
            let k = (ep.ip, number);
            if !ep.terminating || !set.contains_key(&k) {
                let mut ep = ep.clone();
                ep.port = number;
                set.insert(k, ep);
            }
        }
    }
}

fn make_pool(list: &[&Endpoint], algorithm: LbAlgorithm, seed: u64) -> Pool {
    let backends: Vec<Backend> = list.iter().map(|e| e.to_backend()).collect();
    let maglev = if algorithm == LbAlgorithm::Maglev {
        let names: Vec<String> = backends.iter().map(|b| b.endpoint_string()).collect();
        MaglevTable::build(&names, seed)
    } else {
        None
    };
    Pool { backends, maglev }
}
