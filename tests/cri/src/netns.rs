//! Looking at the node from inside its network namespace: HTTP requests as
//! a process on the node would send them, and its links and addresses.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use serde_json::Value;

use crate::cmd;

/// `GET /` on `addr` from inside the netns at `netns`; the body of a 200.
///
/// The request runs on a thread of its own that enters the netns and then
/// ends, so no thread of the test is ever left in the wrong namespace.
pub fn http_get(netns: &Path, addr: SocketAddr, timeout: Duration) -> Result<String> {
    let ns = File::open(netns).with_context(|| format!("open {}", netns.display()))?;
    let worker = thread::spawn(move || -> Result<String> {
        setns(&ns, CloneFlags::CLONE_NEWNET).context("enter the node netns")?;
        http_get_here(addr, timeout)
    });
    worker
        .join()
        .map_err(|_| anyhow!("HTTP client thread panicked"))?
        .with_context(|| format!("GET http://{addr}/"))
}

fn http_get_here(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).context("connect")?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // HTTP/1.0: the server closes the connection after the body.
    write!(stream, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").context("send request")?;
    let mut response = String::new();
    stream.read_to_string(&mut response).context("read response")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed HTTP response: {response:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("HTTP status {status:?}, body {body:?}");
    }
    Ok(body.to_owned())
}

/// A network interface as `ip -j -d link` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    /// `veth`, `bridge`, ... ; empty for devices without one (`lo`).
    pub kind: String,
}

/// The links in the named netns (`ip -n NAME -j -d link show`).
pub fn links(ip: &Path, netns: &str) -> Result<Vec<Link>> {
    let out = cmd::run(
        Command::new(ip).args(["-n", netns, "-j", "-d", "link", "show"]),
        Duration::from_secs(10),
    )?;
    let parsed: Vec<Value> = serde_json::from_str(&out).context("parse `ip -j link` output")?;
    Ok(parsed
        .iter()
        .map(|l| Link {
            name: l["ifname"].as_str().unwrap_or_default().to_owned(),
            kind: l["linkinfo"]["info_kind"].as_str().unwrap_or_default().to_owned(),
        })
        .collect())
}

/// The IPv4 addresses of `dev` in the named netns.
pub fn ipv4_addresses(ip: &Path, netns: &str, dev: &str) -> Result<Vec<Ipv4Addr>> {
    let out = cmd::run(
        Command::new(ip).args(["-n", netns, "-j", "-4", "addr", "show", "dev", dev]),
        Duration::from_secs(10),
    )?;
    let parsed: Vec<Value> = serde_json::from_str(&out).context("parse `ip -j addr` output")?;
    let mut addrs = Vec::new();
    for link in &parsed {
        for info in link["addr_info"].as_array().into_iter().flatten() {
            if let Some(local) = info["local"].as_str() {
                addrs.push(local.parse().with_context(|| format!("bad address {local:?}"))?);
            }
        }
    }
    Ok(addrs)
}
