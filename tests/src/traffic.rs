//! Traffic for the lab: the small server that runs in pods (HTTP and UDP
//! echo, both answering with the pod's name and the peer address they saw)
//! and the probes tests use to check connectivity and source addresses.
//!
//! Probes run on a thread inside the source namespace (see
//! [`crate::lab::netns::run_in`]); `ping` runs the real `ping` there.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::lab::netns;

/// The answer of a lab server: who answered, and the peer it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The pod name the server was started with.
    pub server: String,
    /// The source address and port of the connection or datagram, as the server saw it.
    pub peer: SocketAddr,
}

impl Reply {
    /// The wire form: `weft-lab server=NAME peer=ADDR\n`.
    pub fn render(server: &str, peer: SocketAddr) -> String {
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        format!("weft-lab server={server} peer={peer}\n")
    }

    /// Parse the wire form from anywhere in `text` (e.g. after HTTP headers).
    pub fn parse(text: &str) -> Result<Self> {
        let line = text
            .lines()
            .find(|l| l.starts_with("weft-lab server="))
            .with_context(|| format!("no weft-lab reply in {text:?}"))?;
        let mut server = None;
        let mut peer = None;
        for word in line.split_whitespace() {
            if let Some(s) = word.strip_prefix("server=") {
                server = Some(s.to_string());
            } else if let Some(p) = word.strip_prefix("peer=") {
                peer = Some(p.parse().with_context(|| format!("peer address {p:?}"))?);
            }
        }
        Ok(Reply {
            server: server.context("reply without server=")?,
            peer: peer.context("reply without peer=")?,
        })
    }
}

/// Bind on `[::]` (dual stack) or, without IPv6, on `0.0.0.0`.
fn bind_any<T>(port: u16, bind: impl Fn(SocketAddr) -> std::io::Result<T>) -> Result<T> {
    bind(SocketAddr::from(([0u16; 8], port)))
        .or_else(|_| bind(SocketAddr::from(([0u8; 4], port))))
        .with_context(|| format!("bind port {port}"))
}

fn serve_tcp(name: String, listener: TcpListener) {
    for conn in listener.incoming().flatten() {
        let name = name.clone();
        std::thread::spawn(move || answer_tcp(&name, conn));
    }
}

/// Read the request (up to a blank line, a short timeout, or EOF), then answer.
fn answer_tcp(name: &str, mut conn: TcpStream) {
    let Ok(peer) = conn.peer_addr() else { return };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(4).any(|w| w == b"\r\n\r\n") || seen.ends_with(b"\n\n") {
            break;
        }
    }
    let body = Reply::render(name, peer);
    let reply = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes());
}

fn serve_udp(name: String, socket: UdpSocket) {
    let mut buf = [0u8; 2048];
    while let Ok((_, peer)) = socket.recv_from(&mut buf) {
        let _ = socket.send_to(Reply::render(&name, peer).as_bytes(), peer);
    }
}

/// Run the pod server: HTTP on `http`, UDP echo on `udp`; touch `ready` once
/// both are bound; serve forever.
pub fn serve(name: &str, http: Option<u16>, udp: Option<u16>, ready: Option<&Path>) -> Result<()> {
    let mut threads = Vec::new();
    if let Some(port) = http {
        let l = bind_any(port, TcpListener::bind)?;
        let name = name.to_string();
        threads.push(std::thread::spawn(move || serve_tcp(name, l)));
    }
    if let Some(port) = udp {
        let s = bind_any(port, UdpSocket::bind)?;
        let name = name.to_string();
        threads.push(std::thread::spawn(move || serve_udp(name, s)));
    }
    if let Some(path) = ready {
        std::fs::write(path, b"ready\n").with_context(|| format!("write {}", path.display()))?;
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Default bound on every probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// From inside namespace `ns`: connect over TCP, send an HTTP request, return
/// the whole response.
pub fn tcp_request(ns: &str, to: SocketAddr, timeout: Duration) -> Result<String> {
    netns::run_in(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, timeout).with_context(|| format!("connect to {to}"))?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: weft-lab\r\n\r\n")
            .with_context(|| format!("send to {to}"))?;
        let mut out = String::new();
        s.read_to_string(&mut out).with_context(|| format!("read from {to}"))?;
        Ok(out)
    })
}

/// From inside `ns`: HTTP GET a lab server and parse its reply.
pub fn http_get(ns: &str, to: SocketAddr) -> Result<Reply> {
    let text = tcp_request(ns, to, PROBE_TIMEOUT)?;
    if !text.starts_with("HTTP/1.0 200") {
        bail!("unexpected answer from {to}: {text:?}");
    }
    Reply::parse(&text)
}

/// From inside `ns`: one UDP datagram to a lab server, and its echo.
pub fn udp_echo(ns: &str, to: SocketAddr) -> Result<Reply> {
    netns::run_in(ns, move || {
        let local: SocketAddr = if to.is_ipv6() {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let s = UdpSocket::bind(local)?;
        s.set_read_timeout(Some(PROBE_TIMEOUT))?;
        s.connect(to).with_context(|| format!("udp connect {to}"))?;
        s.send(b"weft-lab probe\n")
            .with_context(|| format!("udp send to {to}"))?;
        let mut buf = [0u8; 2048];
        let n = match s.recv(&mut buf) {
            Ok(n) => n,
            // The read timeout shows up as EAGAIN on a socket with SO_RCVTIMEO.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                bail!("no UDP answer from {to} within {PROBE_TIMEOUT:?}")
            }
            Err(e) => return Err(e).with_context(|| format!("udp receive from {to}")),
        };
        Reply::parse(&String::from_utf8_lossy(&buf[..n]))
    })
}

/// From inside `ns`: `ping -c 1 -W 2 ADDR`.
pub fn ping(ns: &str, to: IpAddr) -> Result<()> {
    let args = ["-c".to_string(), "1".into(), "-W".into(), "2".into(), to.to_string()];
    netns::run(&mut netns::exec_cmd(ns, "ping", &args))
        .with_context(|| format!("ping {to} from {ns}"))
        .map(drop)
}

/// Bound on one bulk transfer ([`tcp_check`]).
pub const BULK_TIMEOUT: Duration = Duration::from_secs(60);

/// A server thread's result: the peer it served and every byte it read.
pub type Sink = std::thread::JoinHandle<Result<(SocketAddr, Vec<u8>)>>;

/// A TCP server inside `ns` on `bind` that accepts one connection, reads to
/// EOF, answers `seen PEER LEN` and returns (peer, bytes). Returns once it
/// listens; join the handle for the result.
pub fn tcp_sink(ns: &str, bind: SocketAddr) -> Result<Sink> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = netns::spawn_in(ns, move || {
        let l = TcpListener::bind(bind).with_context(|| format!("bind {bind}"));
        let _ = tx.send(l.as_ref().map(drop).map_err(|e| format!("{e:#}")));
        let (mut s, peer) = l?.accept().context("accept")?;
        s.set_read_timeout(Some(BULK_TIMEOUT))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).with_context(|| format!("read from {peer}"))?;
        // The client may be gone already; what it sent is the result.
        let _ = s.write_all(format!("seen {peer} {}", buf.len()).as_bytes());
        Ok((peer, buf))
    })?;
    match rx.recv_timeout(PROBE_TIMEOUT * 5) {
        Ok(Ok(())) => Ok(h),
        Ok(Err(e)) => bail!("server in {ns}: {e}"),
        Err(_) => bail!("server in {ns} did not listen on {bind}"),
    }
}

/// From inside `ns`: connect to `dst`, send `data`, half-close, return the answer.
pub fn tcp_push(ns: &str, dst: SocketAddr, data: Vec<u8>) -> Result<String> {
    netns::run_in(ns, move || {
        let mut s = TcpStream::connect_timeout(&dst, PROBE_TIMEOUT * 5).with_context(|| format!("connect {dst}"))?;
        s.set_read_timeout(Some(BULK_TIMEOUT))?;
        s.set_write_timeout(Some(BULK_TIMEOUT))?;
        s.write_all(&data).with_context(|| format!("send to {dst}"))?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut out = String::new();
        s.read_to_string(&mut out).with_context(|| format!("read from {dst}"))?;
        Ok(out)
    })
}

/// A whole TCP round trip of `data` from `client_ns` to a server in
/// `server_ns` on `dst`: every byte arrived and the answer matches. Returns
/// the client address the server saw.
pub fn tcp_check(client_ns: &str, server_ns: &str, dst: SocketAddr, data: Vec<u8>) -> Result<SocketAddr> {
    let len = data.len();
    let srv = tcp_sink(server_ns, dst)?;
    let answer = tcp_push(client_ns, dst, data);
    let (peer, got) = srv.join().map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    let answer = answer?;
    if got.len() != len {
        bail!("{dst}: the server got {} of {len} bytes", got.len());
    }
    if answer != format!("seen {peer} {len}") {
        bail!("{dst}: unexpected answer {answer:?} (server saw {peer})");
    }
    Ok(peer)
}

/// A UDP datagram from `client_ns` to a server in `server_ns` on `dst`,
/// retried until the server's echo of the client address comes back (which
/// must be what the server saw). Returns that address.
pub fn udp_check(client_ns: &str, server_ns: &str, dst: SocketAddr) -> Result<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    let srv = netns::spawn_in(server_ns, move || {
        let s = UdpSocket::bind(dst).with_context(|| format!("bind {dst}"));
        let _ = tx.send(s.as_ref().map(drop).map_err(|e| format!("{e:#}")));
        let s = s?;
        s.set_read_timeout(Some(BULK_TIMEOUT / 4))?;
        let mut buf = [0u8; 1500];
        let (_, peer) = s.recv_from(&mut buf).context("no UDP datagram arrived")?;
        for _ in 0..3 {
            let _ = s.send_to(peer.to_string().as_bytes(), peer);
        }
        Ok(peer)
    })?;
    match rx.recv_timeout(PROBE_TIMEOUT * 5) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("UDP server in {server_ns}: {e}"),
        Err(_) => bail!("UDP server in {server_ns} did not bind {dst}"),
    }
    let seen = netns::run_in(client_ns, move || {
        let bind: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
        let s = UdpSocket::bind(bind)?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut buf = [0u8; 100];
        for _ in 0..20 {
            s.send_to(b"hello", dst)?;
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        bail!("no UDP answer from {dst}")
    });
    let peer = srv
        .join()
        .map_err(|_| anyhow::anyhow!("UDP server thread panicked"))??;
    let seen = seen?;
    if seen != peer.to_string() {
        bail!("{dst}: the client got {seen:?}, the server saw {peer}");
    }
    Ok(peer)
}

/// Run `f` until it succeeds or `timeout` passes; returns the last error.
pub fn retry<T>(timeout: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Poll `f` every 100 ms until it returns `Some`, for at most `timeout`;
/// the error names `what` was waited for.
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if std::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a command can be found on `PATH`.
pub fn have_command(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_and_unmap_v4_mapped_peers() {
        let mapped: SocketAddr = "[::ffff:10.244.1.2]:4000".parse().unwrap();
        let text = Reply::render("web-1", mapped);
        assert_eq!(text, "weft-lab server=web-1 peer=10.244.1.2:4000\n");
        let r = Reply::parse(&format!("HTTP/1.0 200 OK\r\n\r\n{text}")).unwrap();
        assert_eq!(r.server, "web-1");
        assert_eq!(r.peer, "10.244.1.2:4000".parse().unwrap());
        assert!(Reply::parse("nothing").is_err());
    }

    #[test]
    fn server_answers_tcp_and_udp_on_loopback() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || serve_tcp("t".into(), l));
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let r = Reply::parse(&out).unwrap();
        assert_eq!((r.server.as_str(), r.peer.ip()), ("t", s.local_addr().unwrap().ip()));

        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let uaddr = u.local_addr().unwrap();
        std::thread::spawn(move || serve_udp("u".into(), u));
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
        c.send_to(b"x", uaddr).unwrap();
        let mut buf = [0u8; 256];
        let n = c.recv(&mut buf).unwrap();
        let r = Reply::parse(&String::from_utf8_lossy(&buf[..n])).unwrap();
        assert_eq!(r.peer, c.local_addr().unwrap());
    }
}
