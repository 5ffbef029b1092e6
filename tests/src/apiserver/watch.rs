//! Watch streams: newline-delimited JSON `WatchEvent`s over a chunked HTTP
//! response, like the real API server.
//!
//! - no `resourceVersion` (or `"0"`), or `sendInitialEvents=true`: synthetic
//!   `ADDED` events for the current objects first, then live changes;
//! - `resourceVersion=N`: every change after N, then live changes; when N is
//!   older than the kept history the stream carries one `ERROR` event with a
//!   `Status` of code 410, reason `Expired`, and ends (HTTP status stays 200,
//!   as with the real server — kube-rs's watcher relists on exactly that);
//! - a change that makes an object enter or leave the selection is sent as
//!   `ADDED` or `DELETED`, as the real server does for selector watches;
//! - `timeoutSeconds` ends the stream (with a `BOOKMARK` first when
//!   `allowWatchBookmarks=true`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::store::{Change, ChangeKind};
use super::{stream_response, ApiError, Emulator, Filter, Params, RESOURCES};

/// Streams end after this long when the client gives no `timeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

fn line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn bookmark(res: usize, rv: u64, initial_end: bool) -> Bytes {
    let def = &RESOURCES[res];
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": meta}),
    )
}

/// The event a watcher with `filter` on resource `res` gets for `change`, if any.
fn event_for(change: &Change, res: usize, filter: &Filter) -> Option<Bytes> {
    if change.res != res {
        return None;
    }
    let ns = &change.namespace;
    let was = change.old.as_ref().is_some_and(|o| filter.matches(ns, o));
    let is = filter.matches(ns, &change.new);
    let kind = match (change.kind, was, is) {
        (ChangeKind::Added, _, true) => "ADDED",
        (ChangeKind::Deleted, true, _) => "DELETED",
        (ChangeKind::Modified, false, true) => "ADDED",
        (ChangeKind::Modified, true, true) => "MODIFIED",
        (ChangeKind::Modified, true, false) => "DELETED",
        _ => return None,
    };
    Some(line(kind, &change.new))
}

/// How the stream begins, decided under the store lock.
struct Start {
    first: Vec<Bytes>,
    /// Version the live part continues from.
    from_rv: u64,
    /// The stream ends after `first` (410).
    finished: bool,
}

fn start_state(
    em: &Emulator,
    res: usize,
    filter: &Filter,
    params: &Params,
) -> (Start, broadcast::Receiver<Arc<Change>>) {
    let store = em.store();
    // Subscribe while holding the lock: no change can slip between replay and live.
    let rx = em.inner.changes.subscribe();
    let current = store.resource_version();
    let rv = params.get("resourceVersion").map(String::as_str).unwrap_or("");
    let initial = rv.is_empty() || rv == "0" || super::is_true(params, "sendInitialEvents");
    let start = if initial {
        let mut first: Vec<Bytes> = store.list(res, filter).iter().map(|o| line("ADDED", o)).collect();
        if super::is_true(params, "sendInitialEvents") {
            first.push(bookmark(res, current, true));
        }
        Start {
            first,
            from_rv: current,
            finished: false,
        }
    } else {
        match rv
            .parse::<u64>()
            .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv:?}")))
            .and_then(|n| store.changes_since(n))
        {
            Ok(changes) => Start {
                first: changes.iter().filter_map(|c| event_for(c, res, filter)).collect(),
                from_rv: current,
                finished: false,
            },
            Err(e) => Start {
                first: vec![line("ERROR", &e.status())],
                from_rv: current,
                finished: true,
            },
        }
    };
    (start, rx)
}

/// Begin a watch and return the streaming response.
pub(super) async fn start(em: &Emulator, res: usize, filter: Filter, params: &Params) -> Response {
    let mut gate = em.inner.watch_gate.subscribe();
    // The gate only closes in tests; an error means the emulator is gone.
    let _ = gate.wait_for(|open| *open).await;
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let bookmarks = super::is_true(params, "allowWatchBookmarks");
    let (start, rx) = start_state(em, res, &filter, params);
    let (tx, out) = mpsc::channel::<Bytes>(256);
    let live = Live {
        em: em.clone(),
        res,
        filter,
        rx,
        tx,
        timeout,
        bookmarks,
    };
    tokio::spawn(live.run(start));
    let stream = futures::stream::unfold(out, |mut out| async move {
        out.recv().await.map(|b| (Ok::<_, Infallible>(b), out))
    });
    stream_response(Body::from_stream(stream))
}

/// The live part of one watch, running as its own task.
struct Live {
    em: Emulator,
    res: usize,
    filter: Filter,
    rx: broadcast::Receiver<Arc<Change>>,
    tx: mpsc::Sender<Bytes>,
    timeout: Duration,
    bookmarks: bool,
}

impl Live {
    async fn run(mut self, start: Start) {
        for b in start.first {
            if self.tx.send(b).await.is_err() {
                return;
            }
        }
        if start.finished {
            return;
        }
        let mut last = start.from_rv;
        let mut disconnect = self.em.inner.disconnect.subscribe();
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                got = self.rx.recv() => match got {
                    Ok(change) if change.rv > last => {
                        last = change.rv;
                        if let Some(b) = event_for(&change, self.res, &self.filter) {
                            if self.tx.send(b).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(_) => {}
                    // Lagged or closed: end the stream; the client resumes from
                    // its last version (or relists on 410).
                    Err(_) => return,
                },
                _ = disconnect.changed() => return,
                _ = &mut deadline => {
                    if self.bookmarks {
                        let _ = self.tx.send(bookmark(self.res, last, false)).await;
                    }
                    return;
                }
                _ = self.tx.closed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::{FieldSelector, Filter};

    fn change(kind: ChangeKind, old: Option<Value>, new: Value) -> Change {
        Change {
            rv: 7,
            kind,
            res: 2,
            namespace: "default".into(),
            old,
            new,
        }
    }

    fn parse(b: &Bytes) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn selector_transitions_become_added_and_deleted() {
        let filter = Filter {
            fields: FieldSelector::parse("spec.nodeName=n1").unwrap(),
            ..Filter::default()
        };
        let on = |n: &str| json!({"metadata": {"name": "p"}, "spec": {"nodeName": n}});
        let cases = [
            (ChangeKind::Added, None, on("n1"), Some("ADDED")),
            (ChangeKind::Added, None, on("n2"), None),
            (ChangeKind::Modified, Some(on("n2")), on("n1"), Some("ADDED")),
            (ChangeKind::Modified, Some(on("n1")), on("n1"), Some("MODIFIED")),
            (ChangeKind::Modified, Some(on("n1")), on("n2"), Some("DELETED")),
            (ChangeKind::Deleted, Some(on("n1")), on("n1"), Some("DELETED")),
            (ChangeKind::Deleted, Some(on("n2")), on("n2"), None),
        ];
        for (kind, old, new, want) in cases {
            let got = event_for(&change(kind, old, new), 2, &filter).map(|b| parse(&b)["type"].clone());
            assert_eq!(got.as_ref().and_then(Value::as_str), want, "{kind:?}");
        }
        assert!(event_for(&change(ChangeKind::Added, None, on("n1")), 3, &filter).is_none());
    }

    #[test]
    fn bookmarks_carry_version_and_initial_end() {
        let b = parse(&bookmark(1, 42, true));
        assert_eq!(b["type"], "BOOKMARK");
        assert_eq!(b["object"]["kind"], "Node");
        assert_eq!(b["object"]["metadata"]["resourceVersion"], "42");
        assert_eq!(
            b["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
            "true"
        );
    }
}
