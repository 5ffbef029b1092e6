//! The mesh at Kubernetes' node limit (ignored by default; run by
//! `node-agent/bench/scale.sh`): two real lab nodes with agents, and up to
//! 5,000 more Node objects in the API emulator (WireGuard key, podCIDR,
//! InternalIP, as real nodes publish them). For 100, 1,000 and 5,000 Nodes:
//!
//! - convergence: time from the last Node create until node-1's agent has a
//!   peer and a route per node;
//! - one Node change (another endpoint port on one Node): the agent's own
//!   work for the pass that applies it (`took_ms` of its log line), p50 and
//!   max over 20 changes;
//! - the agent's RSS.
//!
//! `WEFT_SCALE_SIDES=label=BIN_DIR,…` runs the same scenario for several
//! agent builds in one job (the anchor: the agent before this change) and
//! prints one table with the ratios. `WEFT_SCALE_OUT=FILE` writes JSON.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::{stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};
use weft_tests::lab::{self, objects, Endpoint, Lab, LabConfig};

const SIZES: [usize; 3] = [100, 1_000, 5_000];
const CHANGES: usize = 20;

fn lab_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("weft-lab")
}

/// A Node as another node's agent would have published it.
fn fake_node(i: usize) -> Node {
    let (hi, lo) = ((i / 256) as u8, (i % 256) as u8);
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    key[31] = 0x42;
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("sim-{i}"), "annotations": {
            "weft.io/wireguard-public-key": key,
            "weft.io/wireguard-endpoint": format!("172.29.{hi}.{lo}:51820"),
        }},
        "spec": {"podCIDRs": [format!("10.{}.{lo}.0/24", 128 + hi)]},
        "status": {"addresses": [{"type": "InternalIP", "address": format!("172.29.{hi}.{lo}")}]}
    }))
    .expect("node object")
}

fn create_nodes(lab: &Lab, from: usize, to: usize) {
    let url = lab.api_url().unwrap();
    objects::with_client(&url, |client| async move {
        let api: Api<Node> = Api::all(client);
        stream::iter(from..to)
            .map(|i| {
                let api = api.clone();
                async move { api.create(&PostParams::default(), &fake_node(i)).await.map(drop) }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    })
    .unwrap();
}

fn set_endpoint_port(lab: &Lab, i: usize, port: u16) {
    let url = lab.api_url().unwrap();
    let (hi, lo) = (i / 256, i % 256);
    objects::with_client(&url, |client| async move {
        let api: Api<Node> = Api::all(client);
        let p =
            json!({"metadata": {"annotations": {"weft.io/wireguard-endpoint": format!("172.29.{hi}.{lo}:{port}")}}});
        api.patch(&format!("sim-{i}"), &PatchParams::default(), &Patch::Merge(&p))
            .await?;
        Ok(())
    })
    .unwrap();
}

/// The duration (ms) of every "reconciled" pass the agent logged after byte
/// `from` of its log (both the agent before and after this change log one
/// line per pass that changed something; `took_us` where the agent logs
/// it, else `took_ms`). Read from the log, not from
/// `/metrics`: a scrape reads the whole device, which would compete with the
/// pass being measured.
fn passes_since(lab: &Lab, from: usize) -> Vec<f64> {
    let log = lab.agent_log("node-1").unwrap();
    log.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" reconciled "))
        .filter_map(|l| {
            let field = |f: &str| l.split(f).nth(1)?.split_whitespace().next()?.parse::<f64>().ok();
            field("took_us=").map(|us| us / 1000.0).or_else(|| field("took_ms="))
        })
        .collect()
}

fn routes_via_wg(lab: &Lab) -> usize {
    let out = lab
        .command(
            &Endpoint::Node("node-1".into()),
            "ip",
            &[
                "-4".into(),
                "route".into(),
                "show".into(),
                "dev".into(),
                "weft-wg".into(),
            ],
        )
        .unwrap()
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn run_side(label: &str, bin_dir: &str) -> Vec<Value> {
    lab::require_root();
    let mut c = LabConfig::new(&format!("scale{}", std::process::id() % 10_000), 2, lab_bin());
    c.cni_bin_dir = Some(bin_dir.into());
    c.restart_agents = false;
    // Only events drive passes while measuring.
    c.agent_args = vec!["--resync-seconds".into(), "3600".into()];
    let lab = Lab::up(&c).unwrap_or_else(|e| panic!("lab up: {e:#}"));
    lab.wait_peers("node-1", 1).unwrap();
    let pid = lab.agent_pid("node-1").unwrap().expect("agent runs");
    let mut rows = Vec::new();
    let mut have = 0;
    for n in SIZES {
        create_nodes(&lab, have, n);
        have = n;
        let last_create = Instant::now();
        let deadline = last_create + Duration::from_secs(120);
        while routes_via_wg(&lab) != n + 1 {
            assert!(Instant::now() < deadline, "{label}: {n} nodes did not converge");
            std::thread::sleep(Duration::from_millis(20));
        }
        let converge = last_create.elapsed();
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            lab.metric("node-1", "weft_agent_wireguard_peers").unwrap(),
            Some((n + 1) as f64),
            "{label}: a peer per node"
        );
        let mut per_pass = Vec::new();
        for k in 0..CHANGES {
            let from = lab.agent_log("node-1").unwrap().len();
            set_endpoint_port(&lab, k % n, 40_000 + (n + k) as u16 % 20_000);
            let wait = Instant::now() + Duration::from_secs(30);
            let mut took = passes_since(&lab, from);
            while took.is_empty() {
                assert!(Instant::now() < wait, "{label}: no pass after a Node change");
                std::thread::sleep(Duration::from_millis(10));
                took = passes_since(&lab, from);
            }
            std::thread::sleep(Duration::from_millis(200));
            let took = passes_since(&lab, from);
            per_pass.push(took.iter().sum::<f64>() / took.len() as f64);
        }
        per_pass.sort_by(|a, b| a.total_cmp(b));
        let row = json!({
            "side": label, "nodes": n,
            "converge_s": converge.as_secs_f64(),
            "change_ms_p50": per_pass[CHANGES / 2],
            "change_ms_max": per_pass[CHANGES - 1],
            "rss_mib": rss_mib(pid),
        });
        eprintln!("{row}");
        rows.push(row);
    }
    if let Ok(path) = std::env::var("WEFT_SCALE_LOG") {
        std::fs::write(format!("{path}.{label}"), lab.agent_log("node-1").unwrap()).unwrap();
    }
    lab.down().unwrap();
    rows
}

#[test]
#[ignore = "benchmark: node-agent/bench/scale.sh"]
fn mesh_at_five_thousand_nodes() {
    let sides = std::env::var("WEFT_SCALE_SIDES").unwrap_or_else(|_| {
        let exe = std::env::current_exe().unwrap();
        format!("weft={}", exe.parent().unwrap().parent().unwrap().display())
    });
    let mut all = Vec::new();
    for side in sides.split(',') {
        let (label, dir) = side.split_once('=').expect("label=BIN_DIR");
        all.extend(run_side(label, dir));
    }
    println!(
        "| side | nodes | all peers+routes after last create | one Node change: agent work p50 (max) | agent RSS |"
    );
    println!("|---|---|---|---|---|");
    for r in &all {
        println!(
            "| {} | {} | {:.2} s | {:.2} ms ({:.2} ms) | {:.1} MiB |",
            r["side"].as_str().unwrap(),
            r["nodes"],
            r["converge_s"].as_f64().unwrap(),
            r["change_ms_p50"].as_f64().unwrap(),
            r["change_ms_max"].as_f64().unwrap(),
            r["rss_mib"].as_f64().unwrap()
        );
    }
    if let Ok(out) = std::env::var("WEFT_SCALE_OUT") {
        std::fs::write(&out, serde_json::to_string_pretty(&all).unwrap()).unwrap();
    }
}
