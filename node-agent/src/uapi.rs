//! WireGuard's cross-platform userspace API ("UAPI"): `key=value` lines over
//! the unix socket `<dir>/IFACE.sock` that `wireguard-go` (and compatible
//! implementations) serve. `wg show`/`wg set` speak the same protocol.
//!
//! The message packing and parsing are pure and tested without root; the
//! socket I/O is a thin layer on top.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::key::{PrivateKey, PublicKey};
use crate::peers::{PeerChange, PeerState};

#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    #[error("connect to {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talk to {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no answer within {0:?}", TIMEOUT)]
    Timeout { path: String },
    #[error("bad line {line:?} in the device's answer")]
    Parse { line: String },
    #[error("the device refused the change: errno {0}")]
    Errno(i32),
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// What a device reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    pub private_key: Option<PrivateKey>,
    pub listen_port: u16,
    pub peers: Vec<PeerState>,
}

/// A change to a device: its own key and port, and peer changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    pub private_key: Option<PrivateKey>,
    pub listen_port: Option<u16>,
    pub peers: Vec<PeerChange>,
}

impl Update {
    pub fn is_empty(&self) -> bool {
        self.private_key.is_none() && self.listen_port.is_none() && self.peers.is_empty()
    }
}

/// The `set=1` request for `u`.
pub fn render_set(u: &Update) -> String {
    let mut s = String::from("set=1\n");
    if let Some(k) = &u.private_key {
        let _ = writeln!(s, "private_key={}", hex::encode(k.as_bytes()));
    }
    if let Some(p) = u.listen_port {
        let _ = writeln!(s, "listen_port={p}");
    }
    for c in &u.peers {
        match c {
            PeerChange::Remove(k) => {
                let _ = writeln!(s, "public_key={}\nremove=true", hex::encode(k.0));
            }
            PeerChange::Add(p) | PeerChange::Update(p) => {
                let _ = writeln!(s, "public_key={}", hex::encode(p.key.0));
                let _ = writeln!(s, "endpoint={}", p.endpoint);
                let _ = writeln!(s, "replace_allowed_ips=true");
                for ip in &p.allowed_ips {
                    let _ = writeln!(s, "allowed_ip={ip}");
                }
            }
        }
    }
    s.push('\n');
    s
}

fn hex32(v: &str, line: &str) -> Result<[u8; 32], UapiError> {
    let bad = || UapiError::Parse { line: line.into() };
    let b = hex::decode(v).map_err(|_| bad())?;
    <[u8; 32]>::try_from(b.as_slice()).map_err(|_| bad())
}

/// Parse the answer to `get=1` (up to and including `errno=`).
pub fn parse_get(text: &str) -> Result<DeviceState, UapiError> {
    let mut dev = DeviceState::default();
    let mut handshake_sec = 0u64;
    let mut handshake_nsec = 0u32;
    let flush = |peer: &mut Option<PeerState>, dev: &mut DeviceState, sec: &mut u64, nsec: &mut u32| {
        if let Some(mut p) = peer.take() {
            if *sec != 0 || *nsec != 0 {
                p.last_handshake = Some(SystemTime::UNIX_EPOCH + Duration::new(*sec, *nsec));
            }
            dev.peers.push(p);
        }
        (*sec, *nsec) = (0, 0);
    };
    let mut peer: Option<PeerState> = None;
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        let bad = || UapiError::Parse { line: line.into() };
        let (k, v) = line.split_once('=').ok_or_else(bad)?;
        let num = || v.parse::<u64>().map_err(|_| bad());
        match (k, peer.as_mut()) {
            ("errno", _) => {
                let n: i32 = v.parse().map_err(|_| bad())?;
                if n != 0 {
                    return Err(UapiError::Errno(n));
                }
            }
            ("private_key", None) => dev.private_key = Some(PrivateKey::from_bytes(hex32(v, line)?)),
            ("listen_port", None) => dev.listen_port = v.parse().map_err(|_| bad())?,
            ("public_key", _) => {
                flush(&mut peer, &mut dev, &mut handshake_sec, &mut handshake_nsec);
                peer = Some(PeerState {
                    key: Some(PublicKey(hex32(v, line)?)),
                    ..Default::default()
                });
            }
            ("endpoint", Some(p)) => p.endpoint = Some(v.parse::<SocketAddr>().map_err(|_| bad())?),
            ("allowed_ip", Some(p)) => {
                p.allowed_ips.insert(v.parse().map_err(|_| bad())?);
            }
            ("rx_bytes", Some(p)) => p.rx_bytes = num()?,
            ("tx_bytes", Some(p)) => p.tx_bytes = num()?,
            ("last_handshake_time_sec", Some(_)) => handshake_sec = num()?,
            ("last_handshake_time_nsec", Some(_)) => handshake_nsec = num()? as u32,
            // fwmark, protocol_version, preshared_key, keepalive: not used.
            _ => {}
        }
    }
    flush(&mut peer, &mut dev, &mut handshake_sec, &mut handshake_nsec);
    Ok(dev)
}

/// Send one request and collect the answer up to its `errno=` line.
async fn exchange(socket: &Path, request: &str) -> Result<String, UapiError> {
    let path = socket.display().to_string();
    let work = async {
        let mut s = UnixStream::connect(socket).await.map_err(|source| UapiError::Connect {
            path: path.clone(),
            source,
        })?;
        let io = |source| UapiError::Io {
            path: path.clone(),
            source,
        };
        s.write_all(request.as_bytes()).await.map_err(io)?;
        let mut r = BufReader::new(s);
        let mut out = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.map_err(io)? == 0 {
                break;
            }
            let last = line.starts_with("errno=");
            out.push_str(&line);
            if last {
                break;
            }
        }
        Ok(out)
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| UapiError::Timeout { path: path.clone() })?
}

/// `wg show IFACE dump`, over UAPI.
pub async fn get(socket: &Path) -> Result<DeviceState, UapiError> {
    parse_get(&exchange(socket, "get=1\n\n").await?)
}

/// `wg set IFACE ...`, over UAPI.
pub async fn set(socket: &Path, u: &Update) -> Result<(), UapiError> {
    parse_get(&exchange(socket, &render_set(u)).await?).map(drop)
}

/// Peers' allowed IPs as a set (used by the kernel backend's conversion too).
pub fn ip_set(ips: impl IntoIterator<Item = ipnetwork::IpNetwork>) -> BTreeSet<ipnetwork::IpNetwork> {
    ips.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::PeerSpec;

    #[test]
    fn set_request_golden() {
        let spec = PeerSpec {
            node: "n2".into(),
            key: PublicKey([0xab; 32]),
            endpoint: "172.30.0.12:51820".parse().unwrap(),
            allowed_ips: ip_set(["10.244.2.0/24".parse().unwrap(), "fd00:10:244:2::/64".parse().unwrap()]),
        };
        let u = Update {
            private_key: Some(PrivateKey::from_bytes([1; 32])),
            listen_port: Some(51820),
            peers: vec![PeerChange::Remove(PublicKey([0xcd; 32])), PeerChange::Add(spec)],
        };
        let want = format!(
            "set=1\nprivate_key={}\nlisten_port=51820\npublic_key={}\nremove=true\npublic_key={}\n\
             endpoint=172.30.0.12:51820\nreplace_allowed_ips=true\nallowed_ip=10.244.2.0/24\n\
             allowed_ip=fd00:10:244:2::/64\n\n",
            "01".repeat(32),
            "cd".repeat(32),
            "ab".repeat(32)
        );
        assert_eq!(render_set(&u), want);
    }

    #[test]
    fn get_answer_parses() {
        let text = format!(
            "private_key={}\nlisten_port=51820\npublic_key={}\npreshared_key={}\nprotocol_version=1\n\
             endpoint=[fd00::2]:51820\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n\
             tx_bytes=100\nrx_bytes=200\npersistent_keepalive_interval=0\nallowed_ip=10.244.2.0/24\n\
             allowed_ip=fd00:10:244:2::/64\npublic_key={}\nendpoint=172.30.0.13:51820\n\
             last_handshake_time_sec=0\nlast_handshake_time_nsec=0\nerrno=0\n\n",
            "01".repeat(32),
            "ab".repeat(32),
            "00".repeat(32),
            "cd".repeat(32)
        );
        let d = parse_get(&text).unwrap();
        assert_eq!(d.private_key, Some(PrivateKey::from_bytes([1; 32])));
        assert_eq!(d.listen_port, 51820);
        assert_eq!(d.peers.len(), 2);
        assert_eq!(d.peers[0].key, Some(PublicKey([0xab; 32])));
        assert_eq!(d.peers[0].allowed_ips.len(), 2);
        assert_eq!(d.peers[0].rx_bytes, 200);
        assert!(d.peers[0].last_handshake.is_some());
        assert_eq!(d.peers[1].last_handshake, None);
        assert_eq!(d.peers[1].endpoint.unwrap().to_string(), "172.30.0.13:51820");
    }

    #[test]
    fn bad_answers_are_errors() {
        assert!(matches!(parse_get("errno=22\n\n"), Err(UapiError::Errno(22))));
        assert!(matches!(parse_get("listen_port=x\n"), Err(UapiError::Parse { .. })));
        assert!(matches!(parse_get("public_key=abcd\n"), Err(UapiError::Parse { .. })));
        assert!(matches!(parse_get("garbage\n"), Err(UapiError::Parse { .. })));
        // An empty device.
        assert_eq!(parse_get("listen_port=0\nerrno=0\n\n").unwrap(), DeviceState::default());
    }
}
