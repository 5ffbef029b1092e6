//! weft with Debian's CNI reference plugins (containernetworking-plugins):
//! chained before `portmap` and `bandwidth`, delegating to `host-local`, and
//! `weft-ipam` serving the reference `bridge`. Run as root.
//!
//! Debian 12's reference plugins speak CNI up to 1.0.0, so the chains here
//! use cniVersion 1.0.0, as a runtime would with them installed.

mod common;

use std::fs;

use common::*;
use serde_json::{json, Value};

/// What a runtime hands the next plugin of a chain: the plugin's own object
/// plus name, cniVersion, runtimeConfig and the previous result.
fn chained(plugin: Value, prev: &Value, runtime_config: Value) -> Value {
    let mut c = plugin;
    c["cniVersion"] = json!("1.0.0");
    c["name"] = json!("weftnet");
    c["runtimeConfig"] = runtime_config;
    c["prevResult"] = prev.clone();
    c
}

#[test]
fn portmap_chained_after_weft_reaches_the_pod() {
    require_ref_plugins(&["portmap"]);
    let node = Node::new();
    // A client machine on a link to the node.
    let client = Netns::new("wt-c");
    link(&node.ns, "wtc0", "172.31.250.1/30", &client, "172.31.250.2/30");

    // containerd spells the mapping keys in Go's field case; weft accepts it.
    let rc = json!({"portMappings": [{"HostPort": 18080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}]});
    let mut conf = node.weft_conf("1.0.0", json!([[{"subnet": "10.81.0.0/24"}]]));
    conf["runtimeConfig"] = rc.clone();
    let pod = Netns::new("wt-p");
    let res = node.weft("ADD", "pm1", Some(&pod.path()), &conf).expect_ok();
    let pm = chained(
        json!({"type": "portmap", "capabilities": {"portMappings": true}}),
        &res,
        rc,
    );
    let out = node
        .plugin("portmap", "ADD", "pm1", "eth0", Some(&pod.path()), &pm)
        .expect_ok();
    assert_eq!(out["ips"], res["ips"], "portmap passes weft's result on");

    let pod_ip = Reply::ip(&res, true);
    let srv = pod.tcp_server(format!("{pod_ip}:80").parse().unwrap(), "via-hostport", 1);
    let got = client
        .tcp_get("172.31.250.1:18080".parse().unwrap())
        .expect("connect to the hostPort");
    assert_eq!(
        got, "via-hostport from-172.31.250.2",
        "the pod sees the client's address"
    );
    srv.join().unwrap();

    let pm_del = with_prev(&pm, &res);
    node.plugin("portmap", "DEL", "pm1", "eth0", Some(&pod.path()), &pm_del)
        .expect_ok();
    node.weft("DEL", "pm1", Some(&pod.path()), &with_prev(&conf, &res))
        .expect_ok();
    let nat = node.ns.ok(&["iptables-save", "-t", "nat"]);
    assert!(!nat.contains("18080"), "portmap's rules are gone: {nat}");
    assert!(node.weft_veths().is_empty());
    assert!(node.allocations().is_empty());
}

#[test]
fn bandwidth_chained_after_weft_shapes_the_host_veth() {
    require_ref_plugins(&["bandwidth"]);
    let node = Node::new();
    let bw = json!({"bandwidth": {"ingressRate": 8000000, "ingressBurst": 80000, "egressRate": 8000000, "egressBurst": 80000}});
    let mut conf = node.weft_conf("1.0.0", json!([[{"subnet": "10.82.0.0/24"}]]));
    conf["runtimeConfig"] = bw.clone();
    let pod = Netns::new("wt-p");
    let res = node.weft("ADD", "bw1", Some(&pod.path()), &conf).expect_ok();
    let bwc = chained(
        json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
        &res,
        bw,
    );
    node.plugin("bandwidth", "ADD", "bw1", "eth0", Some(&pod.path()), &bwc)
        .expect_ok();
    let veth = res["interfaces"][0]["name"].as_str().unwrap();
    let qd = node.ns.ok(&["tc", "qdisc", "show", "dev", veth]);
    assert!(
        qd.contains("tbf"),
        "bandwidth put a token bucket on weft's host veth: {qd}"
    );
    let ifbs: Vec<_> = node.ns.links().into_iter().filter(|l| l.starts_with("bwp")).collect();
    assert_eq!(ifbs.len(), 1, "an ifb device for egress shaping");

    node.plugin("bandwidth", "DEL", "bw1", "eth0", Some(&pod.path()), &bwc)
        .expect_ok();
    node.weft("DEL", "bw1", Some(&pod.path()), &with_prev(&conf, &res))
        .expect_ok();
    assert!(!node.ns.links().iter().any(|l| l.starts_with("bwp")), "ifb removed");
    assert!(node.weft_veths().is_empty());
}

#[test]
fn reference_bridge_delegates_to_weft_ipam() {
    require_ref_plugins(&["bridge"]);
    let node = Node::new();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "weftnet", "type": "bridge",
        "bridge": "refbr0", "isGateway": true,
        "ipam": {
            "type": "weft-ipam",
            "ranges": [[{"subnet": "10.83.0.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": node.dir.join("ipam"),
            "bootIdFile": node.dir.join("boot_id"),
        }
    });
    let (p1, p2) = (Netns::new("wt-p"), Netns::new("wt-p"));
    let r1 = node
        .plugin("bridge", "ADD", "br1", "eth0", Some(&p1.path()), &conf)
        .expect_ok();
    let r2 = node
        .plugin("bridge", "ADD", "br2", "eth0", Some(&p2.path()), &conf)
        .expect_ok();
    assert_eq!(r1["ips"][0]["address"], "10.83.0.2/24", "weft-ipam's first address");
    assert_eq!(r2["ips"][0]["address"], "10.83.0.3/24");
    assert_eq!(node.allocations().len(), 2);
    assert!(p1.ping("10.83.0.3"), "pods on the reference bridge reach each other");
    assert!(p1.ping("10.83.0.1"), "and the gateway weft-ipam named");
    node.plugin("bridge", "DEL", "br1", "eth0", Some(&p1.path()), &conf)
        .expect_ok();
    node.plugin("bridge", "DEL", "br2", "eth0", Some(&p2.path()), &conf)
        .expect_ok();
    assert!(
        node.allocations().is_empty(),
        "DEL through the bridge released weft-ipam's addresses"
    );
}

#[test]
fn weft_delegates_to_host_local() {
    require_ref_plugins(&["host-local"]);
    let node = Node::new();
    let data = node.dir.join("host-local");
    let conf = json!({
        "cniVersion": "1.0.0", "name": "weftnet", "type": "weft", "mtu": 1400,
        "logFile": node.dir.join("weft.log"),
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.84.0.0/24"}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data}
    });
    let pod = Netns::new("wt-p");
    let r = node.weft("ADD", "hl1", Some(&pod.path()), &conf).expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.84.0.2/24");
    assert_eq!(r["ips"][0]["interface"], 1);
    assert!(pod.ping("10.84.0.1"));
    assert!(data.join("weftnet/10.84.0.2").exists(), "host-local recorded it");
    let chk = with_prev(&conf, &r);
    node.weft("CHECK", "hl1", Some(&pod.path()), &chk).expect_ok();
    node.weft("DEL", "hl1", Some(&pod.path()), &chk).expect_ok();
    assert!(!data.join("weftnet/10.84.0.2").exists(), "host-local released it");
    // A missing IPAM plugin is a precise error, with nothing left behind.
    let mut bad = conf.clone();
    bad["ipam"]["type"] = json!("no-such-ipam");
    let e = node.weft("ADD", "hl2", Some(&pod.path()), &bad);
    assert!(!e.ok);
    assert!(
        e.msg().contains("no-such-ipam") && e.msg().contains("not found"),
        "{}",
        e.msg()
    );
    assert!(node.weft_veths().is_empty());
    let _ = fs::remove_dir_all(&data);
}
