//! The API emulator against the real kube-rs client, watcher and reflector.
//! No root needed: the emulator runs in-process on 127.0.0.1.

use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, Config, ResourceExt};
use serde_json::json;
use weft_tests::apiserver::{Emulator, EmulatorConfig};

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(10);

async fn start(history_limit: usize) -> (Emulator, Client) {
    let (em, client, _) = start_at(history_limit).await;
    (em, client)
}

/// [`start`], also returning the emulator's URL.
async fn start_at(history_limit: usize) -> (Emulator, Client, String) {
    let em = Emulator::new(EmulatorConfig {
        history_limit,
        log_requests: false,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(em.clone().serve(vec![listener]));
    let config = Config::new(url.parse().unwrap());
    (em, Client::try_from(config).unwrap(), url)
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "none"}]},
    }))
    .unwrap()
}

fn node(name: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"podCIDRs": ["10.244.1.0/24"]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .unwrap()
}

/// Next item of a stream, bounded by [`WAIT`].
async fn next<S: Stream + Unpin>(s: &mut S) -> S::Item {
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("stream produced nothing within the wait")
        .expect("stream ended")
}

/// A watcher event in a comparable form: "init", "apply b", "delete a", …
fn describe<K: ResourceExt>(e: &watcher::Event<K>) -> String {
    match e {
        watcher::Event::Init => "init".into(),
        watcher::Event::InitApply(o) => format!("init-apply {}", o.name_any()),
        watcher::Event::InitDone => "init-done".into(),
        watcher::Event::Apply(o) => format!("apply {}", o.name_any()),
        watcher::Event::Delete(o) => format!("delete {}", o.name_any()),
    }
}

/// Take `n` watcher events (failing on errors) as descriptions.
async fn take<K: ResourceExt, S>(s: &mut S, n: usize) -> Vec<String>
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin,
{
    let mut out = Vec::new();
    for _ in 0..n {
        let e = next(s).await.expect("watcher error");
        out.push(describe(&e));
    }
    out
}

#[tokio::test]
async fn watcher_sees_create_update_delete_in_order() {
    let (_em, client) = start(100).await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pp = PostParams::default();
    pods.create(&pp, &pod("a")).await.unwrap();

    let mut w = watcher(pods.clone(), watcher::Config::default()).boxed();
    assert_eq!(take(&mut w, 3).await, ["init", "init-apply a", "init-done"]);

    pods.create(&pp, &pod("b")).await.unwrap();
    let mut b = pods.get("b").await.unwrap();
    b.labels_mut().insert("version".into(), "2".into());
    pods.replace("b", &pp, &b).await.unwrap();
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(take(&mut w, 3).await, ["apply b", "apply b", "delete a"]);

    // A replace with a stale resourceVersion is refused with 409.
    let err = pods.replace("b", &pp, &b).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 409), "{err:?}");
    // 404 and AlreadyExists.
    let err = pods.get("a").await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 404), "{err:?}");
    let err = pods.create(&pp, &pod("b")).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.reason == "AlreadyExists"),
        "{err:?}"
    );
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version() {
    let (em, client) = start(100).await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pp = PostParams::default();
    let a = pods.create(&pp, &pod("a")).await.unwrap();
    let rv_a = a.resource_version().unwrap();
    pods.create(&pp, &pod("b")).await.unwrap();
    pods.delete("a", &DeleteParams::default()).await.unwrap();

    // A raw watch from a's version replays exactly what came after it.
    let mut raw = pods.watch(&WatchParams::default(), &rv_a).await.unwrap().boxed();
    let kinds: Vec<String> = vec![
        match next(&mut raw).await.unwrap() {
            WatchEvent::Added(p) => format!("added {}", p.name_any()),
            other => format!("{other:?}"),
        },
        match next(&mut raw).await.unwrap() {
            WatchEvent::Deleted(p) => format!("deleted {}", p.name_any()),
            other => format!("{other:?}"),
        },
    ];
    assert_eq!(kinds, ["added b", "deleted a"]);

    // A watcher whose connection drops re-watches from its last version:
    // it sees later changes without relisting.
    let mut w = watcher(pods.clone(), watcher::Config::default()).boxed();
    assert_eq!(take(&mut w, 3).await, ["init", "init-apply b", "init-done"]);
    em.disconnect_watches();
    pods.create(&pp, &pod("c")).await.unwrap();
    assert_eq!(take(&mut w, 1).await, ["apply c"]);
}

#[tokio::test]
async fn watcher_relists_after_410_and_reflector_follows() {
    let (em, client) = start(3).await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pp = PostParams::default();
    for name in ["a", "b"] {
        pods.create(&pp, &pod(name)).await.unwrap();
    }
    let (reader, writer) = reflector::store();
    let mut w = reflector(writer, watcher(pods.clone(), watcher::Config::default())).boxed();
    assert_eq!(
        take(&mut w, 4).await,
        ["init", "init-apply a", "init-apply b", "init-done"]
    );

    // Cut the watch and hold re-watches while more changes than the history
    // keeps happen, then drop the history: the watcher's version is now too old.
    em.hold_watches(true);
    em.disconnect_watches();
    for name in ["c", "d", "e", "f"] {
        pods.create(&pp, &pod(name)).await.unwrap();
    }
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    em.compact();
    em.hold_watches(false);

    let err = next(&mut w).await.expect_err("the re-watch must fail with 410");
    assert!(
        matches!(err, watcher::Error::WatchError(ref s) if s.code == 410 && s.reason == "Expired"),
        "{err:?}"
    );
    assert_eq!(
        take(&mut w, 7).await,
        [
            "init",
            "init-apply b",
            "init-apply c",
            "init-apply d",
            "init-apply e",
            "init-apply f",
            "init-done"
        ]
    );
    let mut names: Vec<String> = reader.state().iter().map(|p| p.name_any()).collect();
    names.sort();
    assert_eq!(names, ["b", "c", "d", "e", "f"], "the relist dropped the deleted pod");

    // A raw watch from before the history is one ERROR event with a 410 Status.
    let mut raw = pods.watch(&WatchParams::default(), "1").await.unwrap().boxed();
    match next(&mut raw).await.unwrap() {
        WatchEvent::Error(s) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn node_patches_are_visible_to_watchers() {
    let (_em, client) = start(100).await;
    let nodes: Api<Node> = Api::all(client);
    nodes.create(&PostParams::default(), &node("node-1")).await.unwrap();
    nodes.create(&PostParams::default(), &node("node-2")).await.unwrap();

    // The agent watches its own Node by name.
    let config = watcher::Config::default().fields("metadata.name=node-1");
    let mut w = watcher(nodes.clone(), config).applied_objects().boxed();
    assert_eq!(next(&mut w).await.unwrap().name_any(), "node-1");

    let patch = json!({"metadata": {"annotations": {"weft.io/wireguard-public-key": "abc="}}});
    nodes
        .patch("node-1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let seen = next(&mut w).await.unwrap();
    assert_eq!(seen.annotations()["weft.io/wireguard-public-key"], "abc=");

    // Status conditions merge by type (strategic merge on /status).
    let cond = json!({"status": {"conditions": [
        {"type": "NetworkUnavailable", "status": "False", "reason": "WeftIsUp"}]}});
    nodes
        .patch_status("node-1", &PatchParams::default(), &Patch::Strategic(&cond))
        .await
        .unwrap();
    let seen = next(&mut w).await.unwrap();
    let types: Vec<String> = seen
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .map(|c| format!("{}={}", c.type_, c.status))
        .collect();
    assert_eq!(types, ["Ready=True", "NetworkUnavailable=False"]);

    // Server-side apply (approximated as a merge) of an annotation.
    let apply = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1",
        "annotations": {"weft.io/wireguard-endpoint": "172.30.0.11:51820"}}});
    nodes
        .patch("node-1", &PatchParams::apply("weft-agent"), &Patch::Apply(&apply))
        .await
        .unwrap();
    let seen = next(&mut w).await.unwrap();
    assert_eq!(seen.annotations().len(), 2);

    // node-2 changes are not seen by the node-1 watcher; the next event is node-1's.
    nodes
        .patch("node-2", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    nodes
        .patch(
            "node-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    let seen = next(&mut w).await.unwrap();
    assert_eq!((seen.name_any().as_str(), seen.labels()["x"].as_str()), ("node-1", "y"));
}

#[tokio::test]
async fn list_with_selectors_and_versions() {
    let (_em, client) = start(100).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    pods.create(&pp, &pod("a")).await.unwrap();
    let mut other = pod("b");
    other.labels_mut().insert("app".into(), "db".into());
    other.spec.as_mut().unwrap().node_name = Some("node-2".into());
    pods.create(&pp, &other).await.unwrap();

    let names = |l: kube::core::ObjectList<Pod>| l.items.iter().map(|p| p.name_any()).collect::<Vec<_>>();
    assert_eq!(
        names(pods.list(&ListParams::default().labels("app=web")).await.unwrap()),
        ["a"]
    );
    assert_eq!(
        names(pods.list(&ListParams::default().labels("app in (db)")).await.unwrap()),
        ["b"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().fields("spec.nodeName=node-2"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    let all = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 2);
    let list_rv: u64 = all.metadata.resource_version.unwrap().parse().unwrap();
    let b_rv: u64 = all.items[1].resource_version().unwrap().parse().unwrap();
    assert!(list_rv >= b_rv);

    // Status writes go through /status only, and a pod in another namespace is separate.
    let status = json!({"status": {"podIP": "10.244.1.5", "phase": "Running"}});
    let p = pods
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().pod_ip.as_deref(), Some("10.244.1.5"));
    let system: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    assert!(system.list(&ListParams::default()).await.unwrap().items.is_empty());
    let everywhere: Api<Pod> = Api::all(client);
    assert_eq!(everywhere.list(&ListParams::default()).await.unwrap().items.len(), 2);
}

/// A watch from a version the server never issued (newer than its latest:
/// from an incarnation that lost its state) ends in a 410 ERROR event, so
/// clients relist; a list at such a version is kube-apiserver's 504 "Too
/// large resource version".
#[tokio::test]
async fn versions_never_issued_are_gone_for_watches_and_too_large_for_lists() {
    let (em, client, url) = start_at(100).await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("a")).await.unwrap();
    let future = (em.resource_version() + 1000).to_string();
    let mut raw = pods.watch(&WatchParams::default(), &future).await.unwrap().boxed();
    match next(&mut raw).await.unwrap() {
        WatchEvent::Error(s) => {
            assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));
            assert!(s.message.contains("not issued by this server"), "{}", s.message);
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    // The current version itself is fine: an empty replay, then live events.
    let now = em.resource_version().to_string();
    let mut raw = pods.watch(&WatchParams::default(), &now).await.unwrap().boxed();
    pods.create(&PostParams::default(), &pod("b")).await.unwrap();
    match next(&mut raw).await.unwrap() {
        WatchEvent::Added(p) => assert_eq!(p.name_any(), "b"),
        other => panic!("expected b's ADDED, got {other:?}"),
    }
    let lp = ListParams {
        resource_version: Some(future.clone()),
        ..ListParams::default()
    };
    // kube-rs retries a 504 with back-off (15 times): ask once.
    let mut config = Config::new(url.parse().unwrap());
    config.default_retry = false;
    let once: Api<Pod> = Api::namespaced(Client::try_from(config).unwrap(), "default");
    match once.list(&lp).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (504, "Timeout"));
            assert!(s.message.starts_with("Too large resource version"), "{}", s.message);
        }
        other => panic!("a list at a future version must fail with 504, got {other:?}"),
    }
}
