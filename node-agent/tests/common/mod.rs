//! A small multi-node harness for the agent's privileged tests.
//!
//! Every interface lives in namespaces this harness creates: an underlay
//! switch (`<id>-sw`, bridge `br0`, 172.31.0.1/24) and one netns per node
//! (`<id>-nN`, `eth0` 172.31.0.(10+N)/24). The API emulator (`weft-lab
//! apiserver`) listens on host loopback (for the test) and on 172.31.0.1:6443
//! inside the switch netns (for the agents). One `weft-agent` runs per node
//! netns with its own directories under `/tmp/<id>/`. Pods are netns created
//! here and wired by the real `weft` exactly as a runtime would.
//!
//! Nothing on the real host's interfaces, routes or tables is touched;
//! `Drop` removes everything, also when a test panics.
#![allow(dead_code, reason = "each test file uses a different part of the harness")]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client, Config};
use serde_json::{json, Value};

pub const SWITCH_IP: &str = "172.31.0.1";
pub const API_PORT: u16 = 6443;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Panic unless running as root with every tool the tests need.
pub fn require_root_and_tools(tools: &[&str]) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create network namespaces and must run as root (sudo -E cargo test -p weft-agent)"
    );
    for t in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        assert!(found, "required tool {t:?} is not installed (see tests/setup.sh)");
    }
}

/// Run a command; panic with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command in a netns.
pub fn ns_sh(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

fn ns_ok(ns: &str, args: &[&str]) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Poll `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run `f` on a thread inside netns `ns` (sockets made there stay there).
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// The directory of the built binaries (where cargo put `weft-agent`).
pub fn bin_dir() -> PathBuf {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_weft-agent"));
    let dir = agent.parent().unwrap().to_path_buf();
    for b in ["weft", "weft-ipam", "weft-lab"] {
        assert!(
            dir.join(b).is_file(),
            "{} is missing: build it first (cargo build -p weft-cni -p weft-ipam -p weft-tests --bins, same target dir)",
            dir.join(b).display()
        );
    }
    dir
}

pub struct NodeH {
    pub name: String,
    pub index: u8,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    pub agent: Option<Child>,
    pub v4_cidr: String,
    pub v6_cidr: String,
}

impl NodeH {
    pub fn agent_log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
    pub fn conflist(&self) -> PathBuf {
        self.dir.join("net.d/10-weft.conflist")
    }
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("state/wireguard.key")
    }
    pub fn wg_socket(&self) -> PathBuf {
        self.run_dir().join("wireguard/weft-wg.sock")
    }
    /// The agent's flags for this node.
    pub fn agent_args(&self) -> Vec<String> {
        let d = |s: &str| self.dir.join(s).display().to_string();
        vec![
            "--node-name".into(),
            self.name.clone(),
            "--kubeconfig".into(),
            d("kubeconfig"),
            "--cni-bin-dir".into(),
            d("bin"),
            "--cni-conf-dir".into(),
            d("net.d"),
            "--cni-source-dir".into(),
            bin_dir().display().to_string(),
            "--state-dir".into(),
            d("state"),
            "--run-dir".into(),
            d("run"),
            "--cni-log-file".into(),
            d("cni.log"),
            "--chain-portmap=false".into(),
            "--metrics-addr".into(),
            "127.0.0.1:10256".into(),
            "--resync-seconds".into(),
            "2".into(),
        ]
    }
}

pub struct Pod {
    pub name: String,
    pub ns: String,
    pub node: String,
    pub v4: Ipv4Addr,
    pub v6: Option<IpAddr>,
}

pub struct Lab {
    pub id: String,
    pub dir: PathBuf,
    pub sw: String,
    api: Option<Child>,
    pub api_url: String,
    pub nodes: BTreeMap<String, NodeH>,
    pub pods: Vec<Pod>,
    rt: tokio::runtime::Runtime,
}

impl Lab {
    /// The underlay switch and the API emulator.
    pub fn new() -> Lab {
        let id = format!(
            "wa{}x{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = PathBuf::from(format!("/tmp/{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("api")).unwrap();
        let sw = format!("{id}-sw");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut lab = Lab {
            id,
            dir,
            sw: sw.clone(),
            api: None,
            api_url: String::new(),
            nodes: BTreeMap::new(),
            pods: Vec::new(),
            rt,
        };
        sh(&["ip", "netns", "add", &sw]);
        ns_sh(&sw, &["ip", "link", "set", "lo", "up"]);
        ns_sh(&sw, &["ip", "link", "add", "br0", "type", "bridge"]);
        ns_sh(&sw, &["ip", "addr", "add", &format!("{SWITCH_IP}/24"), "dev", "br0"]);
        ns_sh(&sw, &["ip", "link", "set", "br0", "up"]);
        lab.start_api();
        lab
    }

    fn start_api(&mut self) {
        let api_dir = self.dir.join("api");
        let log = File::create(api_dir.join("apiserver.log")).unwrap();
        let child = Command::new(bin_dir().join("weft-lab"))
            .args(["apiserver", "--listen", "127.0.0.1:0", "--listen"])
            .arg(format!("{}@{SWITCH_IP}:{API_PORT}", self.sw))
            .arg("--state")
            .arg(&api_dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start weft-lab apiserver");
        self.api = Some(child);
        let listening = wait_for("the API emulator's listening.json", Duration::from_secs(10), || {
            std::fs::read_to_string(api_dir.join("listening.json")).ok()
        });
        let v: Value = serde_json::from_str(&listening).unwrap();
        self.api_url = format!("http://{}", v["addresses"][0].as_str().unwrap());
    }

    pub fn client(&self) -> Client {
        let url = self.api_url.parse().unwrap();
        let _g = self.rt.enter();
        Client::try_from(Config::new(url)).unwrap()
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn nodes_api(&self) -> Api<Node> {
        Api::all(self.client())
    }

    pub fn get_node(&self, name: &str) -> Node {
        let api = self.nodes_api();
        self.block_on(api.get(name)).unwrap()
    }

    /// A node netns on the underlay, its Node object, and its agent.
    pub fn add_node(&mut self, index: u8) -> String {
        let name = format!("node-{index}");
        let ns = format!("{}-n{index}", self.id);
        let ip = Ipv4Addr::new(172, 31, 0, 10 + index);
        let dir = self.dir.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        sh(&["ip", "netns", "add", &ns]);
        let host_end = format!("{}n{index}", self.id);
        ns_sh(
            &self.sw,
            &[
                "ip", "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        );
        ns_sh(&self.sw, &["ip", "link", "set", &host_end, "master", "br0", "up"]);
        ns_sh(&ns, &["ip", "link", "set", "lo", "up"]);
        ns_sh(&ns, &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns_sh(&ns, &["ip", "link", "set", "eth0", "up"]);
        ns_sh(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        ns_sh(&ns, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        let kubeconfig = json!({"apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "lab", "cluster": {"server": format!("http://{SWITCH_IP}:{API_PORT}")}}],
            "users": [{"name": "agent", "user": {}}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "agent"}}],
            "current-context": "lab"});
        std::fs::write(dir.join("kubeconfig"), kubeconfig.to_string()).unwrap();
        let v4_cidr = format!("10.244.{index}.0/24");
        let v6_cidr = format!("fd00:10:244:{index}::/64");
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name},
            "spec": {"podCIDR": v4_cidr, "podCIDRs": [v4_cidr, v6_cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": name}],
                       "conditions": [{"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"}]}
        }))
        .unwrap();
        let api = self.nodes_api();
        self.block_on(api.create(&PostParams::default(), &node))
            .expect("create Node");
        self.nodes.insert(
            name.clone(),
            NodeH {
                name: name.clone(),
                index,
                ns,
                ip,
                dir,
                agent: None,
                v4_cidr,
                v6_cidr,
            },
        );
        self.start_agent(&name);
        name
    }

    pub fn node(&self, name: &str) -> &NodeH {
        &self.nodes[name]
    }

    /// Start (or restart) the agent of `name`; its log is appended to.
    pub fn start_agent(&mut self, name: &str) {
        self.start_agent_with(name, &[]);
    }

    /// Start the agent of `name` with `extra` flags after the usual ones.
    pub fn start_agent_with(&mut self, name: &str, extra: &[&str]) {
        let n = self.nodes.get_mut(name).unwrap();
        let log = File::options().create(true).append(true).open(n.agent_log()).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &n.ns])
            .arg(env!("CARGO_BIN_EXE_weft-agent"))
            .args(n.agent_args())
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("KUBECONFIG")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start weft-agent");
        n.agent = Some(child);
    }

    /// Stop the API emulator (an API server outage).
    pub fn stop_api(&mut self) {
        if let Some(mut c) = self.api.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the agent of `name` is still running.
    pub fn agent_running(&mut self, name: &str) -> bool {
        let n = self.nodes.get_mut(name).unwrap();
        n.agent.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// kill -9 the agent of `name`.
    pub fn kill_agent(&mut self, name: &str) {
        if let Some(mut c) = self.nodes.get_mut(name).unwrap().agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait until the node's agent has written its conflist and readiness file.
    pub fn wait_ready(&self, name: &str) {
        let n = self.node(name);
        wait_for(
            &format!("{name}'s conflist and readiness file"),
            Duration::from_secs(30),
            || (n.conflist().exists() && n.run_dir().join("ready").exists()).then_some(()),
        );
    }

    /// The node's WireGuard peers, as (public key, allowed IPs).
    pub fn peers(&self, name: &str) -> Vec<weft_agent::peers::PeerState> {
        let sock = self.node(name).wg_socket();
        self.block_on(weft_agent::uapi::get(&sock))
            .map(|d| d.peers)
            .unwrap_or_default()
    }

    /// Routes through weft-wg on a node (`ip route` + `ip -6 route`).
    pub fn wg_routes(&self, name: &str) -> String {
        let ns = &self.node(name).ns;
        ns_sh(ns, &["ip", "route", "show", "dev", "weft-wg"])
            + &ns_sh(ns, &["ip", "-6", "route", "show", "dev", "weft-wg"])
    }

    /// A pod netns on `node`, wired by the real `weft` (CNI ADD).
    pub fn add_pod(&mut self, node: &str, pod: &str) -> usize {
        let n = self.node(node);
        let ns = format!("{}-p-{pod}", self.id);
        sh(&["ip", "netns", "add", &ns]);
        ns_sh(&ns, &["ip", "link", "set", "lo", "up"]);
        let list: Value = serde_json::from_str(&std::fs::read_to_string(n.conflist()).unwrap()).unwrap();
        let mut conf = list["plugins"][0].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &n.ns])
            .arg(n.dir.join("bin/weft"))
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("{}-{pod}", self.id))
            .env("CNI_NETNS", format!("/run/netns/{ns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", n.dir.join("bin"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "weft ADD for {pod}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let res: Value = serde_json::from_slice(&out.stdout).unwrap();
        let ips: Vec<IpAddr> = res["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                i["address"]
                    .as_str()
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        let v4 = ips
            .iter()
            .find_map(|i| match i {
                IpAddr::V4(v) => Some(*v),
                _ => None,
            })
            .expect("pod has an IPv4 address");
        let v6 = ips.iter().find(|i| i.is_ipv6()).copied();
        self.pods.push(Pod {
            name: pod.into(),
            ns,
            node: node.into(),
            v4,
            v6,
        });
        self.pods.len() - 1
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap()
    }

    pub fn delete_node(&self, name: &str) {
        let api = self.nodes_api();
        self.block_on(api.delete(name, &DeleteParams::default()))
            .expect("delete Node");
    }

    /// Stop the userspace WireGuard process of a node (by its pid file).
    pub fn kill_wireguard(&self, name: &str) {
        let pidfile = self.node(name).run_dir().join("weft-wg.pid");
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        let _ = std::fs::remove_file(pidfile);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for n in &names {
            self.kill_agent(n);
            self.kill_wireguard(n);
        }
        if let Some(mut c) = self.api.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut spaces: Vec<String> = self.pods.iter().map(|p| p.ns.clone()).collect();
        spaces.extend(self.nodes.values().map(|n| n.ns.clone()));
        spaces.push(self.sw.clone());
        for ns in spaces {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        if std::env::var_os("WEFT_KEEP_TEST_DIR").is_none() && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// --- traffic ---------------------------------------------------------------

/// `ping -c1` from a netns until it answers (bounded).
pub fn ping(ns: &str, dst: &str) {
    wait_for(&format!("ping {dst} from {ns}"), Duration::from_secs(15), || {
        ns_ok(ns, &["ping", "-c1", "-W1", dst]).then_some(())
    });
}

/// A TCP server in `ns` that accepts one connection, reads to EOF, answers
/// "seen <client address> <bytes>" and returns (client address, bytes read).
pub fn tcp_server(ns: &str, bind: SocketAddr) -> JoinHandle<(SocketAddr, Vec<u8>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_ns(ns, move || {
        let l = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        tx.send(()).unwrap();
        let (mut s, peer) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        let _ = s.write_all(format!("seen {peer} {}", buf.len()).as_bytes());
        (peer, buf)
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server listening");
    h
}

/// Connect from `ns`, send `data`, half-close, return the answer.
pub fn tcp_send(ns: &str, dst: SocketAddr, data: Vec<u8>) -> String {
    in_ns(ns, move || {
        let mut s =
            TcpStream::connect_timeout(&dst, Duration::from_secs(10)).unwrap_or_else(|e| panic!("connect {dst}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(&data).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .join()
    .unwrap()
}

/// Full TCP round trip; returns the client address the server saw.
pub fn tcp_check(client_ns: &str, server_ns: &str, dst: SocketAddr, data: Vec<u8>) -> SocketAddr {
    let len = data.len();
    let srv = tcp_server(server_ns, SocketAddr::new(dst.ip(), dst.port()));
    let answer = tcp_send(client_ns, dst, data);
    let (peer, got) = srv.join().unwrap();
    assert_eq!(got.len(), len, "server got all bytes");
    assert_eq!(answer, format!("seen {peer} {len}"));
    peer
}

/// UDP echo of the client address; returns what the server saw.
pub fn udp_check(client_ns: &str, server_ns: &str, dst: SocketAddr) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    let srv = in_ns(server_ns, move || {
        let s = UdpSocket::bind(dst).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 1500];
        let (_, peer) = s.recv_from(&mut buf).expect("UDP datagram");
        for _ in 0..3 {
            let _ = s.send_to(peer.to_string().as_bytes(), peer);
        }
        peer
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let seen = in_ns(client_ns, move || {
        let bind: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
        let s = UdpSocket::bind(bind).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut buf = [0u8; 100];
        for _ in 0..20 {
            s.send_to(b"hello", dst).unwrap();
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return String::from_utf8_lossy(&buf[..n]).into_owned();
            }
        }
        panic!("no UDP answer from {dst}");
    })
    .join()
    .unwrap();
    let peer = srv.join().unwrap();
    assert_eq!(seen, peer.to_string());
    peer
}

/// Read a node's metrics (from inside its netns).
pub fn metrics(ns: &str) -> String {
    ns_sh(ns, &["curl", "-sf", "http://127.0.0.1:10256/metrics"])
}

pub fn file_contains(path: &Path, needle: &[u8]) -> bool {
    std::fs::read(path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
}
