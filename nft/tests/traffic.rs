//! Packets really matched: a client namespace connects to Service VIPs
//! through a router namespace whose rules the engine wrote; the dnat through
//! a verdict map reaches the right backend namespace, and a VIP without
//! endpoints answers with a TCP reset.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use weft_nft::build::*;
use weft_nft::*;

fn router_table() -> Table {
    let mut t = Table::new(Family::Ip, "weft-svc");
    let k = vec![KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService];
    let vip = |a: &str| key::concat(&[key::ip(a.parse().unwrap()), key::proto(TCP), key::port(80)]);
    let goto_ = |c: &str| ElemData::Verdict(Verdict::Goto(c.into()));
    t.set(Set::map("service-ips", k.clone(), DataType::Verdict))
        .insert_map(vip("10.96.0.10"), goto_("svc-a"))
        .insert_map(vip("10.96.0.11"), goto_("svc-b"));
    t.set(Set::map("no-endpoints", k, DataType::Verdict))
        .insert_map(vip("10.96.0.12"), ElemData::Verdict(Verdict::Jump("reject-tcp".into())));
    t.set(Set::map("svc-a-eps", vec![KeyType::Integer(4)], DataType::Verdict))
        .insert_map(key::u32_host(0), goto_("ep-a"));
    t.set(Set::map("svc-b-eps", vec![KeyType::Integer(4)], DataType::Verdict))
        .insert_map(key::u32_host(0), goto_("ep-b"));
    t.chain(Chain::regular("svc-a"))
        .rule(Rule::of([numgen_vmap(NumgenKind::Random, 1, "svc-a-eps")]));
    t.chain(Chain::regular("svc-b"))
        .rule(Rule::of([jhash_vmap(&[Field::IpSaddr], 1, 0x5eed, "svc-b-eps")]));
    t.chain(Chain::regular("ep-a")).rule(Rule::of([
        l4proto(TCP),
        counter(),
        dnat_to("10.0.2.2".parse().unwrap(), Some(8080)),
    ]));
    t.chain(Chain::regular("ep-b")).rule(Rule::of([
        l4proto(TCP),
        counter(),
        dnat_to("10.0.3.2".parse().unwrap(), Some(8080)),
    ]));
    t.chain(Chain::regular("reject-tcp"))
        .rule(Rule::of([reject_tcp_reset()]));
    t.chain(Chain::base(
        "nat-prerouting",
        ChainKind::Nat,
        Hook::Prerouting,
        prio::DSTNAT,
        Policy::Accept,
    ))
    .rule(Rule::of([vmap(
        &[Field::IpDaddr, Field::L4Proto, Field::ThDport],
        "service-ips",
    )]));
    t.chain(Chain::base(
        "filter-forward",
        ChainKind::Filter,
        Hook::Forward,
        prio::FILTER,
        Policy::Accept,
    ))
    .rule(Rule::of([
        build::ct_state(ct_state::NEW),
        vmap(&[Field::IpDaddr, Field::L4Proto, Field::ThDport], "no-endpoints"),
    ]));
    t
}

/// A server answering `name` to `n` connections, then exiting.
fn serve(ns: &Netns, name: &'static str, n: usize) -> std::thread::JoinHandle<()> {
    let (tx, rx) = mpsc::channel();
    let h = ns.spawn(move || {
        let l = TcpListener::bind("0.0.0.0:8080").expect("bind backend");
        tx.send(()).unwrap();
        for _ in 0..n {
            let (mut s, _) = l.accept().expect("accept");
            s.write_all(name.as_bytes()).unwrap();
        }
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

#[test]
fn dnat_through_a_verdict_map_reaches_the_right_backend_and_reject_resets() {
    let client = Netns::new("tc");
    let router = Netns::new("tr");
    let a = Netns::new("ta");
    let b = Netns::new("tb");
    router.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    for (peer, name, net) in [(&client, "r1", "10.0.1"), (&a, "r2", "10.0.2"), (&b, "r3", "10.0.3")] {
        router.exec(
            "ip",
            &[
                "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", &peer.name,
            ],
        );
        router.exec("ip", &["addr", "add", &format!("{net}.1/24"), "dev", name]);
        router.exec("ip", &["link", "set", name, "up"]);
        peer.exec("ip", &["addr", "add", &format!("{net}.2/24"), "dev", "eth0"]);
        peer.exec("ip", &["link", "set", "eth0", "up"]);
        peer.exec("ip", &["route", "add", "default", "via", &format!("{net}.1")]);
    }
    // The VIP range is routed somewhere so that VIPs without endpoints reach the forward hook.
    router.exec("ip", &["route", "add", "10.96.0.0/16", "via", "10.0.2.2"]);

    let mut e = router.engine();
    e.apply(&router_table()).unwrap();

    let sa = serve(&a, "backend-a", 2);
    let sb = serve(&b, "backend-b", 2);
    let results = client
        .spawn(|| {
            let mut r = Vec::new();
            for vip in ["10.96.0.10:80", "10.96.0.11:80", "10.96.0.10:80", "10.96.0.11:80"] {
                r.push(get(vip).map_err(|e| e.to_string()));
            }
            let t0 = Instant::now();
            let refused = get("10.96.0.12:80");
            (r, refused.map_err(|e| e.kind()), t0.elapsed())
        })
        .join()
        .unwrap();
    let (answers, refused, took) = results;
    let answers: Vec<String> = answers.into_iter().map(|r| r.expect("connect to a VIP")).collect();
    assert_eq!(answers, ["backend-a", "backend-b", "backend-a", "backend-b"]);
    sa.join().unwrap();
    sb.join().unwrap();
    assert_eq!(
        refused,
        Err(std::io::ErrorKind::ConnectionRefused),
        "VIP without endpoints must be refused"
    );
    assert!(
        took < Duration::from_secs(1),
        "the reset must be immediate, took {took:?}"
    );
    // The counters of the endpoint chains saw the connections.
    let ep_a = router.nft(&["list", "chain", "ip", "weft-svc", "ep-a"]);
    assert!(ep_a.contains("counter packets 2"), "{ep_a}");

    // Move VIP .10 to backend b with one element change; traffic follows.
    let mut t = router_table();
    let vip10 = key::concat(&[key::ip("10.96.0.10".parse().unwrap()), key::proto(TCP), key::port(80)]);
    t.sets
        .get_mut("service-ips")
        .unwrap()
        .insert_map(vip10, ElemData::Verdict(Verdict::Goto("svc-b".into())));
    assert_eq!(e.apply(&t).unwrap().messages, 2);
    let sb = serve(&b, "backend-b", 1);
    let got = client
        .spawn(|| get("10.96.0.10:80").map_err(|e| e.to_string()))
        .join()
        .unwrap();
    assert_eq!(got.as_deref(), Ok("backend-b"));
    sb.join().unwrap();
}

/// A server answering each of `n` connections with the peer's address.
fn echo_peer(ns: &Netns, n: usize) -> std::thread::JoinHandle<()> {
    let (tx, rx) = mpsc::channel();
    let h = ns.spawn(move || {
        let l = TcpListener::bind("0.0.0.0:8080").expect("bind");
        tx.send(()).unwrap();
        for _ in 0..n {
            let (mut s, peer) = l.accept().expect("accept");
            s.write_all(peer.ip().to_string().as_bytes()).unwrap();
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("listening");
    h
}

#[test]
fn mesh_rules_masquerade_only_traffic_leaving_the_cluster() {
    let pod = Netns::new("mp");
    let node = Netns::new("mn");
    let outside = Netns::new("mo");
    let other = Netns::new("mq");
    node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    for (peer, name, node_addr, peer_addr, route) in [
        (&pod, "p0", "10.244.1.1/24", "10.244.1.2/24", Some("10.244.1.1")),
        (&other, "q0", "10.244.2.1/24", "10.244.2.2/24", Some("10.244.2.1")),
        // The outside host has no route back to pod addresses: only masqueraded traffic gets answers.
        (&outside, "o0", "192.0.2.1/24", "192.0.2.2/24", None),
    ] {
        node.exec(
            "ip",
            &[
                "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", &peer.name,
            ],
        );
        node.exec("ip", &["addr", "add", node_addr, "dev", name]);
        node.exec("ip", &["link", "set", name, "up"]);
        peer.exec("ip", &["addr", "add", peer_addr, "dev", "eth0"]);
        peer.exec("ip", &["link", "set", "eth0", "up"]);
        if let Some(gw) = route {
            peer.exec("ip", &["route", "add", "default", "via", gw]);
        }
    }
    let mut e = node.engine();
    e.apply(&mesh_table(&["10.244.1.0/24"], &["10.244.0.0/16"], &[], &[]))
        .unwrap();

    let so = echo_peer(&outside, 1);
    let sq = echo_peer(&other, 1);
    let (to_outside, to_cluster) = pod
        .spawn(|| {
            (
                get("192.0.2.2:8080").map_err(|e| e.to_string()),
                get("10.244.2.2:8080").map_err(|e| e.to_string()),
            )
        })
        .join()
        .unwrap();
    so.join().unwrap();
    sq.join().unwrap();
    assert_eq!(
        to_outside.as_deref(),
        Ok("192.0.2.1"),
        "leaving the cluster: masqueraded to the node's address"
    );
    assert_eq!(
        to_cluster.as_deref(),
        Ok("10.244.1.2"),
        "inside the cluster: the pod's own address"
    );
}
