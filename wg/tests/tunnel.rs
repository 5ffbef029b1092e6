//! End-to-end tests: two "nodes" (network namespaces joined by a veth
//! underlay), a userspace WireGuard process in each, started the way
//! weft-agent starts it (`ip netns exec` + a private mount namespace with a
//! per-node directory bind-mounted on /var/run/wireguard), configured with
//! `wg set`, and real traffic through the tunnel.
//!
//! Needs root and `ip`, `wg`, `wireguard-go`, `tcpdump`, `python3`,
//! `unshare`, `timeout`; fails (never skips) without them. Every namespace
//! and process is the test's own and is removed when it ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const WEFT_WG: &str = env!("CARGO_BIN_EXE_weft-wg");
const IFACE: &str = "wgt0";
const PORT: u16 = 51820;
const MARKER: &str = "WEFT-PLAINTEXT-MARKER";

fn require_root_and_tools() {
    assert!(
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")),
        "these tests create network namespaces: run them as root"
    );
    for tool in ["ip", "wg", "wireguard-go", "tcpdump", "python3", "unshare", "timeout"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap()
            .status
            .success();
        assert!(
            found,
            "{tool} is required (apt-get install -y wireguard-go wireguard-tools tcpdump)"
        );
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sh(args: &[&str]) -> String {
    String::from_utf8(run(Command::new(args[0]).args(&args[1..])).stdout).unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Impl {
    Weft,
    WireguardGo,
}

/// One node: a netns, its socket directory, its WireGuard process.
struct Node {
    ns: String,
    dir: PathBuf,
    /// 1 or 2: underlay 192.168.80.N, tunnel 10.80.0.N
    n: u8,
    child: Option<Child>,
    key: String,
    public: String,
}

impl Node {
    /// `cmd` inside this node: its netns, with its socket dir on /var/run/wireguard.
    fn command(&self, cmd: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.ns,
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
        ])
        .args(["sh", "-c", "mount --bind \"$0\" /run/wireguard && exec \"$@\""])
        .arg(&self.dir)
        .args(cmd);
        c
    }

    fn start(&mut self, imp: Impl) {
        let bin = match imp {
            Impl::Weft => WEFT_WG,
            Impl::WireguardGo => "wireguard-go",
        };
        let log = std::fs::File::create(self.dir.join("log")).unwrap();
        let child = self
            .command(&[bin, "-f", IFACE])
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let sock = self.socket();
        wait_for(
            &format!("{bin} socket {}", sock.display()),
            Duration::from_secs(10),
            || sock.exists(),
        );
        let (ns, n) = (self.ns.clone(), self.n);
        sh(&["ip", "-n", &ns, "addr", "add", &format!("10.80.0.{n}/24"), "dev", IFACE]);
        sh(&["ip", "-n", &ns, "link", "set", IFACE, "mtu", "1420", "up"]);
    }

    fn socket(&self) -> PathBuf {
        self.dir.join(format!("{IFACE}.sock"))
    }

    fn wg(&self, args: &[&str]) -> String {
        let mut cmd = vec!["wg"];
        cmd.extend_from_slice(args);
        String::from_utf8(run(&mut self.command(&cmd)).stdout).unwrap()
    }

    /// `wg set IFACE private-key KEY listen-port PORT`, plus `extra`.
    fn set_key_and_port(&self, extra: &[&str]) {
        let key = self.dir.join("key");
        let port = PORT.to_string();
        let mut args = vec!["set", IFACE, "private-key", key.to_str().unwrap(), "listen-port", &port];
        args.extend_from_slice(extra);
        self.wg(&args);
    }

    fn peer_with(&self, other: &Node) {
        self.set_key_and_port(&[
            "peer",
            &other.public,
            "endpoint",
            &format!("192.168.80.{}:{PORT}", other.n),
            "allowed-ips",
            &format!("10.80.0.{}/32", other.n),
        ]);
    }

    fn exec(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).args(args);
        c
    }

    /// SIGTERM the process and wait (bounded) for it to exit.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Two nodes on a veth underlay (192.168.80.1 ↔ .2), unique names per test.
fn lab() -> (Node, Node) {
    require_root_and_tools();
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let id = format!("{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
    let mk = |n: u8| {
        let ns = format!("weftwg-{id}-{n}");
        sh(&["ip", "netns", "add", &ns]);
        let dir = std::env::temp_dir().join(&ns);
        std::fs::create_dir_all(&dir).unwrap();
        let key = sh(&["wg", "genkey"]).trim().to_string();
        std::fs::write(dir.join("key"), &key).unwrap();
        let mut pubkey = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(pubkey.stdin.as_mut().unwrap(), key.as_bytes()).unwrap();
        let public = String::from_utf8(pubkey.wait_with_output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        Node {
            ns,
            dir,
            n,
            child: None,
            key,
            public,
        }
    };
    let (a, b) = (mk(1), mk(2));
    sh(&[
        "ip",
        "link",
        "add",
        "weftwg-u1",
        "netns",
        &a.ns,
        "type",
        "veth",
        "peer",
        "name",
        "weftwg-u2",
        "netns",
        &b.ns,
    ]);
    for node in [&a, &b] {
        let dev = format!("weftwg-u{}", node.n);
        sh(&[
            "ip",
            "-n",
            &node.ns,
            "addr",
            "add",
            &format!("192.168.80.{}/24", node.n),
            "dev",
            &dev,
        ]);
        sh(&["ip", "-n", &node.ns, "link", "set", &dev, "up"]);
        sh(&["ip", "-n", &node.ns, "link", "set", "lo", "up"]);
    }
    (a, b)
}

fn tunnel(a_impl: Impl, b_impl: Impl) -> (Node, Node) {
    let (mut a, mut b) = lab();
    a.start(a_impl);
    b.start(b_impl);
    a.peer_with(&b);
    b.peer_with(&a);
    (a, b)
}

/// Ping `to` from `from` (up to 10 tries: the first may wait for the handshake).
fn ping(from: &Node, to: &Node) {
    let dst = format!("10.80.0.{}", to.n);
    let ok = (0..10).any(|_| {
        from.exec(&["ping", "-c", "1", "-W", "1", &dst])
            .output()
            .unwrap()
            .status
            .success()
    });
    assert!(ok, "no ping reply from {dst} through the tunnel");
}

const SERVER: &str = r#"
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5201)); s.listen(1); s.settimeout(20)
print("listening", flush=True)
c, _ = s.accept(); c.settimeout(20); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 16)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"#;

const CLIENT: &str = r#"
import hashlib, random, socket, sys
rnd = random.Random(42); h = hashlib.sha256(); n = 0
c = socket.create_connection((sys.argv[1], 5201), timeout=20)
for i in range(int(sys.argv[2])):
    block = sys.argv[3].encode() + rnd.randbytes(65536 - len(sys.argv[3]))
    c.sendall(block); h.update(block); n += len(block)
c.close()
print(n, h.hexdigest(), flush=True)
"#;

/// Send `blocks` × 64 KiB over TCP from `from` to `to` through the tunnel;
/// the receiver's byte count and SHA-256 must equal the sender's.
fn transfer(from: &Node, to: &Node, blocks: u32) {
    let dst = format!("10.80.0.{}", to.n);
    let mut server = to
        .exec(&["timeout", "40", "python3", "-c", SERVER, &dst])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    let sent = run(&mut from.exec(&[
        "timeout",
        "30",
        "python3",
        "-c",
        CLIENT,
        &dst,
        &blocks.to_string(),
        MARKER,
    ]))
    .stdout;
    let mut got = String::new();
    std::io::Read::read_to_string(&mut out, &mut got).unwrap();
    assert!(server.wait().unwrap().success(), "TCP server failed");
    assert_eq!(
        got.trim(),
        String::from_utf8(sent).unwrap().trim(),
        "received bytes differ from sent"
    );
}

/// Start tcpdump on `node`'s interface `dev` writing to `file`; returns once it captures.
fn capture(node: &Node, dev: &str, file: &Path) -> Child {
    let mut c = node
        .exec(&["tcpdump", "-i", dev, "-U", "-s", "0", "-w", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(c.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut err, &mut line).unwrap();
    assert!(line.contains("listening on"), "tcpdump: {line}");
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    c
}

fn stop_capture(mut c: Child) {
    let _ = Command::new("kill").args(["-INT", &c.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && c.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The `wg show IFACE dump` peer line: (latest handshake, rx, tx).
fn peer_stats(node: &Node) -> (u64, u64, u64) {
    let dump = node.wg(&["show", IFACE, "dump"]);
    let peer: Vec<&str> = dump.lines().nth(1).expect("one peer").split('\t').collect();
    let num = |i: usize| peer[i].parse::<u64>().unwrap();
    (num(4), num(5), num(6))
}

#[test]
fn weft_to_weft_carries_tcp_encrypted_and_reports_stats() {
    let (a, b) = tunnel(Impl::Weft, Impl::Weft);
    ping(&a, &b);
    ping(&b, &a);

    let pcap = a.dir.join("underlay.pcap");
    let inner = b.dir.join("tunnel.pcap");
    let cap_underlay = capture(&a, "weftwg-u1", &pcap);
    let cap_tunnel = capture(&b, IFACE, &inner);
    transfer(&a, &b, 64); // 4 MiB
    transfer(&b, &a, 16);
    stop_capture(cap_underlay);
    stop_capture(cap_tunnel);

    let underlay = std::fs::read(&pcap).unwrap();
    assert!(
        underlay.len() > 4 << 20,
        "the underlay capture saw the transfer ({} bytes)",
        underlay.len()
    );
    assert!(
        !contains(&underlay, MARKER.as_bytes()),
        "plaintext marker seen on the underlay"
    );
    let tunnel = std::fs::read(&inner).unwrap();
    assert!(
        contains(&tunnel, MARKER.as_bytes()),
        "marker not seen inside the tunnel (capture broken?)"
    );

    for node in [&a, &b] {
        let (handshake, rx, tx) = peer_stats(node);
        assert!(handshake > 0, "{}: no handshake reported", node.ns);
        assert!(
            rx > 1 << 20 && tx > 1 << 20,
            "{}: byte counters rx={rx} tx={tx}",
            node.ns
        );
        let show = node.wg(&["show", IFACE]);
        assert!(show.contains("latest handshake"), "{show}");
        assert!(show.contains(&format!("listening port: {PORT}")), "{show}");
    }
}

/// `a` starts the handshake (it pings first), then TCP both ways.
fn interop(a_impl: Impl, b_impl: Impl) {
    let (a, b) = tunnel(a_impl, b_impl);
    ping(&a, &b);
    transfer(&a, &b, 32);
    transfer(&b, &a, 32);
    assert!(peer_stats(&a).0 > 0 && peer_stats(&b).0 > 0);
}

#[test]
fn weft_initiates_to_wireguard_go() {
    interop(Impl::Weft, Impl::WireguardGo);
}

#[test]
fn wireguard_go_initiates_to_weft() {
    interop(Impl::WireguardGo, Impl::Weft);
}

#[test]
fn wg_set_changes_peers_and_sigterm_cleans_up() {
    let (mut a, b) = tunnel(Impl::Weft, Impl::Weft);
    ping(&a, &b);
    // Keepalive, extra allowed IPs, then removal, as `wg set` sends them.
    a.wg(&[
        "set",
        IFACE,
        "peer",
        &b.public,
        "persistent-keepalive",
        "25",
        "allowed-ips",
        "10.80.0.2/32,fd80::/64",
    ]);
    let dump = a.wg(&["show", IFACE, "dump"]);
    let peer: Vec<&str> = dump.lines().nth(1).unwrap().split('\t').collect();
    assert_eq!(peer[3], "10.80.0.2/32,fd80::/64", "{dump}");
    assert_eq!(peer[7], "25", "{dump}");
    // fwmark on the bound port, then back to none.
    a.wg(&["set", IFACE, "fwmark", "0x51"]);
    assert!(a.wg(&["show", IFACE]).contains("fwmark: 0x51"));
    a.wg(&["set", IFACE, "fwmark", "off"]);
    ping(&a, &b);
    a.wg(&["set", IFACE, "peer", &b.public, "remove"]);
    assert_eq!(a.wg(&["show", IFACE, "peers"]).trim(), "");
    assert_eq!(a.wg(&["show", IFACE, "private-key"]).trim(), a.key);

    let status = a.stop().expect("weft-wg exits on SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(!a.socket().exists(), "socket removed");
    let links = sh(&["ip", "-n", &a.ns, "-o", "link"]);
    assert!(!links.contains(IFACE), "TUN link gone: {links}");
}

/// The agent sets the key and port when it creates the device and adds
/// peers later, as other nodes publish their keys. The receive thread is
/// then blocked in recv with the configuration from before the peer existed;
/// the peer's first handshake answer must still be found (it used to be
/// dropped, and WireGuard retries only after 5 s).
#[test]
fn a_peer_added_later_completes_its_first_handshake_at_once() {
    require_root_and_tools();
    let (mut a, mut b) = lab();
    a.start(Impl::Weft);
    b.start(Impl::Weft);
    for n in [&a, &b] {
        n.set_key_and_port(&[]);
    }
    // Let both receive threads block with a configuration without peers.
    std::thread::sleep(Duration::from_millis(500));
    a.peer_with(&b);
    b.peer_with(&a);
    let dst = format!("10.80.0.{}", b.n);
    let ok = a
        .exec(&["ping", "-c", "1", "-W", "3", &dst])
        .output()
        .unwrap()
        .status
        .success();
    assert!(
        ok,
        "the first handshake completed within 3 s (WireGuard's retry comes after 5 s)"
    );
}
