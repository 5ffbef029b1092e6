//! The lab itself, as root: up with 2 and 3 nodes, down leaving nothing
//! behind (also after a crash), pods wired by the real `weft`.

mod common;

use std::time::Duration;

use common::{host_links, lab_netns, up};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use weft_tests::lab::{objects, Endpoint, Lab, LabState, PodSpec};
use weft_tests::traffic;

/// Everything `down` must remove, captured while the lab is up.
struct Footprint {
    netns: Vec<String>,
    state: LabState,
}

fn footprint(lab: &Lab) -> Footprint {
    Footprint {
        netns: lab_netns(&lab.name),
        state: lab.state().expect("lab state"),
    }
}

/// After `down`: no namespace, process or file of the lab remains.
fn assert_gone(lab: &Lab, fp: &Footprint) {
    assert!(
        lab_netns(&lab.name).is_empty(),
        "namespaces left: {:?}",
        lab_netns(&lab.name)
    );
    for ns in &fp.netns {
        assert!(!weft_tests::lab::netns::path(ns).exists(), "netns mount {ns} left");
    }
    for p in &fp.state.procs {
        assert!(!p.alive(), "process {} (pid {}) still running", p.role, p.pid);
    }
    assert!(!lab.dir.exists(), "lab directory {} left", lab.dir.display());
}

/// Node and Pod objects as the API emulator has them.
fn api_names(lab: &Lab) -> (Vec<String>, Vec<String>) {
    let url = lab.api_url().unwrap();
    objects::with_client(&url, |client| async move {
        let nodes: Api<Node> = Api::all(client.clone());
        let pods: Api<Pod> = Api::all(client);
        let n = nodes.list(&ListParams::default()).await?.items;
        let p = pods.list(&ListParams::default()).await?.items;
        let name = |m: &kube::api::ObjectMeta| m.name.clone().unwrap_or_default();
        Ok((
            n.iter().map(|x| name(&x.metadata)).collect(),
            p.iter().map(|x| name(&x.metadata)).collect(),
        ))
    })
    .unwrap()
}

fn check_up_and_down(prefix: &str, nodes: u8) {
    let links_before = host_links();
    let guard = up(prefix, nodes);
    let lab = &guard.0;
    let fp = footprint(lab);
    // switch + nodes + external client
    assert_eq!(fp.netns.len(), usize::from(nodes) + 2, "{:?}", fp.netns);
    assert_eq!(
        host_links(),
        links_before,
        "the lab must not add interfaces to the host"
    );

    let (node_names, _) = api_names(lab);
    let want: Vec<String> = (1..=nodes).map(|i| format!("node-{i}")).collect();
    assert_eq!(node_names, want);
    // Every node reaches every other node and the emulator over the underlay.
    for n in &fp.state.nodes {
        for m in &fp.state.nodes {
            lab.ping(&Endpoint::Node(n.name.clone()), m.internal_ipv4.into())
                .unwrap();
        }
        lab.ping(&Endpoint::Node(n.name.clone()), m_ipv6(&fp.state, 0)).unwrap();
        let ns = &n.netns;
        let reply = traffic::tcp_request(ns, "172.30.0.1:6443".parse().unwrap(), Duration::from_secs(2))
            .expect("emulator reachable from the node");
        assert!(reply.starts_with("HTTP/1.0 404") || reply.contains("Status"), "{reply}");
    }
    lab.ping(&Endpoint::External, fp.state.nodes[0].internal_ipv4.into())
        .unwrap();

    lab.down().unwrap();
    assert_gone(lab, &fp);
    assert_eq!(host_links(), links_before);
    lab.down().expect("down is idempotent");
}

/// Node `i`'s IPv6 underlay address.
fn m_ipv6(st: &LabState, i: usize) -> std::net::IpAddr {
    st.nodes[i].internal_ipv6.into()
}

#[test]
fn lab_up_and_down_with_2_nodes() {
    check_up_and_down("updown2-", 2);
}

#[test]
fn lab_up_and_down_with_3_nodes() {
    check_up_and_down("updown3-", 3);
}

#[test]
fn down_after_a_crash_still_cleans_up() {
    let guard = up("crash-", 2);
    let lab = &guard.0;
    lab.add_pod(&PodSpec::new("node-1", "victim").serve(Some(8080), Some(9090)))
        .unwrap();
    let fp = footprint(lab);
    assert_eq!(
        fp.state.procs.len(),
        5,
        "emulator, one weft-agent per node, agent supervisor, pod server: {:?}",
        fp.state.procs
    );
    // Simulate a crash: every lab process dies at once, no cleanup runs
    // (the agents' userspace WireGuard processes are not the lab's: they
    // keep running, and down must still find and stop them).
    for p in &fp.state.procs {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    let reopened = Lab::open(lab.dir.parent().unwrap(), &lab.name).unwrap();
    reopened.down().unwrap();
    assert_gone(lab, &fp);
    reopened.down().expect("down is idempotent");
}

#[test]
fn down_of_an_unknown_lab_is_a_no_op() {
    weft_tests::lab::require_root();
    let root = std::env::temp_dir().join("weft-lab-none");
    weft_tests::lab::down(&root, &common::unique_name("never-")).unwrap();
}

#[test]
fn pods_on_one_node_reach_each_other_and_the_node_through_weft() {
    let guard = up("pods-", 2);
    let lab = &guard.0;
    let a = lab
        .add_pod(
            &PodSpec::new("node-1", "a")
                .label("app", "web")
                .serve(Some(8080), Some(9090)),
        )
        .unwrap();
    let b = lab
        .add_pod(&PodSpec::new("node-1", "b").serve(Some(8080), Some(9090)))
        .unwrap();
    let c = lab
        .add_pod(&PodSpec::new("node-2", "c").serve(Some(8080), None))
        .unwrap();
    assert_eq!(a.ips.len(), 2, "dual-stack pod: {:?}", a.ips);
    assert!(a.ips[0].to_string().starts_with("10.244.1."), "{:?}", a.ips);
    assert!(c.ips[0].to_string().starts_with("10.244.2."), "{:?}", c.ips);

    let (pa, pb) = (Endpoint::Pod("a".into()), Endpoint::Pod("b".into()));
    for v6 in [false, true] {
        // TCP both ways; the server sees the other pod's own address (no NAT).
        let r = lab.http_get(&pa, lab.pod_addr("b", v6, 8080).unwrap()).unwrap();
        assert_eq!((r.server.as_str(), Some(r.peer.ip())), ("b", a.ip(v6)));
        let r = lab.http_get(&pb, lab.pod_addr("a", v6, 8080).unwrap()).unwrap();
        assert_eq!((r.server.as_str(), Some(r.peer.ip())), ("a", b.ip(v6)));
        // UDP and ping.
        let r = lab.udp_echo(&pa, lab.pod_addr("b", v6, 9090).unwrap()).unwrap();
        assert_eq!(Some(r.peer.ip()), a.ip(v6));
        lab.ping(&pa, b.ip(v6).unwrap()).unwrap();
    }
    // Node -> local pod (from the bridge address), pod -> node.
    let r = lab
        .http_get(
            &Endpoint::Node("node-1".into()),
            lab.pod_addr("a", false, 8080).unwrap(),
        )
        .unwrap();
    assert_eq!(r.peer.ip().to_string(), "10.244.1.1");
    let node1 = lab.state().unwrap().node("node-1").unwrap().clone();
    lab.ping(&pa, node1.internal_ipv4.into()).unwrap();
    // Hairpin: a pod reaches itself through its own address.
    let r = lab.http_get(&pa, lab.pod_addr("a", false, 8080).unwrap()).unwrap();
    assert_eq!(r.server, "a");

    // The Pod objects carry the addresses weft gave.
    let (_, pods) = api_names(lab);
    assert_eq!(pods, ["a", "b", "c"]);
    let url = lab.api_url().unwrap();
    let pod_a = objects::with_client(&url, |client| async move {
        Ok(Api::<Pod>::namespaced(client, "default").get("a").await?)
    })
    .unwrap();
    let status = pod_a.status.unwrap();
    assert_eq!(status.pod_ip, Some(a.ips[0].to_string()));
    assert_eq!(status.pod_ips.unwrap().len(), 2);
    assert_eq!(pod_a.spec.unwrap().node_name.as_deref(), Some("node-1"));

    // DEL: the netns, the object and the server go; the name can be reused.
    lab.del_pod("b").unwrap();
    assert!(lab.state().unwrap().pod("b").is_none());
    assert!(!weft_tests::lab::netns::path(&b.netns).exists());
    assert!(lab.http_get(&pa, std::net::SocketAddr::new(b.ips[0], 8080)).is_err());
    assert_eq!(api_names(lab).1, ["a", "c"]);
    lab.add_pod(&PodSpec::new("node-1", "b")).unwrap();

    let fp = footprint(lab);
    lab.down().unwrap();
    assert_gone(lab, &fp);
}
