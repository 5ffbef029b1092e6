//! `weft-lab apiserver` as its own process, driven by the real `kubectl`
//! (get, create, patch, delete with `--validate=false`). No root needed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_tests::apiserver::LISTENING_FILE;
use weft_tests::lab::objects::kubeconfig;

/// Kills the emulator when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path) -> (Server, String) {
    let child = Command::new(common::lab_bin())
        .args(["apiserver", "--listen", "127.0.0.1:0", "--state"])
        .arg(dir)
        .spawn()
        .expect("start weft-lab apiserver");
    let server = Server(child);
    let file = dir.join(LISTENING_FILE);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !file.exists() {
        assert!(Instant::now() < deadline, "the emulator did not listen within 10s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let url = format!("http://{}", doc["addresses"][0].as_str().unwrap());
    (server, url)
}

/// Run kubectl with the emulator's kubeconfig; return stdout, panic on failure.
fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("kubectl is required for this test (apt/dl.k8s.io): {e}"));
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn kubectl_gets_creates_patches_and_deletes() {
    let dir = std::env::temp_dir().join(common::unique_name("weft-kubectl-"));
    std::fs::create_dir_all(&dir).unwrap();
    let (_server, url) = start(&dir);
    let kc = write(&dir, "kubeconfig", &kubeconfig(&url));
    let node = write(
        &dir,
        "node.yaml",
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\nspec:\n  podCIDRs: [10.244.1.0/24]\n",
    );
    let pod = write(
        &dir,
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web}\n\
         spec:\n  containers: [{name: c, image: none}]\n",
    );
    let slice = write(
        &dir,
        "slice.yaml",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  \
         labels: {kubernetes.io/service-name: web}\naddressType: IPv4\n\
         endpoints: [{addresses: [10.244.1.2]}]\nports: [{port: 8080, protocol: TCP}]\n",
    );

    for f in [&node, &pod, &slice] {
        kubectl(&kc, &["create", "--validate=false", "-f", f.to_str().unwrap()]);
    }
    assert!(kubectl(&kc, &["get", "nodes"]).contains("node-1"));
    assert!(kubectl(&kc, &["get", "pods", "-l", "app=web"]).contains("web"));
    assert!(kubectl(&kc, &["get", "endpointslices"]).contains("web-1"));
    let json: Value = serde_json::from_str(&kubectl(&kc, &["get", "node", "node-1", "-o", "json"])).unwrap();
    assert_eq!(json["spec"]["podCIDRs"][0], "10.244.1.0/24");

    kubectl(
        &kc,
        &["annotate", "node", "node-1", "weft.io/wireguard-public-key=abc="],
    );
    kubectl(&kc, &["label", "pod", "web", "tier=front"]);
    let json: Value = serde_json::from_str(&kubectl(&kc, &["get", "pod", "web", "-o", "json"])).unwrap();
    assert_eq!(json["metadata"]["labels"]["tier"], "front");
    let out = kubectl(
        &kc,
        &["get", "node", "node-1", "-o", "jsonpath={.metadata.annotations}"],
    );
    assert!(out.contains("abc="), "{out}");

    for args in [
        ["delete", "pod", "web"],
        ["delete", "node", "node-1"],
        ["delete", "endpointslice", "web-1"],
    ] {
        kubectl(&kc, &args);
    }
    assert!(!kubectl(&kc, &["get", "nodes", "-o", "name"]).contains("node-1"));
    std::fs::remove_dir_all(&dir).unwrap();
}
