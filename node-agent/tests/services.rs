//! Services through weft-agent's Services loop, in the lab with real agents
//! and real traffic (the first of issue 8's end-to-end tests). The lab has
//! no EndpointSlice controller yet: each test writes the slice a controller
//! would write for its pods.
//!
//! Run as root: `cargo test -p weft-agent --test services`.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use support::{lab_with, MeshLab};
use weft_tests::lab::{objects, Endpoint, Lab, PodSpec};

const HTTP: u16 = 8080;

fn up(prefix: &str) -> MeshLab {
    let lab = lab_with(prefix, 2, 30, true);
    for n in ["node-1", "node-2"] {
        lab.wait_peers(n, 1).unwrap();
    }
    lab.add_pod(&PodSpec::new("node-1", "a")).unwrap();
    lab.add_pod(&PodSpec::new("node-2", "b").label("app", "web").serve(Some(HTTP), None))
        .unwrap();
    lab
}

/// A ClusterIP Service `name` at `ip`:80 → targetPort 8080 (named `http`).
fn create_service(lab: &Lab, name: &str, ip: &str) {
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                 "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}
    }))
    .unwrap();
    objects::with_client(&lab.api_url().unwrap(), |c| async move {
        Api::<Service>::namespaced(c, "default")
            .create(&PostParams::default(), &svc)
            .await?;
        Ok(())
    })
    .unwrap();
}

/// The EndpointSlice the controller would write for `service` with pod `pod` ready.
fn create_slice(lab: &Lab, service: &str, pod: &str, node: &str) {
    let ip = lab.pod_addr(pod, false, HTTP).unwrap().ip().to_string();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service,
                                "endpointslice.kubernetes.io/managed-by": "weft-lab"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "nodeName": node,
                       "conditions": {"ready": true, "serving": true, "terminating": false},
                       "targetRef": {"kind": "Pod", "namespace": "default", "name": pod}}],
        "ports": [{"name": "http", "port": HTTP, "protocol": "TCP"}]
    }))
    .unwrap();
    objects::with_client(&lab.api_url().unwrap(), |c| async move {
        Api::<EndpointSlice>::namespaced(c, "default")
            .create(&PostParams::default(), &slice)
            .await?;
        Ok(())
    })
    .unwrap();
}

fn delete_slice(lab: &Lab, name: &str) {
    let name = name.to_string();
    objects::with_client(&lab.api_url().unwrap(), |c| async move {
        Api::<EndpointSlice>::namespaced(c, "default")
            .delete(&name, &DeleteParams::default())
            .await?;
        Ok(())
    })
    .unwrap();
}

fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> anyhow::Result<T>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if start.elapsed() > within => panic!("{what}: not within {within:?}: {e:#}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A TCP connect from `ns` to `to`: how it ended and how long it took.
fn connect(lab: &Lab, from: &Endpoint, to: SocketAddr) -> (std::io::Result<()>, Duration) {
    let ns = lab.netns_of(from).unwrap();
    weft_tests::lab::netns::run_in(&ns, move || {
        let start = Instant::now();
        let r = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3)).map(drop);
        Ok((r, start.elapsed()))
    })
    .unwrap()
}

/// Services e2e "should serve a basic endpoint from pods" and "should
/// preserve source pod IP for traffic thru service cluster IP": a pod on
/// another node reaches the Service's pod through the ClusterIP, and the
/// server sees the client pod's own address. The node reaches it too.
#[test]
fn a_cluster_ip_serves_a_pod_on_another_node_with_the_clients_address() {
    let g = up("svcip");
    let lab = &g.0;
    create_service(lab, "web", "10.96.0.50");
    create_slice(lab, "web", "b", "node-2");
    let vip: SocketAddr = "10.96.0.50:80".parse().unwrap();
    let a_ip: IpAddr = lab.pod_addr("a", false, 1).unwrap().ip();
    let reply = wait_for("pod a → ClusterIP", Duration::from_secs(15), || {
        lab.http_get(&Endpoint::Pod("a".into()), vip)
    });
    assert_eq!(reply.server, "b");
    assert_eq!(reply.peer.ip(), a_ip, "the server sees the client pod's address");
    let from_node = wait_for("node-1 → ClusterIP", Duration::from_secs(5), || {
        lab.http_get(&Endpoint::Node("node-1".into()), vip)
    });
    assert_eq!(from_node.server, "b");
    lab.down().unwrap();
}

/// Services e2e "should be rejected when no endpoints exist" and an unused
/// port of a ClusterIP: refused at once (TCP reset), not dropped.
#[test]
fn a_service_without_endpoints_and_an_unused_port_are_refused_at_once() {
    let g = up("svcrej");
    let lab = &g.0;
    create_service(lab, "web", "10.96.0.60");
    create_slice(lab, "web", "b", "node-2");
    let vip: SocketAddr = "10.96.0.60:80".parse().unwrap();
    wait_for("pod a → ClusterIP", Duration::from_secs(15), || {
        lab.http_get(&Endpoint::Pod("a".into()), vip)
    });
    // An unused port of the ClusterIP.
    let (r, took) = connect(lab, &Endpoint::Pod("a".into()), "10.96.0.60:81".parse().unwrap());
    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(took < Duration::from_millis(100), "refused after {took:?}");
    // The last endpoint goes: refused at once.
    delete_slice(lab, "web-1");
    let took = wait_for("connection refused", Duration::from_secs(15), || {
        let (r, took) = connect(lab, &Endpoint::Pod("a".into()), vip);
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(took),
            other => Err(anyhow::anyhow!("{other:?}")),
        }
    });
    assert!(took < Duration::from_millis(100), "refused after {took:?}");
    lab.down().unwrap();
}
