//! Regressions of issue 10 ("Pod path"): what an outside tester broke. The
//! real `weft` binary against the real kernel, each test in its own network
//! namespaces (the "node" is a throwaway netns too). Run as root.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The netns the plugin itself runs in, as the tester passed it.
const OWN_NETNS: &str = "/proc/self/ns/net";

/// `ip addr show dev DEV` in `ns`, one address (with prefix) per entry.
fn addrs(ns: &Netns, dev: &str) -> Vec<String> {
    ns.ok(&["ip", "-o", "addr", "show", "dev", dev])
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == "inet" || *x == "inet6")?;
            w.next().map(str::to_string)
        })
        .collect()
}

fn has_link(ns: &Netns, name: &str) -> bool {
    ns.links().iter().any(|l| l == name)
}

/// The MAC `ns` has cached for `ip` (`ip neigh show IP`), if any.
fn neigh_mac(ns: &Netns, ip: &str) -> Option<String> {
    let out = ns.ok(&["ip", "neigh", "show", ip]);
    let mut w = out.split_whitespace();
    w.find(|x| *x == "lladdr")?;
    w.next().map(str::to_string)
}

#[test]
fn del_leaves_interfaces_it_cannot_prove_are_its_own() {
    let node = Node::new();
    let conf = node.weft_conf("1.1.0", Node::dual_stack());
    // The example: the node's own netns as CNI_NETNS, an "uplink".
    node.ns
        .ok(&["ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0p"]);
    let r = node.plugin("weft", "DEL", "never", "up0", Some(Path::new(OWN_NETNS)), &conf);
    assert!(r.ok, "DEL of nothing of ours is success: {r:?}");
    assert!(has_link(&node.ns, "up0"), "DEL deleted the node's uplink");
    assert!(has_link(&node.ns, "up0p"));

    // A working pod, then DELs that name its netns and ifname with another
    // container ID, and the bridge through the node's netns.
    let pod = Netns::new("cnis-p");
    let res = node.weft("ADD", "owner", Some(&pod.path()), &conf).expect_ok();
    let r = node.weft("DEL", "stranger", Some(&pod.path()), &conf);
    assert!(r.ok, "{r:?}");
    let r = node.plugin("weft", "DEL", "never", "weft0", Some(Path::new(OWN_NETNS)), &conf);
    assert!(r.ok, "{r:?}");
    assert!(
        has_link(&pod, "eth0"),
        "DEL of another container deleted this pod's eth0"
    );
    assert!(has_link(&node.ns, "weft0"), "DEL deleted weft's bridge");
    assert_eq!(node.allocations().len(), 2, "the owner's addresses stay held");
    assert!(pod.ping("10.77.0.1"), "the pod still works");
    let log = fs::read_to_string(node.dir.join("weft.log")).unwrap();
    assert!(log.contains("eth0 in") && log.contains("is not the peer of"), "{log}");

    // The owner's DEL still removes both ends and the addresses.
    node.weft("DEL", "owner", Some(&pod.path()), &with_prev(&conf, &res))
        .expect_ok();
    assert!(!has_link(&pod, "eth0"));
    assert!(node.weft_veths().is_empty());
    assert!(node.allocations().is_empty());
    // ... because it proved the pod end was its veth's peer.
    let log = fs::read_to_string(node.dir.join("weft.log")).unwrap();
    assert!(
        log.contains("DEL owner/eth0 deleted eth0 in") && log.contains("with its peer"),
        "{log}"
    );
}

#[test]
fn add_refuses_the_plugins_own_netns() {
    let node = Node::new();
    let conf = node.weft_conf("1.1.0", Node::dual_stack());
    // `/proc/self/ns/net`, and the node netns's bind mount under /var/run/netns.
    let own = node.ns.path();
    for (cid, ns) in [("self", Path::new(OWN_NETNS)), ("bind", own.as_path())] {
        let r = node.plugin("weft", "ADD", cid, "pod0", Some(ns), &conf);
        assert!(!r.ok, "ADD into the plugin's own netns {} succeeded", ns.display());
        assert_eq!(r.code(), 4, "{r:?}");
        assert!(r.msg().contains("CNI_NETNS"), "{}", r.msg());
        assert!(r.msg().contains("plugin's own"), "{}", r.msg());
    }
    assert!(!has_link(&node.ns, "pod0"), "no pod interface in the node");
    assert!(!has_link(&node.ns, "weft0"), "nothing was set up");
    assert!(node.weft_veths().is_empty());
    assert!(node.allocations().is_empty());
    let routes = node.ns.ok(&["ip", "route", "show", "default"]);
    assert!(routes.trim().is_empty(), "no default route in the node: {routes}");
}

#[test]
fn mtu_below_1280_with_ipv6_is_a_config_error_and_the_bridge_keeps_its_v6_gateway() {
    let node = Node::new();
    let conf = node.weft_conf("1.1.0", Node::dual_stack());
    let (p1, p2) = (Netns::new("cnis-p"), Netns::new("cnis-p"));
    let r1 = node.weft("ADD", "first", Some(&p1.path()), &conf).expect_ok();
    let v6 = Reply::ip(&r1, false);
    let mut small = conf.clone();
    small["mtu"] = json!(1279);
    let r = node.weft("ADD", "small", Some(&p2.path()), &small);
    assert_eq!((r.ok, r.code()), (false, 7), "{r:?}");
    assert!(r.msg().contains("field mtu"), "{}", r.msg());
    assert!(r.msg().contains("1280"), "{}", r.msg());
    assert!(
        addrs(&node.ns, "weft0").contains(&"fd00:77::1/64".to_string()),
        "the bridge lost its IPv6 gateway: {:?}",
        addrs(&node.ns, "weft0")
    );
    assert!(p1.ping("fd00:77::1"), "the first pod reaches its IPv6 gateway");
    assert!(node.ns.ping(&v6), "the node reaches the first pod over IPv6");
    assert!(!has_link(&p2, "eth0"));
    assert_eq!(node.weft_veths().len(), 1);
    assert_eq!(node.allocations().len(), 2, "only the first pod holds addresses");
    // An IPv4-only network may go below 1280.
    let mut v4small = node.weft_conf("1.1.0", json!([[{"subnet": "10.79.0.0/24"}]]));
    v4small["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    v4small["mtu"] = json!(1279);
    v4small["bridge"] = json!("cnis-br4");
    let p3 = Netns::new("cnis-p");
    node.weft("ADD", "v4small", Some(&p3.path()), &v4small).expect_ok();
    node.weft("DEL", "v4small", Some(&p3.path()), &v4small).expect_ok();
}

/// IPAM routes with a gateway nothing reaches: the route step fails, after
/// the bridge, its gateway addresses and the veth pair were made.
fn with_unreachable_route(conf: &Value) -> Value {
    let mut c = conf.clone();
    c["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "10.200.0.0/16", "gw": "192.0.2.1"}]);
    c
}

#[test]
fn a_late_add_failure_leaves_the_bridge_and_its_addresses_alone() {
    let node = Node::new();
    let conf = node.weft_conf("1.1.0", Node::dual_stack());
    let (p1, p2) = (Netns::new("cnis-p"), Netns::new("cnis-p"));
    let r1 = node.weft("ADD", "first", Some(&p1.path()), &conf).expect_ok();
    let before = addrs(&node.ns, "weft0");
    let r = node.weft("ADD", "late", Some(&p2.path()), &with_unreachable_route(&conf));
    assert!(!r.ok, "{r:?}");
    assert!(r.msg().contains("add route 10.200.0.0/16"), "{}", r.msg());
    let after = addrs(&node.ns, "weft0");
    for a in ["10.77.0.1/24", "fd00:77::1/64"] {
        assert!(after.contains(&a.to_string()), "rollback removed {a}: {after:?}");
    }
    assert_eq!(before, after);
    assert!(!has_link(&p2, "eth0"), "the failed pod's interface is gone");
    assert_eq!(node.weft_veths().len(), 1, "only the first pod's veth");
    assert_eq!(node.allocations().len(), 2, "the failed pod's addresses are released");
    assert!(p1.ping("10.77.0.1") && p1.ping("fd00:77::1"));
    assert!(node.ns.ping(&Reply::ip(&r1, true)));
}

#[test]
fn a_failed_first_add_removes_the_bridge_it_made() {
    let node = Node::new();
    let conf = node.weft_conf("1.1.0", Node::dual_stack());
    let pod = Netns::new("cnis-p");
    let r = node.weft("ADD", "late", Some(&pod.path()), &with_unreachable_route(&conf));
    assert!(!r.ok, "{r:?}");
    assert!(
        !has_link(&node.ns, "weft0"),
        "the bridge this ADD made is left: {:?}",
        node.ns.ok(&["ip", "addr", "show", "weft0"])
    );
    assert!(node.weft_veths().is_empty());
    assert!(node.allocations().is_empty());
    // The next ADD makes it again.
    node.weft("ADD", "ok", Some(&pod.path()), &conf).expect_ok();
    assert!(pod.ping("10.77.0.1"));
}

#[test]
fn add_announces_a_reused_address_to_neighbours_at_once() {
    let node = Node::new();
    let conf = node.weft_conf("1.1.0", Node::dual_stack());
    let neighbour = Netns::new("cnis-n");
    node.weft("ADD", "neighbour", Some(&neighbour.path()), &conf)
        .expect_ok();
    // The address was someone else's: the node and the neighbour pod still
    // cache that old MAC.
    let (v4, v6) = ("10.77.0.50", "fd00:77::50");
    let old = "02:00:00:00:00:01";
    for (ns, dev) in [(&neighbour, "eth0"), (&node.ns, "weft0")] {
        for ip in [v4, v6] {
            ns.ok(&["ip", "neigh", "replace", ip, "lladdr", old, "dev", dev, "nud", "stale"]);
            assert_eq!(neigh_mac(ns, ip).as_deref(), Some(old));
        }
    }
    let mut req = conf.clone();
    req["args"] = json!({"cni": {"ips": [v4, v6]}});
    let pod = Netns::new("cnis-p");
    let r = node.weft("ADD", "reused", Some(&pod.path()), &req).expect_ok();
    let done = Instant::now();
    assert_eq!(Reply::ip(&r, true), v4);
    let mac = r["interfaces"][1]["mac"].as_str().unwrap().to_string();
    assert_ne!(mac, old);
    // Bounded: 100 ms after ADD returned, every neighbour has the new MAC.
    let stale = |ns: &Netns, ip: &str| neigh_mac(ns, ip).as_deref() != Some(mac.as_str());
    let all = [(&neighbour, v4), (&neighbour, v6), (&node.ns, v4), (&node.ns, v6)];
    while all.iter().any(|(ns, ip)| stale(ns, ip)) && done.elapsed() < Duration::from_millis(100) {
        std::thread::sleep(Duration::from_millis(5));
    }
    for (ns, ip) in all {
        assert_eq!(
            neigh_mac(ns, ip).as_deref(),
            Some(mac.as_str()),
            "{} still caches another MAC for {ip} 100 ms after ADD",
            ns.name
        );
    }
}

#[test]
fn a_zero_prefix_subnet_is_refused_before_any_change() {
    let node = Node::new();
    let pod = Netns::new("cnis-p");
    for (subnet, gw) in [("0.0.0.0/0", "0.0.0.1/0"), ("::/0", "::1/0")] {
        let conf = node.weft_conf("1.1.0", json!([[{"subnet": subnet}]]));
        let r = node.weft("ADD", "zero", Some(&pod.path()), &conf);
        assert_eq!((r.ok, r.code()), (false, 7), "{subnet}: {r:?}");
        assert!(r.msg().contains("ipam.ranges[0][0]"), "{}", r.msg());
        assert!(r.msg().contains(subnet), "{}", r.msg());
        assert!(!has_link(&node.ns, "weft0"), "{subnet}: a bridge was made ({gw}?)");
        assert!(!has_link(&pod, "eth0"));
        assert!(node.allocations().is_empty());
    }
}

#[test]
fn gc_without_valid_attachments_is_invalid_config_and_deletes_nothing() {
    let node = Node::new();
    let conf = node.weft_conf("1.1.0", Node::dual_stack());
    let pod = Netns::new("cnis-p");
    node.weft("ADD", "kept", Some(&pod.path()), &conf).expect_ok();
    let r = node.weft("GC", "", None, &conf);
    assert_eq!((r.ok, r.code()), (false, 7), "{r:?}");
    assert!(r.msg().contains("cni.dev/valid-attachments"), "{}", r.msg());
    assert_eq!(node.allocations().len(), 2, "GC released addresses");
    assert_eq!(node.weft_veths().len(), 1, "GC deleted a veth");
    assert!(pod.ping("10.77.0.1"));
    // The standalone weft-ipam too.
    let r = node.plugin("weft-ipam", "GC", "", "eth0", None, &conf);
    assert_eq!((r.ok, r.code()), (false, 7), "{r:?}");
    assert_eq!(node.allocations().len(), 2, "weft-ipam GC released addresses");
}

#[test]
fn status_never_writes_the_ipam_state() {
    let node = Node::new();
    let conf = node.weft_conf("1.1.0", Node::dual_stack());
    fs::write(node.dir.join("ready"), "").unwrap();
    let state_dir = node.dir.join("ipam/weftnet");
    // Before any ADD: STATUS creates no state file.
    node.weft("STATUS", "", None, &conf).expect_ok();
    let files = weft_ipam::store::state_files(&state_dir).unwrap();
    assert!(files.is_empty(), "STATUS wrote {files:?}");
    // After an ADD and a reboot (a new boot id): the file stays as it is.
    let pod = Netns::new("cnis-p");
    node.weft("ADD", "p", Some(&pod.path()), &conf).expect_ok();
    let files = weft_ipam::store::state_files(&state_dir).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let before = fs::metadata(&files[0]).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    fs::write(node.dir.join("boot_id"), "boot-2\n").unwrap();
    for plugin in ["weft", "weft-ipam"] {
        let r = node.plugin(plugin, "STATUS", "", "eth0", None, &conf);
        assert!(r.ok, "{plugin}: {r:?}");
        let now = weft_ipam::store::state_files(&state_dir).unwrap();
        assert_eq!(now, files, "{plugin}: STATUS replaced the state file");
        let after = fs::metadata(&files[0]).unwrap();
        assert_eq!((after.ino(), after.mtime_nsec()), (before.ino(), before.mtime_nsec()));
    }
}

#[test]
fn a_relative_data_dir_is_refused() {
    let node = Node::new();
    let pod = Netns::new("cnis-p");
    let mut conf = node.weft_conf("1.1.0", Node::dual_stack());
    conf["ipam"]["dataDir"] = json!("var/lib/weft");
    for plugin in ["weft", "weft-ipam"] {
        let r = node.plugin(plugin, "ADD", "rel", "eth0", Some(&pod.path()), &conf);
        assert_eq!((r.ok, r.code()), (false, 7), "{plugin}: {r:?}");
        assert!(r.msg().contains("ipam.dataDir"), "{plugin}: {}", r.msg());
    }
    assert!(!has_link(&pod, "eth0"));
}

#[test]
fn config_errors_go_to_stderr_and_the_log_file() {
    let node = Node::new();
    let pod = Netns::new("cnis-p");
    let mut conf = node.weft_conf("1.1.0", Node::dual_stack());
    conf["mtu"] = json!("large");
    let r = node.weft("ADD", "badcfg", Some(&pod.path()), &conf);
    assert_eq!(r.code(), 7);
    assert!(r.stderr.contains("field mtu"), "stderr: {:?}", r.stderr);
    let log = fs::read_to_string(node.dir.join("weft.log")).unwrap_or_default();
    assert!(
        log.contains("field mtu") && log.contains("ADD badcfg/eth0"),
        "log: {log:?}"
    );
}

#[test]
fn an_array_or_null_on_stdin_is_a_decode_error() {
    let node = Node::new();
    let pod = Netns::new("cnis-p");
    for stdin in [json!([]), json!([{"cniVersion": "1.1.0"}]), Value::Null, json!("text")] {
        for plugin in ["weft", "weft-ipam"] {
            let r = node.plugin(plugin, "ADD", "dec", "eth0", Some(&pod.path()), &stdin);
            assert_eq!((r.ok, r.code()), (false, 6), "{plugin} {stdin}: {r:?}");
        }
    }
}

#[test]
fn a_delegated_ipv6_address_with_mtu_below_1280_is_refused_and_released() {
    require_ref_plugins(&["host-local"]);
    let node = Node::new();
    let pod = Netns::new("cnis-p");
    let hl = node.dir.join("host-local");
    let mut conf = node.weft_conf("1.0.0", json!([]));
    conf["mtu"] = json!(1279);
    conf["ipam"] = json!({"type": "host-local", "ranges": [[{"subnet": "fd00:7a::/64"}]], "dataDir": hl});
    let r = node.weft("ADD", "hl6", Some(&pod.path()), &conf);
    assert_eq!((r.ok, r.code()), (false, 7), "{r:?}");
    assert!(r.msg().contains("field mtu"), "{}", r.msg());
    assert!(!has_link(&node.ns, "weft0"), "refused before the bridge was made");
    assert!(!has_link(&pod, "eth0"));
    // host-local keeps one file per address: none is left.
    let held: Vec<_> = fs::read_dir(hl.join("weftnet"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        held.iter().all(|n| !n.to_string_lossy().starts_with("fd00")),
        "host-local still holds {held:?}"
    );
}
