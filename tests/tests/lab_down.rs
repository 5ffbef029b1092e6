//! `down` stops processes it never started that run in the lab's
//! namespaces — also in one whose name was already deleted (`ip netns del`
//! leaves a namespace alive while a process is inside). As root.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_tests::lab::{netns, Lab, LabConfig};

fn sleeper(ns: &str) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns, "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

/// Whether `child` exited within `timeout`. `down` runs in this process
/// and reaps what it stops, so "no such child" is an exit too.
fn exits_within(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn down_stops_unrecorded_processes_also_in_a_namespace_whose_name_is_gone() {
    weft_tests::lab::require_root();
    let mut config = LabConfig::new(&common::unique_name("orphans-"), 1, common::lab_bin());
    config.agents = false;
    let lab = common::LabGuard(Lab::up(&config).unwrap_or_else(|e| panic!("lab up: {e:#}")));
    let st = lab.0.state().unwrap();
    let node_ns = st.nodes[0].netns.clone();
    let ext_ns = st.external_netns.clone().unwrap();
    let mut in_node = sleeper(&node_ns);
    let mut in_ext = sleeper(&ext_ns);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!netns::pids(&ext_ns).unwrap().is_empty(), "the sleeper is in {ext_ns}");
    // The name goes; the namespace lives on around the sleeper.
    netns::delete(&ext_ns).unwrap();
    assert!(!netns::path(&ext_ns).exists());

    lab.0.down().unwrap();
    let node_gone = exits_within(&mut in_node, Duration::from_secs(5));
    let ext_gone = exits_within(&mut in_ext, Duration::from_secs(5));
    let _ = in_node.kill();
    let _ = in_ext.kill();
    assert!(node_gone, "down left a process in the node's namespace");
    assert!(
        ext_gone,
        "down left a process in a lab namespace whose name was deleted"
    );
}
