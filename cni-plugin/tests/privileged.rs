//! The real `weft` binary against the real kernel, each test in its own
//! network namespaces. Run as root.

mod common;

use std::collections::HashSet;
use std::fs;
use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn add_ping_check_del_dual_stack() {
    let node = Node::new();
    let conf = node.weft_conf("1.1.0", Node::dual_stack());
    let (p1, p2) = (Netns::new("wt-p"), Netns::new("wt-p"));
    let r1 = node.weft("ADD", "pod1", Some(&p1.path()), &conf).expect_ok();
    let r2 = node.weft("ADD", "pod2", Some(&p2.path()), &conf).expect_ok();

    // The full result: host veth + pod interface (with sandbox), ips bound to
    // the pod interface with the gateway, routes, dns.
    assert_eq!(r1["cniVersion"], "1.1.0");
    assert_eq!(r1["interfaces"][1]["name"], "eth0");
    assert_eq!(r1["interfaces"][1]["sandbox"], p1.path().display().to_string());
    assert_eq!(r1["interfaces"][1]["mtu"], 1420);
    assert_eq!(r1["ips"][0]["interface"], 1);
    assert_eq!(r1["ips"][0]["gateway"], "10.77.0.1");
    assert_eq!(r1["ips"][1]["gateway"], "fd00:77::1");
    assert_eq!(r1["routes"][0]["gw"], "10.77.0.1");
    let mac = r1["interfaces"][1]["mac"].as_str().unwrap();
    assert!(p1.ok(&["ip", "link", "show", "eth0"]).contains(mac));
    assert!(p1.ok(&["ip", "link", "show", "eth0"]).contains("mtu 1420"));

    let (a1, a2) = (Reply::ip(&r1, true), Reply::ip(&r2, true));
    let (b1, b2) = (Reply::ip(&r1, false), Reply::ip(&r2, false));
    assert_ne!(a1, a2);
    assert!(p1.ping(&a2), "pod1 -> pod2 over IPv4");
    assert!(p2.ping(&a1), "pod2 -> pod1 over IPv4");
    assert!(p1.ping(&b2), "pod1 -> pod2 over IPv6 (no DAD wait)");
    assert!(p2.ping(&b1), "pod2 -> pod1 over IPv6");
    assert!(node.ns.ping(&a1), "node -> pod1");
    assert!(node.ns.ping(&b2), "node -> pod2 over IPv6");
    assert!(p1.ping("10.77.0.1"), "pod -> its gateway");
    // Hairpin mode is on the bridge port.
    let veth = r1["interfaces"][0]["name"].as_str().unwrap();
    assert!(node.ns.ok(&["ip", "-d", "link", "show", veth]).contains("hairpin on"));

    // TCP with content, and the server sees the client pod's own address.
    let srv = p2.tcp_server(format!("{a2}:8080").parse().unwrap(), "hello", 1);
    let got = p1.tcp_get(format!("{a2}:8080").parse().unwrap()).unwrap();
    assert_eq!(got, format!("hello from-{a1}"));
    srv.join().unwrap();

    // CHECK passes, then fails once the pod's address is removed.
    let chk = with_prev(&conf, &r1);
    let c = node.weft("CHECK", "pod1", Some(&p1.path()), &chk);
    assert!(c.ok && c.json.is_null(), "CHECK prints nothing on success: {:?}", c);
    p1.ok(&["ip", "addr", "del", &format!("{a1}/24"), "dev", "eth0"]);
    let c = node.weft("CHECK", "pod1", Some(&p1.path()), &chk);
    assert!(!c.ok);
    assert_eq!(c.code(), 100);
    assert!(c.msg().contains(&a1), "{}", c.msg());

    // DEL twice, then without a netns: all succeed, nothing left.
    for _ in 0..2 {
        node.weft("DEL", "pod1", Some(&p1.path()), &chk).expect_ok();
    }
    node.weft("DEL", "pod1", None, &conf).expect_ok();
    assert!(!p1.links().contains(&"eth0".to_string()));
    assert_eq!(node.weft_veths().len(), 1, "only pod2's veth remains");
    assert_eq!(node.allocations().len(), 2, "only pod2's two addresses remain");
    node.weft("DEL", "pod2", Some(&p2.path()), &conf).expect_ok();
    assert!(node.weft_veths().is_empty());
    assert!(node.allocations().is_empty());
}

#[test]
fn del_after_netns_is_gone() {
    let node = Node::new();
    let conf = node.weft_conf("1.0.0", Node::dual_stack());
    let pod = Netns::new("wt-p");
    let path = pod.path();
    node.weft("ADD", "gone", Some(&path), &conf).expect_ok();
    drop(pod); // the runtime removed the netns first
    let r = node.weft("DEL", "gone", Some(&path), &conf);
    assert!(r.ok, "DEL with the netns gone: {:?}", r);
    assert!(node.weft_veths().is_empty());
    assert!(node.allocations().is_empty());
}

#[test]
fn older_versions_get_older_results() {
    let node = Node::new();
    for (i, v) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"].iter().enumerate() {
        let conf = node.weft_conf(v, Node::dual_stack());
        let pod = Netns::new("wt-p");
        let cid = format!("v{i}");
        let r = node.weft("ADD", &cid, Some(&pod.path()), &conf).expect_ok();
        assert_eq!(r["cniVersion"], *v);
        let has_version = r["ips"][0].get("version").is_some();
        assert_eq!(has_version, v.starts_with("0."), "{v}: {r}");
        assert!(r["interfaces"][0].get("mtu").is_none(), "{v}: mtu is a 1.1.0 field");
        node.weft("DEL", &cid, Some(&pod.path()), &conf).expect_ok();
    }
}

#[test]
fn bad_input_gets_precise_errors_and_leaves_nothing() {
    let node = Node::new();
    let pod = Netns::new("wt-p");
    let good = node.weft_conf("1.1.0", Node::dual_stack());

    let mut bad = good.clone();
    bad["mtu"] = json!("large");
    let r = node.weft("ADD", "bad1", Some(&pod.path()), &bad);
    assert_eq!((r.ok, r.code()), (false, 7));
    assert!(r.msg().contains("field mtu"), "{}", r.msg());

    let mut bad = good.clone();
    bad["cniVersion"] = json!("0.2.0");
    let r = node.weft("ADD", "bad2", Some(&pod.path()), &bad);
    assert_eq!(r.code(), 1);

    let r = node.weft(
        "ADD",
        "bad3",
        Some(std::path::Path::new("/var/run/netns/does-not-exist")),
        &good,
    );
    assert_eq!(r.code(), 3, "{:?}", r);

    let r = node.plugin("weft", "ADD", "bad4", "a/b", Some(&pod.path()), &good);
    assert_eq!(r.code(), 4);

    // Nothing half-made by any of them.
    assert!(node.weft_veths().is_empty());
    assert!(node.allocations().is_empty());
    assert!(!pod.links().contains(&"eth0".to_string()));

    // The same interface twice in one pod: refused, the first one intact.
    node.weft("ADD", "ok", Some(&pod.path()), &good).expect_ok();
    let r = node.weft("ADD", "other", Some(&pod.path()), &good);
    assert!(!r.ok);
    assert!(r.msg().contains("already exists"), "{}", r.msg());
    assert_eq!(node.allocations().len(), 2, "the refused ADD holds no address");
    assert_eq!(node.weft_veths().len(), 1);
    node.weft("DEL", "ok", Some(&pod.path()), &good).expect_ok();

    let v = node
        .weft("VERSION", "x", None, &json!({"cniVersion": "1.0.0"}))
        .expect_ok();
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn status_follows_readiness_file_and_free_addresses() {
    let node = Node::new();
    // A /30: exactly one address for pods.
    let conf = node.weft_conf("1.1.0", json!([[{"subnet": "10.78.0.0/30"}]]));
    let r = node.weft("STATUS", "x", None, &conf);
    assert_eq!(r.code(), 50);
    assert!(r.msg().contains("not ready"), "{}", r.msg());
    fs::write(node.dir.join("ready"), "").unwrap();
    node.weft("STATUS", "x", None, &conf).expect_ok();
    let pod = Netns::new("wt-p");
    node.weft("ADD", "only", Some(&pod.path()), &conf).expect_ok();
    let r = node.weft("STATUS", "x", None, &conf);
    assert_eq!(r.code(), 50);
    assert!(r.msg().contains("no address left"), "{}", r.msg());
    // And ADD says "try again later", naming the range.
    let pod2 = Netns::new("wt-p");
    let r = node.weft("ADD", "second", Some(&pod2.path()), &conf);
    assert_eq!(r.code(), 11);
    assert!(r.msg().contains("10.78.0.2-10.78.0.2"), "{}", r.msg());
    node.weft("DEL", "only", Some(&pod.path()), &conf).expect_ok();
    node.weft("STATUS", "x", None, &conf).expect_ok();
}

#[test]
fn gc_releases_what_the_runtime_no_longer_has() {
    let node = Node::new();
    let conf = node.weft_conf("1.1.0", Node::dual_stack());
    let (keep, stale) = (Netns::new("wt-p"), Netns::new("wt-p"));
    node.weft("ADD", "keep", Some(&keep.path()), &conf).expect_ok();
    let r = node.weft("ADD", "stale", Some(&stale.path()), &conf).expect_ok();
    let stale_ip = Reply::ip(&r, true);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    node.weft("GC", "", None, &gc).expect_ok();
    let left: Vec<_> = node.allocations().into_iter().map(|a| a.container_id).collect();
    assert_eq!(left, ["keep", "keep"]);
    assert!(!node.allocations().iter().any(|a| a.ip.to_string() == stale_ip));
    assert_eq!(node.weft_veths().len(), 1, "the stale host veth is gone too");
    assert!(keep.ping("10.77.0.1"), "the kept pod still works");
}

#[test]
fn boot_id_change_reclaims_old_allocations() {
    let node = Node::new();
    let conf = node.weft_conf("1.1.0", Node::dual_stack());
    let pod = Netns::new("wt-p");
    node.weft("ADD", "before", Some(&pod.path()), &conf).expect_ok();
    assert_eq!(node.allocations().len(), 2);
    // "Reboot": the pod and its veth are gone, the state file stayed.
    drop(pod);
    fs::write(node.dir.join("boot_id"), "boot-2\n").unwrap();
    let pod = Netns::new("wt-p");
    node.weft("ADD", "after", Some(&pod.path()), &conf).expect_ok();
    // On disk: only this boot's state is left, holding only the new pod.
    let files = weft_ipam::store::state_files(&node.dir.join("ipam/weftnet")).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].to_string_lossy().contains("boot-2"), "{files:?}");
    let text = fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("after") && !text.contains("before"), "{text}");
    let owners: HashSet<_> = node.allocations().into_iter().map(|a| a.container_id).collect();
    assert_eq!(owners, HashSet::from(["after".to_string()]));
    node.weft("DEL", "after", Some(&pod.path()), &conf).expect_ok();
}

#[test]
fn parallel_64_adds_then_64_dels() {
    let node = Node::new();
    let conf = node.weft_conf("1.1.0", Node::dual_stack());
    let pods: Vec<Netns> = (0..64).map(|_| Netns::new("wt-q")).collect();
    let results: Vec<Reply> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || node.weft("ADD", &format!("par{i}"), Some(&p.path()), conf))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let failures: Vec<_> = results.iter().filter(|r| !r.ok).collect();
    assert!(
        failures.is_empty(),
        "{} ADDs failed: {:?}",
        failures.len(),
        failures.first()
    );
    let v4: HashSet<_> = results.iter().map(|r| Reply::ip(&r.json, true)).collect();
    let v6: HashSet<_> = results.iter().map(|r| Reply::ip(&r.json, false)).collect();
    assert_eq!((v4.len(), v6.len()), (64, 64), "no duplicate addresses");
    assert_eq!(node.weft_veths().len(), 64);
    assert!(pods[0].ping(&Reply::ip(&results[63].json, true)));

    let dels: Vec<Reply> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || node.weft("DEL", &format!("par{i}"), Some(&p.path()), conf))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(dels.iter().all(|r| r.ok), "{:?}", dels.iter().find(|r| !r.ok));
    assert!(node.weft_veths().is_empty(), "no veth left");
    assert!(node.allocations().is_empty(), "no allocation left");
}

#[test]
fn kill_9_during_add_then_del_leaves_nothing() {
    let node = Node::new();
    let conf = node.weft_conf("1.1.0", Node::dual_stack());
    let (mut killed, mut half_done) = (0, 0);
    // Kill ADDs at growing delays so some die before, some during and some
    // after their changes; after each, the runtime's DEL must clean up.
    for (i, delay_us) in (0..24).map(|i| (i, i * 400)).collect::<Vec<_>>() {
        let pod = Netns::new("wt-k");
        let cid = format!("kill{i}");
        let mut child = node.spawn_plugin("weft", "ADD", &cid, "eth0", Some(&pod.path()), &conf);
        std::thread::sleep(Duration::from_micros(delay_us));
        // `ip netns exec` execs weft in place: the pid is weft's.
        let _ = child.kill();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        if status.signal() == Some(9) {
            killed += 1;
            if !node.allocations().is_empty() || !node.weft_veths().is_empty() {
                half_done += 1;
            }
        }
        node.weft("DEL", &cid, Some(&pod.path()), &conf).expect_ok();
        assert!(node.weft_veths().is_empty(), "iteration {i}: veth left");
        assert!(node.allocations().is_empty(), "iteration {i}: allocation left");
    }
    eprintln!("kill -9 landed in {killed} of 24 ADDs, {half_done} of them with changes made");
    assert!(half_done > 0, "no kill landed mid-ADD: the test proved nothing");
    // The allocator still works, with no duplicate.
    let (p1, p2) = (Netns::new("wt-k"), Netns::new("wt-k"));
    let a = node.weft("ADD", "after1", Some(&p1.path()), &conf).expect_ok();
    let b = node.weft("ADD", "after2", Some(&p2.path()), &conf).expect_ok();
    assert_ne!(Reply::ip(&a, true), Reply::ip(&b, true));
    assert!(p1.ping(&Reply::ip(&b, true)));
}

#[test]
fn repeated_add_with_a_leftover_veth_is_recovered() {
    // A killed ADD can leave the host veth with no pod end (the pod netns
    // was deleted): the next ADD for that attachment replaces it.
    let node = Node::new();
    let conf = node.weft_conf("1.1.0", Node::dual_stack());
    let pod = Netns::new("wt-p");
    let first = node.weft("ADD", "again", Some(&pod.path()), &conf).expect_ok();
    let veth = first["interfaces"][0]["name"].as_str().unwrap().to_string();
    // Move the pod end away, leaving only our host end behind.
    pod.ok(&["ip", "link", "set", "eth0", "name", "old0"]);
    pod.ok(&["ip", "link", "del", "old0"]);
    node.ns
        .ok(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", "tmpx"]);
    let second = node.weft("ADD", "again", Some(&pod.path()), &conf).expect_ok();
    assert_eq!(first["ips"], second["ips"], "same attachment, same addresses");
    assert!(pod.ping("10.77.0.1"));
    node.weft("DEL", "again", Some(&pod.path()), &conf).expect_ok();
    assert!(node.weft_veths().is_empty());
}

#[test]
fn ipv6_forwarded_to_a_new_pod_works_at_once() {
    // Traffic routed through the node (as from another node through the
    // tunnel) needs the node's neighbour solicitation from the bridge; with
    // duplicate address detection on the bridge's link-local address that
    // was held back for 1-2 s after the bridge came up.
    let node = Node::new();
    let router = Netns::new("wt-r");
    link(&node.ns, "wtr0", "fd00:99::1/64", &router, "fd00:99::2/64");
    router.ok(&["ip", "-6", "route", "add", "fd00:77::/64", "via", "fd00:99::1"]);
    node.ns.ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);

    let conf = node.weft_conf("1.1.0", Node::dual_stack());
    let pod = Netns::new("wt-p");
    let r = node.weft("ADD", "fwd6", Some(&pod.path()), &conf).expect_ok();
    let pod6 = Reply::ip(&r, false);
    let out = router.exec(&["ping", "-6", "-c", "1", "-W", "1", &pod6]);
    assert!(
        out.status.success(),
        "the first forwarded IPv6 packet reached the new pod within 1 s: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        node.ns.ok(&["sysctl", "-n", "net.ipv6.conf.weft0.accept_dad"]).trim(),
        "0"
    );
    node.weft("DEL", "fwd6", Some(&pod.path()), &conf).expect_ok();
}
