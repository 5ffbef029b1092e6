//! The WireGuard device: configuration (changed through UAPI) and the
//! immutable snapshot the data path reads.
//!
//! The data path never takes the configuration lock: each thread clones the
//! current `Arc<Snapshot>` once per batch (one uncontended read lock), then
//! locks only the one peer it encrypts or decrypts for (boringtun's `Tunn`
//! needs `&mut`), once per TUN read or per received datagram.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use boringtun::x25519::{PublicKey, StaticSecret};
use socket2::{Domain, Protocol, Socket, Type};

use crate::allowed_ips::{AllowedIps, Cidr};
use crate::sys;
use crate::uapi::{DeviceView, Key, PeerSet, PeerView, SetRequest};

/// Handshakes per second before the device asks for cookies (as boringtun's device).
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// Socket buffers large enough for a few 64 KB GSO batches in flight.
const SOCKET_BUFFER: usize = 4 << 20;
/// Receivers wake at least this often to notice a rebound socket.
const RECV_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("bind UDP port {port}: {source}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

impl DeviceError {
    /// The errno reported to UAPI clients.
    pub fn errno(&self) -> i32 {
        match self {
            DeviceError::Bind { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// The UDP sockets of the device: IPv4 and (when the host has IPv6) IPv6 on the same port.
pub struct Sockets {
    pub v4: Socket,
    pub v6: Option<Socket>,
    pub port: u16,
}

impl Sockets {
    /// `port` 0 picks a free port (for v4; v6 then takes the same one).
    fn bind(port: u16, fwmark: u32) -> Result<Self, DeviceError> {
        let err = |source| DeviceError::Bind { port, source };
        let v4 = udp_socket(Domain::IPV4, SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), fwmark).map_err(err)?;
        let port = v4.local_addr().map_err(err)?.as_socket().map_or(port, |a| a.port());
        let v6 = udp_socket(Domain::IPV6, SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), fwmark).ok();
        Ok(Sockets { v4, v6, port })
    }

    pub fn for_addr(&self, a: &SocketAddr) -> Option<&Socket> {
        match a {
            SocketAddr::V4(_) => Some(&self.v4),
            SocketAddr::V6(_) => self.v6.as_ref(),
        }
    }

    /// `SO_MARK` on both sockets (0 clears it), for policy routing of the tunnel's own traffic.
    fn set_mark(&self, mark: u32) -> std::io::Result<()> {
        self.v4.set_mark(mark)?;
        self.v6.as_ref().map_or(Ok(()), |s| s.set_mark(mark))
    }

    /// Wake receivers blocked on these sockets (shutdown makes a blocked
    /// recvmsg return 0, even on an unconnected UDP socket).
    fn close(&self) {
        let _ = self.v4.shutdown(std::net::Shutdown::Both);
        if let Some(s) = &self.v6 {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn udp_socket(domain: Domain, addr: SocketAddr, fwmark: u32) -> std::io::Result<Socket> {
    let s = Socket::new(domain, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    if domain == Domain::IPV6 {
        s.set_only_v6(true)?;
    }
    if fwmark != 0 {
        s.set_mark(fwmark)?;
    }
    // Best effort: larger buffers (capped by net.core.[rw]mem_max without CAP_NET_ADMIN).
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.set_read_timeout(Some(RECV_TIMEOUT))?;
    s.bind(&addr.into())?;
    // Coalesced receives: absent on old kernels, then datagrams come one by one.
    let _ = sys::enable_udp_gro(s.as_raw_fd());
    Ok(s)
}

/// A peer's protocol state, locked by whichever thread uses it.
pub struct PeerState {
    /// None until the device has a private key.
    pub tunn: Option<Tunn>,
    pub endpoint: Option<SocketAddr>,
}

pub struct Peer {
    pub public_key: Key,
    /// Our local index (upper 24 bits of every session index boringtun makes).
    pub index: u32,
    state: Mutex<PeerState>,
    pub rx_bytes: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Milliseconds since device start of the last packet sent (0 = never).
    pub last_sent_ms: AtomicU64,
}

impl Peer {
    pub fn lock(&self) -> MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the data path reads: published anew after every change.
pub struct Snapshot {
    pub sockets: Arc<Sockets>,
    /// Our static key pair, to identify the sender of a handshake initiation.
    pub keys: Option<(StaticSecret, PublicKey)>,
    pub by_index: HashMap<u32, Arc<Peer>>,
    pub by_key: HashMap<Key, Arc<Peer>>,
    pub routes: AllowedIps<Arc<Peer>>,
    pub rate_limiter: Option<Arc<RateLimiter>>,
    /// (peer, persistent keepalive seconds) for the timer thread.
    pub keepalives: Vec<(Arc<Peer>, u16)>,
}

struct PeerEntry {
    peer: Arc<Peer>,
    allowed_ips: Vec<Cidr>,
    keepalive: u16,
    psk: Option<Key>,
}

struct Config {
    private_key: Option<StaticSecret>,
    listen_port: u16,
    fwmark: u32,
    sockets: Arc<Sockets>,
    rate_limiter: Option<Arc<RateLimiter>>,
    peers: Vec<PeerEntry>,
    next_index: u32,
}

pub struct Device {
    config: Mutex<Config>,
    snapshot: RwLock<Arc<Snapshot>>,
    start: Instant,
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    u32::from_ne_bytes(b)
}

impl Device {
    /// A device with no key and no peers, listening on a random port (until
    /// UAPI sets `listen_port`).
    pub fn new() -> Result<Self, DeviceError> {
        let cfg = Config {
            private_key: None,
            listen_port: 0,
            fwmark: 0,
            sockets: Arc::new(Sockets::bind(0, 0)?),
            rate_limiter: None,
            peers: Vec::new(),
            next_index: random_u32() & 0xff_ffff,
        };
        let snap = build_snapshot(&cfg);
        Ok(Device {
            config: Mutex::new(cfg),
            snapshot: RwLock::new(Arc::new(snap)),
            start: Instant::now(),
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Milliseconds since the device started (never 0).
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }

    fn lock_config(&self) -> MutexGuard<'_, Config> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `get=1`
    pub fn view(&self) -> DeviceView {
        let cfg = self.lock_config();
        DeviceView {
            private_key: cfg.private_key.as_ref().map(|k| k.to_bytes()),
            listen_port: cfg.sockets.port,
            fwmark: cfg.fwmark,
            peers: cfg.peers.iter().map(peer_view).collect(),
        }
    }

    /// `set=1`: apply the changes in order, then publish a new snapshot.
    pub fn apply(&self, req: &SetRequest) -> Result<(), DeviceError> {
        let mut cfg = self.lock_config();
        let result = apply_locked(&mut cfg, req);
        let snap = Arc::new(build_snapshot(&cfg));
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = snap;
        result
    }
}

fn peer_view(e: &PeerEntry) -> PeerView {
    let st = e.peer.lock();
    let since = st.tunn.as_ref().and_then(|t| t.stats().0);
    PeerView {
        public_key: e.peer.public_key,
        preshared_key: e.psk,
        endpoint: st.endpoint,
        last_handshake: since.and_then(|d| SystemTime::now().checked_sub(d)),
        rx_bytes: e.peer.rx_bytes.load(Ordering::Relaxed),
        tx_bytes: e.peer.tx_bytes.load(Ordering::Relaxed),
        persistent_keepalive: e.keepalive,
        allowed_ips: e.allowed_ips.clone(),
    }
}

fn apply_locked(cfg: &mut Config, req: &SetRequest) -> Result<(), DeviceError> {
    if let Some(k) = req.private_key {
        set_private_key(cfg, k);
    }
    let port = req.listen_port.unwrap_or(cfg.listen_port);
    let mark = req.fwmark.unwrap_or(cfg.fwmark);
    if port == cfg.listen_port && mark != cfg.fwmark {
        // Same port: re-mark the bound sockets (a second bind would fail with EADDRINUSE).
        cfg.sockets
            .set_mark(mark)
            .map_err(|source| DeviceError::Bind { port, source })?;
        cfg.fwmark = mark;
    } else if port != cfg.listen_port {
        let new = Sockets::bind(port, mark)?;
        cfg.sockets.close();
        cfg.sockets = Arc::new(new);
        (cfg.listen_port, cfg.fwmark) = (port, mark);
    }
    if req.replace_peers {
        cfg.peers.clear();
    }
    for p in &req.peers {
        apply_peer(cfg, p);
    }
    Ok(())
}

/// Our key changes: every peer's handshake state is rebuilt for it; an
/// all-zero key removes it (the device then drops all traffic).
fn set_private_key(cfg: &mut Config, k: Key) {
    if k == [0; 32] {
        cfg.private_key = None;
        cfg.rate_limiter = None;
        for e in &cfg.peers {
            e.peer.lock().tunn = None;
        }
        return;
    }
    let secret = StaticSecret::from(k);
    let public = PublicKey::from(&secret);
    let rl = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
    cfg.private_key = Some(secret.clone());
    cfg.rate_limiter = Some(rl.clone());
    // A peer with our own public key makes no sense (wireguard-go drops it too).
    cfg.peers.retain(|e| e.peer.public_key != *public.as_bytes());
    for e in &cfg.peers {
        let mut st = e.peer.lock();
        match st.tunn.as_mut() {
            Some(t) => t.set_static_private(secret.clone(), public, Some(rl.clone())),
            None => st.tunn = Some(new_tunn(&secret, &rl, e.peer.public_key, e.psk, e.peer.index)),
        }
    }
}

fn new_tunn(secret: &StaticSecret, rl: &Arc<RateLimiter>, peer: Key, psk: Option<Key>, index: u32) -> Tunn {
    // Persistent keepalive is driven by our timer thread, so it can change
    // without rebuilding the Tunn (and losing its session).
    Tunn::new(
        secret.clone(),
        PublicKey::from(peer),
        psk,
        None,
        index,
        Some(rl.clone()),
    )
}

fn apply_peer(cfg: &mut Config, p: &PeerSet) {
    let pos = cfg.peers.iter().position(|e| e.peer.public_key == p.public_key);
    if p.remove {
        if let Some(i) = pos {
            cfg.peers.remove(i);
        }
        return;
    }
    let is_self = cfg
        .private_key
        .as_ref()
        .is_some_and(|k| *PublicKey::from(k).as_bytes() == p.public_key);
    let i = match pos {
        Some(i) => i,
        None if p.update_only || is_self => return,
        None => add_peer(cfg, p.public_key),
    };
    if let Some(psk) = p.preshared_key {
        let psk = (psk != [0; 32]).then_some(psk);
        if cfg.peers[i].psk != psk {
            cfg.peers[i].psk = psk;
            // boringtun takes the PSK at construction: start a fresh Tunn.
            if let (Some(sk), Some(rl)) = (&cfg.private_key, &cfg.rate_limiter) {
                let e = &cfg.peers[i];
                e.peer.lock().tunn = Some(new_tunn(sk, rl, e.peer.public_key, psk, e.peer.index));
            }
        }
    }
    let e = &mut cfg.peers[i];
    if let Some(ep) = p.endpoint {
        e.peer.lock().endpoint = Some(ep);
    }
    if let Some(k) = p.persistent_keepalive {
        if k != e.keepalive {
            // As wireguard-go: a newly set keepalive goes out at once.
            e.peer.last_sent_ms.store(0, Ordering::Relaxed);
        }
        e.keepalive = k;
    }
    if p.replace_allowed_ips {
        e.allowed_ips.clear();
    }
    for c in &p.allowed_ips {
        // A prefix belongs to one peer: adding it here takes it from the others.
        for (j, other) in cfg.peers.iter_mut().enumerate() {
            if j != i {
                other.allowed_ips.retain(|x| x != c);
            }
        }
        let e = &mut cfg.peers[i];
        if !e.allowed_ips.contains(c) {
            e.allowed_ips.push(*c);
        }
    }
}

fn add_peer(cfg: &mut Config, key: Key) -> usize {
    let index = cfg.next_index;
    cfg.next_index = (cfg.next_index + 1) & 0xff_ffff;
    let tunn = match (&cfg.private_key, &cfg.rate_limiter) {
        (Some(sk), Some(rl)) => Some(new_tunn(sk, rl, key, None, index)),
        _ => None,
    };
    let peer = Arc::new(Peer {
        public_key: key,
        index,
        state: Mutex::new(PeerState { tunn, endpoint: None }),
        rx_bytes: AtomicU64::new(0),
        tx_bytes: AtomicU64::new(0),
        last_sent_ms: AtomicU64::new(0),
    });
    cfg.peers.push(PeerEntry {
        peer,
        allowed_ips: Vec::new(),
        keepalive: 0,
        psk: None,
    });
    cfg.peers.len() - 1
}

fn build_snapshot(cfg: &Config) -> Snapshot {
    let mut routes = AllowedIps::default();
    for e in &cfg.peers {
        for c in &e.allowed_ips {
            routes.insert(c, e.peer.clone());
        }
    }
    Snapshot {
        sockets: cfg.sockets.clone(),
        keys: cfg.private_key.as_ref().map(|k| (k.clone(), PublicKey::from(k))),
        by_index: cfg.peers.iter().map(|e| (e.peer.index, e.peer.clone())).collect(),
        by_key: cfg.peers.iter().map(|e| (e.peer.public_key, e.peer.clone())).collect(),
        routes,
        rate_limiter: cfg.rate_limiter.clone(),
        keepalives: cfg
            .peers
            .iter()
            .filter(|e| e.keepalive > 0)
            .map(|e| (e.peer.clone(), e.keepalive))
            .collect(),
    }
}

impl Snapshot {
    /// Is `src` (the inner source address of a decrypted packet) one of `peer`'s allowed IPs?
    pub fn source_allowed(&self, peer: &Arc<Peer>, src: IpAddr) -> bool {
        self.routes.lookup(&src).is_some_and(|p| Arc::ptr_eq(p, peer))
    }
}
