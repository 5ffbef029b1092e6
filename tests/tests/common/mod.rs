//! Shared helpers of the privileged lab tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::BTreeSet;
use std::path::PathBuf;

use weft_tests::lab::{self, netns, Lab, LabConfig};

/// The `weft-lab` binary cargo built for these tests.
pub fn lab_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft-lab"))
}

/// A lab name unique to this test and this run (at most 16 characters).
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id() % 100_000)
}

/// Tears the lab down when a test fails half-way; tests call `down` themselves.
pub struct LabGuard(pub Lab);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if self.0.dir.exists() {
            let _ = self.0.down();
        }
    }
}

/// Bring a lab up (as root) with `nodes` nodes.
pub fn up(prefix: &str, nodes: u8) -> LabGuard {
    up_with(prefix, nodes, |_| {})
}

/// Bring a lab up (as root) with `nodes` nodes and a config changed by `f`.
pub fn up_with(prefix: &str, nodes: u8, f: impl FnOnce(&mut LabConfig)) -> LabGuard {
    lab::require_root();
    let mut config = LabConfig::new(&unique_name(prefix), nodes, lab_bin());
    f(&mut config);
    LabGuard(Lab::up(&config).unwrap_or_else(|e| panic!("lab up: {e:#}")))
}

/// Poll `f` every 100 ms until it returns `Some`; panic after `timeout`.
pub fn wait_for<T>(what: &str, timeout: std::time::Duration, f: impl FnMut() -> Option<T>) -> T {
    weft_tests::traffic::poll(what, timeout, f).unwrap_or_else(|e| panic!("{e}"))
}

/// The host's interface names (`ip -o link`), to prove the lab never adds any.
pub fn host_links() -> BTreeSet<String> {
    netns::ip(&["-o", "link", "show"])
        .expect("ip link")
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
        .collect()
}

/// Named namespaces of a lab that exist now.
pub fn lab_netns(name: &str) -> Vec<String> {
    let prefix = lab::netns_prefix(name);
    netns::list()
        .expect("ip netns list")
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}
