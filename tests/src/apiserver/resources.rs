//! The resource types the emulator serves, and the discovery documents
//! (`/api`, `/apis`, `/api/v1`, …) that kubectl and kube-rs read to map a
//! kind to its REST path.

use serde_json::{json, Value};

/// One REST resource (`pods`, `nodes`, …) of one API group version.
#[derive(Debug)]
pub struct ResourceDef {
    /// API group, empty for the core group (`/api/v1`).
    pub group: &'static str,
    pub version: &'static str,
    /// Path segment, e.g. `endpointslices`.
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Has a `/status` subresource: writes to the main resource keep the stored
    /// status, writes to `/status` change nothing but the status.
    pub has_status: bool,
    /// What `status` becomes on create; `None` keeps what the client sent
    /// (nodes: kubelet registers a Node with its addresses).
    pub initial_status: Option<&'static str>,
}

impl ResourceDef {
    /// `v1` or `discovery.k8s.io/v1`, as in an object's `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The initial status on create, if the resource resets it.
    pub fn initial_status(&self) -> Option<Value> {
        self.initial_status
            .map(|s| serde_json::from_str(s).expect("initial status is valid JSON"))
    }
}

/// Every resource the emulator knows. The index into this table identifies a
/// resource in the store.
pub static RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        has_status: true,
        initial_status: Some(r#"{"phase":"Active"}"#),
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        short_names: &["no"],
        has_status: true,
        initial_status: None,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        has_status: true,
        initial_status: Some(r#"{"phase":"Pending"}"#),
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        has_status: true,
        initial_status: Some(r#"{"loadBalancer":{}}"#),
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
        has_status: false,
        initial_status: None,
    },
    ResourceDef {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        namespaced: true,
        short_names: &[],
        has_status: false,
        initial_status: None,
    },
];

/// Index of the resource with this group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Whether `group/version` is served at all.
pub fn group_version_known(group: &str, version: &str) -> bool {
    RESOURCES.iter().any(|r| r.group == group && r.version == version)
}

/// `GET /api`: the core group's versions.
pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

/// The named groups (everything but core), each once.
fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

fn group_doc(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `GET /apis`: the named groups.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = groups().iter().map(|(g, v)| group_doc(g, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/GROUP`, if the group is served.
pub fn api_group(group: &str) -> Option<Value> {
    let (g, v) = groups().into_iter().find(|(g, _)| *g == group)?;
    let mut doc = group_doc(g, v);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `GET /api/v1` or `/apis/GROUP/VERSION`: the resources of one group version.
pub fn api_resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            "shortNames": r.short_names,
        }));
        if r.has_status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

/// `GET /version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-weft-emulator",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "none",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_resources_by_path_and_kind() {
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!(RESOURCES[pods].kind, "Pod");
        let eps = find("discovery.k8s.io", "v1", "endpointslices").unwrap();
        assert_eq!(RESOURCES[eps].api_version(), "discovery.k8s.io/v1");
        assert!(find("", "v1", "secrets").is_none());
    }

    #[test]
    fn discovery_lists_status_subresources() {
        let doc = api_resource_list("", "v1");
        let names: Vec<&str> = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"nodes/status"));
        assert!(names.contains(&"pods"));
        assert!(!names.contains(&"configmaps/status"));
        let groups = api_group_list();
        assert_eq!(groups["groups"][0]["name"], "discovery.k8s.io");
    }
}
