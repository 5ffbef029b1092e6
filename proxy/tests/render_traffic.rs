//! Packets really matched (privileged, as root): the rendered `inet weft-svc` table applied by
//! the engine in a throwaway "node" namespace
//! - routes a client namespace's connections to a ClusterIP to one of two backend namespaces
//!   (both seen, masqueraded since the client is outside the cluster CIDR), resets at once a
//!   connection to a Service without endpoints and one to a ClusterIP port no Service uses
//!   (also from the node itself);
//! - serves a NodePort on any local address, resets a NodePort without endpoints although a
//!   listener on the node has that port, and masquerades hairpin traffic;
//! - for every model fixture: the kernel takes the table, reads it back equal, nft lists it.
//!
//! Namespaces are `svcr-<tag>-<pid>`, deleted on drop (also on panic).
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;
use weft_proxy::{
    render, ChangeTracker, FrontendAddr, FrontendKind, IpFamily, Masquerade, Model, NoBackends, NodeFacts,
    NodePortAddresses, Options,
};

mod render_fixtures;

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace `svcr-<tag>-<pid>`, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let uid = run("id", &["-u"]);
        assert_eq!(
            uid.trim(),
            "0",
            "privileged test: must run as root (it creates network namespaces); refusing to skip"
        );
        let name = format!("svcr-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec("ip", &["link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name, cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Run `f` on a new thread that has entered this namespace (and ends with `f`).
    fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A backend answering every connection with `<name> <peer ip>` until `stop` (bounded: 30 s).
fn serve(ns: &Netns, name: &'static str, stop: Arc<AtomicBool>) -> JoinHandle<usize> {
    let (tx, rx) = mpsc::channel();
    let h = ns.spawn(move || {
        let l = TcpListener::bind("0.0.0.0:8080").expect("bind backend");
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut served = 0;
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            match l.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false).unwrap();
                    s.write_all(format!("{name} {}", peer.ip()).as_bytes()).unwrap();
                    served += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        served
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("backend listening");
    h
}

fn get(addr: &str) -> std::io::Result<String> {
    let a: SocketAddr = addr.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&a, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// A Service `default/web` (ClusterIP 10.96.0.10:80 → two backends on 8080) and
/// `default/empty` (ClusterIP 10.96.0.11:80, no EndpointSlice).
fn model() -> Model {
    model_of(
        "ClusterIP",
        [("web", "10.96.0.10", 0), ("empty", "10.96.0.11", 0)],
        Options::default(),
    )
}

/// Services `web` (two backends) and `empty` (none) of `kind`, with (name, ClusterIP, nodePort).
fn model_of(kind: &str, services: [(&str, &str, u16); 2], options: Options) -> Model {
    let mut t = ChangeTracker::new();
    for (name, ip, node_port) in services {
        let mut port = json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080});
        if node_port != 0 {
            port["nodePort"] = json!(node_port);
        }
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "default", "name": name},
            "spec": {"type": kind, "clusterIP": ip, "clusterIPs": [ip], "ports": [port]}
        });
        t.upsert_service(serde_json::from_value(svc).unwrap()).unwrap();
    }
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "default", "name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.244.2.2"], "nodeName": "node-b", "conditions": {"ready": true, "serving": true, "terminating": false}},
            {"addresses": ["10.244.3.2"], "nodeName": "node-c", "conditions": {"ready": true, "serving": true, "terminating": false}}
        ]
    });
    t.upsert_slice(serde_json::from_value(slice).unwrap()).unwrap();
    let node = NodeFacts {
        name: "node-a".into(),
        zone: None,
        addresses: vec!["192.168.50.1".parse().unwrap()],
        pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
    };
    Model::build(&t, node, options)
}

/// A "node" namespace routing between a client (192.168.50.2, outside the cluster CIDR) and
/// two backends (10.244.2.2 and 10.244.3.2), each on its own veth; the service range
/// 10.96.0.0/16 is routed towards backend 1 so that traffic to a VIP that is not DNATed is
/// forwarded (and meets the filter chains) instead of "network unreachable"; backend 1 does not
/// own or forward it, so without the rules it is silently lost.
fn topology(tag: &str) -> [Netns; 4] {
    let node = Netns::new(&format!("node{tag}"));
    let client = Netns::new(&format!("cl{tag}"));
    let be1 = Netns::new(&format!("b1{tag}"));
    let be2 = Netns::new(&format!("b2{tag}"));
    node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    for (peer, dev, net) in [
        (&client, "c0", "192.168.50"),
        (&be1, "b1", "10.244.2"),
        (&be2, "b2", "10.244.3"),
    ] {
        node.exec(
            "ip",
            &[
                "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", &peer.name,
            ],
        );
        node.exec("ip", &["addr", "add", &format!("{net}.1/24"), "dev", dev]);
        node.exec("ip", &["link", "set", dev, "up"]);
        peer.exec("ip", &["addr", "add", &format!("{net}.2/24"), "dev", "eth0"]);
        peer.exec("ip", &["link", "set", "eth0", "up"]);
        peer.exec("ip", &["route", "add", "default", "via", &format!("{net}.1")]);
    }
    node.exec("ip", &["route", "add", "10.96.0.0/16", "via", "10.244.2.2"]);
    [node, client, be1, be2]
}

#[test]
fn cluster_ip_reaches_both_backends_and_no_endpoints_or_unused_port_is_refused() {
    let m = model();
    // What the test relies on from the model.
    let cluster: Vec<_> = m
        .frontends()
        .iter()
        .filter(|(k, _)| k.kind == FrontendKind::ClusterIp)
        .collect();
    assert_eq!(cluster.len(), 2, "{m}");
    for (k, f) in &cluster {
        if k.service.name == "web" {
            assert_eq!(f.pool.backends.len(), 2, "{m}");
            assert_eq!(
                f.masquerade,
                Masquerade::UnlessSourceIn(vec!["10.244.0.0/16".parse().unwrap()]),
                "{m}"
            );
        } else {
            assert!(f.pool.backends.is_empty(), "{m}");
            assert_eq!(f.no_backends, NoBackends::Reject, "{m}");
        }
    }
    let table = render::render(&m);
    table.validate().expect("rendered table is valid");

    let [node, client, be1, be2] = topology("");
    let mut engine = weft_nft::Engine::new_in_netns(&node.path()).expect("engine in the node netns");
    engine.apply(&table).expect("apply the rendered table");
    // Applying the same table again is a no-op.
    assert!(engine.apply(&table).unwrap().is_noop());
    assert!(!engine.verify(&table).unwrap(), "the kernel holds the rendered table");

    let stop = Arc::new(AtomicBool::new(false));
    let s1 = serve(&be1, "b1", stop.clone());
    let s2 = serve(&be2, "b2", stop.clone());
    // From the node itself (nat-output, filter-output, filter-output-post-dnat).
    let (local, local_unused) = node
        .spawn(|| {
            (
                get("10.96.0.10:80").map_err(|e| e.to_string()),
                get("10.96.0.10:81").map_err(|e| e.kind()),
            )
        })
        .join()
        .unwrap();
    let local = local.expect("the node reaches its ClusterIP");
    assert!(local.starts_with("b1 ") || local.starts_with("b2 "), "{local:?}");
    assert_eq!(
        local_unused,
        Err(std::io::ErrorKind::ConnectionRefused),
        "unused port from the node"
    );
    let (answers, empty, unused) = client
        .spawn(|| {
            let answers: Vec<Result<String, String>> = (0..20)
                .map(|_| get("10.96.0.10:80").map_err(|e| e.to_string()))
                .collect();
            let t0 = Instant::now();
            let empty = get("10.96.0.11:80").map_err(|e| e.kind());
            let empty_took = t0.elapsed();
            let t0 = Instant::now();
            let unused = get("10.96.0.10:81").map_err(|e| e.kind());
            (answers, (empty, empty_took), (unused, t0.elapsed()))
        })
        .join()
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let served = (s1.join().unwrap(), s2.join().unwrap());

    let answers: Vec<String> = answers
        .into_iter()
        .map(|r| r.expect("connect to the ClusterIP"))
        .collect();
    for a in &answers {
        // Masqueraded to the node's address on the backend's link: the client is outside the
        // cluster CIDR.
        assert!(a == "b1 10.244.2.1" || a == "b2 10.244.3.1", "unexpected answer {a:?}");
    }
    let n1 = answers.iter().filter(|a| a.starts_with("b1 ")).count();
    assert!(
        n1 > 0 && n1 < 20,
        "both backends must answer over 20 connections: {answers:?}"
    );
    assert_eq!(served.0 + served.1, 21, "20 client connections and one from the node");

    let (empty, took) = empty;
    assert_eq!(
        empty,
        Err(std::io::ErrorKind::ConnectionRefused),
        "Service without endpoints"
    );
    assert!(
        took < Duration::from_secs(1),
        "the reset must be immediate, took {took:?}"
    );
    let (unused, took) = unused;
    assert_eq!(
        unused,
        Err(std::io::ErrorKind::ConnectionRefused),
        "unused ClusterIP port"
    );
    assert!(
        took < Duration::from_secs(1),
        "the reset must be immediate, took {took:?}"
    );
}

/// A server on the node itself answering "node" (to prove a reject is ours, not a missing listener).
fn serve_on_node(ns: &Netns, port: u16, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (tx, rx) = mpsc::channel();
    let h = ns.spawn(move || {
        let l = TcpListener::bind(("0.0.0.0", port)).expect("bind on the node");
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.write_all(b"node").unwrap();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("node listening");
    h
}

#[test]
fn node_port_on_any_local_address_no_endpoint_node_port_and_hairpin() {
    let options = Options {
        nodeport_addresses: NodePortAddresses::Cidrs(vec!["0.0.0.0/0".parse().unwrap()]),
        ..Options::default()
    };
    let m = model_of(
        "NodePort",
        [("web", "10.96.0.20", 30080), ("empty", "10.96.0.21", 30081)],
        options,
    );
    let node_ports: Vec<_> = m
        .frontends()
        .iter()
        .filter(|(k, _)| k.kind == FrontendKind::NodePort)
        .collect();
    assert_eq!(node_ports.len(), 2, "{m}");
    for (k, _) in &node_ports {
        assert_eq!(k.addr, FrontendAddr::AnyLocal(IpFamily::V4), "{m}");
    }
    let table = render::render(&m);
    table.validate().expect("rendered table is valid");

    let [node, client, be1, be2] = topology("np");
    let mut engine = weft_nft::Engine::new_in_netns(&node.path()).expect("engine in the node netns");
    engine.apply(&table).expect("apply the rendered table");

    let stop = Arc::new(AtomicBool::new(false));
    let s1 = serve(&be1, "b1", stop.clone());
    let s2 = serve(&be2, "b2", stop.clone());
    let on_node = serve_on_node(&node, 30081, stop.clone());
    let (answers, empty) = client
        .spawn(|| {
            let answers: Vec<Result<String, String>> = (0..20)
                .map(|_| get("192.168.50.1:30080").map_err(|e| e.to_string()))
                .collect();
            let t0 = Instant::now();
            let empty = get("192.168.50.1:30081").map_err(|e| e.kind());
            (answers, (empty, t0.elapsed()))
        })
        .join()
        .unwrap();
    // Hairpin: backend 1 to its own Service. When the choice is itself, the connection only
    // works masqueraded (to the node's address); to backend 2 its own address stays (it is
    // inside the cluster CIDR).
    let hairpin = be1
        .spawn(|| -> Vec<Result<String, String>> {
            (0..20)
                .map(|_| get("10.96.0.20:80").map_err(|e| e.to_string()))
                .collect()
        })
        .join()
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    s1.join().unwrap();
    s2.join().unwrap();
    on_node.join().unwrap();

    let answers: Vec<String> = answers
        .into_iter()
        .map(|r| r.expect("connect to the NodePort"))
        .collect();
    for a in &answers {
        assert!(a == "b1 10.244.2.1" || a == "b2 10.244.3.1", "unexpected answer {a:?}");
    }
    let n1 = answers.iter().filter(|a| a.starts_with("b1 ")).count();
    assert!(
        n1 > 0 && n1 < 20,
        "both backends must answer over 20 connections: {answers:?}"
    );
    let (empty, took) = empty;
    assert_eq!(
        empty,
        Err(std::io::ErrorKind::ConnectionRefused),
        "NodePort without endpoints (a listener on the node would answer otherwise)"
    );
    assert!(
        took < Duration::from_secs(1),
        "the reset must be immediate, took {took:?}"
    );

    let hairpin: Vec<String> = hairpin.into_iter().map(|r| r.expect("hairpin connect")).collect();
    for a in &hairpin {
        assert!(
            a == "b1 10.244.2.1" || a == "b2 10.244.2.2",
            "unexpected hairpin answer {a:?}"
        );
    }
    let self_hits = hairpin.iter().filter(|a| a.starts_with("b1 ")).count();
    assert!(
        self_hits > 0 && self_hits < 20,
        "both backends must answer over 20 connections: {hairpin:?}"
    );
}

#[test]
fn every_fixture_renders_to_a_table_the_kernel_accepts_and_nft_lists() {
    for (i, f) in render_fixtures::fixtures().into_iter().enumerate() {
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        let table = render::render(&render_fixtures::model(&f));
        let ns = Netns::new(&format!("fx{i}"));
        let mut engine = weft_nft::Engine::new_in_netns(&ns.path()).expect("engine");
        engine
            .apply(&table)
            .unwrap_or_else(|e| panic!("{stem}: the kernel refused the rendered table: {e}"));
        assert!(
            !engine.verify(&table).unwrap(),
            "{stem}: read-back differs from the rendered table"
        );
        let listed = ns.exec("nft", &["list", "table", "inet", "weft-svc"]);
        for c in table.chains.keys() {
            assert!(
                listed.contains(c.as_str()),
                "{stem}: nft does not list chain {c}:\n{listed}"
            );
        }
        let read = engine
            .adopt(weft_nft::Family::Inet, "weft-svc")
            .unwrap()
            .expect("table is there");
        assert_eq!(read, table.canonical(), "{stem}: adopt gives back the rendered table");
    }
}
