//! The object store: JSON objects keyed by resource, namespace and name, one
//! cluster-wide `resourceVersion` counter, and a bounded history of changes
//! that watches replay from.
//!
//! All methods are synchronous and pure with respect to the outside world; the
//! HTTP layer holds the store behind a mutex and fans changes out to watchers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{json, Value};

use super::patch::{self, PatchKind};
use super::resources::{ResourceDef, RESOURCES};
use super::selector::{FieldSelector, LabelSelector};
use super::ApiError;

/// Where an object lives: resource index, namespace ("" when cluster-scoped), name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    pub res: usize,
    pub namespace: String,
    pub name: String,
}

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One committed change, as kept in history and sent to watchers.
#[derive(Debug, Clone)]
pub struct Change {
    pub rv: u64,
    pub kind: ChangeKind,
    pub res: usize,
    pub namespace: String,
    /// The object before the change (for selector transitions); `None` on create.
    pub old: Option<Value>,
    /// The object after the change; for deletes, the last state with the delete's version.
    pub new: Value,
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Main,
    Status,
}

impl Subresource {
    /// Parse the path segment after an object's name.
    pub fn parse(s: Option<&str>) -> Result<Self, ApiError> {
        match s {
            None => Ok(Self::Main),
            Some("status") => Ok(Self::Status),
            Some(other) => Err(ApiError::NotFound(format!(
                "the server could not find the requested resource (subresource {other:?})"
            ))),
        }
    }
}

/// What a list or watch selects.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `None`: all namespaces.
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    /// Whether an object of the watched resource is selected.
    pub fn matches(&self, namespace: &str, obj: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }
}

/// The emulator's whole state.
#[derive(Debug)]
pub struct Store {
    objects: BTreeMap<ObjKey, Value>,
    rv: u64,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// Highest version no longer in history; watches from below it get 410.
    compacted_to: u64,
    uid_seq: u64,
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj["metadata"][field].as_str().filter(|s| !s.is_empty())
}

impl Store {
    /// An empty store keeping the last `history_limit` changes for watches.
    pub fn new(history_limit: usize) -> Self {
        Store {
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted_to: 0,
            uid_seq: 0,
        }
    }

    /// The current (latest) resource version.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Forget all history: every watch from an older version now gets 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted_to = self.rv;
    }

    fn def(res: usize) -> &'static ResourceDef {
        &RESOURCES[res]
    }

    fn not_found(res: usize, name: &str) -> ApiError {
        let def = Self::def(res);
        ApiError::NotFound(format!("{} {name:?} not found", def.plural))
    }

    /// The object, or 404.
    pub fn get(&self, key: &ObjKey) -> Result<Value, ApiError> {
        self.objects
            .get(key)
            .cloned()
            .ok_or_else(|| Self::not_found(key.res, &key.name))
    }

    /// Every selected object of resource `res`, ordered by namespace and name.
    pub fn list(&self, res: usize, filter: &Filter) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|(k, v)| k.res == res && filter.matches(&k.namespace, v))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Changes after version `since`, or 410 when some were already dropped
    /// — or when `since` is newer than anything this store issued: it came
    /// from another incarnation of the server (one that lost its state), and
    /// nothing this store holds relates to it, so the client must relist.
    /// (A real kube-apiserver's watch cache would accept it and stay silent
    /// until its own versions pass it; a cluster restored the way etcd
    /// documents, `etcdutl snapshot restore --bump-revision
    /// --mark-compacted`, answers 410 to every older version instead, which
    /// is what makes clients relist — the behaviour reproduced here.)
    pub fn changes_since(&self, since: u64) -> Result<Vec<Arc<Change>>, ApiError> {
        if since > self.rv {
            return Err(ApiError::Gone(format!(
                "too old resource version: {since} ({}): not issued by this server \
                 (its latest is {}); relist",
                self.compacted_to + 1,
                self.rv
            )));
        }
        if since < self.compacted_to {
            return Err(ApiError::Gone(format!(
                "too old resource version: {since} ({})",
                self.compacted_to + 1
            )));
        }
        Ok(self.history.iter().filter(|c| c.rv > since).cloned().collect())
    }

    fn next_uid(&mut self) -> String {
        self.uid_seq += 1;
        let t = jiff::Timestamp::now().as_nanosecond() as u128;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (t >> 32) as u32,
            (t >> 16) as u16,
            self.uid_seq & 0xfff,
            (t & 0xfff) as u16,
            self.uid_seq
        )
    }

    /// Record a change: stamp the new version, store or remove, keep history.
    fn commit(&mut self, key: ObjKey, kind: ChangeKind, old: Option<Value>, mut new: Value) -> Arc<Change> {
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if kind == ChangeKind::Deleted {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key.clone(), new.clone());
        }
        let change = Arc::new(Change {
            rv: self.rv,
            kind,
            res: key.res,
            namespace: key.namespace,
            old,
            new,
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted_to = dropped.rv;
            }
        }
        change
    }

    /// Check `kind`/`apiVersion` of a body against the resource, filling them in.
    fn check_type(res: usize, obj: &mut Value) -> Result<(), ApiError> {
        let def = Self::def(res);
        if !obj.is_object() {
            return Err(ApiError::BadRequest("body is not a JSON object".into()));
        }
        for (field, want) in [("kind", def.kind.to_string()), ("apiVersion", def.api_version())] {
            match obj[field].as_str() {
                None | Some("") => obj[field] = json!(want),
                Some(got) if got == want => {}
                Some(got) => {
                    return Err(ApiError::BadRequest(format!(
                        "{field} {got:?} does not match the resource ({want:?})"
                    )))
                }
            }
        }
        Ok(())
    }

    /// The key for a body written at `(res, namespace)`; checks namespace and name.
    fn key_for(res: usize, namespace: &str, name: &str, obj: &mut Value) -> Result<ObjKey, ApiError> {
        let def = Self::def(res);
        if def.namespaced {
            match meta_str(obj, "namespace") {
                None => obj["metadata"]["namespace"] = json!(namespace),
                Some(ns) if ns == namespace => {}
                Some(ns) => {
                    return Err(ApiError::BadRequest(format!(
                        "the namespace of the object ({ns}) does not match the namespace on the request ({namespace})"
                    )))
                }
            }
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        Ok(ObjKey {
            res,
            namespace: if def.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        })
    }

    /// Create an object (POST to a collection).
    pub fn create(&mut self, res: usize, namespace: &str, mut obj: Value) -> Result<Arc<Change>, ApiError> {
        Self::check_type(res, &mut obj)?;
        let name = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
            (Some(n), _) => n.to_string(),
            (None, Some(prefix)) => format!("{prefix}{:05x}", self.uid_seq + 1),
            (None, None) => {
                return Err(ApiError::Invalid("metadata.name: Required value".into()));
            }
        };
        let key = Self::key_for(res, namespace, &name, &mut obj)?;
        if self.objects.contains_key(&key) {
            let def = Self::def(res);
            return Err(ApiError::AlreadyExists(format!(
                "{} {name:?} already exists",
                def.plural
            )));
        }
        let uid = self.next_uid();
        let meta = &mut obj["metadata"];
        meta["name"] = json!(name);
        meta["uid"] = json!(uid);
        meta["creationTimestamp"] = json!(now_rfc3339());
        meta["generation"] = json!(1);
        if let Some(status) = Self::def(res).initial_status() {
            obj["status"] = status;
        }
        Ok(self.commit(key, ChangeKind::Added, None, obj))
    }

    /// Combine the stored object and a written one according to the subresource,
    /// keeping identity fields and bumping `generation` when `spec` changed.
    fn merge_write(res: usize, old: &Value, mut new: Value, sub: Subresource) -> Value {
        let def = Self::def(res);
        if sub == Subresource::Status {
            let mut out = old.clone();
            out["status"] = new["status"].take();
            return out;
        }
        if def.has_status {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        for field in ["uid", "creationTimestamp", "name", "namespace"] {
            if let Some(v) = old["metadata"].get(field) {
                new["metadata"][field] = v.clone();
            }
        }
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let bump = i64::from(old.get("spec") != new.get("spec"));
        new["metadata"]["generation"] = json!(generation + bump);
        new
    }

    /// Refuse a write whose `metadata.resourceVersion` is set and stale.
    fn check_precondition(old: &Value, new: &Value) -> Result<(), ApiError> {
        match (meta_str(new, "resourceVersion"), meta_str(old, "resourceVersion")) {
            (Some(want), Some(have)) if want != have => Err(ApiError::Conflict(format!(
                "Operation cannot be fulfilled on {:?}: the object has been modified; \
                 please apply your changes to the latest version and try again",
                meta_str(old, "name").unwrap_or_default()
            ))),
            _ => Ok(()),
        }
    }

    fn write(&mut self, key: ObjKey, old: Value, new: Value, sub: Subresource) -> Result<Arc<Change>, ApiError> {
        Self::check_precondition(&old, &new)?;
        let merged = Self::merge_write(key.res, &old, new, sub);
        Ok(self.commit(key, ChangeKind::Modified, Some(old), merged))
    }

    /// Replace an object (PUT), or only its status for [`Subresource::Status`].
    pub fn update(&mut self, key: &ObjKey, mut obj: Value, sub: Subresource) -> Result<Arc<Change>, ApiError> {
        Self::check_type(key.res, &mut obj)?;
        if let Some(n) = meta_str(&obj, "name") {
            if n != key.name {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({})",
                    key.name
                )));
            }
        }
        let key = Self::key_for(key.res, &key.namespace, &key.name, &mut obj)?;
        let old = self.get(&key)?;
        self.write(key, old, obj, sub)
    }

    /// Patch an object; an apply patch of a missing object creates it.
    pub fn patch(
        &mut self,
        key: &ObjKey,
        kind: PatchKind,
        patch: &Value,
        sub: Subresource,
    ) -> Result<Arc<Change>, ApiError> {
        let old = match (self.get(key), kind) {
            (Ok(old), _) => old,
            (Err(_), PatchKind::Apply) => {
                let mut obj = patch.clone();
                obj["metadata"]["name"] = json!(key.name);
                return self.create(key.res, &key.namespace, obj);
            }
            (Err(e), _) => return Err(e),
        };
        let mut new = patch::apply(kind, &old, patch);
        Self::check_type(key.res, &mut new)?;
        self.write(key.clone(), old, new, sub)
    }

    /// The whole store as a JSON document (objects and counters, no history):
    /// what [`Store::restore`] reads back.
    pub fn snapshot(&self) -> Value {
        let objects: Vec<Value> = self.objects.iter().map(|(k, v)| record_of(k, v)).collect();
        json!({"resourceVersion": self.rv, "uidSeq": self.uid_seq, "objects": objects})
    }

    /// A store holding a [`Store::snapshot`]'s objects and counters. Its
    /// history is empty: a watch from any older version gets 410, as after a
    /// real API server's restart (its watch cache starts at the list it made).
    pub fn restore(history_limit: usize, snapshot: &Value) -> Result<Store, String> {
        let mut store = Store::new(history_limit);
        for rec in snapshot["objects"].as_array().ok_or("snapshot has no objects array")? {
            let (key, obj) = key_of(rec)?;
            store.objects.insert(key, obj);
        }
        store.rv = counter(snapshot, "resourceVersion")?;
        store.uid_seq = counter(snapshot, "uidSeq")?;
        store.compacted_to = store.rv;
        Ok(store)
    }

    /// One committed change as a journal record (see [`Store::replay`]).
    pub fn journal_record(&self, change: &Change) -> Value {
        let name = change.new["metadata"]["name"].as_str().unwrap_or_default();
        let key = ObjKey {
            res: change.res,
            namespace: change.namespace.clone(),
            name: name.to_string(),
        };
        let mut rec = record_of(&key, &change.new);
        rec["resourceVersion"] = json!(change.rv);
        rec["uidSeq"] = json!(self.uid_seq);
        rec["deleted"] = json!(change.kind == ChangeKind::Deleted);
        rec
    }

    /// Apply a journal record on top of a restored store.
    pub fn replay(&mut self, rec: &Value) -> Result<(), String> {
        let (key, obj) = key_of(rec)?;
        if rec["deleted"].as_bool().unwrap_or(false) {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key, obj);
        }
        self.rv = counter(rec, "resourceVersion")?;
        self.uid_seq = counter(rec, "uidSeq")?;
        self.compacted_to = self.rv;
        Ok(())
    }

    /// Delete an object; the change carries its last state.
    pub fn delete(&mut self, key: &ObjKey) -> Result<Arc<Change>, ApiError> {
        let old = self.get(key)?;
        Ok(self.commit(key.clone(), ChangeKind::Deleted, Some(old.clone()), old))
    }
}

/// An object with where it lives, by resource name rather than table index.
fn record_of(key: &ObjKey, obj: &Value) -> Value {
    let def = &RESOURCES[key.res];
    json!({"group": def.group, "version": def.version, "plural": def.plural,
           "namespace": key.namespace, "name": key.name, "object": obj})
}

fn key_of(rec: &Value) -> Result<(ObjKey, Value), String> {
    let field = |f: &str| rec[f].as_str().ok_or_else(|| format!("record without {f}: {rec}"));
    let (group, version, plural) = (field("group")?, field("version")?, field("plural")?);
    let res = super::resources::find(group, version, plural)
        .ok_or_else(|| format!("unknown resource {group}/{version}/{plural}"))?;
    let key = ObjKey {
        res,
        namespace: field("namespace")?.to_string(),
        name: field("name")?.to_string(),
    };
    Ok((key, rec["object"].clone()))
}

fn counter(v: &Value, f: &str) -> Result<u64, String> {
    v[f].as_u64().ok_or_else(|| format!("{f} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::super::resources::find;
    use super::*;

    fn pods() -> usize {
        find("", "v1", "pods").unwrap()
    }

    fn key(name: &str) -> ObjKey {
        ObjKey {
            res: pods(),
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn pod(name: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"app": "web"}},
               "spec": {"nodeName": "node-1"}, "status": {"podIP": "10.0.0.1"}})
    }

    #[test]
    fn create_fills_metadata_and_resets_pod_status() {
        let mut s = Store::new(10);
        let c = s.create(pods(), "default", pod("a")).unwrap();
        assert_eq!(c.rv, 1);
        assert_eq!(c.new["kind"], "Pod");
        assert_eq!(c.new["apiVersion"], "v1");
        assert_eq!(c.new["metadata"]["namespace"], "default");
        assert_eq!(c.new["metadata"]["resourceVersion"], "1");
        assert_eq!(c.new["status"], json!({"phase": "Pending"}));
        assert!(matches!(
            s.create(pods(), "default", pod("a")),
            Err(ApiError::AlreadyExists(_))
        ));
        assert!(matches!(
            s.create(
                pods(),
                "other",
                json!({"metadata": {"name": "x", "namespace": "default"}})
            ),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn main_writes_keep_status_and_status_writes_keep_the_rest() {
        let mut s = Store::new(10);
        s.create(pods(), "default", pod("a")).unwrap();
        let c = s
            .patch(
                &key("a"),
                PatchKind::Merge,
                &json!({"status": {"podIP": "10.0.0.9"}}),
                Subresource::Status,
            )
            .unwrap();
        assert_eq!(c.new["status"]["podIP"], "10.0.0.9");
        let c = s
            .patch(
                &key("a"),
                PatchKind::Merge,
                &json!({"metadata": {"labels": {"v": "2"}}, "status": {"podIP": "bad"}}),
                Subresource::Main,
            )
            .unwrap();
        assert_eq!(c.new["status"]["podIP"], "10.0.0.9");
        assert_eq!(c.new["metadata"]["labels"]["v"], "2");
        assert_eq!(c.new["metadata"]["generation"], 1);
        assert_eq!(c.kind, ChangeKind::Modified);
        assert_eq!(c.old.as_ref().unwrap()["metadata"]["resourceVersion"], "2");
    }

    #[test]
    fn stale_resource_version_conflicts() {
        let mut s = Store::new(10);
        s.create(pods(), "default", pod("a")).unwrap();
        let mut stale = s.get(&key("a")).unwrap();
        s.patch(
            &key("a"),
            PatchKind::Merge,
            &json!({"metadata": {"labels": {"x": "1"}}}),
            Subresource::Main,
        )
        .unwrap();
        stale["metadata"]["labels"]["y"] = json!("2");
        assert!(matches!(
            s.update(&key("a"), stale, Subresource::Main),
            Err(ApiError::Conflict(_))
        ));
    }

    #[test]
    fn history_is_bounded_and_old_versions_are_gone() {
        let mut s = Store::new(3);
        for n in ["a", "b", "c", "d", "e"] {
            s.create(pods(), "default", pod(n)).unwrap();
        }
        assert_eq!(s.changes_since(2).unwrap().len(), 3);
        assert!(matches!(s.changes_since(1), Err(ApiError::Gone(_))));
        let d = s.delete(&key("c")).unwrap();
        assert_eq!(d.rv, 6);
        assert_eq!(d.new["metadata"]["resourceVersion"], "6");
        assert!(matches!(s.get(&key("c")), Err(ApiError::NotFound(_))));
        s.compact();
        assert!(matches!(s.changes_since(5), Err(ApiError::Gone(_))));
        assert!(s.changes_since(6).unwrap().is_empty());
    }

    #[test]
    fn list_filters_by_namespace_and_selectors() {
        let mut s = Store::new(10);
        s.create(pods(), "default", pod("a")).unwrap();
        s.create(pods(), "kube-system", pod("b")).unwrap();
        let all = Filter::default();
        assert_eq!(s.list(pods(), &all).len(), 2);
        let ns = Filter {
            namespace: Some("kube-system".into()),
            ..Filter::default()
        };
        assert_eq!(s.list(pods(), &ns)[0]["metadata"]["name"], "b");
        let by_name = Filter {
            fields: FieldSelector::parse("metadata.name=a").unwrap(),
            ..Filter::default()
        };
        assert_eq!(s.list(pods(), &by_name).len(), 1);
    }

    #[test]
    fn apply_creates_then_merges() {
        let mut s = Store::new(10);
        let c = s
            .patch(
                &key("z"),
                PatchKind::Apply,
                &json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"labels": {"a": "1"}}}),
                Subresource::Main,
            )
            .unwrap();
        assert_eq!(c.kind, ChangeKind::Added);
        let c = s
            .patch(
                &key("z"),
                PatchKind::Apply,
                &json!({"metadata": {"labels": {"b": "2"}}}),
                Subresource::Main,
            )
            .unwrap();
        assert_eq!(c.new["metadata"]["labels"], json!({"a": "1", "b": "2"}));
    }

    #[test]
    fn future_versions_are_gone_too() {
        let mut s = Store::new(10);
        s.create(pods(), "default", pod("a")).unwrap();
        assert!(s.changes_since(1).unwrap().is_empty());
        match s.changes_since(2) {
            Err(ApiError::Gone(m)) => assert!(m.contains("not issued by this server"), "{m}"),
            other => panic!("a version never issued: {other:?}"),
        }
    }

    #[test]
    fn snapshot_and_journal_restore_objects_and_counters() {
        let mut s = Store::new(10);
        s.create(pods(), "default", pod("a")).unwrap();
        let snap = s.snapshot();
        let b = s.create(pods(), "default", pod("b")).unwrap();
        let rec_b = s.journal_record(&b);
        let d = s.delete(&key("a")).unwrap();
        let rec_d = s.journal_record(&d);
        let mut r = Store::restore(10, &snap).unwrap();
        assert_eq!(r.get(&key("a")).unwrap(), s_get_a(&snap));
        r.replay(&rec_b).unwrap();
        r.replay(&rec_d).unwrap();
        assert_eq!(r.resource_version(), 3);
        assert!(r.get(&key("a")).is_err());
        assert_eq!(r.get(&key("b")).unwrap(), s.get(&key("b")).unwrap());
        assert!(
            matches!(r.changes_since(2), Err(ApiError::Gone(_))),
            "history starts empty"
        );
        assert!(r.changes_since(3).unwrap().is_empty());
        let c = r.create(pods(), "default", pod("c")).unwrap();
        assert_eq!(c.rv, 4, "the counter continues");
        assert_ne!(c.new["metadata"]["uid"], b.new["metadata"]["uid"]);
        assert!(Store::restore(
            10,
            &json!({"objects": [{"group": "", "version": "v1", "plural": "secrets",
            "namespace": "", "name": "x", "object": {}}], "resourceVersion": 1, "uidSeq": 1})
        )
        .is_err());
    }

    fn s_get_a(snap: &Value) -> Value {
        snap["objects"][0]["object"].clone()
    }
}
