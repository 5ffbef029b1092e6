//! WireGuard's cross-platform userspace API (UAPI), the text protocol that
//! `wg show`/`wg set` and weft-agent speak over `/var/run/wireguard/IFACE.sock`:
//!
//! ```text
//! get=1\n\n                        → private_key=…\nlisten_port=…\npublic_key=…\n…errno=0\n\n
//! set=1\nprivate_key=…\npublic_key=…\nallowed_ip=…\n\n → errno=0\n\n
//! ```
//!
//! Keys are lowercase hex. This module only parses and renders (pure, tested
//! without root); the device applies a parsed [`SetRequest`].

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::allowed_ips::Cidr;

pub type Key = [u8; 32];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UapiError {
    #[error("UAPI line {0:?}: not key=value")]
    Syntax(String),
    #[error("UAPI line {0:?}: invalid value")]
    Value(String),
    #[error("UAPI key {0:?} is not known here")]
    UnknownKey(String),
    #[error("UAPI request must start with get=1 or set=1, got {0:?}")]
    Operation(String),
    #[error("UAPI protocol_version {0} is not supported (only 1)")]
    Protocol(String),
}

impl UapiError {
    /// The errno reported back in `errno=N` (what wireguard-go answers: EINVAL
    /// for bad input, EPROTO for an unknown protocol).
    pub fn errno(&self) -> i32 {
        match self {
            UapiError::Protocol(_) => libc::EPROTO,
            _ => libc::EINVAL,
        }
    }
}

/// Changes to one peer, in the order `set=1` gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSet {
    pub public_key: Key,
    pub remove: bool,
    pub update_only: bool,
    /// `Some([0; 32])` removes the preshared key.
    pub preshared_key: Option<Key>,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<u16>,
    pub replace_allowed_ips: bool,
    pub allowed_ips: Vec<Cidr>,
}

/// A parsed `set=1` request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetRequest {
    /// `Some([0; 32])` removes the private key.
    pub private_key: Option<Key>,
    pub listen_port: Option<u16>,
    /// 0 removes the mark.
    pub fwmark: Option<u32>,
    pub replace_peers: bool,
    pub peers: Vec<PeerSet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Get,
    Set(SetRequest),
}

fn parse_key(v: &str, line: &str) -> Result<Key, UapiError> {
    let b = hex::decode(v).map_err(|_| UapiError::Value(line.into()))?;
    Key::try_from(b.as_slice()).map_err(|_| UapiError::Value(line.into()))
}

fn parse_bool(v: &str, line: &str) -> Result<bool, UapiError> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(UapiError::Value(line.into())),
    }
}

fn parse_num<T: std::str::FromStr>(v: &str, line: &str) -> Result<T, UapiError> {
    v.parse().map_err(|_| UapiError::Value(line.into()))
}

/// Parse the lines of one request (without the terminating empty line).
pub fn parse_request<'a>(mut lines: impl Iterator<Item = &'a str>) -> Result<Request, UapiError> {
    match lines.next() {
        Some("get=1") => Ok(Request::Get),
        Some("set=1") => parse_set(lines).map(Request::Set),
        other => Err(UapiError::Operation(other.unwrap_or_default().into())),
    }
}

fn parse_set<'a>(lines: impl Iterator<Item = &'a str>) -> Result<SetRequest, UapiError> {
    let mut req = SetRequest::default();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once('=').ok_or_else(|| UapiError::Syntax(line.into()))?;
        if k == "public_key" {
            req.peers.push(PeerSet {
                public_key: parse_key(v, line)?,
                ..Default::default()
            });
            continue;
        }
        match req.peers.last_mut() {
            None => parse_device_key(&mut req, k, v, line)?,
            Some(p) => parse_peer_key(p, k, v, line)?,
        }
    }
    Ok(req)
}

fn parse_device_key(req: &mut SetRequest, k: &str, v: &str, line: &str) -> Result<(), UapiError> {
    match k {
        "private_key" => req.private_key = Some(parse_key(v, line)?),
        "listen_port" => req.listen_port = Some(parse_num(v, line)?),
        "fwmark" => req.fwmark = Some(if v.is_empty() { 0 } else { parse_num(v, line)? }),
        "replace_peers" => req.replace_peers = parse_bool(v, line)?,
        _ => return Err(UapiError::UnknownKey(k.into())),
    }
    Ok(())
}

fn parse_peer_key(p: &mut PeerSet, k: &str, v: &str, line: &str) -> Result<(), UapiError> {
    match k {
        "remove" => p.remove = parse_bool(v, line)?,
        "update_only" => p.update_only = parse_bool(v, line)?,
        "preshared_key" => p.preshared_key = Some(parse_key(v, line)?),
        "endpoint" => p.endpoint = Some(parse_num(v, line)?),
        "persistent_keepalive_interval" => p.persistent_keepalive = Some(parse_num(v, line)?),
        "replace_allowed_ips" => p.replace_allowed_ips = parse_bool(v, line)?,
        "allowed_ip" => p.allowed_ips.push(parse_num(v, line)?),
        "protocol_version" if v == "1" => {}
        "protocol_version" => return Err(UapiError::Protocol(v.into())),
        _ => return Err(UapiError::UnknownKey(k.into())),
    }
    Ok(())
}

/// One peer as `get=1` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerView {
    pub public_key: Key,
    pub preshared_key: Option<Key>,
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: u16,
    pub allowed_ips: Vec<Cidr>,
}

/// The device as `get=1` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceView {
    pub private_key: Option<Key>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: Vec<PeerView>,
}

/// The answer to `get=1`, in wireguard-go's order, ending with `errno=0` and
/// the empty line.
pub fn render_get(d: &DeviceView) -> String {
    let mut s = String::new();
    if let Some(k) = &d.private_key {
        let _ = writeln!(s, "private_key={}", hex::encode(k));
    }
    if d.listen_port != 0 {
        let _ = writeln!(s, "listen_port={}", d.listen_port);
    }
    if d.fwmark != 0 {
        let _ = writeln!(s, "fwmark={}", d.fwmark);
    }
    for p in &d.peers {
        render_peer(&mut s, p);
    }
    s.push_str("errno=0\n\n");
    s
}

fn render_peer(s: &mut String, p: &PeerView) {
    let _ = writeln!(s, "public_key={}", hex::encode(p.public_key));
    let _ = writeln!(s, "preshared_key={}", hex::encode(p.preshared_key.unwrap_or_default()));
    let _ = writeln!(s, "protocol_version=1");
    if let Some(e) = &p.endpoint {
        let _ = writeln!(s, "endpoint={e}");
    }
    let hs = p
        .last_handshake
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    let _ = writeln!(s, "last_handshake_time_sec={}", hs.as_secs());
    let _ = writeln!(s, "last_handshake_time_nsec={}", hs.subsec_nanos());
    let _ = writeln!(s, "tx_bytes={}", p.tx_bytes);
    let _ = writeln!(s, "rx_bytes={}", p.rx_bytes);
    let _ = writeln!(s, "persistent_keepalive_interval={}", p.persistent_keepalive);
    for ip in &p.allowed_ips {
        let _ = writeln!(s, "allowed_ip={ip}");
    }
}

/// The answer to `set=1`.
pub fn render_errno(errno: i32) -> String {
    format!("errno={errno}\n\n")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const K1: &str = "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a";
    const K2: &str = "58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376";

    fn key(h: &str) -> Key {
        parse_key(h, h).unwrap()
    }

    #[test]
    fn get_is_recognised() {
        assert_eq!(parse_request(["get=1"].into_iter()), Ok(Request::Get));
        assert!(matches!(
            parse_request(["bogus=1"].into_iter()),
            Err(UapiError::Operation(_))
        ));
    }

    #[test]
    fn set_with_device_and_peer_keys_is_parsed_in_order() {
        let text = format!(
            "set=1\nprivate_key={K1}\nlisten_port=51820\nfwmark=0\nreplace_peers=true\n\
             public_key={K2}\nupdate_only=false\npreshared_key={K1}\nendpoint=[fd00::2]:51821\n\
             persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.244.1.7/24\n\
             allowed_ip=fd00:1::/64\nprotocol_version=1\n\
             public_key={K1}\nremove=true\n"
        );
        let got = parse_request(text.lines()).unwrap();
        let want = SetRequest {
            private_key: Some(key(K1)),
            listen_port: Some(51820),
            fwmark: Some(0),
            replace_peers: true,
            peers: vec![
                PeerSet {
                    public_key: key(K2),
                    preshared_key: Some(key(K1)),
                    endpoint: Some("[fd00::2]:51821".parse().unwrap()),
                    persistent_keepalive: Some(25),
                    replace_allowed_ips: true,
                    allowed_ips: vec!["10.244.1.0/24".parse().unwrap(), "fd00:1::/64".parse().unwrap()],
                    ..Default::default()
                },
                PeerSet {
                    public_key: key(K1),
                    remove: true,
                    ..Default::default()
                },
            ],
        };
        assert_eq!(got, Request::Set(want));
    }

    #[test]
    fn bad_set_lines_are_rejected_with_einval_or_eproto() {
        let cases = [
            ("set=1\nprivate_key=zz".to_string(), libc::EINVAL),
            ("set=1\nlisten_port=70000".to_string(), libc::EINVAL),
            ("set=1\nnokey".to_string(), libc::EINVAL),
            ("set=1\nendpoint=1.2.3.4:5".to_string(), libc::EINVAL),
            (format!("set=1\npublic_key={K1}\nallowed_ip=10.0.0.0/40"), libc::EINVAL),
            (format!("set=1\npublic_key={K1}\nendpoint=nohost"), libc::EINVAL),
            (format!("set=1\npublic_key={K1}\nprotocol_version=2"), libc::EPROTO),
        ];
        for (text, errno) in cases {
            let err = parse_request(text.lines()).unwrap_err();
            assert_eq!(err.errno(), errno, "{text:?}: {err}");
        }
    }

    #[test]
    fn get_renders_wireguard_go_fields() {
        let d = DeviceView {
            private_key: Some(key(K1)),
            listen_port: 51820,
            fwmark: 0,
            peers: vec![PeerView {
                public_key: key(K2),
                preshared_key: None,
                endpoint: Some("192.0.2.1:51820".parse().unwrap()),
                last_handshake: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5)),
                rx_bytes: 10,
                tx_bytes: 20,
                persistent_keepalive: 0,
                allowed_ips: vec!["10.244.1.0/24".parse().unwrap()],
            }],
        };
        let want = format!(
            "private_key={K1}\nlisten_port=51820\npublic_key={K2}\npreshared_key={}\nprotocol_version=1\n\
             endpoint=192.0.2.1:51820\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n\
             tx_bytes=20\nrx_bytes=10\npersistent_keepalive_interval=0\nallowed_ip=10.244.1.0/24\nerrno=0\n\n",
            "0".repeat(64)
        );
        assert_eq!(render_get(&d), want);
    }

    #[test]
    fn an_empty_device_renders_only_errno() {
        assert_eq!(render_get(&DeviceView::default()), "errno=0\n\n");
        assert_eq!(render_errno(22), "errno=22\n\n");
    }
}
