//! A small Kubernetes API server emulator for the lab and for tests.
//!
//! It serves the REST paths and JSON of the core resources weft cares about
//! (Namespaces, Nodes, Pods, Services, ConfigMaps) and `discovery.k8s.io/v1`
//! EndpointSlices: get, list, watch, create, update, merge/strategic/apply
//! patch and delete, with one cluster-wide `resourceVersion`, label and field
//! selectors, `/status` subresources, discovery documents for kubectl, and
//! `410 Gone` for watches older than the kept history.
//!
//! It speaks plain HTTP without authentication: it is a test fixture, never a
//! product component. What it does not do: admission, validation beyond
//! names/kinds, defaulting, garbage collection, finalizers, field management
//! for server-side apply, pagination (a `limit` is accepted and ignored, which
//! the API allows), protobuf and Table output (clients fall back to JSON).

mod patch;
mod persist;
mod resources;
mod run;
mod selector;
mod store;
mod watch;

use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch as signal};

pub use patch::{merge_patch, PatchKind};
pub use persist::{remove as remove_saved_state, PersistError, JOURNAL_FILE, SNAPSHOT_FILE};
pub use resources::{ResourceDef, RESOURCES};
pub use run::{run, ListenSpec, LISTENING_FILE};
pub use selector::{FieldSelector, LabelSelector};
pub use store::{Change, ChangeKind, Filter, ObjKey, Store, Subresource};

/// An API error, rendered as a Kubernetes `Status` object. The HTTP code and
/// `reason` of each variant are mapped in [`ApiError::code_and_reason`] only.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A read for a version newer than the server has (kube-apiserver's
    /// "Too large resource version", a 504 with a retry hint).
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// HTTP status code and Kubernetes `reason`.
    pub fn code_and_reason(&self) -> (u16, &'static str) {
        match self {
            ApiError::NotFound(_) => (404, "NotFound"),
            ApiError::AlreadyExists(_) => (409, "AlreadyExists"),
            ApiError::Conflict(_) => (409, "Conflict"),
            ApiError::BadRequest(_) => (400, "BadRequest"),
            ApiError::Invalid(_) => (422, "Invalid"),
            ApiError::Gone(_) => (410, "Expired"),
            ApiError::MethodNotAllowed(_) => (405, "MethodNotAllowed"),
            ApiError::UnsupportedMediaType(_) => (415, "UnsupportedMediaType"),
            ApiError::Timeout(_) => (504, "Timeout"),
            ApiError::Internal(_) => (500, "InternalError"),
        }
    }

    /// The `Status` object for this error.
    pub fn status(&self) -> Value {
        let (code, reason) = self.code_and_reason();
        let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.to_string(), "reason": reason, "code": code});
        if let ApiError::Timeout(_) = self {
            s["details"] = json!({"causes": [{"reason": "ResourceVersionTooLarge",
                                              "message": "Too large resource version"}],
                                  "retryAfterSeconds": 1});
        }
        s
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code_and_reason().0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(code, &self.status())
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// Emulator settings.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// How many changes are kept for watches to resume from.
    pub history_limit: usize,
    /// Log every request to stderr.
    pub log_requests: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            history_limit: 10_000,
            log_requests: false,
        }
    }
}

struct Inner {
    store: Mutex<Store>,
    /// Where every change is saved (`--state`); locked only under `store`.
    journal: Option<Mutex<persist::Journal>>,
    /// Every committed change, sent while the store lock is held so that
    /// watchers see changes in version order and none between replay and live.
    changes: broadcast::Sender<Arc<Change>>,
    /// Bumped to end every open watch (tests: simulate a dropped connection).
    disconnect: signal::Sender<u64>,
    /// While false, new watch requests wait (tests: make a gap deterministic).
    watch_gate: signal::Sender<bool>,
    log_requests: bool,
}

/// A running (or ready to run) emulator; cheap to clone.
#[derive(Clone)]
pub struct Emulator {
    inner: Arc<Inner>,
}

/// Namespaces that exist in every cluster.
const SEED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

impl Emulator {
    /// A new emulator holding the standard namespaces.
    pub fn new(config: EmulatorConfig) -> Self {
        Self::build(seed_store(config.history_limit), None, &config)
    }

    /// An emulator whose objects and resourceVersion counter are kept in
    /// `dir` (see `persist`): it starts with what a previous emulator on
    /// the same `dir` saved, or with the standard namespaces.
    pub fn open(config: EmulatorConfig, dir: &std::path::Path) -> Result<Self, PersistError> {
        let (store, journal) = persist::open(dir, config.history_limit, || seed_store(config.history_limit))?;
        Ok(Self::build(store, Some(journal), &config))
    }

    fn build(store: Store, journal: Option<persist::Journal>, config: &EmulatorConfig) -> Self {
        let (changes, _) = broadcast::channel(4096);
        Emulator {
            inner: Arc::new(Inner {
                store: Mutex::new(store),
                journal: journal.map(Mutex::new),
                changes,
                disconnect: signal::channel(0).0,
                watch_gate: signal::channel(true).0,
                log_requests: config.log_requests,
            }),
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.inner.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The axum router serving the Kubernetes paths.
    pub fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }

    /// Serve on every listener until one fails.
    pub async fn serve(self, listeners: Vec<tokio::net::TcpListener>) -> std::io::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for l in listeners {
            tasks.spawn(axum::serve(l, self.router()).into_future());
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(std::io::Error::other)??;
        }
        Ok(())
    }

    /// The latest resource version.
    pub fn resource_version(&self) -> u64 {
        self.store().resource_version()
    }

    /// End every open watch stream, as a dropped connection would.
    pub fn disconnect_watches(&self) {
        self.inner.disconnect.send_modify(|n| *n += 1);
    }

    /// Hold (`true`) or release new watch requests.
    pub fn hold_watches(&self, hold: bool) {
        self.inner.watch_gate.send_replace(!hold);
    }

    /// Drop the watch history, so that every watch from an older version gets 410.
    pub fn compact(&self) {
        self.store().compact();
    }

    /// Run a mutation and publish its change, under the store lock.
    fn mutate(&self, f: impl FnOnce(&mut Store) -> Result<Arc<Change>, ApiError>) -> Result<Arc<Change>, ApiError> {
        let mut store = self.store();
        let change = f(&mut store)?;
        if let Some(j) = &self.inner.journal {
            let mut j = j.lock().unwrap_or_else(|e| e.into_inner());
            // The change is made in memory but not saved: say so, loudly.
            j.append(&store, &change).map_err(|e| {
                eprintln!("weft-lab apiserver: {e}");
                ApiError::Internal(format!("save the change: {e}"))
            })?;
        }
        // No receivers is fine: nobody is watching.
        let _ = self.inner.changes.send(change.clone());
        Ok(change)
    }
}

/// A store holding the namespaces every cluster has.
fn seed_store(history_limit: usize) -> Store {
    let mut store = Store::new(history_limit);
    let ns = resources::find("", "v1", "namespaces").expect("namespaces are served");
    for name in SEED_NAMESPACES {
        store
            .create(ns, "", json!({"metadata": {"name": name}}))
            .expect("seeding a fresh store cannot fail");
    }
    store
}

/// What a request path names.
enum Target {
    Doc(Value),
    Health,
    Collection { res: usize, namespace: Option<String> },
    Object { key: ObjKey, sub: Option<String> },
}

fn not_found(path: &str) -> ApiError {
    ApiError::NotFound(format!("the server could not find the requested resource ({path})"))
}

/// Map a request path to what it names.
fn route(path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["healthz" | "readyz" | "livez"] => return Ok(Target::Health),
        ["version"] => return Ok(Target::Doc(resources::version())),
        ["api"] => return Ok(Target::Doc(resources::api_versions())),
        ["apis"] => return Ok(Target::Doc(resources::api_group_list())),
        ["apis", g] => return resources::api_group(g).map(Target::Doc).ok_or_else(|| not_found(path)),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found(path)),
    };
    if !resources::group_version_known(group, version) {
        return Err(not_found(path));
    }
    let find = |plural: &str| resources::find(group, version, plural).ok_or_else(|| not_found(path));
    let namespaced_res = |plural: &str| resources::find(group, version, plural).filter(|r| RESOURCES[*r].namespaced);
    let object = |res: usize, namespace: &str, name: &str, sub: Option<&&str>| Target::Object {
        key: ObjKey {
            res,
            namespace: namespace.to_string(),
            name: name.to_string(),
        },
        sub: sub.map(|s| s.to_string()),
    };
    Ok(match rest {
        [] => Target::Doc(resources::api_resource_list(group, version)),
        ["namespaces", ns, plural, tail @ ..] if namespaced_res(plural).is_some() => {
            let res = find(plural)?;
            match tail {
                [] => Target::Collection {
                    res,
                    namespace: Some(ns.to_string()),
                },
                [name] => object(res, ns, name, None),
                [name, sub] => object(res, ns, name, Some(sub)),
                _ => return Err(not_found(path)),
            }
        }
        [plural] => Target::Collection {
            res: find(plural)?,
            namespace: None,
        },
        [plural, name, tail @ ..] if tail.len() <= 1 => {
            let res = find(plural)?;
            if RESOURCES[res].namespaced {
                return Err(not_found(path));
            }
            object(res, "", name, tail.first())
        }
        _ => return Err(not_found(path)),
    })
}

type Params = HashMap<String, String>;

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("request body: {e}")))
}

fn filter_from(params: &Params, namespace: Option<String>) -> Result<Filter, ApiError> {
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or_default();
    Ok(Filter {
        namespace,
        labels: LabelSelector::parse(get("labelSelector"))?,
        fields: FieldSelector::parse(get("fieldSelector"))?,
    })
}

fn is_true(params: &Params, key: &str) -> bool {
    matches!(params.get(key).map(String::as_str), Some("1" | "true"))
}

/// The single request handler: route, then dispatch on method.
async fn handle(
    State(em): State<Emulator>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(params): Query<Params>,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let response = match dispatch(&em, &method, &path, &headers, &params, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if em.inner.log_requests {
        eprintln!("{method} {uri} -> {}", response.status().as_u16());
    }
    response
}

async fn dispatch(
    em: &Emulator,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    params: &Params,
    body: &[u8],
) -> Result<Response, ApiError> {
    let ok = |v: Value| json_response(StatusCode::OK, &v);
    match (route(path)?, method.clone()) {
        (Target::Health, Method::GET) => Ok("ok".into_response()),
        (Target::Doc(doc), Method::GET) => Ok(ok(doc)),
        (Target::Collection { res, namespace }, Method::GET) => {
            let filter = filter_from(params, namespace)?;
            if is_true(params, "watch") {
                return Ok(watch::start(em, res, filter, params).await);
            }
            list(em, res, &filter, params).map(ok)
        }
        (Target::Collection { res, namespace }, Method::POST) => {
            let ns = match (RESOURCES[res].namespaced, namespace) {
                (true, Some(ns)) => ns,
                (true, None) => {
                    return Err(ApiError::MethodNotAllowed(format!(
                        "create {}: POST to /namespaces/NAMESPACE/{}",
                        RESOURCES[res].plural, RESOURCES[res].plural
                    )))
                }
                (false, _) => String::new(),
            };
            let obj = parse_json(body)?;
            let c = em.mutate(|s| s.create(res, &ns, obj))?;
            Ok(json_response(StatusCode::CREATED, &c.new))
        }
        (Target::Object { key, sub }, m) => object(em, m, key, sub.as_deref(), headers, body),
        (_, m) => Err(ApiError::MethodNotAllowed(format!("{m} is not allowed on {path}"))),
    }
}

/// `GET` of a collection: a `…List` with the current version. A
/// `resourceVersion` newer than the server's is refused as kube-apiserver
/// does once its cache has waited for it in vain: 504 "Too large resource
/// version" (the emulator is never behind, so it does not wait).
fn list(em: &Emulator, res: usize, filter: &Filter, params: &Params) -> Result<Value, ApiError> {
    let store = em.store();
    let def = &RESOURCES[res];
    let current = store.resource_version();
    if let Some(rv) = params.get("resourceVersion").filter(|v| !v.is_empty()) {
        let n: u64 = rv
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv:?}")))?;
        if n > current {
            return Err(ApiError::Timeout(format!(
                "Too large resource version: {n}, current: {current}"
            )));
        }
    }
    Ok(json!({
        "kind": format!("{}List", def.kind),
        "apiVersion": def.api_version(),
        "metadata": {"resourceVersion": store.resource_version().to_string()},
        "items": store.list(res, filter),
    }))
}

fn object(
    em: &Emulator,
    method: Method,
    key: ObjKey,
    sub: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let sub = Subresource::parse(sub)?;
    let ok = |c: Arc<Change>| json_response(StatusCode::OK, &c.new);
    match method {
        Method::GET => Ok(json_response(StatusCode::OK, &em.store().get(&key)?)),
        Method::PUT => {
            let obj = parse_json(body)?;
            em.mutate(|s| s.update(&key, obj, sub)).map(ok)
        }
        Method::PATCH => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let kind = PatchKind::from_content_type(ct)?;
            let patch = patch::parse_body(kind, body)?;
            let c = em.mutate(|s| s.patch(&key, kind, &patch, sub))?;
            let code = if c.kind == ChangeKind::Added {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(code, &c.new))
        }
        Method::DELETE if sub == Subresource::Main => em.mutate(|s| s.delete(&key)).map(ok),
        m => Err(ApiError::MethodNotAllowed(format!("{m} is not allowed here"))),
    }
}

/// Serve an empty body for `Body` type inference in watch.
fn stream_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> Target {
        route(path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn routes_paths() {
        assert!(matches!(target("/api"), Target::Doc(_)));
        assert!(matches!(target("/apis/discovery.k8s.io"), Target::Doc(_)));
        assert!(matches!(target("/apis/discovery.k8s.io/v1"), Target::Doc(_)));
        match target("/api/v1/namespaces/default/pods") {
            Target::Collection { namespace, .. } => assert_eq!(namespace.as_deref(), Some("default")),
            _ => panic!("pods collection"),
        }
        match target("/api/v1/namespaces/kube-system") {
            Target::Object { key, sub } => {
                assert_eq!(key.name, "kube-system");
                assert!(sub.is_none());
            }
            _ => panic!("namespace object"),
        }
        match target("/api/v1/nodes/node-1/status") {
            Target::Object { key, sub } => {
                assert_eq!((key.name.as_str(), sub.as_deref()), ("node-1", Some("status")));
            }
            _ => panic!("node status"),
        }
        match target("/apis/discovery.k8s.io/v1/namespaces/a/endpointslices/s") {
            Target::Object { key, .. } => assert_eq!((key.namespace.as_str(), key.name.as_str()), ("a", "s")),
            _ => panic!("slice"),
        }
        assert!(matches!(
            target("/api/v1/pods"),
            Target::Collection { namespace: None, .. }
        ));
        for bad in [
            "/api/v2/pods",
            "/api/v1/pods/x",
            "/api/v1/secrets",
            "/apis/apps/v1",
            "/foo",
        ] {
            assert!(route(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_render_as_status() {
        let s = ApiError::Gone("too old".into()).status();
        assert_eq!((s["code"].as_u64(), s["reason"].as_str()), (Some(410), Some("Expired")));
        assert_eq!(s["kind"], "Status");
    }
}
