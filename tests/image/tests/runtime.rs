//! The image under a real container runtime, as root: podman runs weft's
//! DaemonSet pod template — read from `manifests/weft.yaml`, not restated —
//! inside a lab node's network namespace, and that node joins the mesh of the
//! lab's other agents; a pod on it reaches a pod on another node; then the
//! agent's container is stopped and started again while traffic through the
//! node keeps flowing. A previous CNI's leftover config is moved aside by
//! the agent (`--cni-exclusive`), and the uninstall DaemonSet's template
//! (`manifests/weft-cleanup.yaml`) removes weft from the node and puts that
//! config back.
//!
//! The one stand-in: the lab's API emulator speaks plain HTTP without
//! tokens, which in-cluster config (HTTPS, a ServiceAccount token) cannot
//! reach, so the agent container gets `KUBECONFIG` pointing at the node's
//! lab kubeconfig, mounted read-only. Everything else comes from the
//! template: command, args, env (NODE_NAME filled in as kubelet does, the
//! optional `weft-config` keys left unset as kubelet does when the ConfigMap
//! is absent), hostPath volumes mapped onto the lab node's directories, the
//! emptyDir shared by both containers, the securityContext (capabilities
//! dropped but NET_ADMIN, read-only root, no privilege escalation) and the
//! probes, which the test executes.
//!
//! Needs: root, podman, curl, the image archive (`image/build.sh`), and the
//! debug binaries for the lab (`cargo build -p weft-cni -p weft-ipam
//! -p weft-agent -p weft-wg -p weft-tests --bins`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_image_test::{daemonset, manifest_path, relocate, runs, HttpProbe, Node, Run};
use weft_tests::lab::{self, cni, netns, Endpoint, Lab, LabConfig, NodeState, PodSpec};
use weft_tests::traffic;

/// Bound on the containerized agent bringing its node up (mesh, conflist, probes green).
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// What "stops at once on SIGTERM" means here (the grace period is 15 s).
const PROMPT_STOP: Duration = Duration::from_secs(5);

fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn podman(args: &[&str]) -> Output {
    sh(Command::new("podman").args(args))
}

fn logs(name: &str) -> String {
    Command::new("podman")
        .args(["logs", "--tail", "60", name])
        .output()
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_else(|e| format!("(podman logs {name}: {e})"))
}

/// The debug binaries' directory (the lab runs `weft-lab`, `weft-agent` from there).
fn debug_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/runtime-HASH → target/debug
    exe.parent().and_then(Path::parent).expect("target/debug").to_path_buf()
}

fn image_archive() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_IMAGE_ARCHIVE") {
        return p.into();
    }
    let target = debug_bin_dir().parent().expect("target dir").to_path_buf();
    target.join(format!("image/weft-v{}.oci.tar", env!("CARGO_PKG_VERSION")))
}

/// `--ulimit` for nofile and nproc within this process's own: podman's
/// defaults (nofile 1048576) can exceed a sandbox's hard limit, and without
/// CAP_SYS_RESOURCE runc cannot raise a limit. nproc is capped at 4096 (a
/// pod needs a few dozen): runc sets it from a process whose limit may be
/// lower than ours.
fn own_limits() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let mut out = Vec::new();
    for (label, name, cap) in [("Max open files", "nofile", u64::MAX), ("Max processes", "nproc", 4096)] {
        let line = text.lines().find(|l| l.starts_with(label)).expect("limit line");
        let f: Vec<&str> = line[label.len()..].split_whitespace().collect();
        let v = |s: &str| s.parse::<u64>().unwrap_or(u64::MAX).min(cap);
        out.push(format!("--ulimit={name}={}:{}", v(f[0]), v(f[1])));
    }
    out
}

/// Status code of `GET http://host:port/path` from inside `ns` (0: no answer).
fn http_code(ns: &str, host: &str, port: u16, path: &str) -> u16 {
    let url = format!("http://{host}:{port}{path}");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-m",
            "2",
            "-w",
            "%{http_code}",
            &url,
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

fn http_body(ns: &str, url: &str) -> String {
    let out = sh(Command::new("ip").args(["netns", "exec", ns, "curl", "-sf", "-m", "2", url]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Execute the container's probes as kubelet would, until all pass
/// (bounded); every container of the pod must keep running meanwhile.
fn wait_probes_pass(ns: &str, run: &Run, pod: &[Run]) {
    assert!(
        !run.probes.is_empty(),
        "{}: the template has no probes to execute",
        run.container
    );
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let codes: Vec<(&HttpProbe, u16)> = run
            .probes
            .iter()
            .map(|p| (p, http_code(ns, &p.host, p.port, &p.path)))
            .collect();
        if codes.iter().all(|(_, c)| (200..400).contains(c)) {
            return;
        }
        for c in pod.iter().filter(|c| !c.init) {
            let state = podman(&["inspect", "--format", "{{.State.Status}}", &c.name]);
            let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
            if state != "running" {
                panic!("{}: container is {state}, not running\n{}", c.name, logs(&c.name));
            }
        }
        if Instant::now() > deadline {
            let seen: Vec<String> = codes
                .iter()
                .map(|(p, c)| format!("{} {} → {c}", p.kind, p.path))
                .collect();
            panic!(
                "{}: probes not passing within {READY_TIMEOUT:?}: {seen:?}\n{}",
                run.name,
                logs(&run.name)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The running containers, removed at the end (also when the test fails).
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("podman")
                .args(["rm", "-f", "-t", "0", n])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The lab, torn down at the end.
struct LabGuard(Lab);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if self.0.dir.exists() {
            let _ = self.0.down();
        }
    }
}

/// A pod on the podman-run node, wired by this test as the node's runtime
/// would: a netns, then every plugin of the conflist the agent wrote.
struct Pod {
    netns: String,
    node_netns: String,
    conflist: Value,
    cni_path: String,
    id: String,
    ips: Vec<IpAddr>,
}

impl Pod {
    fn call(&self, command: &str, conf: &Value) -> Value {
        let ptype = conf["type"].as_str().expect("plugin type");
        let bin = self
            .cni_path
            .split(':')
            .map(|d| Path::new(d).join(ptype))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("no {ptype} in CNI_PATH {}", self.cni_path));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node_netns])
            .arg(&bin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &self.id)
            .env("CNI_NETNS", netns::path(&self.netns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.cni_path)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p3;K8S_POD_INFRA_CONTAINER_ID={}",
                    self.id
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start plugin");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), conf.to_string().as_bytes())
            .expect("write config");
        let out = child.wait_with_output().expect("plugin");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "CNI {command} {ptype}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout).unwrap_or(Value::Null)
    }

    fn plugin_conf(&self, plugin: &Value, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        conf["name"] = self.conflist["name"].clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        conf
    }

    /// The conflist's plugins, weft first, every one of them run (Debian's
    /// `portmap` too, at the version the agent negotiated with it).
    fn plugins(&self) -> Vec<Value> {
        let all = self.conflist["plugins"].as_array().expect("plugins").clone();
        assert!(
            all.first().is_some_and(|p| p["type"] == "weft"),
            "weft is not the first plugin: {all:?}"
        );
        all
    }

    fn add(&mut self) {
        netns::add(&self.netns).expect("pod netns");
        let plugins = self.plugins();
        let mut prev: Option<Value> = None;
        for p in &plugins {
            let conf = self.plugin_conf(p, prev.as_ref());
            prev = Some(self.call("ADD", &conf));
        }
        self.ips = cni::result_ips(prev.as_ref().expect("a result")).expect("pod addresses");
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if netns::path(&self.netns).exists() {
            for p in self.plugins().iter().rev() {
                let conf = self.plugin_conf(p, None);
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.call("DEL", &conf)));
            }
            let _ = netns::delete(&self.netns);
        }
    }
}

/// The `weft-wg` link's index in `ns` (`ip -o link show weft-wg`).
fn wg_ifindex(ns: &str) -> String {
    let out = netns::ip_in(ns, &["-o", "link", "show", "weft-wg"]).expect("weft-wg link");
    out.split(':').next().unwrap_or_default().trim().to_string()
}

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// The old CNI config the test leaves in node-3's conf dir before weft starts.
const LEFTOVER: &str = r#"{"cniVersion":"1.0.0","name":"old","plugins":[{"type":"bridge"}]}"#;

/// Root, tools, the image archive and the lab's binaries, or a loud failure.
fn preflight() -> (PathBuf, PathBuf) {
    lab::require_root();
    for tool in ["podman", "curl"] {
        assert!(
            traffic::have_command(tool),
            "{tool} is needed (tests/setup.sh installs it)"
        );
    }
    let archive = image_archive();
    assert!(
        archive.is_file(),
        "no image archive at {}: run image/build.sh first (or set WEFT_IMAGE_ARCHIVE)",
        archive.display()
    );
    let bins = debug_bin_dir();
    for b in ["weft-lab", "weft-agent", "weft", "weft-ipam", "weft-wg"] {
        assert!(
            bins.join(b).is_file(),
            "{}/{b} missing: cargo build -p weft-cni -p weft-ipam -p weft-agent -p weft-wg -p weft-tests --bins",
            bins.display()
        );
    }
    (archive, bins)
}

/// kubelet's view of node-3: its netns, the hostPaths on its lab directories.
fn node_facts(n3: &NodeState) -> Node {
    Node {
        name: n3.name.clone(),
        netns: netns::path(&n3.netns),
        host_paths: BTreeMap::from([
            ("/opt/cni/bin".to_string(), n3.bin_dir()),
            ("/etc/cni/net.d".to_string(), n3.conf_dir()),
            ("/var/lib/weft".to_string(), n3.state_dir()),
            ("/run/weft".to_string(), n3.run_dir()),
            ("/var/log/weft".to_string(), n3.dir.join("log")),
            ("/dev/net/tun".to_string(), PathBuf::from("/dev/net/tun")),
        ]),
        config_maps: BTreeMap::new(),
        empty_dirs: n3.dir.join("pod-volumes"),
        extra_env: vec![("KUBECONFIG".into(), "/etc/weft-lab/kubeconfig".into())],
        extra_mounts: vec![(n3.kubeconfig(), "/etc/weft-lab/kubeconfig".into(), true)],
        runtime_args: own_limits(),
    }
}

/// Start the pod's containers in template order, as kubelet does.
fn start(runs: &[Run]) -> Containers {
    let loaded =
        String::from_utf8_lossy(&podman(&["images", "--format", "{{.Repository}}:{{.Tag}}"]).stdout).into_owned();
    let containers = Containers(runs.iter().map(|r| r.name.clone()).collect());
    for r in runs {
        assert!(
            loaded.lines().any(|l| l == r.image),
            "the template's image {} is not the one image/build.sh built ({loaded})",
            r.image
        );
        let args: Vec<&str> = r.args.iter().map(String::as_str).collect();
        podman(&args);
        if r.init {
            let code = podman(&["wait", &r.name]);
            let code = String::from_utf8_lossy(&code.stdout).trim().to_string();
            assert_eq!(code, "0", "init container {} exited {code}:\n{}", r.name, logs(&r.name));
        }
    }
    containers
}

/// The probes pass, the node's CNI files are there, the leftover config is
/// moved aside, and the node is in the mesh.
fn check_node_up(lab: &Lab, n3: &NodeState, runs: &[Run], agent: &Run, sidecar: &Run) {
    wait_probes_pass(&n3.netns, agent, runs);
    let conflist = n3.conf_dir().join(cni::CONFLIST);
    assert!(conflist.is_file(), "no conflist {}", conflist.display());
    assert!(
        n3.run_dir().join("ready").is_file(),
        "no readiness file in the node's /run/weft"
    );
    assert!(n3.bin_dir().join("weft").is_file() && n3.bin_dir().join("weft-ipam").is_file());
    // --cni-exclusive (the template's WEFT_CNI_EXCLUSIVE): the leftover moved aside.
    assert!(
        !n3.conf_dir().join("05-old.conflist").exists(),
        "the leftover config is still in the conf dir"
    );
    assert!(
        n3.conf_dir().join("weft-moved/05-old.conflist").is_file(),
        "not moved to weft-moved/"
    );
    // The lab's agents peer with it, and it with them.
    for other in ["node-1", "node-2"] {
        lab.wait_peers(other, 2)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&agent.name)));
    }
    // Metrics on kube-proxy's 127.0.0.1:10249, apart from health on 10256.
    let metrics = http_body(&n3.netns, "http://127.0.0.1:10249/metrics");
    assert_eq!(
        weft_tests::lab::agents::sample(&metrics, "weft_agent_wireguard_peers"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(http_code(&n3.netns, "127.0.0.1", 10256, "/metrics"), 404);
    // The userspace device runs in the sidecar (no kernel module here), not in the agent.
    let top = String::from_utf8_lossy(&podman(&["top", &sidecar.name, "args"]).stdout).into_owned();
    assert!(top.contains("weft-wg -f weft-wg"), "sidecar processes: {top}");
}

/// HTTP from `ns` to `to`; the server must see `from` (no NAT).
fn assert_reaches(ns: &str, to: SocketAddr, from: IpAddr) {
    let reply = traffic::retry(Duration::from_secs(10), || traffic::http_get(ns, to))
        .unwrap_or_else(|e| panic!("{ns} → {to}: {e:#}"));
    assert_eq!(reply.server, "web1");
    assert_eq!(
        reply.peer.ip(),
        from,
        "the server saw {} instead of the pod address",
        reply.peer
    );
}

/// Stop the agent's container and start it again while `from_ns` talks to
/// `to` every 50 ms: no request may fail, and the device and key stay.
fn restart_under_traffic(n3: &NodeState, runs: &[Run], agent: &Run, from_ns: &str, to: SocketAddr, from: IpAddr) {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let hammer = {
        let (stop, ok, ns) = (stop.clone(), ok.clone(), from_ns.to_string());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match traffic::http_get(&ns, to) {
                    Ok(r) if r.peer.ip() == from => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => errors.push(format!("peer {}", r.peer)),
                    Err(e) => errors.push(format!("{e:#}")),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            errors
        })
    };
    let key_file = n3.state_dir().join("wireguard.key");
    let key_before = std::fs::read(&key_file).expect("the agent's key in the node's /var/lib/weft");
    let ifindex_before = wg_ifindex(&n3.netns);
    std::thread::sleep(Duration::from_millis(500));
    let took = timed(|| {
        podman(&["stop", &agent.name]);
    });
    assert!(
        took < PROMPT_STOP,
        "the agent took {took:?} to stop on SIGTERM (grace {} s)",
        agent.grace_seconds
    );
    let at_stop = ok.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        ok.load(Ordering::Relaxed) > at_stop + 10,
        "traffic did not flow while the agent was stopped"
    );
    podman(&["start", &agent.name]);
    wait_probes_pass(&n3.netns, agent, runs);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let errors = hammer.join().expect("traffic thread");
    let total = ok.load(Ordering::Relaxed) + errors.len();
    assert!(
        errors.is_empty(),
        "{} of {total} requests failed across the restart: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    // The restarted agent adopted what was there: the same device (the
    // sidecar's, never recreated) and the same key (hostPath state).
    assert_eq!(
        wg_ifindex(&n3.netns),
        ifindex_before,
        "weft-wg was recreated across the restart"
    );
    assert_eq!(
        std::fs::read(&key_file).expect("key after restart"),
        key_before,
        "the key changed"
    );
}

/// Uninstall: manifests/weft-cleanup.yaml's pod template on the node; then
/// nothing of weft is left and the leftover config is back.
fn uninstall(n3: &NodeState, node: &Node, prefix: &str) {
    let text = std::fs::read_to_string(manifest_path("weft-cleanup.yaml")).expect("weft-cleanup.yaml");
    let ds = daemonset(&text, "weft-cleanup").expect("the cleanup DaemonSet");
    let node = Node {
        extra_env: vec![],
        extra_mounts: vec![],
        ..node.clone()
    };
    let runs = runs(&ds, &node, prefix).unwrap_or_else(|e| panic!("translate weft-cleanup: {e:#}"));
    let init = runs
        .first()
        .filter(|r| r.init)
        .expect("the cleanup runs as an init container");
    let _containers = start(&runs);
    // Idempotent: the same cleanup again, on a clean node, succeeds.
    podman(&["start", &init.name]);
    let code = podman(&["wait", &init.name]);
    assert_eq!(
        String::from_utf8_lossy(&code.stdout).trim(),
        "0",
        "second cleanup:\n{}",
        logs(&init.name)
    );

    assert!(
        !n3.conf_dir().join(cni::CONFLIST).exists(),
        "conflist left after cleanup"
    );
    assert!(
        !n3.bin_dir().join("weft").exists() && !n3.bin_dir().join("weft-ipam").exists(),
        "CNI binaries left"
    );
    assert!(
        n3.bin_dir().join("portmap").is_file(),
        "cleanup removed the node's portmap, which is not weft's"
    );
    assert_eq!(
        std::fs::read_to_string(n3.conf_dir().join("05-old.conflist")).expect("the leftover config restored"),
        LEFTOVER
    );
    assert!(
        !n3.conf_dir().join("weft-moved").exists(),
        "weft-moved/ left after the restore"
    );
    assert!(!n3.state_dir().join("wireguard.key").exists(), "key left after cleanup");
    let links = netns::ip_in(&n3.netns, &["-o", "link", "show"]).expect("links");
    assert!(
        !links.contains("weft0") && !links.contains("weft-wg"),
        "links left: {links}"
    );
    let nft = Command::new("ip")
        .args(["netns", "exec", &n3.netns, "nft", "list", "table", "inet", "weft"])
        .output()
        .expect("nft");
    assert!(!nft.status.success(), "table inet weft left after cleanup");
    // The idling container (busybox sh with a TERM trap as PID 1, as the
    // sidecar's kernel branch) stops at once too.
    let idle = runs.iter().find(|r| !r.init).expect("the idle container");
    std::thread::sleep(Duration::from_millis(300));
    let took = timed(|| {
        podman(&["stop", &idle.name]);
    });
    assert!(
        took < PROMPT_STOP,
        "the idle container took {took:?} to stop on SIGTERM"
    );
}

#[test]
fn pod_templates_under_podman_join_the_mesh_survive_a_restart_and_clean_up() {
    let (archive, bins) = preflight();
    podman(&["load", "-q", "-i", &archive.display().to_string()]);
    let manifest = std::fs::read_to_string(manifest_path("weft.yaml")).expect("manifests/weft.yaml");
    let ds = daemonset(&manifest, "weft-agent").expect("the DaemonSet");
    let spec = ds.spec.template.spec.clone().expect("pod spec");
    let agent_c = spec
        .containers
        .iter()
        .find(|c| c.name == "weft-agent")
        .expect("a weft-agent container");

    let name = format!("imgrt{}", std::process::id() % 100_000);
    let mut config = LabConfig::new(&name, 3, bins.join("weft-lab"));
    config.no_agent_on = vec!["node-3".into()];
    let guard = LabGuard(Lab::up(&config).unwrap_or_else(|e| panic!("lab up: {e:#}")));
    let lab = &guard.0;
    let n3 = lab.state().expect("lab state").node("node-3").expect("node-3").clone();
    assert!(!n3.lab_agent, "node-3 must have no lab agent");
    let node = node_facts(&n3);

    // A previous CNI's leftover config, which sorts before weft's and would win.
    std::fs::create_dir_all(n3.conf_dir()).expect("conf dir");
    std::fs::write(n3.conf_dir().join("05-old.conflist"), LEFTOVER).expect("leftover config");

    // The node's own reference portmap in /opt/cni/bin (Debian 12's speaks
    // CNI up to 1.0.0): the agent must chain it at a version it speaks.
    std::fs::create_dir_all(n3.bin_dir()).expect("bin dir");
    std::fs::copy("/usr/lib/cni/portmap", n3.bin_dir().join("portmap"))
        .expect("Debian's portmap (containernetworking-plugins, tests/setup.sh)");

    let runs = runs(&ds, &node, &name).unwrap_or_else(|e| panic!("translate the pod template: {e:#}"));
    assert!(runs.iter().all(|r| !r.init), "weft-agent has no init containers to run");
    let agent = runs.iter().find(|r| r.container == "weft-agent").expect("agent run");
    let sidecar = runs.iter().find(|r| r.container == "wireguard").expect("sidecar run");
    let containers = start(&runs);
    check_node_up(lab, &n3, &runs, agent, sidecar);

    // A pod on node-3 reaches a pod on node-1 with its own address, both families.
    lab.add_pod(&PodSpec::new("node-1", "web1").serve(Some(8080), None))
        .expect("pod on node-1");
    let mut conflist: Value =
        serde_json::from_slice(&std::fs::read(n3.conf_dir().join(cni::CONFLIST)).expect("read conflist"))
            .expect("conflist JSON");
    assert_eq!(
        conflist["plugins"][1]["type"], "portmap",
        "portmap chained after weft: {conflist}"
    );
    assert_eq!(
        conflist["cniVersion"], "1.0.0",
        "the newest version Debian's portmap and weft both speak"
    );
    relocate(&mut conflist, &spec, agent_c, &node);
    let mut p3 = Pod {
        netns: format!("{name}-p3"),
        node_netns: n3.netns.clone(),
        conflist,
        // weft and weft-ipam as the agent installed them.
        cni_path: n3.bin_dir().display().to_string(),
        id: format!("{:064x}", u128::from(std::process::id()) << 32 | 0x3),
        ips: Vec::new(),
    };
    p3.add();
    let p3_v4 = *p3.ips.iter().find(|i| i.is_ipv4()).expect("p3 IPv4");
    let p3_v6 = *p3
        .ips
        .iter()
        .find(|i| i.is_ipv6())
        .expect("p3 IPv6 (the lab is dual-stack)");
    let web1 = lab.pod_addr("web1", false, 8080).expect("web1 address");
    assert_reaches(&p3.netns, web1, p3_v4);
    assert_reaches(&p3.netns, lab.pod_addr("web1", true, 8080).expect("web1 IPv6"), p3_v6);
    lab.ping(&Endpoint::Node("node-1".into()), p3_v4).expect("node-1 → p3");

    restart_under_traffic(&n3, &runs, agent, &p3.netns, web1, p3_v4);
    for other in ["node-1", "node-2"] {
        lab.wait_peers(other, 2).expect("peers after the restart");
    }
    // The sidecar (weft-wg as PID 1) also stops at once on SIGTERM.
    let took = timed(|| {
        podman(&["stop", &sidecar.name]);
    });
    assert!(took < PROMPT_STOP, "the sidecar took {took:?} to stop on SIGTERM");

    drop(p3);
    drop(containers);
    uninstall(&n3, &node, &format!("{name}c"));
    lab.down().expect("lab down");
}
