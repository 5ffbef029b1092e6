//! Golden tests: realistic Service + EndpointSlice fixtures → the model's text form.
//!
//! Each `tests/fixtures/NAME.json` holds `node`, optional `options`, `services` and
//! `endpointSlices`; its expected rendering is `tests/golden/NAME.txt`. After an intended
//! change, regenerate with `WEFT_UPDATE_GOLDEN=1 cargo test -p weft-proxy --test golden` and
//! review the diff.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use weft_proxy::{ChangeTracker, LbAlgorithm, Model, NodeFacts, NodePortAddresses, Options};

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

fn node(v: &Value) -> NodeFacts {
    NodeFacts {
        name: v["name"].as_str().expect("node.name").to_string(),
        zone: v["zone"].as_str().map(str::to_string),
        addresses: parse_all(v, "addresses"),
        pod_cidrs: parse_all(v, "podCIDRs"),
        cluster_cidrs: parse_all(v, "clusterCIDRs"),
    }
}

fn options(v: &Value) -> Options {
    let mut o = Options::default();
    if v.get("nodeportAddresses").is_some() {
        o.nodeport_addresses = NodePortAddresses::Cidrs(parse_all(v, "nodeportAddresses"));
    }
    if let Some(b) = v["masqueradeAll"].as_bool() {
        o.masquerade_all = b;
    }
    if let Some(s) = v["maglevSeed"].as_u64() {
        o.maglev_seed = s;
    }
    if let Some(a) = v["defaultAlgorithm"].as_str() {
        o.default_algorithm = LbAlgorithm::parse(a).expect("defaultAlgorithm");
    }
    o
}

fn render(path: &Path) -> String {
    let text = fs::read_to_string(path).expect("read fixture");
    let v: Value = serde_json::from_str(&text).expect("fixture JSON");
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
    let opts = v.get("options").map(options).unwrap_or_default();
    let full = Model::build(&tracker, node(&v["node"]), opts.clone());
    // The same objects fed one change at a time must give the same model.
    let mut inc = Model::new(node(&v["node"]), opts);
    let mut step = ChangeTracker::new();
    for s in v["services"].as_array().unwrap() {
        step.upsert_service(serde_json::from_value(s.clone()).unwrap()).unwrap();
        let c = step.take_changes();
        inc.recompute(&step, &c);
    }
    for s in v["endpointSlices"].as_array().unwrap() {
        step.upsert_slice(serde_json::from_value(s.clone()).unwrap()).unwrap();
        let c = step.take_changes();
        inc.recompute(&step, &c);
    }
    assert_eq!(inc, full, "{}: incremental and full models differ", path.display());
    full.to_string()
}

#[test]
fn fixtures_match_golden_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut fixtures: Vec<PathBuf> = fs::read_dir(dir.join("fixtures"))
        .expect("fixtures dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 3, "fixtures missing: {fixtures:?}");
    let update = std::env::var_os("WEFT_UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for f in &fixtures {
        let got = render(f);
        let golden = dir.join("golden").join(f.file_stem().unwrap()).with_extension("txt");
        if update {
            fs::write(&golden, &got).expect("write golden");
            continue;
        }
        match fs::read_to_string(&golden) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!("{}:\n--- want\n{want}\n--- got\n{got}", golden.display())),
            Err(e) => failures.push(format!(
                "{}: {e} (generate with WEFT_UPDATE_GOLDEN=1)",
                golden.display()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
