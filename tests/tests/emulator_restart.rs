//! The API emulator as a process (`weft-lab apiserver --state DIR`) killed
//! and started again, against the real kube-rs client and watcher: objects
//! and the resourceVersion counter survive a restart on the same address;
//! after a restart that lost them, a watch from a version the new server
//! never issued gets 410 and kube-rs's watcher relists. No root needed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use kube::{Client, Config, ResourceExt};
use serde_json::json;
use weft_tests::apiserver::LISTENING_FILE;

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(15);

/// A `weft-lab apiserver` process; killed (SIGKILL) on drop.
struct Emu {
    child: Child,
    url: String,
}

impl Drop for Emu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Emu {
    /// Start on `listen` with state in `dir`; wait for its listening.json.
    fn start(dir: &Path, listen: &str) -> Emu {
        let _ = std::fs::remove_file(dir.join(LISTENING_FILE));
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join("apiserver.log"))
            .unwrap();
        let mut child = Command::new(common::lab_bin())
            .args(["apiserver", "--listen", listen, "--state"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start weft-lab apiserver");
        let deadline = Instant::now() + WAIT;
        let doc = loop {
            if let Ok(t) = std::fs::read_to_string(dir.join(LISTENING_FILE)) {
                break t;
            }
            if let Some(st) = child.try_wait().unwrap() {
                panic!(
                    "the emulator exited ({st}): {}",
                    std::fs::read_to_string(dir.join("apiserver.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "the emulator did not listen");
            std::thread::sleep(Duration::from_millis(20));
        };
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        Emu {
            child,
            url: format!("http://{}", v["addresses"][0].as_str().unwrap()),
        }
    }

    /// SIGKILL: nothing gets a chance to be saved at exit.
    fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.url.clone()
    }

    fn client(&self) -> Client {
        Client::try_from(Config::new(self.url.parse().unwrap())).unwrap()
    }
}

fn state_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weft-emu-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn node(name: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"weft.io/test": "restart"}},
        "spec": {"podCIDRs": ["10.244.1.0/24"]},
    }))
    .unwrap()
}

fn rv(n: &Node) -> u64 {
    n.resource_version().unwrap().parse().unwrap()
}

#[tokio::test]
async fn objects_and_versions_survive_a_restart_on_the_same_address() {
    let dir = state_dir("keep");
    let emu = Emu::start(&dir, "127.0.0.1:0");
    let nodes: Api<Node> = Api::all(emu.client());
    let a = nodes.create(&PostParams::default(), &node("a")).await.unwrap();
    let b = nodes.create(&PostParams::default(), &node("b")).await.unwrap();
    let patched = nodes
        .patch(
            "a",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"annotations": {"k": "v"}}})),
        )
        .await
        .unwrap();
    kube::api::Api::<Node>::delete(&nodes, "b", &Default::default())
        .await
        .unwrap();
    let before = nodes.list(&Default::default()).await.unwrap();
    let list_rv: u64 = before.metadata.resource_version.clone().unwrap().parse().unwrap();

    let addr = emu.kill().trim_start_matches("http://").to_string();
    let emu = Emu::start(&dir, &addr);
    assert_eq!(emu.url, format!("http://{addr}"), "restarted on the same address");
    let nodes: Api<Node> = Api::all(emu.client());
    let after = nodes.list(&Default::default()).await.unwrap();
    let names: Vec<String> = after.items.iter().map(|n| n.name_any()).collect();
    assert_eq!(names, ["a"], "b was deleted before the restart");
    let a2 = &after.items[0];
    assert_eq!(a2.uid(), a.uid(), "the same object, not a new one");
    assert_eq!(rv(a2), rv(&patched));
    assert_eq!(a2.annotations()["k"], "v");
    assert_eq!(
        after.metadata.resource_version.unwrap().parse::<u64>().unwrap(),
        list_rv,
        "the counter survived"
    );
    let c = nodes.create(&PostParams::default(), &node("c")).await.unwrap();
    assert!(rv(&c) > list_rv, "versions continue: {} after {list_rv}", rv(&c));
    assert_ne!(c.uid(), b.uid());
    // Namespaces were not seeded twice, and nothing was lost in a second restart.
    let addr2 = emu.kill().trim_start_matches("http://").to_string();
    let emu = Emu::start(&dir, &addr2);
    let nodes: Api<Node> = Api::all(emu.client());
    let names: Vec<String> = nodes
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    assert_eq!(names, ["a", "c"]);
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(emu.client());
    assert_eq!(ns.list(&Default::default()).await.unwrap().items.len(), 4);
    drop(emu);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Next watcher event, bounded by [`WAIT`].
async fn next_event<S>(s: &mut S) -> Result<watcher::Event<Node>, watcher::Error>
where
    S: Stream<Item = Result<watcher::Event<Node>, watcher::Error>> + Unpin,
{
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("the watcher produced nothing within the wait")
        .expect("the watcher ended")
}

#[tokio::test]
async fn after_a_restart_that_lost_everything_the_watcher_gets_410_and_relists() {
    let dir = state_dir("lost");
    let emu = Emu::start(&dir, "127.0.0.1:0");
    let url = emu.url.clone();
    let nodes: Api<Node> = Api::all(emu.client());
    for n in ["old-1", "old-2", "old-3"] {
        nodes.create(&PostParams::default(), &node(n)).await.unwrap();
    }
    // The watcher's client lives across both incarnations (same URL).
    let client = Client::try_from(Config::new(url.parse().unwrap())).unwrap();
    let mut w = watcher(Api::<Node>::all(client), watcher::Config::default()).boxed();
    let mut seen = Vec::new();
    loop {
        match next_event(&mut w).await.expect("no error before the restart") {
            watcher::Event::InitApply(n) => seen.push(n.name_any()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(seen, ["old-1", "old-2", "old-3"]);
    let old_rv = nodes
        .list(&Default::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    // The new incarnation starts empty (a new state dir: its versions
    // restart low) on the same address, and gets one Node: its counter
    // stays below the version the watcher holds.
    let addr = emu.kill().trim_start_matches("http://").to_string();
    let lost = state_dir("lost-again");
    let emu = Emu::start(&lost, &addr);
    let fresh: Api<Node> = Api::all(emu.client());
    let new = fresh.create(&PostParams::default(), &node("new-1")).await.unwrap();
    assert!(
        rv(&new) < old_rv.parse::<u64>().unwrap(),
        "the test needs the new server behind the watcher's version"
    );

    // The watcher must notice (410 Gone), relist, and see only the new Node.
    let deadline = Instant::now() + WAIT;
    let mut gone = false;
    let mut relisted = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "the watcher never relisted (410 seen: {gone}); a watch from a version the \
             server never issued must end in 410"
        );
        match tokio::time::timeout(WAIT, w.next()).await {
            Ok(Some(Err(watcher::Error::WatchError(s)))) if s.code == 410 => gone = true,
            Ok(Some(Err(_))) => {} // connection refused while the server was down
            Ok(Some(Ok(watcher::Event::Init))) => relisted.clear(),
            Ok(Some(Ok(watcher::Event::InitApply(n)))) => relisted.push(n.name_any()),
            Ok(Some(Ok(watcher::Event::InitDone))) if gone => break,
            Ok(Some(Ok(_))) => {}
            Ok(None) => panic!("the watcher ended"),
            Err(_) => panic!("the watcher produced nothing for {WAIT:?} (410 seen: {gone})"),
        }
    }
    assert_eq!(relisted, ["new-1"]);
    drop(emu);
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(lost).unwrap();
}
