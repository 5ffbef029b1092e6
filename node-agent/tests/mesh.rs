//! The WireGuard mesh end to end on `weft_tests::lab`: real `weft-agent`
//! processes in node namespaces, the API emulator, pods wired by the real
//! `weft`, real traffic. Root only; fails (never skips) without root or tools.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use weft_tests::lab::{netns, Lab, NodeState, PodSpec};
use weft_tests::traffic::{tcp_check, tcp_sink, udp_check};

const TOOLS: &[&str] = &["ip", "nft", "wireguard-go", "tcpdump", "ping", "setsid", "unshare"];

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// `weft-agent cleanup` for `node` with the lab's flags, as an operator
/// would run it; its log.
fn cleanup(lab: &Lab, node: &str) -> String {
    let cmd = lab.agent_command(node).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &cmd.netns])
        .arg(&cmd.program)
        .arg("cleanup")
        .args(&cmd.args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn log_of(lab: &Lab, node: &str) -> String {
    lab.agent_log(node).unwrap()
}

fn metrics(lab: &Lab, node: &str) -> String {
    lab.metrics(node).unwrap_or_default()
}

/// Add a pod on `node` (CNI ADD by the lab, as a runtime would).
fn add_pod(lab: &Lab, node: &str, name: &str) {
    lab.add_pod(&PodSpec::new(node, name))
        .unwrap_or_else(|e| panic!("pod {name} on {node}: {e:#}"));
}

fn check(r: anyhow::Result<SocketAddr>) -> SocketAddr {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn mesh_end_to_end() {
    require_root_and_tools(TOOLS);
    let lab = mesh_lab("me2e", 2);
    wait_peers(&lab, "node-1", 1);
    wait_peers(&lab, "node-2", 1);
    let (n1, n2): (NodeState, NodeState) = (node(&lab, "node-1"), node(&lab, "node-2"));

    // Keys and endpoints published as annotations; the condition set.
    let node1 = get_node(&lab, "node-1");
    let ann = node1.metadata.annotations.clone().unwrap();
    assert_eq!(ann["weft.io/wireguard-endpoint"], format!("{}:51820", n1.internal_ipv4));
    let key1 = ann["weft.io/wireguard-public-key"].clone();
    let conds = node1.status.unwrap().conditions.unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "NetworkUnavailable" && c.status == "False"),
        "{conds:?}"
    );
    // The key file is 0600.
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(key_file(&n1)).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        !log_of(&lab, "node-1").contains(std::fs::read_to_string(key_file(&n1)).unwrap().trim()),
        "private key in the log"
    );

    // Peers and routes.
    let p = &peers(&lab, "node-2")[0];
    assert_eq!(p.key.unwrap().to_base64(), key1);
    assert_eq!(p.endpoint.unwrap().to_string(), format!("{}:51820", n1.internal_ipv4));
    let ips: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
    assert_eq!(ips, ["10.244.1.0/24", "fd00:10:244:1::/64"]);
    let routes = wg_routes(&lab, "node-2");
    assert!(routes.contains("10.244.1.0/24 proto static src 10.244.2.1"), "{routes}");
    assert!(
        routes.contains("fd00:10:244:1::/64 proto static src fd00:10:244:2::1"),
        "{routes}"
    );
    // MTU: 1500 underlay - 60.
    let link = sh_in(&n1.netns, &["ip", "link", "show", "weft-wg"]);
    assert!(link.contains("mtu 1440"), "{link}");
    let conflist = std::fs::read_to_string(n1.conf_dir().join("10-weft.conflist")).unwrap();
    assert!(conflist.contains("\"mtu\": 1440"), "{conflist}");

    // Pods on both nodes.
    add_pod(&lab, "node-1", "a");
    add_pod(&lab, "node-2", "b");
    let ((a_ns, a4), (_, a6)) = (pod(&lab, "a", false), pod(&lab, "a", true));
    let ((b_ns, b4), (_, b6)) = (pod(&lab, "b", false), pod(&lab, "b", true));

    // ICMP, TCP, UDP pod → pod across nodes, v4 and v6; the server sees the client pod.
    ping(&a_ns, b4);
    ping(&b_ns, a4);
    ping(&a_ns, b6);
    assert_eq!(check(tcp_check(&a_ns, &b_ns, sa(b4, 8080), b"hi".to_vec())).ip(), a4);
    assert_eq!(check(tcp_check(&b_ns, &a_ns, sa(a6, 8080), b"hi".to_vec())).ip(), b6);
    assert_eq!(check(udp_check(&a_ns, &b_ns, sa(b4, 5353))).ip(), a4);
    assert_eq!(check(udp_check(&b_ns, &a_ns, sa(a6, 5353))).ip(), b6);

    // Node → remote pod (source: the node's gateway address) and pod → remote node.
    ping(&n1.netns, b4);
    assert_eq!(
        check(tcp_check(&n1.netns, &b_ns, sa(b4, 8081), b"x".to_vec()))
            .ip()
            .to_string(),
        "10.244.1.1"
    );
    ping(&a_ns, n2.internal_ipv4.into());
    assert_eq!(
        check(tcp_check(&a_ns, &n2.netns, sa(n2.internal_ipv4, 8082), b"x".to_vec())).ip(),
        IpAddr::from(n1.internal_ipv4),
        "pod → outside the cluster CIDR is masqueraded"
    );

    // MTU: full-size transfers pod → remote pod and node → remote pod.
    let big = vec![7u8; 8 << 20];
    check(tcp_check(&a_ns, &b_ns, sa(b4, 8083), big.clone()));
    check(tcp_check(&n1.netns, &b_ns, sa(b4, 8084), big.clone()));
    check(tcp_check(&n2.netns, &a_ns, sa(a6, 8085), big));

    // The underlay carries WireGuard, never the plaintext.
    let sw = lab.state().unwrap().switch_netns;
    let cap = lab.dir.join("underlay.pcap");
    let mut dump = Command::new("ip")
        .args(["netns", "exec", &sw, "tcpdump", "-i", "br0", "-U", "-n", "-w"])
        .arg(&cap)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("tcpdump to start", Duration::from_secs(10), || {
        cap.exists().then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let marker = b"WEFT-PLAINTEXT-MARKER-0123456789".repeat(64);
    check(tcp_check(&a_ns, &b_ns, sa(b4, 8086), marker));
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill").args(["-INT", &dump.id().to_string()]).status();
    let _ = dump.wait();
    let captured = std::fs::read(&cap).unwrap();
    let needle = b"WEFT-PLAINTEXT-MARKER";
    assert!(
        !captured.windows(needle.len()).any(|w| w == needle),
        "plaintext visible on the underlay"
    );
    let wg_packets = sh(&["tcpdump", "-n", "-r", cap.to_str().unwrap(), "udp port 51820"]);
    assert!(
        wg_packets.lines().count() >= 10,
        "no WireGuard packets on the underlay:\n{wg_packets}"
    );
    let plain = sh(&["tcpdump", "-n", "-r", cap.to_str().unwrap(), "tcp port 8086"]);
    assert!(plain.is_empty(), "pod TCP visible on the underlay:\n{plain}");

    // Metrics and health.
    let m = metrics(&lab, "node-1");
    assert!(m.contains("weft_agent_wireguard_peers 1"), "{m}");
    assert!(
        m.contains("weft_agent_wireguard_peer_receive_bytes_total{node=\"node-2\"}"),
        "{m}"
    );
    assert!(m.contains("weft_agent_reconcile_duration_seconds_count"), "{m}");
    assert_eq!(lab.healthz("node-1").unwrap().0, 200);
    assert_eq!(lab.livez("node-1").unwrap().0, 200);

    // kill -9 of node-1's agent while a TCP stream runs: no loss, and the
    // restarted agent changes nothing.
    let srv = tcp_sink(&b_ns, sa(b4, 9000)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, sent) = (stop.clone(), sent.clone());
        netns::spawn_in(&a_ns, move || {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect_timeout(&sa(b4, 9000), Duration::from_secs(5))?;
            s.set_write_timeout(Some(Duration::from_secs(5)))?;
            let chunk = vec![1u8; 16 << 10];
            while !stop.load(Ordering::SeqCst) {
                s.write_all(&chunk)
                    .map_err(|e| anyhow::anyhow!("stream broken while the agent restarted: {e}"))?;
                sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
            s.shutdown(std::net::Shutdown::Write)?;
            Ok(())
        })
        .unwrap()
    };
    std::thread::sleep(Duration::from_secs(1));
    let before_kill = log_of(&lab, "node-1").len();
    lab.kill_agent("node-1").unwrap();
    let at_kill = sent.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        sent.load(Ordering::SeqCst) > at_kill,
        "stream stalled while the agent was dead"
    );
    lab.start_agent("node-1").unwrap();
    let restarted = wait_for("the restarted agent's first pass", WAIT, || {
        let tail = log_of(&lab, "node-1")[before_kill..].to_string();
        (tail.contains("up to date") || tail.contains("reconciled") || tail.contains("reconcile failed"))
            .then_some(tail)
    });
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    client.join().unwrap().unwrap();
    let (_, got) = srv.join().unwrap().unwrap();
    assert_eq!(got.len() as u64, sent.load(Ordering::SeqCst), "bytes lost");
    assert!(got.iter().all(|b| *b == 1));
    assert!(
        !restarted.contains("applied"),
        "the restarted agent changed something:\n{restarted}"
    );
    assert!(restarted.contains("up to date"), "{restarted}");

    // A node added later joins the mesh.
    lab.add_node(3).unwrap();
    wait_peers(&lab, "node-1", 2);
    wait_peers(&lab, "node-3", 2);
    add_pod(&lab, "node-3", "c");
    let ((c_ns, c4), (_, c6)) = (pod(&lab, "c", false), pod(&lab, "c", true));
    // Three nodes: every pod reaches every other pod across nodes (ICMP, TCP, UDP).
    for (from, to, to4, to6, from4) in [
        (&c_ns, &a_ns, a4, a6, c4),
        (&c_ns, &b_ns, b4, b6, c4),
        (&a_ns, &c_ns, c4, c6, a4),
        (&b_ns, &c_ns, c4, c6, b4),
    ] {
        ping(from, to4);
        ping(from, to6);
        assert_eq!(check(tcp_check(from, to, sa(to4, 8087), b"c".to_vec())).ip(), from4);
        assert_eq!(check(udp_check(from, to, sa(to4, 5354))).ip(), from4);
    }

    // A deleted node's peer and routes disappear.
    lab.del_node("node-3").unwrap();
    wait_peers(&lab, "node-1", 1);
    wait_for("node-3's routes to go from node-1", WAIT, || {
        (!wg_routes(&lab, "node-1").contains("10.244.3.0/24")).then_some(())
    });

    // A bad key annotation on node-2 is a problem, not an outage. (node-2's
    // agent would repair its annotation at once, so it is stopped first; its
    // WireGuard device keeps running.)
    lab.kill_agent("node-2").unwrap();
    patch_node(
        &lab,
        "node-2",
        serde_json::json!({"metadata": {"annotations": {"weft.io/wireguard-public-key": "not-a-key"}}}),
    );
    wait_for("the bad-key metric", WAIT, || {
        metrics(&lab, "node-1")
            .contains("weft_agent_node_problems_total{kind=\"bad_key\"} 1")
            .then_some(())
    });
    assert_eq!(peers(&lab, "node-1").len(), 1, "the working peer was torn down");
    ping(&a_ns, b4);

    // node-2 is reinstalled with a new key: connectivity returns.
    kill_wireguard(&n2);
    std::fs::remove_file(key_file(&n2)).unwrap();
    lab.start_agent("node-2").unwrap();
    let started = Instant::now();
    wait_for("node-1 to take node-2's new key", WAIT, || {
        let p = peers(&lab, "node-1");
        (p.len() == 1 && p[0].key.unwrap().to_base64() != ann["weft.io/wireguard-public-key"] && {
            let k2 = get_node(&lab, "node-2").metadata.annotations.unwrap()["weft.io/wireguard-public-key"].clone();
            p[0].key.unwrap().to_base64() == k2
        })
        .then_some(())
    });
    ping(&a_ns, b4);
    assert!(started.elapsed() < Duration::from_secs(45));
    assert_eq!(check(tcp_check(&a_ns, &b_ns, sa(b4, 8088), b"again".to_vec())).ip(), a4);
}

#[test]
fn cleanup_removes_everything_and_is_idempotent() {
    require_root_and_tools(TOOLS);
    let lab = mesh_lab("mclean", 1);
    add_pod(&lab, "node-1", "solo");
    lab.kill_agent("node-1").unwrap();
    let n = node(&lab, "node-1");
    let first = cleanup(&lab, "node-1");
    assert!(first.contains("removed"), "{first}");
    let second = cleanup(&lab, "node-1");
    assert!(second.contains("nothing to clean up"), "{second}");
    assert!(!n.conf_dir().join("10-weft.conflist").exists());
    assert!(!n.bin_dir().join("weft").exists());
    assert!(!key_file(&n).exists());
    assert!(!n.readiness_file().exists());
    // Exact names: a pod's host veth (`weft` + hex) may well contain "weft0".
    let links = sh_in(&n.netns, &["ip", "-o", "link"]);
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .collect();
    assert!(!names.contains(&"weft-wg") && !names.contains(&"weft0"), "{links}");
    let tables = sh_in(&n.netns, &["nft", "list", "tables"]);
    assert!(!tables.contains("weft"), "{tables}");
    let pid = std::fs::read_to_string(n.run_dir().join("weft-wg.pid"));
    assert!(pid.is_err(), "pid file left");
}

/// A DaemonSet can run the userspace WireGuard in a sidecar container, so
/// that it outlives restarts of the agent's container: `--wg-userspace
/// external` makes the agent wait for that process and adopt it, and never
/// start (or remove) one itself.
#[test]
fn external_userspace_sidecar_is_adopted_and_never_started() {
    require_root_and_tools(TOOLS);
    let lab = mesh_lab("mside", 2);
    // node-2 becomes a sidecar node: its agent and everything it made go.
    lab.kill_agent("node-2").unwrap();
    cleanup(&lab, "node-2");
    let n = node(&lab, "node-2");
    let (ns, sock_dir, ready) = (n.netns.clone(), n.run_dir().join("wireguard"), n.readiness_file());

    lab.start_agent_with("node-2", &["--wg-userspace", "external"]).unwrap();
    // No sidecar yet: the agent waits, says why, starts nothing, is not ready.
    wait_for(
        "node-2's agent to report it waits for the sidecar",
        Duration::from_secs(20),
        || {
            log_of(&lab, "node-2")
                .contains("external userspace WireGuard")
                .then_some(())
        },
    );
    assert!(!ready.exists(), "not ready without a WireGuard device");
    assert!(
        !sh_in(&ns, &["ip", "-o", "link"]).contains("weft-wg"),
        "the agent created no device itself"
    );

    // The sidecar: weft-wg in node-2's netns, serving the agent's socket dir.
    let weft_wg = bin_dir().join("weft-wg");
    std::fs::create_dir_all(&sock_dir).unwrap();
    let mut sidecar = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
        ])
        .arg("mkdir -p /run/wireguard && mount --bind \"$0\" /run/wireguard && exec \"$1\" -f weft-wg")
        .arg(&sock_dir)
        .arg(&weft_wg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lab.wait_agent_ready("node-2").unwrap();
    wait_peers(&lab, "node-2", 1);
    wait_peers(&lab, "node-1", 1);
    add_pod(&lab, "node-1", "a");
    add_pod(&lab, "node-2", "b");
    let (a_ns, _) = pod(&lab, "a", false);
    let (_, b4) = pod(&lab, "b", false);
    ping(&a_ns, b4);
    assert!(
        !n.run_dir().join("weft-wg.pid").exists(),
        "the agent started no userspace process"
    );
    // The agent goes away: the sidecar's tunnel keeps carrying traffic.
    lab.kill_agent("node-2").unwrap();
    ping(&a_ns, b4);
    let _ = sidecar.kill();
    let _ = sidecar.wait();
}

/// An API server outage: the Node watch fails and is retried, the failure is
/// logged and counted, the agents keep running and keep the mesh they have.
#[test]
fn unreachable_api_server_keeps_the_mesh() {
    require_root_and_tools(TOOLS);
    let lab = mesh_lab("mapi", 2);
    wait_peers(&lab, "node-1", 1);
    wait_peers(&lab, "node-2", 1);
    add_pod(&lab, "node-1", "a");
    add_pod(&lab, "node-2", "b");
    let (a_ns, _) = pod(&lab, "a", false);
    let (_, b4) = pod(&lab, "b", false);
    ping(&a_ns, b4);

    lab.stop_apiserver().unwrap();
    wait_for("node-1 to count the failed Node watch", WAIT, || {
        metrics(&lab, "node-1")
            .contains("weft_agent_reconcile_errors_total{kind=\"api_watch\"}")
            .then_some(())
    });
    assert!(log_of(&lab, "node-1").contains("watching Nodes failed"));
    // Several resync passes (every 2 s in these labs) without the API.
    std::thread::sleep(Duration::from_secs(5));
    for node in ["node-1", "node-2"] {
        assert!(
            lab.agent_pid(node).unwrap().is_some(),
            "{node}'s agent survived the outage"
        );
        assert_eq!(peers(&lab, node).len(), 1, "{node} kept its peer");
    }
    ping(&a_ns, b4);
}
