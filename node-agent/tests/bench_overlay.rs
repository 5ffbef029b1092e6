//! Throughput benchmark (ignored by default; run by `node-agent/bench/overlay.sh`):
//! iperf3 between two nodes of a `weft_tests::lab` lab, in the same run, over
//!   1. the plain underlay (node → node, veth + bridge),
//!   2. weft's overlay (pod on node-1 → pod on node-2 through `weft-wg`),
//!   3. a hand-configured `wireguard-go` tunnel between the same two node
//!      namespaces (`wg set`, no weft involved),
//!
//! with 1 and 2 parallel streams. Prints a Markdown table.

mod support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;
use weft_tests::lab::{Lab, PodSpec};

const SECONDS: &str = "10";

fn iperf(client_ns: &str, server_ns: &str, dst: &str, streams: u32, port: u16) -> f64 {
    let port_s = port.to_string();
    let mut srv: Child = Command::new("ip")
        .args(["netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", &port_s])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = sh_in(
        client_ns,
        &[
            "iperf3",
            "-c",
            dst,
            "-p",
            &port_s,
            "-t",
            SECONDS,
            "-P",
            &streams.to_string(),
            "-J",
        ],
    );
    let _ = srv.wait();
    let v: Value = serde_json::from_str(&out).unwrap();
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap() / 1e9
}

/// A wireguard-go tunnel between two node namespaces, configured by hand.
fn manual_wireguard(lab: &Lab) {
    let keys: Vec<(String, String)> = (0..2)
        .map(|_| {
            let private = sh(&["wg", "genkey"]).trim().to_string();
            let mut c = Command::new("wg")
                .arg("pubkey")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(private.as_bytes()).unwrap();
            let public = String::from_utf8(c.wait_with_output().unwrap().stdout)
                .unwrap()
                .trim()
                .to_string();
            (private, public)
        })
        .collect();
    for (i, name) in ["node-1", "node-2"].iter().enumerate() {
        let n = node(lab, name);
        let iface = format!("wgbench{}", i + 1);
        let other = node(lab, ["node-2", "node-1"][i]);
        let st = Command::new("ip")
            .args(["netns", "exec", &n.netns, "wireguard-go", &iface])
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .status()
            .unwrap();
        assert!(st.success(), "wireguard-go {iface}");
        let keyfile = lab.dir.join(format!("{iface}.key"));
        std::fs::write(&keyfile, &keys[i].0).unwrap();
        sh_in(
            &n.netns,
            &[
                "wg",
                "set",
                &iface,
                "listen-port",
                "51821",
                "private-key",
                keyfile.to_str().unwrap(),
                "peer",
                &keys[1 - i].1,
                "endpoint",
                &format!("{}:51821", other.internal_ipv4),
                "allowed-ips",
                &format!("10.99.0.{}/32", 2 - i),
            ],
        );
        sh_in(
            &n.netns,
            &["ip", "addr", "add", &format!("10.99.0.{}/24", i + 1), "dev", &iface],
        );
        sh_in(&n.netns, &["ip", "link", "set", &iface, "mtu", "1440", "up"]);
    }
}

#[test]
#[ignore = "benchmark: run node-agent/bench/overlay.sh"]
fn overlay_throughput() {
    require_root_and_tools(&["ip", "nft", "wireguard-go", "wg", "iperf3", "setsid", "unshare"]);
    let lab = mesh_lab("mbench", 2);
    wait_peers(&lab, "node-1", 1);
    for (node, name) in [("node-1", "a"), ("node-2", "b")] {
        lab.add_pod(&PodSpec::new(node, name)).unwrap();
    }
    manual_wireguard(&lab);
    let (a, _) = pod(&lab, "a", false);
    let (b, b4) = pod(&lab, "b", false);
    let b4 = b4.to_string();
    let (n1, n2) = (node(&lab, "node-1"), node(&lab, "node-2"));
    ping(&a, b4.parse().unwrap());
    ping(&n1.netns, "10.99.0.2".parse().unwrap());
    let underlay_dst = n2.internal_ipv4.to_string();
    let mut rows = Vec::new();
    for streams in [1, 2] {
        let underlay = iperf(&n1.netns, &n2.netns, &underlay_dst, streams, 5201);
        let weft = iperf(&a, &b, &b4, streams, 5202);
        let manual = iperf(&n1.netns, &n2.netns, "10.99.0.2", streams, 5203);
        rows.push(format!(
            "| {streams} | {underlay:.2} | {weft:.2} | {manual:.2} | {:.2}x |",
            weft / manual
        ));
    }
    let imp = std::env::var("WEFT_WG_USERSPACE").unwrap_or_else(|_| "weft-wg (beside the agent)".into());
    println!("\nweft's userspace WireGuard: {imp}");
    println!("\n| streams | underlay Gbit/s | weft overlay (pod→pod) Gbit/s | wireguard-go by hand (node→node) Gbit/s | weft / wireguard-go |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    for i in 1..=2 {
        let iface = format!("wgbench{i}");
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &node(&lab, &format!("node-{i}")).netns,
                "ip",
                "link",
                "del",
                &iface,
            ])
            .status();
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{iface}.sock"));
    }
}
