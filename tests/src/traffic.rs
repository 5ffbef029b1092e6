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
