//! Running the emulator as its own process (`weft-lab apiserver`).
//!
//! Listeners are bound before the tokio runtime starts. A listener written
//! `NETNS@ADDR` is bound from a short-lived thread inside that named network
//! namespace; the socket stays in that namespace while the process serves it
//! from the host. The actual addresses (port 0 resolved) are written to
//! `STATE/listening.json` by atomic rename, which is the readiness signal.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use super::{Emulator, EmulatorConfig};
use crate::lab::netns;

/// File in the state directory with the bound addresses and the pid.
pub const LISTENING_FILE: &str = "listening.json";

/// One `--listen` value: an address, optionally inside a named netns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    pub netns: Option<String>,
    pub addr: SocketAddr,
}

impl std::str::FromStr for ListenSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (netns, addr) = match s.split_once('@') {
            Some((ns, a)) => (Some(ns.to_string()), a),
            None => (None, s),
        };
        let addr = addr
            .parse()
            .with_context(|| format!("listen address {addr:?} (want IP:PORT or NETNS@IP:PORT)"))?;
        Ok(ListenSpec { netns, addr })
    }
}

fn bind(spec: &ListenSpec) -> Result<TcpListener> {
    let addr = spec.addr;
    let l = match &spec.netns {
        None => TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?,
        Some(ns) => netns::run_in(ns, move || {
            TcpListener::bind(addr).with_context(|| format!("bind {addr}"))
        })
        .with_context(|| format!("in netns {ns}"))?,
    };
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Bind every listener, announce them, and serve until killed.
/// With a state directory, the objects are kept there across restarts.
pub fn run(listen: &[ListenSpec], state_dir: Option<&Path>, config: EmulatorConfig) -> Result<()> {
    let emulator = match state_dir {
        Some(dir) => Emulator::open(config, dir).context("load the saved objects")?,
        None => Emulator::new(config),
    };
    let std_listeners = listen.iter().map(bind).collect::<Result<Vec<_>>>()?;
    let addrs: Vec<String> = std_listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<std::io::Result<_>>()?;
    if let Some(dir) = state_dir {
        let doc = json!({"addresses": addrs, "pid": std::process::id()});
        let tmp = dir.join(format!("{LISTENING_FILE}.tmp"));
        std::fs::write(&tmp, doc.to_string()).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join(LISTENING_FILE)).context("publish listening.json")?;
    }
    eprintln!(
        "weft-lab apiserver (plain HTTP, no auth) listening on {}",
        addrs.join(", ")
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start tokio")?;
    rt.block_on(async {
        let listeners = std_listeners
            .into_iter()
            .map(tokio::net::TcpListener::from_std)
            .collect::<std::io::Result<Vec<_>>>()?;
        emulator.serve(listeners).await
    })
    .context("serve")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_specs() {
        let s: ListenSpec = "wl.a.sw@172.30.0.1:6443".parse().unwrap();
        assert_eq!(s.netns.as_deref(), Some("wl.a.sw"));
        assert_eq!(s.addr.port(), 6443);
        let s: ListenSpec = "127.0.0.1:0".parse().unwrap();
        assert!(s.netns.is_none());
        assert!("nope".parse::<ListenSpec>().is_err());
    }
}
