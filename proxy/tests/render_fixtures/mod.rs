//! The model fixtures (`tests/fixtures/*.json`, the format `tests/golden.rs` reads) loaded as
//! models, for the renderer's tests.
#![allow(dead_code)] // reason: each test binary uses a different subset

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use weft_proxy::{ChangeTracker, LbAlgorithm, Model, NodeFacts, NodePortAddresses, Options};

/// Every fixture, sorted.
pub fn fixtures() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures");
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("fixtures dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    assert!(v.len() >= 3, "fixtures missing: {v:?}");
    v
}

fn strings(v: &Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().expect("string").to_string()).collect())
        .unwrap_or_default()
}

fn parse_all<T: std::str::FromStr>(v: &Value, field: &str) -> Vec<T>
where
    T::Err: std::fmt::Debug,
{
    strings(v, field).iter().map(|s| s.parse().expect(field)).collect()
}

/// The fixture loader of `tests/golden.rs` (same fields), full build only.
pub fn model(path: &Path) -> Model {
    let v: Value = serde_json::from_str(&fs::read_to_string(path).expect("read fixture")).expect("fixture JSON");
    let mut tracker = ChangeTracker::new();
    for s in v["services"].as_array().expect("services") {
        tracker
            .upsert_service(serde_json::from_value(s.clone()).expect("Service"))
            .expect("file Service");
    }
    for s in v["endpointSlices"].as_array().expect("endpointSlices") {
        tracker
            .upsert_slice(serde_json::from_value(s.clone()).expect("EndpointSlice"))
            .expect("file EndpointSlice");
    }
    let n = &v["node"];
    let node = NodeFacts {
        name: n["name"].as_str().expect("node.name").to_string(),
        zone: n["zone"].as_str().map(str::to_string),
        addresses: parse_all(n, "addresses"),
        pod_cidrs: parse_all(n, "podCIDRs"),
        cluster_cidrs: parse_all(n, "clusterCIDRs"),
    };
    let mut o = Options::default();
    if let Some(ov) = v.get("options") {
        if ov.get("nodeportAddresses").is_some() {
            o.nodeport_addresses = NodePortAddresses::Cidrs(parse_all(ov, "nodeportAddresses"));
        }
        if let Some(b) = ov["masqueradeAll"].as_bool() {
            o.masquerade_all = b;
        }
        if let Some(s) = ov["maglevSeed"].as_u64() {
            o.maglev_seed = s;
        }
        if let Some(a) = ov["defaultAlgorithm"].as_str() {
            o.default_algorithm = LbAlgorithm::parse(a).expect("defaultAlgorithm");
        }
    }
    Model::build(&tracker, node, o)
}
