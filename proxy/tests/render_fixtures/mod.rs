//! The model fixtures (`tests/fixtures/*.json`), read once for every test that uses them:
//! the model's golden test and the renderer's tests.
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

/// A fixture as read: its JSON, and the node facts and options it names.
pub struct Fixture {
    pub json: Value,
    pub node: NodeFacts,
    pub options: Options,
}

impl Fixture {
    pub fn services(&self) -> impl Iterator<Item = k8s_openapi::api::core::v1::Service> + '_ {
        let all = self.json["services"].as_array().expect("services");
        all.iter().map(|s| serde_json::from_value(s.clone()).expect("Service"))
    }

    pub fn slices(&self) -> impl Iterator<Item = k8s_openapi::api::discovery::v1::EndpointSlice> + '_ {
        let all = self.json["endpointSlices"].as_array().expect("endpointSlices");
        all.iter()
            .map(|s| serde_json::from_value(s.clone()).expect("EndpointSlice"))
    }

    /// Every object of the fixture in one tracker.
    pub fn tracker(&self) -> ChangeTracker {
        let mut tracker = ChangeTracker::new();
        for s in self.services() {
            tracker.upsert_service(s).expect("file Service");
        }
        for s in self.slices() {
            tracker.upsert_slice(s).expect("file EndpointSlice");
        }
        tracker
    }

    /// The model of a full build.
    pub fn model(&self) -> Model {
        Model::build(&self.tracker(), self.node.clone(), self.options.clone())
    }
}

/// Read `path`: `node`, optional `options`, `services`, `endpointSlices`.
pub fn load(path: &Path) -> Fixture {
    let json: Value = serde_json::from_str(&fs::read_to_string(path).expect("read fixture")).expect("fixture JSON");
    let n = &json["node"];
    let node = NodeFacts {
        name: n["name"].as_str().expect("node.name").to_string(),
        zone: n["zone"].as_str().map(str::to_string),
        addresses: parse_all(n, "addresses"),
        pod_cidrs: parse_all(n, "podCIDRs"),
        cluster_cidrs: parse_all(n, "clusterCIDRs"),
    };
    let mut options = Options::default();
    if let Some(ov) = json.get("options") {
        if ov.get("nodeportAddresses").is_some() {
            options.nodeport_addresses = NodePortAddresses::Cidrs(parse_all(ov, "nodeportAddresses"));
        }
        if let Some(b) = ov["masqueradeAll"].as_bool() {
            options.masquerade_all = b;
        }
        if let Some(s) = ov["maglevSeed"].as_u64() {
            options.maglev_seed = s;
        }
        if let Some(a) = ov["defaultAlgorithm"].as_str() {
            options.default_algorithm = LbAlgorithm::parse(a).expect("defaultAlgorithm");
        }
    }
    Fixture { json, node, options }
}

/// The model of a full build of the fixture at `path`.
pub fn model(path: &Path) -> Model {
    load(path).model()
}
