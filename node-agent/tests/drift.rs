//! The agent owns what it made and puts it back when someone else changes it
//! (issue 10 items 7, 8, 10, 11, 12 and the foundation issue's drift list):
//! a route to another node's pod CIDR moved to the underlay, a deleted route,
//! a removed WireGuard peer, the bridge's gateway address deleted, a flushed
//! nftables chain, an emptied set, a deleted table, a killed userspace
//! WireGuard, an unusable InternalIP. Each is done by hand with the real
//! tools inside a lab node, and the test waits (bounded) for the agent to
//! repair it, then checks real traffic and the repair counter.
//!
//! Run as root: `cargo test -p weft-agent --test drift`.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{get_node, lab_with, node, patch_node, patch_node_status, peers, sh_in, wg_socket, MeshLab};
use weft_agent::peers::PeerChange;
use weft_agent::uapi::{self, Update};
use weft_tests::lab::{netns, Endpoint, Lab, PodSpec};

/// The agents resync every this many seconds in the drift labs.
const RESYNC: u64 = 2;
/// Bound on a repair: two resync periods and some slack for a loaded CI machine.
const REPAIR_WITHIN: Duration = Duration::from_secs(2 * RESYNC + 6);
const HTTP: u16 = 8080;

/// Two nodes, meshed, with pod a on node-1 and pod b (an HTTP server) on node-2.
fn up(prefix: &str, resync: u64) -> MeshLab {
    let lab = lab_with(prefix, 2, resync, true);
    for n in ["node-1", "node-2"] {
        lab.wait_peers(n, 1).unwrap();
    }
    lab.add_pod(&PodSpec::new("node-1", "a")).unwrap();
    lab.add_pod(&PodSpec::new("node-2", "b").serve(Some(HTTP), None))
        .unwrap();
    lab
}

/// A command in the node's netns; panics with its output on failure.
fn in_node(lab: &Lab, name: &str, argv: &[&str]) -> String {
    sh_in(&node(lab, name).netns, argv)
}

/// Wait until `ok` holds; panic with `what` and the agent's log otherwise.
/// Returns how long it took.
fn wait_for(lab: &Lab, node: &str, what: &str, within: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < within {
        if ok() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = lab.agent_log(node).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    panic!(
        "{what}: not within {within:?}; agent log (newest first):\n{}",
        tail.join("\n")
    );
}

fn repairs(lab: &Lab, node: &str, kind: &str) -> f64 {
    lab.metric(node, &format!("weft_agent_repairs_total{{kind=\"{kind}\"}}"))
        .unwrap()
        .unwrap_or(0.0)
}

/// pod a (node-1) → pod b (node-2) over HTTP, and the address b saw.
fn a_to_b(lab: &Lab) -> anyhow::Result<IpAddr> {
    let to = lab.pod_addr("b", false, HTTP)?;
    Ok(lab.http_get(&Endpoint::Pod("a".into()), to)?.peer.ip())
}

fn pod_ip(lab: &Lab, pod: &str) -> IpAddr {
    lab.pod_addr(pod, false, 1).unwrap().ip()
}

/// The route to node-2's IPv4 pod CIDR as node-1 has it.
fn route_to_node2(lab: &Lab) -> String {
    in_node(lab, "node-1", &["ip", "-4", "route", "show", "10.244.2.0/24"])
}

/// `nft ARGS…` in node-1; empty output when it fails (e.g. the table is
/// gone while the agent has not recreated it yet).
fn nft_or_empty(lab: &Lab, args: &[&str]) -> String {
    let mut argv = vec!["nft"];
    argv.extend_from_slice(args);
    netns::exec(&node(lab, "node-1").netns, &argv).unwrap_or_default()
}

#[test]
fn a_pod_cidr_route_moved_to_the_underlay_is_taken_back() {
    let g = up("droute", RESYNC);
    let lab = &g.0;
    let a_ip = pod_ip(lab, "a");
    assert_eq!(a_to_b(lab).unwrap(), a_ip, "pod to pod keeps the pod's address");

    // Another node's pod CIDR moved to the underlay (issue 10 item 7): pod
    //    traffic would leave in clear text. The agent takes the prefix back.
    let node2 = node(lab, "node-2").internal_ipv4.to_string();
    let before = repairs(lab, "node-1", "route");
    in_node(
        lab,
        "node-1",
        &["ip", "route", "replace", "10.244.2.0/24", "via", &node2, "dev", "eth0"],
    );
    assert!(route_to_node2(lab).contains("eth0"), "the route really moved");
    let took = wait_for(lab, "node-1", "route taken back to weft-wg", REPAIR_WITHIN, || {
        route_to_node2(lab).contains("dev weft-wg")
    });
    eprintln!("moved route taken back in {took:?}");
    assert!(repairs(lab, "node-1", "route") > before, "the repair is counted");
    assert!(lab
        .agent_log("node-1")
        .unwrap()
        .contains("put back what someone else changed"));
    assert_eq!(a_to_b(lab).unwrap(), a_ip);

    // The route deleted.
    let before = repairs(lab, "node-1", "route");
    in_node(
        lab,
        "node-1",
        &["ip", "route", "del", "10.244.2.0/24", "dev", "weft-wg"],
    );
    wait_for(lab, "node-1", "deleted route re-added", REPAIR_WITHIN, || {
        route_to_node2(lab).contains("dev weft-wg")
    });
    assert!(repairs(lab, "node-1", "route") > before);
    lab.down().unwrap();
}

#[test]
fn a_removed_wireguard_peer_is_put_back() {
    let g = up("dpeer", RESYNC);
    let lab = &g.0;
    let a_ip = pod_ip(lab, "a");
    // A WireGuard peer removed from the device.
    let keys = || -> Vec<_> { peers(lab, "node-1").iter().filter_map(|p| p.key).collect() };
    let had = keys();
    assert_eq!(had.len(), 1, "node-1 has node-2 as its one peer");
    let before = repairs(lab, "node-1", "wireguard_peer");
    let remove = Update {
        peers: vec![PeerChange::Remove(had[0])],
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(uapi::set(&wg_socket(&node(lab, "node-1")), &remove))
        .unwrap();
    assert!(keys().is_empty(), "the peer really went");
    wait_for(lab, "node-1", "removed peer re-added", REPAIR_WITHIN, || keys() == had);
    assert!(repairs(lab, "node-1", "wireguard_peer") > before);
    assert_eq!(a_to_b(lab).unwrap(), a_ip);
    lab.down().unwrap();
}

#[test]
fn a_deleted_bridge_gateway_address_is_restored() {
    let g = up("dbridge", RESYNC);
    let lab = &g.0;
    let a_ip = pod_ip(lab, "a");
    // The bridge's gateway address deleted (issue 10 item 11): every pod
    //    on the node is cut off until it is back.
    let before = repairs(lab, "node-1", "bridge_address");
    in_node(lab, "node-1", &["ip", "addr", "del", "10.244.1.1/24", "dev", "weft0"]);
    assert!(a_to_b(lab).is_err(), "without its gateway pod a is cut off");
    wait_for(lab, "node-1", "bridge gateway restored", REPAIR_WITHIN, || {
        in_node(lab, "node-1", &["ip", "-4", "addr", "show", "dev", "weft0"]).contains("10.244.1.1/24")
    });
    assert!(repairs(lab, "node-1", "bridge_address") > before);
    wait_for(lab, "node-1", "pod a reaches pod b again", REPAIR_WITHIN, || {
        a_to_b(lab).is_ok_and(|ip| ip == a_ip)
    });
    lab.down().unwrap();
}

#[test]
fn nftables_drift_is_repaired_and_other_tables_are_left_alone() {
    let g = up("dnft", RESYNC);
    let lab = &g.0;
    let a_ip = pod_ip(lab, "a");
    // nftables (issue 10 item 9): the masquerade chain flushed, a cluster
    //    CIDR deleted from the set, the whole table deleted.
    let masq_rules = || {
        nft_or_empty(lab, &["list", "chain", "inet", "weft", "mesh-postrouting"])
            .matches("masquerade")
            .count()
    };
    assert_eq!(masq_rules(), 2, "one masquerade rule per family");
    in_node(
        lab,
        "node-1",
        &["nft", "flush", "chain", "inet", "weft", "mesh-postrouting"],
    );
    assert_eq!(masq_rules(), 0);
    wait_for(lab, "node-1", "flushed chain refilled", REPAIR_WITHIN, || {
        masq_rules() == 2
    });

    let cluster_set = || nft_or_empty(lab, &["list", "set", "inet", "weft", "mesh-cluster-v4"]);
    assert!(cluster_set().contains("10.244.0.0/16"), "{}", cluster_set());
    in_node(
        lab,
        "node-1",
        &[
            "nft",
            "delete",
            "element",
            "inet",
            "weft",
            "mesh-cluster-v4",
            "{ 10.244.0.0/16 }",
        ],
    );
    assert!(!cluster_set().contains("10.244.0.0/16"));
    wait_for(lab, "node-1", "deleted set element restored", REPAIR_WITHIN, || {
        cluster_set().contains("10.244.0.0/16")
    });
    assert_eq!(a_to_b(lab).unwrap(), a_ip, "pod to pod is not masqueraded");

    in_node(lab, "node-1", &["nft", "delete", "table", "inet", "weft"]);
    wait_for(lab, "node-1", "deleted table recreated", REPAIR_WITHIN, || {
        masq_rules() == 2 && cluster_set().contains("10.244.0.0/16")
    });
    assert!(
        repairs(lab, "node-1", "nftables") >= 3.0,
        "each nftables repair is counted"
    );

    // Another table in the same netns is never touched by the repairs.
    in_node(lab, "node-1", &["nft", "add", "table", "inet", "someone-else"]);
    in_node(
        lab,
        "node-1",
        &["nft", "flush", "chain", "inet", "weft", "mesh-postrouting"],
    );
    wait_for(lab, "node-1", "flushed chain refilled", REPAIR_WITHIN, || {
        masq_rules() == 2
    });
    assert!(in_node(lab, "node-1", &["nft", "list", "tables"]).contains("someone-else"));

    lab.down().unwrap();
}

#[test]
fn pod_traffic_to_another_node_never_leaves_outside_the_tunnel() {
    // Strict mode: with the agent stopped (nothing repairs), a route moved to
    // the underlay must not carry pod traffic in clear text: it is dropped.
    let g = up("strict", RESYNC);
    let lab = &g.0;
    assert!(a_to_b(lab).is_ok());
    lab.stop_agent("node-1").unwrap();
    let node2 = node(lab, "node-2").internal_ipv4.to_string();
    in_node(
        lab,
        "node-1",
        &["ip", "route", "replace", "10.244.2.0/24", "via", &node2, "dev", "eth0"],
    );
    // node-2 would forward clear-text packets to pod b: without strict mode
    // this request succeeds over the underlay.
    let r = a_to_b(lab);
    assert!(r.is_err(), "pod traffic left node-1 outside the tunnel: {r:?}");
    let dropped = nft_or_empty(lab, &["list", "chain", "inet", "weft", "mesh-strict"]);
    assert!(dropped.contains("drop"), "{dropped}");
    // The agent comes back and takes the route back: traffic flows again.
    lab.start_agent("node-1").unwrap();
    wait_for(
        lab,
        "node-1",
        "route taken back",
        REPAIR_WITHIN + Duration::from_secs(10),
        || route_to_node2(lab).contains("dev weft-wg"),
    );
    wait_for(lab, "node-1", "pod a reaches pod b", REPAIR_WITHIN, || {
        a_to_b(lab).is_ok()
    });
    lab.down().unwrap();
}

fn weft_wg_pid(lab: &Lab, name: &str) -> Option<i32> {
    let text = std::fs::read_to_string(node(lab, name).run_dir().join("weft-wg.pid")).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    std::path::Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn kill9(pid: i32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
}

fn endpoint_of_node2_on_node1(lab: &Lab) -> Option<SocketAddr> {
    peers(lab, "node-1").first().and_then(|p| p.endpoint)
}

/// A long resync: everything in the tests below must happen on events, not
/// on the timer.
const NEVER: u64 = 300;

#[test]
fn a_dead_userspace_wireguard_is_recreated_at_once() {
    let g = up("dwg", NEVER);
    let lab = &g.0;
    let a_ip = pod_ip(lab, "a");
    assert_eq!(a_to_b(lab).unwrap(), a_ip);

    // Issue 10 item 10: kill -9 weft-wg; the agent notices and recreates it.
    for round in ["started by this agent", "adopted after an agent restart"] {
        let pid = weft_wg_pid(lab, "node-1").expect("weft-wg runs on node-1");
        let before = repairs(lab, "node-1", "wireguard_process");
        kill9(pid);
        let took = wait_for(lab, "node-1", "weft-wg recreated", Duration::from_secs(10), || {
            weft_wg_pid(lab, "node-1").is_some_and(|p| p != pid) && a_to_b(lab).is_ok()
        });
        eprintln!("weft-wg {round}: traffic back {took:?} after kill -9");
        assert!(repairs(lab, "node-1", "wireguard_process") > before, "{round}");
        if round.starts_with("started") {
            // The next round: an agent that did not start this weft-wg.
            lab.kill_agent("node-1").unwrap();
            wait_for(
                lab,
                "node-1",
                "agent restarted by the lab",
                Duration::from_secs(30),
                || {
                    lab.agent_pid("node-1").ok().flatten().is_some()
                        && lab.metric("node-1", "weft_agent_ready").ok().flatten() == Some(1.0)
                },
            );
            // Give the new agent a moment to see the running device.
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    lab.down().unwrap();
}

#[test]
fn peer_metrics_are_read_when_scraped() {
    let g = up("dmetric", NEVER);
    let lab = &g.0;
    // Issue 10 item 12: peer numbers are read when scraped, not copied from
    // the last pass (which, with this resync, was long ago).
    a_to_b(lab).unwrap();
    let rx = |lab: &Lab| {
        lab.metric(
            "node-1",
            "weft_agent_wireguard_peer_receive_bytes_total{node=\"node-2\"}",
        )
        .unwrap()
        .unwrap_or(0.0)
    };
    let first = rx(lab);
    for _ in 0..5 {
        a_to_b(lab).unwrap();
    }
    assert!(rx(lab) > first, "rx bytes moved with traffic at once");
    let hs = lab
        .metric(
            "node-1",
            &format!(
                "weft_agent_wireguard_peer_last_handshake_timestamp_seconds{{node=\"node-2\",public_key=\"{}\"}}",
                get_node(lab, "node-2").metadata.annotations.unwrap_or_default()["weft.io/wireguard-public-key"]
            ),
        )
        .unwrap()
        .expect("handshake timestamp exported");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(hs > now - 300.0 && hs <= now + 1.0, "handshake at {hs}, now {now}");
    lab.down().unwrap();
}

#[test]
fn an_unusable_internal_ip_is_never_an_endpoint() {
    let g = up("dbadip", NEVER);
    let lab = &g.0;
    let a_ip = pod_ip(lab, "a");
    // Issue 10 item 8: node-2's InternalIP becomes 0.0.0.0, beside a valid
    // IPv6 one. It is a counted problem, never an endpoint; node-2 publishes
    // its IPv6 address instead, and traffic keeps flowing.
    let node2_v6 = node(lab, "node-2").internal_ipv6;
    patch_node_status(
        lab,
        "node-2",
        json!({"status": {"addresses": [
            {"type": "InternalIP", "address": "0.0.0.0"},
            {"type": "InternalIP", "address": node2_v6.to_string()},
            {"type": "Hostname", "address": "node-2"},
        ]}}),
    );
    wait_for(lab, "node-1", "bad InternalIP counted", Duration::from_secs(10), || {
        lab.metric("node-1", "weft_agent_node_problems_total{kind=\"bad_internal_ip\"}")
            .ok()
            .flatten()
            .is_some_and(|v| v >= 1.0)
    });
    let want = SocketAddr::new(IpAddr::V6(node2_v6), 51820);
    wait_for(
        lab,
        "node-1",
        "node-2's peer uses its IPv6 InternalIP",
        Duration::from_secs(10),
        || endpoint_of_node2_on_node1(lab) == Some(want),
    );
    let published = get_node(lab, "node-2").metadata.annotations.unwrap_or_default();
    assert_eq!(
        published["weft.io/wireguard-endpoint"],
        want.to_string(),
        "never 0.0.0.0"
    );
    wait_for(
        lab,
        "node-1",
        "traffic over the IPv6 underlay",
        Duration::from_secs(15),
        || a_to_b(lab).is_ok_and(|ip| ip == a_ip),
    );
    lab.down().unwrap();
}

#[test]
fn a_node_whose_own_data_is_bad_logs_it_once_and_keeps_its_peers() {
    let g = up("downbad", NEVER);
    let lab = &g.0;
    let a_ip = pod_ip(lab, "a");
    a_to_b(lab).unwrap();
    // Issue 10 item 12: node-1's own data goes bad (no podCIDRs): the failure
    // is logged once, not on every retry, and counted each time.
    let log_before = lab.agent_log("node-1").unwrap().len();
    patch_node(lab, "node-1", json!({"spec": {"podCIDRs": null, "podCIDR": null}}));
    std::thread::sleep(Duration::from_secs(8));
    let log = lab.agent_log("node-1").unwrap();
    let new = &log[log_before..];
    let failures = new
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("has no usable spec.podCIDRs"))
        .count();
    assert_eq!(failures, 1, "logged once per change, not per retry:\n{new}");
    let errors = lab
        .metric(
            "node-1",
            "weft_agent_reconcile_errors_total{kind=\"own_node_no_pod_cidrs\"}",
        )
        .unwrap()
        .unwrap_or(0.0);
    assert!(errors >= 3.0, "every failed retry is counted ({errors})");
    // Working peers stay while the node's own data is bad.
    assert_eq!(a_to_b(lab).unwrap(), a_ip);
    lab.down().unwrap();
}

/// Event passes (no resync during this test): a node that joins later
/// becomes a peer with its routes at once, and its pods are reachable.
/// (An event pass once applied the new peer without its routes; the routes
/// came only with the next full pass.)
#[test]
fn a_node_that_joins_later_is_routed_at_once() {
    let g = up("djoin", NEVER);
    let lab = &g.0;
    lab.add_node(3).unwrap();
    lab.wait_peers("node-1", 2).unwrap();
    wait_for(lab, "node-1", "route to node-3's pods", Duration::from_secs(10), || {
        in_node(lab, "node-1", &["ip", "-4", "route", "show", "10.244.3.0/24"]).contains("dev weft-wg")
    });
    lab.add_pod(&PodSpec::new("node-3", "c").serve(Some(HTTP), None))
        .unwrap();
    let to = lab.pod_addr("c", false, HTTP).unwrap();
    let a_ip = pod_ip(lab, "a");
    wait_for(
        lab,
        "node-1",
        "pod a reaches pod c on the new node",
        Duration::from_secs(10),
        || {
            lab.http_get(&Endpoint::Pod("a".into()), to)
                .is_ok_and(|r| r.peer.ip() == a_ip)
        },
    );
    lab.down().unwrap();
}
