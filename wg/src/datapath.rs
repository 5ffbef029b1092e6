//! The packet loops: TUN → UDP (encrypt), UDP → TUN (decrypt), and timers.
//!
//! Each runs on its own thread with its own buffers. Syscalls are batched:
//! - a TUN read returns up to 64 KB of one TCP flow (TSO, see `offload`), which
//!   we cut into tunnel-MTU packets, encrypt, and send with one or two UDP GSO
//!   `sendmsg` calls (the kernel splits them into datagrams, or, over veth,
//!   passes the batch whole to the receiver);
//! - a UDP read returns up to 64 KB of datagrams from one sender (UDP GRO),
//!   which we decrypt and write to the TUN as few TCP super-segments as the
//!   flow allows.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};

use crate::device::{Device, Peer, PeerState, Snapshot};
use crate::offload::{self, VnetHdr, F_NEEDS_CSUM, GSO_NONE, VNET_HDR_LEN};
use crate::sys;

/// Largest TUN read: virtio header + a 64 KB super-segment.
const TUN_BUF: usize = VNET_HDR_LEN + 65536;
/// WireGuard data message overhead: type, index, counter, AEAD tag.
const DATA_OVERHEAD: usize = 32;
/// Room for a handshake message boringtun may write instead of data.
const MIN_OUT: usize = 148;
/// Per GSO send: at most 64 segments (UDP_MAX_SEGMENTS on older kernels) and
/// the UDP payload of one IPv4/IPv6 datagram.
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65000;
const TIMER_TICK: Duration = Duration::from_millis(250);

const MSG_DATA: u8 = 4;

/// Encrypted datagrams waiting to be sent to one endpoint, grouped into GSO
/// sends of equal-sized segments (only the last of a group may be shorter).
struct Outbox {
    buf: Vec<u8>,
    /// (start, end, segment size) of each send.
    sends: Vec<(usize, usize, usize)>,
    /// Handshake/keepalive messages produced on the way, sent one by one.
    control: Vec<Vec<u8>>,
}

impl Outbox {
    fn new() -> Self {
        Outbox {
            buf: Vec::with_capacity(2 * 65536 + 4096),
            sends: Vec::new(),
            control: Vec::new(),
        }
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.sends.clear();
        self.control.clear();
    }

    /// Encrypt `pkt` with `tunn` and queue the result.
    fn encrypt(&mut self, tunn: &mut Tunn, pkt: &[u8]) {
        let start = self.buf.len();
        self.buf.resize(start + (pkt.len() + DATA_OVERHEAD).max(MIN_OUT), 0);
        let len = match tunn.encapsulate(pkt, &mut self.buf[start..]) {
            TunnResult::WriteToNetwork(out) => out.len(),
            _ => 0,
        };
        self.buf.truncate(start + len);
        if len == 0 {
            return;
        }
        if self.buf[start] != MSG_DATA {
            // No session yet: boringtun queued the packet and gave us a handshake initiation.
            self.control.push(self.buf[start..].to_vec());
            self.buf.truncate(start);
            return;
        }
        self.push_datagram(start, len);
    }

    /// Account a datagram of `len` bytes just appended at `start`.
    fn push_datagram(&mut self, start: usize, len: usize) {
        if let Some(last) = self.sends.last_mut() {
            let (s, e, seg) = *last;
            let fits = (e - s) % seg == 0 && len <= seg && e - s + len <= GSO_MAX_BYTES;
            if fits && (e - s) / seg < GSO_MAX_SEGMENTS {
                last.1 = start + len;
                return;
            }
        }
        self.sends.push((start, start + len, len));
    }

    /// Send everything to `dst`; returns the bytes sent.
    fn flush(&self, sockets: &crate::device::Sockets, dst: &SocketAddr, gso: &mut bool) -> u64 {
        let Some(sock) = sockets.for_addr(dst) else { return 0 };
        let fd = sock.as_raw_fd();
        let mut sent = 0;
        for c in &self.control {
            sent += sys::send_gso(fd, c, dst, None).map_or(0, |n| n as u64);
        }
        for &(s, e, seg) in &self.sends {
            sent += send_batch(fd, &self.buf[s..e], seg, dst, gso);
        }
        sent
    }
}

/// One GSO send, or datagram by datagram if the kernel refuses GSO (then
/// never tried again).
fn send_batch(fd: i32, data: &[u8], seg: usize, dst: &SocketAddr, gso: &mut bool) -> u64 {
    if *gso && data.len() > seg {
        match sys::send_gso(fd, data, dst, Some(seg as u16)) {
            Ok(n) => return n as u64,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT)) => {
                eprintln!("weft-wg: UDP GSO refused ({e}); sending datagrams one by one");
                *gso = false;
            }
            Err(_) => return 0,
        }
    }
    data.chunks(seg)
        .map(|d| sys::send_gso(fd, d, dst, None).map_or(0, |n| n as u64))
        .sum()
}

/// Destination address of an IP packet.
fn dst_addr(p: &[u8]) -> Option<std::net::IpAddr> {
    Tunn::dst_address(p)
}

/// TUN → UDP, forever (returns only on a TUN read error).
pub fn tun_to_udp(dev: &Device, tun: &File) -> io::Result<()> {
    let mut buf = vec![0u8; TUN_BUF];
    let mut scratch = vec![0u8; 65536];
    let mut out = Outbox::new();
    let mut gso = true;
    loop {
        let n = match (&*tun).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n <= VNET_HDR_LEN {
            continue;
        }
        let snap = dev.snapshot();
        let (hdr, pkt) = buf[..n].split_at_mut(VNET_HDR_LEN);
        let Ok(h) = VnetHdr::parse(hdr) else { continue };
        let Some(peer) = dst_addr(pkt).and_then(|a| snap.routes.lookup(&a)).cloned() else {
            continue;
        };
        out.clear();
        let Some(dst) = encrypt_read(&peer, &h, pkt, &mut scratch, &mut out) else {
            continue;
        };
        let sent = out.flush(&snap.sockets, &dst, &mut gso);
        peer.tx_bytes.fetch_add(sent, Ordering::Relaxed);
        peer.last_sent_ms.store(dev.now_ms(), Ordering::Relaxed);
    }
}

/// Encrypt one TUN read (a packet or a super-segment) for `peer` into `out`;
/// returns where to send it.
fn encrypt_read(peer: &Peer, h: &VnetHdr, pkt: &mut [u8], scratch: &mut [u8], out: &mut Outbox) -> Option<SocketAddr> {
    let mut st = peer.lock();
    let PeerState { tunn, endpoint } = &mut *st;
    let (tunn, dst) = (tunn.as_mut()?, (*endpoint)?);
    if h.gso_type == GSO_NONE {
        if h.flags & F_NEEDS_CSUM != 0 {
            offload::complete_checksum(pkt, h).ok()?;
        }
        out.encrypt(tunn, pkt);
    } else {
        offload::segment_tcp(pkt, h, scratch, |seg| out.encrypt(tunn, seg)).ok()?;
    }
    Some(dst)
}

/// Decrypted packets of one UDP read, each preceded by room for a virtio header.
struct Inbox {
    buf: Vec<u8>,
    /// (start of the virtio header, end of the packet)
    pkts: Vec<(usize, usize)>,
    merged: Vec<u8>,
}

impl Inbox {
    fn new() -> Self {
        Inbox {
            buf: Vec::with_capacity(2 * 65536),
            pkts: Vec::new(),
            merged: Vec::with_capacity(65536 + VNET_HDR_LEN),
        }
    }

    /// Write everything to the TUN: runs of one TCP flow as one super-segment.
    fn flush(&mut self, tun: &File) {
        let slices: Vec<&[u8]> = self.pkts.iter().map(|&(s, e)| &self.buf[s + VNET_HDR_LEN..e]).collect();
        for run in offload::coalesce_runs(&slices) {
            // Write errors (TUN down, queue full) drop the packet, as a NIC would.
            if run.len() == 1 {
                let (s, e) = self.pkts[run.start];
                let _ = (&*tun).write(&self.buf[s..e]);
            } else {
                offload::write_coalesced(&slices[run], &mut self.merged);
                let _ = (&*tun).write(&self.merged);
            }
        }
        self.buf.clear();
        self.pkts.clear();
    }
}

/// UDP → TUN for one socket family (`v6`), forever.
pub fn udp_to_tun(dev: &Device, tun: &File, v6: bool) -> io::Result<()> {
    let mut buf = vec![0u8; 65536 + 1024];
    let mut inbox = Inbox::new();
    let mut reply = vec![0u8; 2048];
    loop {
        let snap = dev.snapshot();
        let sockets = snap.sockets.clone();
        let sock = if v6 { sockets.v6.as_ref() } else { Some(&sockets.v4) };
        let Some(sock) = sock else {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        let (n, src, seg) = match sys::recv_gro(sock.as_raw_fd(), &mut buf) {
            Ok((_, None, _)) | Ok((0, _, _)) => continue,
            Ok((n, Some(src), seg)) => (n, src, seg),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => continue,
            // Connection-refused style errors from earlier sends are reported here; keep going.
            Err(_) => continue,
        };
        // The configuration now, not the one from before recv blocked: a
        // peer added meanwhile (its handshake answer is often the very next
        // datagram) must be found, or the handshake is lost and WireGuard
        // retries only after 5 s.
        let snap = dev.snapshot();
        for d in buf[..n].chunks(seg.unwrap_or(n)) {
            receive(dev, &snap, sock, src, d, &mut inbox, &mut reply);
        }
        inbox.flush(tun);
    }
}

/// The peer a received message is for: by our index in it, or for a
/// handshake initiation, by decrypting the initiator's static key.
fn find_peer(snap: &Snapshot, d: &[u8]) -> Option<Arc<Peer>> {
    match Tunn::parse_incoming_packet(d).ok()? {
        Packet::HandshakeInit(init) => {
            let (sk, pk) = snap.keys.as_ref()?;
            let half = parse_handshake_anon(sk, pk, &init).ok()?;
            snap.by_key.get(&half.peer_static_public).cloned()
        }
        Packet::HandshakeResponse(p) => snap.by_index.get(&(p.receiver_idx >> 8)).cloned(),
        Packet::PacketCookieReply(p) => snap.by_index.get(&(p.receiver_idx >> 8)).cloned(),
        Packet::PacketData(p) => snap.by_index.get(&(p.receiver_idx >> 8)).cloned(),
    }
}

/// Handle one datagram from `src`.
fn receive(
    dev: &Device,
    snap: &Snapshot,
    sock: &socket2::Socket,
    src: SocketAddr,
    d: &[u8],
    inbox: &mut Inbox,
    reply: &mut [u8],
) {
    if d.first() == Some(&MSG_DATA) {
        if let Some(peer) = find_peer(snap, d) {
            receive_data(snap, &peer, src, d, inbox);
        }
        return;
    }
    let Some(peer) = find_peer(snap, d) else { return };
    let mut st = peer.lock();
    let Some(tunn) = st.tunn.as_mut() else { return };
    let mut sent = 0;
    let mut res = tunn.decapsulate(Some(src.ip()), d, reply);
    // A handshake answer or keepalive, then whatever boringtun queued while
    // it had no session (repeat with an empty datagram until Done).
    while let TunnResult::WriteToNetwork(p) = res {
        sent += sys::send_gso(sock.as_raw_fd(), p, &src, None).map_or(0, |n| n as u64);
        res = tunn.decapsulate(None, &[], reply);
    }
    if !matches!(res, TunnResult::Err(_)) {
        st.endpoint = Some(src);
    }
    drop(st);
    peer.rx_bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
    if sent > 0 {
        peer.tx_bytes.fetch_add(sent, Ordering::Relaxed);
        peer.last_sent_ms.store(dev.now_ms(), Ordering::Relaxed);
    }
}

/// Decrypt a data message into the inbox (dropped unless its inner source is
/// one of the peer's allowed IPs).
fn receive_data(snap: &Snapshot, peer: &Arc<Peer>, src: SocketAddr, d: &[u8], inbox: &mut Inbox) {
    let start = inbox.buf.len();
    inbox.buf.resize(start + VNET_HDR_LEN + d.len(), 0);
    let mut st = peer.lock();
    let Some(tunn) = st.tunn.as_mut() else {
        inbox.buf.truncate(start);
        return;
    };
    let (len, inner_src) = match tunn.decapsulate(Some(src.ip()), d, &mut inbox.buf[start + VNET_HDR_LEN..]) {
        TunnResult::WriteToTunnelV4(p, a) => (p.len(), a.into()),
        TunnResult::WriteToTunnelV6(p, a) => (p.len(), a.into()),
        TunnResult::Done => (0, std::net::IpAddr::from([0, 0, 0, 0])), // keepalive
        _ => {
            inbox.buf.truncate(start);
            return;
        }
    };
    // Authenticated: the peer may have roamed.
    if st.endpoint != Some(src) {
        st.endpoint = Some(src);
    }
    drop(st);
    peer.rx_bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
    if len == 0 || !snap.source_allowed(peer, inner_src) {
        inbox.buf.truncate(start);
        return;
    }
    inbox.buf.truncate(start + VNET_HDR_LEN + len);
    // A zero virtio header: no offload state. The AEAD tag authenticated the
    // packet, but the kernel still checks the inner checksums (cheap).
    inbox.buf[start..start + VNET_HDR_LEN].fill(0);
    inbox.pkts.push((start, start + VNET_HDR_LEN + len));
}

/// Drive boringtun's timers (handshake retries, rekeying, keepalives after
/// receiving) and persistent keepalives, forever.
pub fn timers(dev: &Device) {
    let mut buf = vec![0u8; 2048];
    let mut ticks = 0u64;
    loop {
        std::thread::sleep(TIMER_TICK);
        ticks += 1;
        let snap = dev.snapshot();
        if ticks.is_multiple_of(4) {
            // The shared rate limiter counts handshakes per second.
            if let Some(rl) = &snap.rate_limiter {
                rl.reset_count();
            }
        }
        for peer in snap.by_index.values() {
            let keepalive = snap
                .keepalives
                .iter()
                .find(|(p, _)| Arc::ptr_eq(p, peer))
                .map(|(_, k)| *k);
            tick_peer(dev, &snap, peer, keepalive, &mut buf);
        }
    }
}

fn tick_peer(dev: &Device, snap: &Snapshot, peer: &Peer, keepalive: Option<u16>, buf: &mut [u8]) {
    let mut st = peer.lock();
    let PeerState { tunn, endpoint } = &mut *st;
    let (Some(tunn), Some(dst)) = (tunn.as_mut(), *endpoint) else {
        return;
    };
    let Some(sock) = snap.sockets.for_addr(&dst) else {
        return;
    };
    let mut sent = 0;
    if let TunnResult::WriteToNetwork(p) = tunn.update_timers(buf) {
        sent += sys::send_gso(sock.as_raw_fd(), p, &dst, None).map_or(0, |n| n as u64);
    }
    let last = peer.last_sent_ms.load(Ordering::Relaxed);
    let due = keepalive.is_some_and(|k| last == 0 || dev.now_ms().saturating_sub(last) >= u64::from(k) * 1000);
    if due {
        // An empty data message; without a session boringtun starts a handshake instead.
        if let TunnResult::WriteToNetwork(p) = tunn.encapsulate(&[], buf) {
            sent += sys::send_gso(sock.as_raw_fd(), p, &dst, None).map_or(0, |n| n as u64);
        }
    }
    drop(st);
    if sent > 0 || due {
        peer.tx_bytes.fetch_add(sent, Ordering::Relaxed);
        peer.last_sent_ms.store(dev.now_ms(), Ordering::Relaxed);
    }
}
