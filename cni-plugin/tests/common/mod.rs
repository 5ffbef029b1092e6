//! Helpers for privileged tests: a throwaway "node" netns where the plugin
//! runs (so its bridge never touches the real host), pod netns, and running
//! plugins exactly as a runtime does (CNI env + config on stdin).
#![allow(dead_code)] // reason: each test binary uses a different subset

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use weft_ipam::store::Allocation;
use weft_ipam::{Ipam, IpamConf};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Panics unless root: privileged tests never skip silently.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root (network namespaces, veth, bridge): run the suite as root"
    );
}

/// A unique short name: tests run in parallel, netns names must not clash.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id() % 100000,
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// Directory holding `weft`, `weft-ipam` (built by cargo for this test).
pub fn bin_dir() -> PathBuf {
    let weft = PathBuf::from(env!("CARGO_BIN_EXE_weft"));
    let dir = weft.parent().unwrap().to_path_buf();
    assert!(
        dir.join("weft-ipam").is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        dir.join("weft-ipam").display()
    );
    dir
}

/// Debian's reference plugins.
pub const REF_PLUGINS: &str = "/usr/lib/cni";

pub fn require_ref_plugins(names: &[&str]) {
    for n in names {
        let p = Path::new(REF_PLUGINS).join(n);
        assert!(
            p.is_file(),
            "{} is missing: apt-get install containernetworking-plugins",
            p.display()
        );
    }
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        sh(&["ip", "netns", "add", &name]);
        // `lo` up, as a runtime does for pods (and a host has).
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// Run a command inside this netns.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        Command::new(full[0])
            .args(&full[1..])
            .output()
            .expect("run ip netns exec")
    }

    /// Run a command inside this netns; panic with its output on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?} in {} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ping(&self, addr: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "2", addr]).status.success()
    }

    /// Names of links in this netns.
    pub fn links(&self) -> Vec<String> {
        self.ok(&["ip", "-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap().to_string())
            .collect()
    }

    /// Run `f` on a thread inside this netns (sockets it opens stay here).
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let ns = fs::File::open(self.path()).expect("open netns");
        std::thread::spawn(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }

    /// A TCP server in this netns answering `reply` plus the peer's address
    /// to `conns` connections, then exiting.
    pub fn tcp_server(&self, addr: SocketAddr, reply: &'static str, conns: usize) -> std::thread::JoinHandle<()> {
        let (tx, rx) = mpsc::channel();
        let h = self.spawn(move || {
            let l = TcpListener::bind(addr).expect("bind test server");
            tx.send(()).unwrap();
            for _ in 0..conns {
                let (mut s, peer) = l.accept().expect("accept");
                let _ = s.write_all(format!("{reply} from-{}", peer.ip()).as_bytes());
            }
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("server did not start");
        h
    }

    /// Connect from this netns and read what the server says (bounded).
    pub fn tcp_get(&self, addr: SocketAddr) -> std::io::Result<String> {
        self.spawn(move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            Ok(buf)
        })
        .join()
        .expect("client thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A veth link between two namespaces: `a_if` in `a` with `a_addr`,
/// `eth0` in `b` with `b_addr` (CIDR notation; IPv6 without DAD), both up.
pub fn link(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_addr: &str) {
    sh(&[
        "ip", "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", "eth0", "netns", &b.name,
    ]);
    for (ns, dev, addr) in [(a, a_if, a_addr), (b, "eth0", b_addr)] {
        let mut args = vec!["ip", "addr", "add", addr, "dev", dev];
        if addr.contains(':') {
            args.push("nodad");
        }
        ns.ok(&args);
        ns.ok(&["ip", "link", "set", dev, "up"]);
    }
}

pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a plugin printed and how it exited.
#[derive(Debug)]
pub struct Reply {
    pub ok: bool,
    pub json: Value,
    pub stderr: String,
}

impl Reply {
    pub fn code(&self) -> u64 {
        self.json["code"].as_u64().unwrap_or(0)
    }
    pub fn msg(&self) -> &str {
        self.json["msg"].as_str().unwrap_or("")
    }
    pub fn expect_ok(self) -> Value {
        assert!(self.ok, "plugin failed: {} {}", self.json, self.stderr);
        self.json
    }
    /// The first address of family `v4` from a result.
    pub fn ip(json: &Value, v4: bool) -> String {
        json["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap().split('/').next().unwrap().to_string())
            .find(|a| a.contains('.') == v4)
            .expect("address of that family")
    }
}

/// A throwaway node: a netns where plugins run, and a state dir.
pub struct Node {
    pub ns: Netns,
    pub dir: PathBuf,
}

impl Node {
    pub fn new() -> Self {
        require_root();
        let ns = Netns::new("wt-node");
        let dir = std::env::temp_dir().join(format!("weft-test-{}", ns.name));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("boot_id"), "boot-1\n").unwrap();
        Self { ns, dir }
    }

    /// weft's network config (one plugin of a conflist, as a runtime hands it).
    pub fn weft_conf(&self, version: &str, ranges: Value) -> Value {
        json!({
            "cniVersion": version, "name": "weftnet", "type": "weft",
            "bridge": "weft0", "mtu": 1420, "hairpinMode": true,
            "logFile": self.dir.join("weft.log"),
            "readinessFile": self.dir.join("ready"),
            "ipam": {
                "type": "weft-ipam", "ranges": ranges,
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                "dataDir": self.dir.join("ipam"),
                "bootIdFile": self.dir.join("boot_id"),
            }
        })
    }

    pub fn dual_stack() -> Value {
        json!([[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd00:77::/64"}]])
    }

    /// Start `plugin` (a file name in CNI_PATH) inside the node netns, as a
    /// runtime does, with `conf` written to its stdin. `ip netns exec` execs
    /// the plugin in place, so the child's pid is the plugin's.
    pub fn spawn_plugin(
        &self,
        plugin: &str,
        cmd: &str,
        cid: &str,
        ifname: &str,
        netns: Option<&Path>,
        conf: &Value,
    ) -> std::process::Child {
        let path = format!("{}:{REF_PLUGINS}", bin_dir().display());
        let exe = std::env::split_paths(&path)
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("plugin {plugin} not found in {path}"));
        let mut c = Command::new("ip");
        // The node's temp dir as working directory: a relative path in a
        // config under test can never land in the source tree.
        c.args(["netns", "exec", &self.ns.name])
            .arg(&exe)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", &path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(n) = netns {
            c.env("CNI_NETNS", n);
        }
        let mut child = c.spawn().expect("spawn plugin");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        child
    }

    /// Run `plugin` to completion and parse what it printed.
    pub fn plugin(
        &self,
        plugin: &str,
        cmd: &str,
        cid: &str,
        ifname: &str,
        netns: Option<&Path>,
        conf: &Value,
    ) -> Reply {
        let out = self
            .spawn_plugin(plugin, cmd, cid, ifname, netns, conf)
            .wait_with_output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        Reply {
            ok: out.status.success(),
            json: if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("plugin printed non-JSON {text:?}: {e}"))
            },
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn weft(&self, cmd: &str, cid: &str, netns: Option<&Path>, conf: &Value) -> Reply {
        self.plugin("weft", cmd, cid, "eth0", netns, conf)
    }

    /// weft-ipam's allocations for the test network, read through the
    /// library (locked, after boot reclaim), as the plugin sees them.
    pub fn allocations(&self) -> Vec<Allocation> {
        let conf: IpamConf = serde_json::from_value(json!({
            "ranges": [[{"subnet": "10.0.0.0/8"}]],
            "dataDir": self.dir.join("ipam"),
            "bootIdFile": self.dir.join("boot_id"),
        }))
        .unwrap();
        Ipam::new(conf.plan().unwrap(), "weftnet")
            .unwrap()
            .allocations()
            .unwrap()
    }

    /// Host-side veths of weft in the node netns.
    pub fn weft_veths(&self) -> Vec<String> {
        self.ns
            .links()
            .into_iter()
            .filter(|l| l.starts_with("weft") && l.len() == 15)
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `conf` with `prevResult` set, as a runtime sends CHECK/DEL or the next plugin of a chain.
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}
