//! The patch flavours the agent and kubectl send:
//!
//! - `application/merge-patch+json`: RFC 7386 JSON merge patch — objects merge
//!   recursively, `null` deletes a key, anything else (lists too) replaces.
//! - `application/strategic-merge-patch+json`: like a merge patch, except that
//!   lists Kubernetes declares as "merge by key" (`conditions` and `addresses`
//!   by `type`, `containers` by `name`, …) merge element-wise by that key, and
//!   the `$patch: delete|replace` directives are honoured. This is the subset
//!   of strategic merge the agent and kubectl use; the full per-field schema of
//!   Kubernetes is not reproduced.
//! - `application/apply-patch+yaml` (server-side apply): applied here as a
//!   strategic merge of the applied configuration. There is no field
//!   ownership: fields dropped from a later apply are not removed.

use serde_json::{Map, Value};

use super::ApiError;

/// The patch type, from the request's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Strategic,
    Apply,
}

impl PatchKind {
    /// Map a `Content-Type` to a patch kind; JSON patch is not supported.
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        let base = ct.split(';').next().unwrap_or_default().trim();
        match base {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(Self::Apply),
            other => Err(ApiError::UnsupportedMediaType(format!(
                "patch content type {other:?} is not supported by the emulator \
                 (use merge, strategic or apply)"
            ))),
        }
    }
}

/// Parse a patch body: JSON, or YAML for apply patches.
pub fn parse_body(kind: PatchKind, body: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(e) if kind != PatchKind::Apply => Err(ApiError::BadRequest(format!("patch body: {e}"))),
        Err(_) => {
            serde_yaml_ng::from_slice(body).map_err(|e| ApiError::BadRequest(format!("apply patch body (YAML): {e}")))
        }
    }
}

/// Apply `patch` of `kind` to `target`, returning the patched object.
pub fn apply(kind: PatchKind, target: &Value, patch: &Value) -> Value {
    match kind {
        PatchKind::Merge => merge_patch(target, patch),
        PatchKind::Strategic | PatchKind::Apply => strategic_merge(target, patch, ""),
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if v.is_null() {
            out.remove(k);
        } else {
            let merged = merge_patch(out.get(k).unwrap_or(&Value::Null), v);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

/// The merge key of a list field Kubernetes merges element-wise, by field name.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "conditions" | "addresses" => Some("type"),
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "volumeMounts"
        | "imagePullSecrets" => Some("name"),
        "ownerReferences" => Some("uid"),
        "ports" => Some("port"),
        _ => None,
    }
}

/// Strategic merge of `patch` into `target`; `field` is the key `target` sits under.
fn strategic_merge(target: &Value, patch: &Value, field: &str) -> Value {
    match (target, patch) {
        (_, Value::Object(p)) if p.get("$patch").and_then(Value::as_str) == Some("replace") => {
            let mut p = p.clone();
            p.remove("$patch");
            Value::Object(p)
        }
        (Value::Object(t), Value::Object(p)) => merge_maps(t, p),
        (Value::Array(t), Value::Array(p)) => match merge_key(field) {
            Some(key) => merge_keyed_list(t, p, key),
            None => Value::Array(strip_directives(p)),
        },
        (_, Value::Object(p)) => merge_maps(&Map::new(), p),
        (_, Value::Array(p)) => Value::Array(strip_directives(p)),
        (_, p) => p.clone(),
    }
}

fn merge_maps(target: &Map<String, Value>, patch: &Map<String, Value>) -> Value {
    let mut out = target.clone();
    for (k, v) in patch {
        if k.starts_with('$') {
            continue; // $setElementOrder/…, $retainKeys: ordering hints only
        }
        if v.is_null() {
            out.remove(k);
        } else {
            let merged = strategic_merge(out.get(k).unwrap_or(&Value::Null), v, k);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

/// Drop `$patch` directive elements from a list that is replaced wholesale.
fn strip_directives(list: &[Value]) -> Vec<Value> {
    list.iter().filter(|v| v.get("$patch").is_none()).cloned().collect()
}

/// Merge two lists of objects by `key`: patched elements merge into the element
/// with the same key (or are appended); `{"$patch":"delete", key: x}` removes.
fn merge_keyed_list(target: &[Value], patch: &[Value], key: &str) -> Value {
    let mut out: Vec<Value> = target.to_vec();
    for item in patch {
        let id = item.get(key).cloned().unwrap_or(Value::Null);
        let pos = out.iter().position(|t| t.get(key) == Some(&id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => out[i] = strategic_merge(&out[i], item, ""),
            (None, false) => out.push(strategic_merge(&Value::Null, item, "")),
        }
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        let patch = json!({"a": "z", "c": {"f": null}, "l": [3]});
        assert_eq!(
            merge_patch(&target, &patch),
            json!({"a": "z", "c": {"d": "e"}, "l": [3]})
        );
        assert_eq!(merge_patch(&json!({"a": 1}), &json!([1])), json!([1]));
    }

    #[test]
    fn strategic_merges_conditions_by_type() {
        let node = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"}
        ]}});
        let patch = json!({"status": {"conditions": [
            {"type": "NetworkUnavailable", "status": "False", "reason": "WeftIsUp"},
            {"type": "MemoryPressure", "status": "False"}
        ]}});
        let out = apply(PatchKind::Strategic, &node, &patch);
        assert_eq!(
            out["status"]["conditions"],
            json!([
                {"type": "Ready", "status": "True"},
                {"type": "NetworkUnavailable", "status": "False", "reason": "WeftIsUp"},
                {"type": "MemoryPressure", "status": "False"}
            ])
        );
    }

    #[test]
    fn strategic_directives() {
        let target = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]},
                            "metadata": {"labels": {"x": "1"}}});
        let patch = json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]},
                           "metadata": {"labels": {"$patch": "replace", "y": "2"}},
                           "$setElementOrder/spec": []});
        let out = apply(PatchKind::Strategic, &target, &patch);
        assert_eq!(out["spec"]["containers"], json!([{"name": "b"}]));
        assert_eq!(out["metadata"]["labels"], json!({"y": "2"}));
        assert!(out.get("$setElementOrder/spec").is_none());
    }

    #[test]
    fn unkeyed_lists_are_replaced() {
        let out = apply(
            PatchKind::Strategic,
            &json!({"spec": {"podCIDRs": ["a"]}}),
            &json!({"spec": {"podCIDRs": ["b"]}}),
        );
        assert_eq!(out["spec"]["podCIDRs"], json!(["b"]));
    }

    #[test]
    fn content_types_and_yaml_bodies() {
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json; charset=utf-8").unwrap(),
            PatchKind::Merge
        );
        assert!(PatchKind::from_content_type("application/json-patch+json").is_err());
        let v = parse_body(PatchKind::Apply, b"metadata:\n  name: x\n").unwrap();
        assert_eq!(v["metadata"]["name"], "x");
        assert!(parse_body(PatchKind::Merge, b"metadata: x").is_err());
    }
}
