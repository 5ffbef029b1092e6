//! Semantics tests, each named after the kube-proxy behaviour it pins.

use std::net::IpAddr;
use std::time::Instant;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

use crate::*;

fn node() -> NodeFacts {
    NodeFacts {
        name: "node-a".into(),
        zone: Some("zone-a".into()),
        addresses: vec![
            "192.168.1.10".parse().unwrap(),
            "fd00:1::10".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
        ],
        pod_cidrs: vec!["10.244.1.0/24".parse().unwrap(), "fd00:10:244:1::/64".parse().unwrap()],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap(), "fd00:10:244::/56".parse().unwrap()],
    }
}

fn service(v: Value) -> Service {
    serde_json::from_value(v).expect("test Service JSON")
}

fn slice_obj(v: Value) -> EndpointSlice {
    serde_json::from_value(v).expect("test EndpointSlice JSON")
}

/// A ClusterIP Service `default/<name>` with one TCP port 80 named "http".
fn svc(name: &str, spec: Value) -> Value {
    let mut base = json!({
        "metadata": {"namespace": "default", "name": name},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "type": "ClusterIP",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
    });
    merge(&mut base["spec"], spec);
    base
}

fn merge(a: &mut Value, b: Value) {
    if let (Value::Object(a), Value::Object(b)) = (a, b) {
        for (k, v) in b {
            a.insert(k, v);
        }
    }
}

fn ep(ip: &str, node: &str) -> Value {
    json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": true, "serving": true, "terminating": false}})
}

fn ep_cond(ip: &str, node: &str, ready: bool, serving: bool, terminating: bool) -> Value {
    json!({"addresses": [ip], "nodeName": node,
           "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
}

/// A slice `<name>` for Service `default/<svc>` with port "http"/TCP = `port`.
fn slice(name: &str, svc: &str, port: u16, endpoints: Vec<Value>) -> Value {
    json!({
        "metadata": {"namespace": "default", "name": name, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

fn build_with(services: Vec<Value>, slices: Vec<Value>, node: NodeFacts, opts: Options) -> (ChangeTracker, Model) {
    let mut t = ChangeTracker::new();
    for s in services {
        t.upsert_service(service(s)).unwrap();
    }
    for s in slices {
        t.upsert_slice(slice_obj(s)).unwrap();
    }
    let changes = t.take_changes();
    let mut m = Model::new(node, opts);
    m.recompute(&t, &changes);
    (t, m)
}

fn build(services: Vec<Value>, slices: Vec<Value>) -> Model {
    build_with(services, slices, node(), Options::default()).1
}

fn key(name: &str) -> ServiceKey {
    ServiceKey::new("default", name)
}

fn of_kind<'a>(m: &'a Model, name: &str, kind: FrontendKind) -> Vec<(&'a FrontendKey, &'a Frontend)> {
    m.service_frontends(&key(name))
        .filter(|(k, _)| k.kind == kind)
        .collect()
}

fn one<'a>(m: &'a Model, name: &str, kind: FrontendKind) -> &'a Frontend {
    let v = of_kind(m, name, kind);
    assert_eq!(v.len(), 1, "want exactly one {kind} frontend of {name}, have {v:?}");
    v[0].1
}

fn eps(p: &Pool) -> Vec<String> {
    p.backends.iter().map(|b| b.endpoint_string()).collect()
}

fn kinds(m: &Model, name: &str) -> Vec<ProblemKind> {
    m.service_problems(&key(name)).iter().map(|p| p.kind).collect()
}

#[test]
fn cluster_ip_basic_with_masquerade_for_off_cluster_sources() {
    let m = build(
        vec![svc("web", json!({}))],
        vec![slice(
            "web-1",
            "web",
            8080,
            vec![ep("10.244.1.5", "node-a"), ep("10.244.2.5", "node-b")],
        )],
    );
    let (k, f) = of_kind(&m, "web", FrontendKind::ClusterIp)[0];
    assert_eq!(k.addr, FrontendAddr::Ip("10.96.0.10".parse().unwrap()));
    assert_eq!((k.port, k.protocol, k.port_name.as_str()), (80, Protocol::Tcp, "http"));
    assert_eq!(eps(&f.pool), ["10.244.1.5:8080", "10.244.2.5:8080"]);
    assert!(f.pool.backends[0].local && !f.pool.backends[1].local);
    assert_eq!(
        f.masquerade,
        Masquerade::UnlessSourceIn(vec!["10.244.0.0/16".parse().unwrap()])
    );
    assert_eq!(f.algorithm, LbAlgorithm::Random);
    assert_eq!(f.affinity_timeout, None);
    assert!(f.short_circuit.is_none());
    assert_eq!(
        m.frontends().len(),
        1,
        "a ClusterIP Service has only its ClusterIP frontend"
    );
    assert!(m.problems().next().is_none());
}

#[test]
fn masquerade_all_masquerades_cluster_ip_traffic() {
    let opts = Options {
        masquerade_all: true,
        ..Options::default()
    };
    let (_, m) = build_with(
        vec![svc("web", json!({}))],
        vec![slice("s", "web", 80, vec![ep("10.244.1.5", "n")])],
        node(),
        opts,
    );
    assert_eq!(one(&m, "web", FrontendKind::ClusterIp).masquerade, Masquerade::Always);
    // Without any detector CIDR kube-proxy cannot tell pods from the rest: no masquerade.
    let bare = NodeFacts {
        cluster_cidrs: vec![],
        ..node()
    };
    let (_, m) = build_with(
        vec![svc("web", json!({}))],
        vec![slice("s", "web", 80, vec![ep("10.244.1.5", "n")])],
        bare,
        Options::default(),
    );
    assert_eq!(one(&m, "web", FrontendKind::ClusterIp).masquerade, Masquerade::Never);
}

#[test]
fn dual_stack_cluster_ips_get_their_own_family_endpoints() {
    let s = svc(
        "ds",
        json!({"clusterIPs": ["10.96.0.20", "fd00:10:96::20"], "ipFamilies": ["IPv4", "IPv6"]}),
    );
    let mut v6 = slice("ds-v6", "ds", 8080, vec![ep("fd00:10:244:1::5", "node-a")]);
    v6["addressType"] = json!("IPv6");
    let m = build(
        vec![s],
        vec![slice("ds-v4", "ds", 8080, vec![ep("10.244.1.5", "node-a")]), v6],
    );
    let c = of_kind(&m, "ds", FrontendKind::ClusterIp);
    assert_eq!(c.len(), 2);
    let (k4, f4) = c.iter().find(|(k, _)| k.addr.family() == IpFamily::V4).unwrap();
    let (k6, f6) = c.iter().find(|(k, _)| k.addr.family() == IpFamily::V6).unwrap();
    assert_eq!(k4.addr, FrontendAddr::Ip("10.96.0.20".parse().unwrap()));
    assert_eq!(k6.addr, FrontendAddr::Ip("fd00:10:96::20".parse().unwrap()));
    assert_eq!(eps(&f4.pool), ["10.244.1.5:8080"]);
    assert_eq!(eps(&f6.pool), ["[fd00:10:244:1::5]:8080"]);
    assert_eq!(
        f6.masquerade,
        Masquerade::UnlessSourceIn(vec!["fd00:10:244::/56".parse().unwrap()])
    );
}

#[test]
fn headless_external_name_and_labelled_services_are_left_alone() {
    let headless = svc("headless", json!({"clusterIP": "None", "clusterIPs": ["None"]}));
    let ext = json!({"metadata": {"namespace": "default", "name": "ext"},
                     "spec": {"type": "ExternalName", "externalName": "example.com"}});
    let mut other = svc("other-proxy", json!({}));
    other["metadata"]["labels"] = json!({"service.kubernetes.io/service-proxy-name": "foo"});
    let mut hl = svc("headless-label", json!({}));
    hl["metadata"]["labels"] = json!({"service.kubernetes.io/headless": ""});
    let slices = ["headless", "ext", "other-proxy", "headless-label"]
        .iter()
        .map(|n| slice(&format!("{n}-1"), n, 80, vec![ep("10.244.1.5", "node-a")]))
        .collect();
    let m = build(vec![headless, ext, other, hl, svc("control", json!({}))], slices);
    // Only the control Service is proxied, and nothing else is reported as a problem.
    let services: Vec<&ServiceKey> = m.frontends().keys().map(|k| &k.service).collect();
    assert!(services.iter().all(|s| s.name == "control"), "{services:?}");
    assert_eq!(m.frontends().len(), 1);
    assert!(m.problems().next().is_none(), "{:?}", m.problems().collect::<Vec<_>>());

    // A slice with one of the labels does not exist for the model either.
    let mut t = ChangeTracker::new();
    let mut s = slice("x", "control", 80, vec![]);
    s["metadata"]["labels"]["service.kubernetes.io/headless"] = json!("");
    assert_eq!(t.upsert_slice(slice_obj(s)).unwrap(), None);
    assert_eq!(t.slice_count(), 0);
}

#[test]
fn multiple_ports_and_same_port_on_two_protocols() {
    let s = svc(
        "dns",
        json!({"ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 5353},
            {"name": "metrics", "port": 9153, "protocol": "TCP"},
            {"name": "sctp", "port": 9999, "protocol": "SCTP"}
        ]}),
    );
    let sl = json!({
        "metadata": {"namespace": "default", "name": "dns-1", "labels": {"kubernetes.io/service-name": "dns"}},
        "addressType": "IPv4",
        "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"},
                  {"name": "dns-tcp", "port": 5354, "protocol": "TCP"},
                  {"name": "metrics", "port": 9153, "protocol": "TCP"},
                  {"name": "sctp", "port": 9999, "protocol": "SCTP"}],
        "endpoints": [ep("10.244.1.7", "node-a")]
    });
    let m = build(vec![s], vec![sl]);
    let c = of_kind(&m, "dns", FrontendKind::ClusterIp);
    let got: Vec<(u16, Protocol, String)> = c
        .iter()
        .map(|(k, f)| (k.port, k.protocol, eps(&f.pool).join(",")))
        .collect();
    assert_eq!(got.len(), 4);
    assert!(got.contains(&(53, Protocol::Udp, "10.244.1.7:5353".into())), "{got:?}");
    assert!(got.contains(&(53, Protocol::Tcp, "10.244.1.7:5354".into())), "{got:?}");
    assert!(
        got.contains(&(9153, Protocol::Tcp, "10.244.1.7:9153".into())),
        "{got:?}"
    );
    assert!(
        got.contains(&(9999, Protocol::Sctp, "10.244.1.7:9999".into())),
        "{got:?}"
    );
}

#[test]
fn slice_port_matches_by_name_and_protocol_not_by_name_alone() {
    // A UDP port must not take endpoints from a TCP slice port of the same name.
    let s = svc("p", json!({"ports": [{"name": "x", "port": 53, "protocol": "UDP"}]}));
    let sl = json!({
        "metadata": {"namespace": "default", "name": "p-1", "labels": {"kubernetes.io/service-name": "p"}},
        "addressType": "IPv4",
        "ports": [{"name": "x", "port": 53, "protocol": "TCP"}],
        "endpoints": [ep("10.244.1.7", "node-a")]
    });
    let m = build(vec![s], vec![sl]);
    let f = one(&m, "p", FrontendKind::ClusterIp);
    assert!(f.pool.backends.is_empty());
    assert_eq!(f.no_backends, NoBackends::Reject);
    assert_eq!(kinds(&m, "p"), [ProblemKind::PortNotInSlices]);
}

#[test]
fn named_target_port_resolves_per_slice() {
    // targetPort "web" is 8080 in one Deployment's pods and 9090 in another's: the slice
    // controller writes each number into its slice, and the model uses each slice's own.
    let s = svc(
        "named",
        json!({"ports": [{"name": "http", "port": 80, "targetPort": "web"}]}),
    );
    let m = build(
        vec![s],
        vec![
            slice("named-a", "named", 8080, vec![ep("10.244.1.5", "node-a")]),
            slice("named-b", "named", 9090, vec![ep("10.244.2.6", "node-b")]),
        ],
    );
    assert_eq!(
        eps(&one(&m, "named", FrontendKind::ClusterIp).pool),
        ["10.244.1.5:8080", "10.244.2.6:9090"]
    );
}

#[test]
fn slices_are_merged_and_endpoints_deduplicated() {
    let m = build(
        vec![svc("web", json!({}))],
        vec![
            slice(
                "web-1",
                "web",
                8080,
                vec![ep("10.244.1.5", "node-a"), ep("10.244.2.5", "node-b")],
            ),
            // The same endpoint in a second slice (moving between slices): once.
            slice(
                "web-2",
                "web",
                8080,
                vec![ep("10.244.2.5", "node-b"), ep("10.244.3.5", "node-c")],
            ),
            // An old terminating pod and a new ready one with the same IP: the ready one wins,
            // whatever the slice order.
            slice(
                "web-0",
                "web",
                8080,
                vec![ep_cond("10.244.4.4", "node-d", false, true, true)],
            ),
            slice("web-9", "web", 8080, vec![ep("10.244.4.4", "node-d")]),
        ],
    );
    let f = one(&m, "web", FrontendKind::ClusterIp);
    assert_eq!(
        eps(&f.pool),
        [
            "10.244.1.5:8080",
            "10.244.2.5:8080",
            "10.244.3.5:8080",
            "10.244.4.4:8080"
        ]
    );
    assert!(f.pool.backends[3].ready && !f.pool.backends[3].terminating);
}

#[test]
fn ready_endpoints_else_serving_terminating_never_not_serving() {
    let mix = vec![
        ep_cond("10.244.1.1", "node-a", true, true, false),
        ep_cond("10.244.1.2", "node-a", false, true, true),
        ep_cond("10.244.1.3", "node-a", false, false, true),
        ep_cond("10.244.1.4", "node-a", false, false, false),
    ];
    let m = build(vec![svc("web", json!({}))], vec![slice("s", "web", 80, mix)]);
    assert_eq!(eps(&one(&m, "web", FrontendKind::ClusterIp).pool), ["10.244.1.1:80"]);

    let fallback = vec![
        ep_cond("10.244.1.2", "node-a", false, true, true),
        ep_cond("10.244.1.3", "node-a", false, false, true),
        ep_cond("10.244.1.4", "node-a", false, false, false),
    ];
    let m = build(vec![svc("web", json!({}))], vec![slice("s", "web", 80, fallback)]);
    let f = one(&m, "web", FrontendKind::ClusterIp);
    assert_eq!(eps(&f.pool), ["10.244.1.2:80"]);
    assert!(f.pool.backends[0].terminating && f.pool.backends[0].serving);

    let none = vec![
        ep_cond("10.244.1.3", "node-a", false, false, true),
        ep_cond("10.244.1.4", "node-a", false, false, false),
    ];
    let m = build(vec![svc("web", json!({}))], vec![slice("s", "web", 80, none)]);
    let f = one(&m, "web", FrontendKind::ClusterIp);
    assert!(f.pool.backends.is_empty());
    assert_eq!(
        f.no_backends,
        NoBackends::Reject,
        "no usable endpoint anywhere → reject, not drop"
    );

    // Conditions left out mean ready and serving (the API's defaults).
    let bare = vec![json!({"addresses": ["10.244.1.9"]})];
    let m = build(vec![svc("web", json!({}))], vec![slice("s", "web", 80, bare)]);
    assert_eq!(eps(&one(&m, "web", FrontendKind::ClusterIp).pool), ["10.244.1.9:80"]);
}

#[test]
fn no_slices_at_all_rejects() {
    let m = build(vec![svc("web", json!({}))], vec![]);
    let f = one(&m, "web", FrontendKind::ClusterIp);
    assert!(f.pool.backends.is_empty());
    assert_eq!(f.no_backends, NoBackends::Reject);
    assert!(m.problems().next().is_none(), "a Service without endpoints is normal");
}

#[test]
fn internal_traffic_policy_local() {
    let s = svc("itp", json!({"internalTrafficPolicy": "Local"}));
    let m = build(
        vec![s.clone()],
        vec![slice(
            "s",
            "itp",
            80,
            vec![ep("10.244.1.5", "node-a"), ep("10.244.2.5", "node-b")],
        )],
    );
    assert_eq!(eps(&one(&m, "itp", FrontendKind::ClusterIp).pool), ["10.244.1.5:80"]);

    // Endpoints only elsewhere: drop (kube-proxy), not reject.
    let m = build(
        vec![s.clone()],
        vec![slice("s", "itp", 80, vec![ep("10.244.2.5", "node-b")])],
    );
    let f = one(&m, "itp", FrontendKind::ClusterIp);
    assert!(f.pool.backends.is_empty());
    assert_eq!(f.no_backends, NoBackends::Drop);

    // Local fallback to serving-terminating is independent of other nodes' ready endpoints.
    let m = build(
        vec![s],
        vec![slice(
            "s",
            "itp",
            80,
            vec![
                ep_cond("10.244.1.5", "node-a", false, true, true),
                ep("10.244.2.5", "node-b"),
            ],
        )],
    );
    assert_eq!(eps(&one(&m, "itp", FrontendKind::ClusterIp).pool), ["10.244.1.5:80"]);
}

fn lb_service(name: &str, extra: Value) -> Value {
    let mut s = svc(
        name,
        json!({"type": "LoadBalancer", "healthCheckNodePort": 32000,
               "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}],
               "externalIPs": ["203.0.113.7"]}),
    );
    merge(&mut s["spec"], extra);
    s["status"] = json!({"loadBalancer": {"ingress": [
        {"ip": "198.51.100.1"},
        {"ip": "198.51.100.2", "ipMode": "VIP"},
        {"ip": "198.51.100.3", "ipMode": "Proxy"},
        {"hostname": "lb.example.com"}
    ]}});
    s
}

#[test]
fn external_frontends_load_balancer_vip_only_external_ips_and_node_ports() {
    let m = build(
        vec![lb_service("lb", json!({}))],
        vec![slice(
            "s",
            "lb",
            8080,
            vec![ep("10.244.1.5", "node-a"), ep("10.244.2.5", "node-b")],
        )],
    );
    let lbs: Vec<String> = of_kind(&m, "lb", FrontendKind::LoadBalancer)
        .iter()
        .map(|(k, _)| k.addr.to_string())
        .collect();
    assert_eq!(lbs, ["198.51.100.1", "198.51.100.2"], "ipMode Proxy is not captured");
    let ext = one(&m, "lb", FrontendKind::ExternalIp);
    assert_eq!(
        ext.masquerade,
        Masquerade::Always,
        "eTP Cluster: external traffic is masqueraded"
    );
    assert_eq!(eps(&ext.pool), ["10.244.1.5:8080", "10.244.2.5:8080"]);
    let np = of_kind(&m, "lb", FrontendKind::NodePort);
    let np: Vec<(String, u16)> = np.iter().map(|(k, _)| (k.addr.to_string(), k.port)).collect();
    // Primary mode: the node's addresses of the Service's families, never loopback; the
    // Service is IPv4-only so the node's IPv6 address is not used.
    assert_eq!(np, [("192.168.1.10".to_string(), 30080)]);
    assert!(m.health_check(&key("lb")).is_none(), "health checks only for eTP Local");
    let vips: Vec<String> = m.cluster_ips().iter().map(|i| i.to_string()).collect();
    assert_eq!(
        vips,
        ["10.96.0.10"],
        "LB, external and node addresses are not ClusterIPs"
    );
}

#[test]
fn external_traffic_policy_local() {
    let s = lb_service("etp", json!({"externalTrafficPolicy": "Local"}));
    let m = build(
        vec![s.clone()],
        vec![slice(
            "s",
            "etp",
            8080,
            vec![ep("10.244.1.5", "node-a"), ep("10.244.2.5", "node-b")],
        )],
    );
    for kind in [FrontendKind::NodePort, FrontendKind::ExternalIp] {
        let f = one(&m, "etp", kind);
        assert_eq!(eps(&f.pool), ["10.244.1.5:8080"], "{kind}: only this node's endpoints");
        assert_eq!(f.masquerade, Masquerade::Never, "{kind}: client source IP preserved");
        let sc = f
            .short_circuit
            .as_ref()
            .expect("pod and node traffic short-circuits to cluster endpoints");
        assert_eq!(eps(&sc.pool), ["10.244.1.5:8080", "10.244.2.5:8080"]);
        assert_eq!(
            sc.pod_sources,
            vec!["10.244.0.0/16".parse::<ipnetwork::IpNetwork>().unwrap()]
        );
    }
    // ClusterIP is internal traffic: eTP does not apply.
    assert_eq!(eps(&one(&m, "etp", FrontendKind::ClusterIp).pool).len(), 2);
    assert_eq!(
        m.health_check(&key("etp")),
        Some(&HealthCheck {
            node_port: 32000,
            local_endpoints: 1
        })
    );

    // No local endpoint: external traffic from outside is dropped; the health check says 0.
    let m = build(
        vec![s.clone()],
        vec![slice("s", "etp", 8080, vec![ep("10.244.2.5", "node-b")])],
    );
    let f = &of_kind(&m, "etp", FrontendKind::LoadBalancer)[0].1;
    assert!(f.pool.backends.is_empty());
    assert_eq!(f.no_backends, NoBackends::Drop);
    assert_eq!(eps(&f.short_circuit.as_ref().unwrap().pool), ["10.244.2.5:8080"]);
    assert_eq!(m.health_check(&key("etp")).unwrap().local_endpoints, 0);

    // Only a terminating local endpoint: it still serves (fallback) but the health check
    // counts only ready ones, so the LB moves traffic away.
    let m = build(
        vec![s.clone()],
        vec![slice(
            "s",
            "etp",
            8080,
            vec![
                ep_cond("10.244.1.5", "node-a", false, true, true),
                ep("10.244.2.5", "node-b"),
            ],
        )],
    );
    assert_eq!(eps(&one(&m, "etp", FrontendKind::NodePort).pool), ["10.244.1.5:8080"]);
    assert_eq!(m.health_check(&key("etp")).unwrap().local_endpoints, 0);

    // No endpoints anywhere: reject everything, no short-circuit.
    let m = build(vec![s], vec![]);
    let f = one(&m, "etp", FrontendKind::NodePort);
    assert_eq!(f.no_backends, NoBackends::Reject);
    assert!(f.short_circuit.is_none());
}

#[test]
fn external_traffic_policy_ignored_for_plain_cluster_ip() {
    // kube-proxy's ExternalPolicyLocal: only NodePort/LoadBalancer or with externalIPs.
    let s = svc("c", json!({"externalTrafficPolicy": "Local"}));
    let m = build(vec![s], vec![slice("s", "c", 80, vec![ep("10.244.2.5", "node-b")])]);
    assert_eq!(eps(&one(&m, "c", FrontendKind::ClusterIp).pool), ["10.244.2.5:80"]);
}

#[test]
fn load_balancer_source_ranges() {
    let s = lb_service(
        "fw",
        json!({"loadBalancerSourceRanges": [" 203.0.113.0/24 ", "2001:db8::/32"]}),
    );
    let m = build(vec![s], vec![slice("s", "fw", 80, vec![ep("10.244.1.5", "node-a")])]);
    let lb = &of_kind(&m, "fw", FrontendKind::LoadBalancer)[0].1;
    assert_eq!(
        lb.source_ranges,
        vec!["203.0.113.0/24".parse::<ipnetwork::IpNetwork>().unwrap()]
    );
    assert!(
        one(&m, "fw", FrontendKind::NodePort).source_ranges.is_empty(),
        "NodePorts are not firewalled (kube-proxy)"
    );
    assert!(one(&m, "fw", FrontendKind::ExternalIp).source_ranges.is_empty());

    // The node's own address is in a range: the LB IPs are allowed as sources too.
    let s = lb_service("fw", json!({"loadBalancerSourceRanges": ["192.168.0.0/16", "bad"]}));
    let m = build(vec![s], vec![slice("s", "fw", 80, vec![ep("10.244.1.5", "node-a")])]);
    let lb = &of_kind(&m, "fw", FrontendKind::LoadBalancer)[0].1;
    let r: Vec<String> = lb.source_ranges.iter().map(|n| n.to_string()).collect();
    assert_eq!(r, ["192.168.0.0/16", "198.51.100.1/32", "198.51.100.2/32"]);
    assert_eq!(kinds(&m, "fw"), [ProblemKind::InvalidSourceRange]);
}

#[test]
fn node_port_addresses() {
    let s = svc(
        "np",
        json!({"type": "NodePort", "clusterIPs": ["10.96.0.30", "fd00:10:96::30"],
                             "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
    );
    let sl = vec![slice("s", "np", 80, vec![ep("10.244.1.5", "node-a")])];
    let addrs = |opts: Options| -> Vec<String> {
        let (_, m) = build_with(vec![s.clone()], sl.clone(), node(), opts);
        of_kind(&m, "np", FrontendKind::NodePort)
            .iter()
            .map(|(k, _)| k.addr.to_string())
            .collect()
    };
    assert_eq!(addrs(Options::default()), ["192.168.1.10", "fd00:1::10"]);
    let cidrs = |c: &[&str]| Options {
        nodeport_addresses: NodePortAddresses::Cidrs(c.iter().map(|c| c.parse().unwrap()).collect()),
        ..Options::default()
    };
    // A v4 CIDR that matches: that address; no v6 CIDR given → every local v6 address.
    assert_eq!(addrs(cidrs(&["192.168.0.0/16"])), ["192.168.1.10", "any-local-ipv6"]);
    // A v4 CIDR that matches nothing: no v4 NodePort frontend at all.
    assert_eq!(addrs(cidrs(&["172.16.0.0/12", "fd00:1::/64"])), ["fd00:1::10"]);
    assert_eq!(
        addrs(cidrs(&["0.0.0.0/0", "::/0"])),
        ["any-local-ipv4", "any-local-ipv6"]
    );
}

#[test]
fn topology_zone_hints() {
    let hinted = |ip: &str, node: &str, zone: &str, hint: Option<&str>| {
        let mut e = ep(ip, node);
        e["zone"] = json!(zone);
        if let Some(h) = hint {
            e["hints"] = json!({"forZones": [{"name": h}]});
        }
        e
    };
    let s = svc("topo", json!({"trafficDistribution": "PreferClose"}));
    let run = |endpoints: Vec<Value>, node: NodeFacts| {
        let (_, m) = build_with(
            vec![s.clone()],
            vec![slice("s", "topo", 80, endpoints)],
            node,
            Options::default(),
        );
        eps(&one(&m, "topo", FrontendKind::ClusterIp).pool)
    };
    let all_hinted = vec![
        hinted("10.244.1.5", "node-a", "zone-a", Some("zone-a")),
        hinted("10.244.2.5", "node-b", "zone-b", Some("zone-b")),
        hinted("10.244.3.5", "node-c", "zone-a", Some("zone-a")),
    ];
    assert_eq!(run(all_hinted.clone(), node()), ["10.244.1.5:80", "10.244.3.5:80"]);
    // A node in a zone no hint names: every endpoint.
    let other_zone = NodeFacts {
        zone: Some("zone-z".into()),
        ..node()
    };
    assert_eq!(run(all_hinted.clone(), other_zone).len(), 3);
    // A node without a zone label: every endpoint.
    assert_eq!(run(all_hinted.clone(), NodeFacts { zone: None, ..node() }).len(), 3);
    // One ready endpoint without a hint: hints are ignored.
    let mut partial = all_hinted.clone();
    partial.push(hinted("10.244.4.5", "node-d", "zone-b", None));
    assert_eq!(run(partial, node()).len(), 4);
    // A not-ready endpoint without a hint does not count.
    let mut unready = all_hinted;
    unready.push(ep_cond("10.244.4.6", "node-d", false, false, false));
    assert_eq!(run(unready, node()), ["10.244.1.5:80", "10.244.3.5:80"]);
}

#[test]
fn topology_node_hints_prefer_same_node() {
    let with_hints = |ip: &str, node: &str, zone: &str| {
        let mut e = ep(ip, node);
        e["hints"] = json!({"forZones": [{"name": zone}], "forNodes": [{"name": node}]});
        e
    };
    let s = svc("pn", json!({"trafficDistribution": "PreferSameNode"}));
    let sl = vec![slice(
        "s",
        "pn",
        80,
        vec![
            with_hints("10.244.1.5", "node-a", "zone-a"),
            with_hints("10.244.2.5", "node-b", "zone-a"),
        ],
    )];
    let run = |node: NodeFacts, opts: Options| {
        let (_, m) = build_with(vec![s.clone()], sl.clone(), node, opts);
        eps(&one(&m, "pn", FrontendKind::ClusterIp).pool)
    };
    assert_eq!(run(node(), Options::default()), ["10.244.1.5:80"]);
    // Gate off (1.33 default): zone hints only → both zone-a endpoints.
    assert_eq!(
        run(
            node(),
            Options {
                node_hints: false,
                ..Options::default()
            }
        )
        .len(),
        2
    );
    // A node no endpoint is hinted for falls back to zone hints.
    assert_eq!(
        run(
            NodeFacts {
                name: "node-c".into(),
                ..node()
            },
            Options::default()
        )
        .len(),
        2
    );
}

#[test]
fn topology_does_not_apply_to_local_policy_and_fallback_ignores_it() {
    let mut far = ep_cond("10.244.2.5", "node-b", false, true, true);
    far["hints"] = json!({"forZones": [{"name": "zone-b"}]});
    // Nothing ready anywhere: serving-terminating endpoints from every zone.
    let m = build(vec![svc("t", json!({}))], vec![slice("s", "t", 80, vec![far])]);
    assert_eq!(eps(&one(&m, "t", FrontendKind::ClusterIp).pool), ["10.244.2.5:80"]);
}

#[test]
fn session_affinity_client_ip() {
    let m = build(vec![svc("a", json!({"sessionAffinity": "ClientIP"}))], vec![]);
    assert_eq!(one(&m, "a", FrontendKind::ClusterIp).affinity_timeout, Some(10800));
    let m = build(
        vec![svc(
            "a",
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
        )],
        vec![],
    );
    assert_eq!(one(&m, "a", FrontendKind::ClusterIp).affinity_timeout, Some(60));
    let m = build(
        vec![svc(
            "a",
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}),
        )],
        vec![],
    );
    assert_eq!(one(&m, "a", FrontendKind::ClusterIp).affinity_timeout, Some(10800));
    assert_eq!(kinds(&m, "a"), [ProblemKind::InvalidAffinityTimeout]);
    let m = build(vec![svc("a", json!({"sessionAffinity": "None"}))], vec![]);
    assert_eq!(one(&m, "a", FrontendKind::ClusterIp).affinity_timeout, None);
}

#[test]
fn lb_algorithm_annotation() {
    let with = |v: &str| {
        let mut s = svc("alg", json!({}));
        s["metadata"]["annotations"] = json!({"weft.io/lb-algorithm": v});
        s
    };
    let sl = || {
        vec![slice(
            "s",
            "alg",
            80,
            vec![ep("10.244.1.5", "node-a"), ep("10.244.2.5", "node-b")],
        )]
    };
    for (v, a) in [
        ("random", LbAlgorithm::Random),
        ("round-robin", LbAlgorithm::RoundRobin),
        ("source-hash", LbAlgorithm::SourceHash),
    ] {
        let m = build(vec![with(v)], sl());
        let f = one(&m, "alg", FrontendKind::ClusterIp);
        assert_eq!(f.algorithm, a);
        assert!(f.pool.maglev.is_none());
    }
    let m = build(vec![with("maglev")], sl());
    let f = one(&m, "alg", FrontendKind::ClusterIp);
    assert_eq!(f.algorithm, LbAlgorithm::Maglev);
    let t = f.pool.maglev.as_ref().expect("maglev table");
    assert_eq!(t.size(), 251);
    // Same table as building it directly from the backends with the cluster seed.
    assert_eq!(
        Some(t.clone()),
        MaglevTable::build(&["10.244.1.5:80", "10.244.2.5:80"], 0)
    );

    let opts = Options {
        default_algorithm: LbAlgorithm::RoundRobin,
        ..Options::default()
    };
    let (_, m) = build_with(vec![with("least-conn")], sl(), node(), opts);
    assert_eq!(
        one(&m, "alg", FrontendKind::ClusterIp).algorithm,
        LbAlgorithm::RoundRobin
    );
    assert_eq!(kinds(&m, "alg"), [ProblemKind::InvalidLbAlgorithm]);
}

#[test]
fn bad_data_is_reported_and_takes_no_other_service_down() {
    let zero_ports = svc("zero", json!({"ports": []}));
    let bad_ip = svc(
        "badip",
        json!({"clusterIP": "10.96.0.999", "clusterIPs": ["10.96.0.999"]}),
    );
    let mut wrong_family = slice("wf-6", "good", 80, vec![ep("fd00::5", "node-a")]);
    wrong_family["addressType"] = json!("IPv6");
    let fqdn = json!({
        "metadata": {"namespace": "default", "name": "good-fqdn", "labels": {"kubernetes.io/service-name": "good"}},
        "addressType": "FQDN", "ports": [{"name": "http", "port": 80}], "endpoints": [{"addresses": ["example.com"]}]
    });
    let slices = vec![
        slice(
            "good-1",
            "good",
            8080,
            vec![
                ep("10.244.1.5", "node-a"),
                ep("not-an-ip", "node-a"),
                ep("fd00::9", "node-a"),
            ],
        ),
        slice("orphan-1", "missing", 8080, vec![ep("10.244.9.9", "node-a")]),
        wrong_family,
        fqdn,
        // Port name "metrics" is in no slice.
    ];
    let good = svc(
        "good",
        json!({"ports": [{"name": "http", "port": 80}, {"name": "metrics", "port": 9090}, {"name": "bad", "port": 70000}]}),
    );
    let m = build(vec![good, zero_ports, bad_ip], slices);

    let f = m
        .service_frontends(&key("good"))
        .find(|(k, _)| k.port_name == "http")
        .unwrap()
        .1;
    assert_eq!(
        eps(&f.pool),
        ["10.244.1.5:8080"],
        "the bad endpoints are left out, the good one stays"
    );
    let mut got = kinds(&m, "good");
    got.sort();
    let mut want = vec![
        ProblemKind::InvalidPort,
        ProblemKind::PortNotInSlices,
        ProblemKind::InvalidEndpointAddress,
        ProblemKind::WrongAddressFamily,
        ProblemKind::WrongAddressFamily,
    ];
    want.sort();
    assert_eq!(got, want, "{:#?}", m.service_problems(&key("good")));
    assert_eq!(kinds(&m, "zero"), [ProblemKind::NoPorts]);
    assert_eq!(kinds(&m, "badip"), [ProblemKind::InvalidClusterIp]);
    assert_eq!(kinds(&m, "missing"), [ProblemKind::SliceWithoutService]);
    let orphan = &m.service_problems(&key("missing"))[0];
    assert_eq!(
        orphan.object,
        ObjectRef::EndpointSlice {
            namespace: "default".into(),
            name: "orphan-1".into()
        }
    );
    assert!(m.service_frontends(&key("missing")).next().is_none());
    assert!(m.service_frontends(&key("zero")).next().is_none());
}

#[test]
fn bad_external_addresses_slice_ports_and_health_check_ports_are_reported() {
    let mut s = lb_service(
        "lbbad",
        json!({"externalTrafficPolicy": "Local", "healthCheckNodePort": null, "externalIPs": ["203.0.113.7", "nope"]}),
    );
    s["status"]["loadBalancer"]["ingress"] = json!([{"ip": "198.51.100.1"}, {"ip": "300.1.1.1"}]);
    let sl = json!({
        "metadata": {"namespace": "default", "name": "lbbad-1", "labels": {"kubernetes.io/service-name": "lbbad"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "other", "protocol": "TCP"},
                  {"name": "x", "port": 1, "protocol": "ICMP"}],
        "endpoints": [ep("10.244.1.5", "node-a")]
    });
    let m = build(vec![s], vec![sl]);
    let mut got = kinds(&m, "lbbad");
    got.sort();
    assert_eq!(
        got,
        [
            ProblemKind::InvalidProtocol,
            ProblemKind::InvalidExternalIp,
            ProblemKind::InvalidLoadBalancerIp,
            ProblemKind::MissingHealthCheckNodePort,
            ProblemKind::InvalidSlicePort,
        ]
    );
    // The good parts still work.
    assert_eq!(
        eps(&one(&m, "lbbad", FrontendKind::ExternalIp).pool),
        ["10.244.1.5:8080"]
    );
    assert_eq!(of_kind(&m, "lbbad", FrontendKind::LoadBalancer).len(), 1);
    assert!(m.health_check(&key("lbbad")).is_none());
}

#[test]
fn tracker_rejects_objects_it_cannot_file() {
    let mut t = ChangeTracker::new();
    let mut s = slice("x", "web", 80, vec![]);
    s["metadata"]["labels"] = json!({});
    let err = t.upsert_slice(slice_obj(s)).unwrap_err();
    assert_eq!(
        err,
        InputError::NoServiceLabel {
            slice: SliceKey {
                namespace: "default".into(),
                name: "x".into()
            }
        }
    );
    assert!(err.to_string().contains("kubernetes.io/service-name"), "{err}");
    let mut v = svc("web", json!({}));
    v["metadata"] = json!({"name": "web"});
    assert!(matches!(
        t.upsert_service(service(v)),
        Err(InputError::NoNamespace { .. })
    ));
    assert_eq!(t.pending(), 0);
}

/// `n` ClusterIP Services with two endpoints each; every fourth has them in two slices.
fn fleet(n: usize) -> (Vec<Value>, Vec<Value>) {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for i in 0..n {
        let name = format!("svc-{i}");
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        services.push(svc(&name, json!({"clusterIP": ip, "clusterIPs": [ip]})));
        let a = format!("10.244.{}.{}", i / 125, (i % 125) * 2 + 1);
        let b = format!("10.244.{}.{}", i / 125, (i % 125) * 2 + 2);
        if i % 4 == 0 {
            slices.push(slice(&format!("{name}-a"), &name, 8080, vec![ep(&a, "node-a")]));
            slices.push(slice(&format!("{name}-b"), &name, 8080, vec![ep(&b, "node-b")]));
        } else {
            slices.push(slice(
                &format!("{name}-a"),
                &name,
                8080,
                vec![ep(&a, "node-a"), ep(&b, "node-b")],
            ));
        }
    }
    (services, slices)
}

#[test]
fn incremental_recompute_touches_only_the_changed_service_and_matches_full() {
    let (services, slices) = fleet(200);
    let (mut t, mut m) = build_with(services, slices, node(), Options::default());
    assert_eq!(m.recomputed_services_total(), 200);
    assert_eq!(m.frontends().len(), 200);

    // One slice changes: one endpoint becomes not ready.
    let mut changed = slice("svc-7-a", "svc-7", 8080, vec![ep("10.244.0.15", "node-a")]);
    changed["endpoints"]
        .as_array_mut()
        .unwrap()
        .push(ep_cond("10.244.0.16", "node-b", false, false, false));
    t.upsert_slice(slice_obj(changed)).unwrap();
    let changes = t.take_changes();
    assert_eq!(changes.len(), 1);
    let before = m.recomputed_services_total();
    let diff = m.recompute(&t, &changes);
    assert_eq!(m.recomputed_services_total() - before, 1, "only svc-7 is recomputed");
    assert_eq!(diff.services.len(), 1);
    let d = &diff.services[&key("svc-7")];
    assert_eq!((d.added.len(), d.removed.len(), d.changed.len()), (0, 0, 1));
    assert_eq!(
        eps(&one(&m, "svc-7", FrontendKind::ClusterIp).pool),
        ["10.244.0.15:8080"]
    );

    // Upserting an identical object records nothing.
    let (services, _) = fleet(200);
    t.upsert_service(service(services[3].clone())).unwrap();
    assert_eq!(t.pending(), 0);

    // Delete one slice of a two-slice Service, one Service, add a new one, and make a Service
    // NodePort; then the incremental model must equal a model built from scratch.
    t.delete_slice("default", "svc-8-b");
    assert!(t.delete_service("default", "svc-9"));
    t.upsert_service(service(svc(
        "new",
        json!({"clusterIP": "10.96.100.1", "clusterIPs": ["10.96.100.1"]}),
    )))
    .unwrap();
    t.upsert_slice(slice_obj(slice("new-1", "new", 80, vec![ep("10.244.50.1", "node-a")])))
        .unwrap();
    t.upsert_service(service(svc(
        "svc-10",
        json!({"clusterIP": "10.96.0.11", "clusterIPs": ["10.96.0.11"], "type": "NodePort",
               "ports": [{"name": "http", "port": 80, "nodePort": 30010}]}),
    )))
    .unwrap();
    let changes = t.take_changes();
    assert_eq!(changes.len(), 4);
    let diff = m.recompute(&t, &changes);
    assert_eq!(diff.services[&key("svc-8")].changed.len(), 1);
    assert_eq!(diff.services[&key("svc-9")].removed.len(), 1);
    assert_eq!(diff.services[&key("new")].added.len(), 1);
    assert_eq!(diff.services[&key("svc-10")].added.len(), 1, "the NodePort frontend");
    // svc-9's slice is now an orphan: a problem, no frontends.
    assert_eq!(kinds(&m, "svc-9"), [ProblemKind::SliceWithoutService]);

    let full = Model::build(&t, node(), Options::default());
    assert_eq!(m, full, "incremental result differs from a full build");
    assert_eq!(m.to_string(), full.to_string());

    // A slice relabelled to another Service leaves the old one.
    let mut moved = slice("svc-11-a", "svc-12", 8080, vec![ep("10.244.0.23", "node-a")]);
    moved["ports"][0]["port"] = json!(8080);
    t.upsert_slice(slice_obj(moved)).unwrap();
    let changes = t.take_changes();
    assert!(changes.contains(&key("svc-11")) && changes.contains(&key("svc-12")));
    m.recompute(&t, &changes);
    assert_eq!(
        one(&m, "svc-11", FrontendKind::ClusterIp).no_backends,
        NoBackends::Reject
    );
    assert!(one(&m, "svc-11", FrontendKind::ClusterIp).pool.backends.is_empty());
    assert_eq!(eps(&one(&m, "svc-12", FrontendKind::ClusterIp).pool).len(), 3);
    assert_eq!(m, Model::build(&t, node(), Options::default()));
}

#[test]
fn udp_conntrack_cleanup_for_gone_backends_and_revived_frontends() {
    let dns = |proto: &str| {
        svc(
            "dns",
            json!({"ports": [{"name": "http", "port": 53, "protocol": proto}]}),
        )
    };
    let udp_slice = |eps: Vec<Value>| {
        let mut s = slice("dns-1", "dns", 5353, eps);
        s["ports"][0]["protocol"] = json!("UDP");
        s
    };
    let mut t = ChangeTracker::new();
    t.upsert_service(service(dns("UDP"))).unwrap();
    let mut m = Model::new(node(), Options::default());
    let c = t.take_changes();
    let diff = m.recompute(&t, &c);
    assert!(
        diff.conntrack.is_empty(),
        "a Service without endpoints has nothing to clean: {:?}",
        diff.conntrack
    );

    // First endpoints: entries made while the ClusterIP rejected must go.
    t.upsert_slice(slice_obj(udp_slice(vec![
        ep("10.244.1.5", "node-a"),
        ep("10.244.2.5", "node-b"),
    ])))
    .unwrap();
    let c = t.take_changes();
    let diff = m.recompute(&t, &c);
    let vip: IpAddr = "10.96.0.10".parse().unwrap();
    assert_eq!(
        diff.conntrack,
        [ConntrackCleanup::FrontendRevived {
            protocol: Protocol::Udp,
            addr: FrontendAddr::Ip(vip),
            port: 53
        }]
    );

    // One backend leaves: only its flows are deleted.
    t.upsert_slice(slice_obj(udp_slice(vec![ep("10.244.1.5", "node-a")])))
        .unwrap();
    let c = t.take_changes();
    let diff = m.recompute(&t, &c);
    assert_eq!(
        diff.conntrack,
        [ConntrackCleanup::BackendGone {
            protocol: Protocol::Udp,
            addr: FrontendAddr::Ip(vip),
            port: 53,
            backend: "10.244.2.5".parse().unwrap(),
            backend_port: 5353
        }]
    );

    // The Service goes away: the last backend's flows go too.
    t.delete_service("default", "dns");
    let c = t.take_changes();
    let diff = m.recompute(&t, &c);
    assert_eq!(diff.conntrack.len(), 1);
    assert!(matches!(
        diff.conntrack[0],
        ConntrackCleanup::BackendGone { backend_port: 5353, .. }
    ));

    // TCP: never.
    let mut t = ChangeTracker::new();
    t.upsert_service(service(dns("TCP"))).unwrap();
    t.upsert_slice(slice_obj(slice("dns-1", "dns", 5353, vec![ep("10.244.1.5", "node-a")])))
        .unwrap();
    let mut m = Model::new(node(), Options::default());
    let c = t.take_changes();
    assert!(m.recompute(&t, &c).conntrack.is_empty());
}

#[test]
fn type_changes_and_proxy_name_label_add_and_remove_frontends() {
    let mut t = ChangeTracker::new();
    let mut m = Model::new(node(), Options::default());
    let step = |t: &mut ChangeTracker, m: &mut Model, s: Value| {
        t.upsert_service(service(s)).unwrap();
        let c = t.take_changes();
        let d = m.recompute(t, &c);
        let mut kinds: Vec<FrontendKind> = m.service_frontends(&key("web")).map(|(k, _)| k.kind).collect();
        kinds.dedup();
        (d, kinds)
    };
    t.upsert_slice(slice_obj(slice("web-1", "web", 80, vec![ep("10.244.1.5", "node-a")])))
        .unwrap();
    let (_, k) = step(&mut t, &mut m, svc("web", json!({})));
    assert_eq!(k, [FrontendKind::ClusterIp]);
    let np = json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]});
    let (d, k) = step(&mut t, &mut m, svc("web", np.clone()));
    assert_eq!(k, [FrontendKind::ClusterIp, FrontendKind::NodePort]);
    assert_eq!(d.services[&key("web")].added.len(), 1);
    let mut lb = svc(
        "web",
        json!({"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
    );
    lb["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}});
    let (_, k) = step(&mut t, &mut m, lb);
    assert_eq!(
        k,
        [
            FrontendKind::ClusterIp,
            FrontendKind::LoadBalancer,
            FrontendKind::NodePort
        ]
    );
    // Handed to another proxy: everything goes, and the slice is not an orphan problem.
    let mut labelled = svc("web", np);
    labelled["metadata"]["labels"] = json!({"service.kubernetes.io/service-proxy-name": "other"});
    let (d, k) = step(&mut t, &mut m, labelled);
    assert!(k.is_empty());
    assert_eq!(d.services[&key("web")].removed.len(), 3);
    assert!(m.problems().next().is_none());
    // Back to ClusterIP, then ExternalName (its clusterIP is gone).
    let (_, k) = step(&mut t, &mut m, svc("web", json!({})));
    assert_eq!(k, [FrontendKind::ClusterIp]);
    let en = json!({"metadata": {"namespace": "default", "name": "web"},
                    "spec": {"type": "ExternalName", "externalName": "example.com"}});
    let (d, k) = step(&mut t, &mut m, en);
    assert!(k.is_empty());
    assert_eq!(d.services[&key("web")].removed.len(), 1);
    assert!(m.frontends().is_empty());
}

#[test]
fn node_change_recomputes_everything() {
    let s = svc(
        "np",
        json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
    );
    let (t, mut m) = build_with(
        vec![s],
        vec![slice("s", "np", 80, vec![ep("10.244.1.5", "node-a")])],
        node(),
        Options::default(),
    );
    let moved = NodeFacts {
        addresses: vec!["192.168.1.11".parse().unwrap()],
        name: "node-b".into(),
        ..node()
    };
    let diff = m.set_node(moved, &t);
    let d = &diff.services[&key("np")];
    assert_eq!((d.added.len(), d.removed.len(), d.changed.len()), (1, 1, 1), "{d:?}");
    assert!(
        !one(&m, "np", FrontendKind::ClusterIp).pool.backends[0].local,
        "node-b is not the endpoint's node"
    );
}

/// Prints the time of a full build and of a one-slice recompute at 30k Services × 2 endpoints.
/// Run: `cargo test -p weft-proxy --release -- --ignored --nocapture scale`
#[test]
#[ignore = "timing report, not a pass/fail check"]
fn scale_30k_services_two_endpoints() {
    let (services, slices) = fleet(30_000);
    let mut t = ChangeTracker::new();
    let start = Instant::now();
    for s in services {
        t.upsert_service(service(s)).unwrap();
    }
    for s in slices {
        t.upsert_slice(slice_obj(s)).unwrap();
    }
    let ingest = start.elapsed();
    let changes = t.take_changes();
    let mut m = Model::new(node(), Options::default());
    let start = Instant::now();
    let diff = m.recompute(&t, &changes);
    let full = start.elapsed();
    assert_eq!(diff.services.len(), 30_000);
    assert_eq!(m.frontends().len(), 30_000);
    t.upsert_slice(slice_obj(slice(
        "svc-77-a",
        "svc-77",
        8080,
        vec![ep("10.244.0.99", "node-a")],
    )))
    .unwrap();
    let changes = t.take_changes();
    let start = Instant::now();
    let diff = m.recompute(&t, &changes);
    let one = start.elapsed();
    assert_eq!(diff.services.len(), 1);
    let ip: IpAddr = "10.244.0.99".parse().unwrap();
    assert_eq!(
        m.service_frontends(&key("svc-77")).next().unwrap().1.pool.backends[0].ip,
        ip
    );
    // The per-Service computation alone, without the model's bookkeeping.
    let keys = t.all_keys();
    let start = Instant::now();
    let mut n = 0;
    for k in keys.iter() {
        n += crate::compute::compute_service(k, t.service(k), t.slices(k), &node(), &Options::default())
            .frontends
            .len();
    }
    let compute_only = start.elapsed();
    assert_eq!(n, 30_000);
    // A second full pass over a warm model (nothing changes, every Service recomputed).
    let start = Instant::now();
    let diff = m.set_options(Options::default(), &t);
    let again = start.elapsed();
    assert!(diff.is_empty());
    println!(
        "30k Services x 2 endpoints: ingest {ingest:?}, full recompute {full:?}, one-slice recompute {one:?}, \
         full recompute of a warm model {again:?} \
         (of which computing the Services {compute_only:?})"
    );
}
