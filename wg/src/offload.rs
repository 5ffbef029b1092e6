//! TUN offloads: the `virtio_net_hdr` in front of every packet on a TUN opened
//! with IFF_VNET_HDR, TCP segmentation of the super-segments the kernel hands
//! us (TSO done in userspace, so each piece fits the tunnel MTU), and the
//! reverse: coalescing received TCP segments of one flow into one GSO write.
//!
//! Pure byte manipulation, unit-tested against hand-made packets.

/// Size of `struct virtio_net_hdr` (the TUN default, TUNSETVNETHDRSZ not used).
pub const VNET_HDR_LEN: usize = 10;

/// `csum_start`/`csum_offset` describe a checksum the receiver must finish.
pub const F_NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
/// Added to gso_type when the TCP flow uses ECN (CWR set on the first segment).
pub const GSO_ECN: u8 = 0x80;

const PROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OffloadError {
    #[error("packet shorter than its headers")]
    Truncated,
    #[error("GSO type {0:#x} is not TCP")]
    UnsupportedGso(u8),
    #[error("not an IPv4/IPv6 TCP packet")]
    NotTcp,
}

/// `struct virtio_net_hdr`, in host byte order as TUN uses it (no TUNSETVNETBE).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Result<Self, OffloadError> {
        let b: &[u8; VNET_HDR_LEN] = b
            .get(..VNET_HDR_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(OffloadError::Truncated)?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Ok(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }
}

// --- Internet checksum (RFC 1071) ---------------------------------------------

/// One's complement sum of `data` as big-endian 16-bit words, added to `acc`.
/// Sums 32-bit words into a 64-bit accumulator (the carries fold back in the
/// end, which gives the same result as 16-bit arithmetic, four times faster).
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc + u64::from(u32::from_be_bytes(tail))
}

/// Fold a sum to 16 bits (with end-around carry), not complemented.
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The TCP/UDP pseudo-header sum for a packet whose L4 part is `l4_len` long.
fn pseudo_sum(ip: &[u8], l4_len: usize) -> u64 {
    if ip[0] >> 4 == 4 {
        sum(&ip[12..20], u64::from(PROTO_TCP) + l4_len as u64)
    } else {
        sum(&ip[8..40], u64::from(PROTO_TCP) + l4_len as u64)
    }
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn set_ipv4_checksum(p: &mut [u8]) {
    let ihl = usize::from(p[0] & 0xf) * 4;
    put16(p, 10, 0);
    let c = !fold(sum(&p[..ihl], 0));
    put16(p, 10, c);
}

/// Compute the full TCP checksum of `p` (IP header, TCP at `l4`).
fn set_tcp_checksum(p: &mut [u8], l4: usize) {
    put16(p, l4 + 16, 0);
    let c = !fold(sum(&p[l4..], pseudo_sum(p, p.len() - l4)));
    put16(p, l4 + 16, c);
}

/// Finish a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM): the kernel stored
/// the pseudo-header sum at `csum_start + csum_offset`; sum from `csum_start`
/// to the end and store the complement there (what a NIC does with
/// CHECKSUM_PARTIAL).
pub fn complete_checksum(p: &mut [u8], h: &VnetHdr) -> Result<(), OffloadError> {
    let start = usize::from(h.csum_start);
    let at = start + usize::from(h.csum_offset);
    if at + 2 > p.len() {
        return Err(OffloadError::Truncated);
    }
    let c = !fold(sum(&p[start..], 0));
    put16(p, at, c);
    Ok(())
}

/// IP header length and L4 offset of a TCP packet; checks the protocol.
fn tcp_offsets(p: &[u8]) -> Result<(usize, usize), OffloadError> {
    let l4 = match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 && p[9] == PROTO_TCP => usize::from(p[0] & 0xf) * 4,
        Some(6) if p.len() >= 40 && p[6] == PROTO_TCP => 40,
        _ => return Err(OffloadError::NotTcp),
    };
    if p.len() < l4 + 20 {
        return Err(OffloadError::Truncated);
    }
    let hdrs = l4 + usize::from(p[l4 + 12] >> 4) * 4;
    if p.len() < hdrs {
        return Err(OffloadError::Truncated);
    }
    Ok((l4, hdrs))
}

/// Write the IP length field for a packet now `len` bytes long (IPv4 total
/// length + new ID + header checksum, or the IPv6 payload length).
fn set_ip_len(p: &mut [u8], len: usize, ipv4_id: Option<u16>) {
    if p[0] >> 4 == 4 {
        put16(p, 2, len as u16);
        if let Some(id) = ipv4_id {
            put16(p, 4, id);
        }
        set_ipv4_checksum(p);
    } else {
        put16(p, 4, (len - 40) as u16);
    }
}

/// Split a TCP super-segment into packets of at most `gso_size` payload bytes,
/// each built in `scratch` and handed to `emit` with correct headers and checksums:
/// IPv4 total length/ID (+1 per segment, as the kernel's TSO does)/checksum or
/// IPv6 payload length; TCP sequence number advanced by the payload offset,
/// FIN and PSH only on the last segment, CWR only on the first.
pub fn segment_tcp(p: &[u8], h: &VnetHdr, scratch: &mut [u8], mut emit: impl FnMut(&[u8])) -> Result<(), OffloadError> {
    match h.gso_type & !GSO_ECN {
        GSO_TCPV4 | GSO_TCPV6 => {}
        t => return Err(OffloadError::UnsupportedGso(t)),
    }
    let (l4, hdrs) = tcp_offsets(p)?;
    let mss = usize::from(h.gso_size).max(1);
    let payload = &p[hdrs..];
    let seq0 = get32(p, l4 + 4);
    let id0 = get16(p, 4);
    let n = payload.len().div_ceil(mss);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let len = hdrs + chunk.len();
        let seg = &mut scratch[..len];
        seg[..hdrs].copy_from_slice(&p[..hdrs]);
        seg[hdrs..].copy_from_slice(chunk);
        set_ip_len(seg, len, Some(id0.wrapping_add(i as u16)));
        let seq = seq0.wrapping_add((i * mss) as u32);
        seg[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        if i + 1 < n {
            seg[l4 + 13] &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            seg[l4 + 13] &= !TCP_CWR;
        }
        set_tcp_checksum(seg, l4);
        emit(seg);
    }
    Ok(())
}

// --- receive side: coalescing for one GSO write to the TUN ----------------------

/// A TCP packet's coalescing key facts.
struct TcpInfo {
    l4: usize,
    hdrs: usize,
    seq: u32,
    flags: u8,
}

fn tcp_info(p: &[u8]) -> Option<TcpInfo> {
    let (l4, hdrs) = tcp_offsets(p).ok()?;
    // Only plain IPv4 headers (no options) and no fragments can be merged.
    if p[0] >> 4 == 4 && (l4 != 20 || get16(p, 6) & 0x3fff != 0) {
        return None;
    }
    let total = if p[0] >> 4 == 4 {
        usize::from(get16(p, 2))
    } else {
        usize::from(get16(p, 4)) + 40
    };
    if total != p.len() {
        return None;
    }
    Some(TcpInfo {
        l4,
        hdrs,
        seq: get32(p, l4 + 4),
        flags: p[l4 + 13],
    })
}

/// May `next` be appended to the run that starts with `first` and currently
/// ends at sequence number `end_seq`, each segment carrying `mss` bytes?
/// Same addresses, ports, ACK number, window, options (e.g. timestamps);
/// no SYN/FIN/RST/URG; the previous segment was full and not PSH.
fn can_append(first: &[u8], fi: &TcpInfo, next: &[u8], ni: &TcpInfo, end_seq: u32, mss: usize) -> bool {
    if ni.hdrs != fi.hdrs || ni.seq != end_seq || next.len() - ni.hdrs > mss || next.len() == ni.hdrs {
        return false;
    }
    if ni.flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_CWR) != 0 {
        return false;
    }
    let same_ip = if first[0] >> 4 == 4 {
        first[12..20] == next[12..20] && first[8] == next[8] && first[1] == next[1]
    } else {
        first[8..40] == next[8..40] && first[..4] == next[..4]
    };
    // Ports (l4..l4+4), ACK number and data offset..window (l4+8..l4+16, flags
    // compared separately), urgent pointer and options (l4+18..hdrs).
    let l4 = fi.l4;
    same_ip
        && first[l4..l4 + 4] == next[l4..l4 + 4]
        && first[l4 + 8..l4 + 13] == next[l4 + 8..l4 + 13]
        && first[l4 + 14..l4 + 16] == next[l4 + 14..l4 + 16]
        && first[l4 + 18..fi.hdrs] == next[l4 + 18..ni.hdrs]
}

/// Largest coalesced packet: IPv4 total length is 16 bits.
const MAX_COALESCED: usize = 65535;

/// Group consecutive packets (by index into `pkts`) into runs that
/// [`write_coalesced`] can merge; a run of one is written as is.
pub fn coalesce_runs(pkts: &[&[u8]]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < pkts.len() {
        let start = i;
        i += 1;
        if let Some(fi) = tcp_info(pkts[start]).filter(|f| f.flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG) == 0) {
            let first = pkts[start];
            let mss = first.len() - fi.hdrs;
            let mut end_seq = fi.seq.wrapping_add(mss as u32);
            let mut total = first.len();
            let mut last_full_no_psh = fi.flags & TCP_PSH == 0 && mss > 0;
            while i < pkts.len() && last_full_no_psh {
                let next = pkts[i];
                let Some(ni) = tcp_info(next) else { break };
                let plen = next.len() - ni.hdrs;
                if total + plen > MAX_COALESCED || !can_append(first, &fi, next, &ni, end_seq, mss) {
                    break;
                }
                end_seq = end_seq.wrapping_add(plen as u32);
                total += plen;
                last_full_no_psh = plen == mss && ni.flags & TCP_PSH == 0;
                i += 1;
            }
        }
        runs.push(start..i);
    }
    runs
}

/// Build, in `out` (cleared first), the virtio_net_hdr + one TCP super-segment
/// made of `run` (as grouped by [`coalesce_runs`], at least two packets): the
/// first packet's headers with the lengths of the whole, PSH if the last had
/// it, and a partial checksum (pseudo-header sum only) that the kernel treats
/// like a NIC's CHECKSUM_PARTIAL; `gso_size` tells it how to resegment if it
/// forwards the packet.
pub fn write_coalesced(run: &[&[u8]], out: &mut Vec<u8>) {
    let first = run[0];
    let fi = tcp_info(first).expect("runs start with a TCP packet");
    let mss = first.len() - fi.hdrs;
    out.clear();
    out.resize(VNET_HDR_LEN, 0);
    out.extend_from_slice(first);
    for p in &run[1..] {
        let hdrs = fi.hdrs;
        out.extend_from_slice(&p[hdrs..]);
    }
    let last = run[run.len() - 1];
    let (l4, hdrs) = (fi.l4, fi.hdrs);
    let ipv4 = first[0] >> 4 == 4;
    let pkt = &mut out[VNET_HDR_LEN..];
    let len = pkt.len();
    set_ip_len(pkt, len, None);
    pkt[l4 + 13] |= last[l4 + 13] & TCP_PSH;
    let partial = fold(pseudo_sum(pkt, len - l4));
    put16(pkt, l4 + 16, partial);
    let h = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if ipv4 { GSO_TCPV4 } else { GSO_TCPV6 },
        hdr_len: hdrs as u16,
        gso_size: mss as u16,
        csum_start: l4 as u16,
        csum_offset: 16,
    };
    h.write(&mut out[..VNET_HDR_LEN]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4/TCP packet 10.0.0.1:1000 → 10.0.0.2:2000 with a 12-byte option
    /// block (NOP NOP timestamp), ACK|PSH, and `payload`.
    fn tcp4(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, // IPv4
            0x03, 0xe8, 0x07, 0xd0, 0, 0, 0, 0, 0, 0, 0x30, 0x39, 0x80, flags, 0x01, 0xf5, 0, 0, 0, 0, // TCP
            1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, // options
        ];
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(payload);
        let len = p.len();
        set_ip_len(&mut p, len, None);
        set_tcp_checksum(&mut p, 20);
        p
    }

    fn tcp6(seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[6] = PROTO_TCP;
        p[7] = 64;
        p[8..24].copy_from_slice(&"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        let mut t = tcp4(seq, 0x10, payload)[20..].to_vec();
        p.append(&mut t);
        let len = p.len();
        set_ip_len(&mut p, len, None);
        set_tcp_checksum(&mut p, 40);
        p
    }

    /// A received packet is valid when summing over the covered bytes (with the
    /// checksum field) gives 0xffff.
    fn checksums_ok(p: &[u8]) -> bool {
        let l4 = if p[0] >> 4 == 4 { 20 } else { 40 };
        let ip_ok = p[0] >> 4 == 6 || fold(sum(&p[..20], 0)) == 0xffff;
        ip_ok && fold(sum(&p[l4..], pseudo_sum(p, p.len() - l4))) == 0xffff
    }

    #[test]
    fn checksum_of_a_known_ipv4_header() {
        // The classic example header (checksum b861).
        let mut h = hex::decode("450000730000400040110000c0a80001c0a800c7").unwrap();
        set_ipv4_checksum(&mut h);
        assert_eq!(get16(&h, 10), 0xb861);
        // Odd lengths pad with a zero byte.
        assert_eq!(fold(sum(&[0x01], 0)), 0x0100);
    }

    #[test]
    fn vnet_header_round_trips() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1368,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        h.write(&mut b);
        assert_eq!(VnetHdr::parse(&b), Ok(h));
        assert_eq!(VnetHdr::parse(&b[..4]), Err(OffloadError::Truncated));
    }

    fn split(p: &[u8], gso_type: u8, mss: u16) -> Vec<Vec<u8>> {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            gso_size: mss,
            ..Default::default()
        };
        let mut scratch = vec![0u8; 65536];
        let mut out = Vec::new();
        segment_tcp(p, &h, &mut scratch, |s| out.push(s.to_vec())).unwrap();
        out
    }

    #[test]
    fn a_tcp4_super_segment_is_split_with_fixed_headers() {
        let payload: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let big = tcp4(1000, 0x18 | TCP_FIN | TCP_CWR, &payload); // ACK PSH FIN CWR
        let segs = split(&big, GSO_TCPV4 | GSO_ECN, 1000);
        assert_eq!(segs.len(), 3);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(checksums_ok(s), "segment {i} checksums");
            assert_eq!(usize::from(get16(s, 2)), s.len(), "total length {i}");
            assert_eq!(get16(s, 4), 0x1234 + i as u16, "IP ID {i}");
            assert_eq!(get32(s, 24), 1000 + 1000 * i as u32, "seq {i}");
            let flags = s[33];
            let last = i == 2;
            assert_eq!(flags & (TCP_FIN | TCP_PSH) != 0, last, "FIN/PSH only on the last, {i}");
            assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR only on the first, {i}");
            assert_eq!(&s[..20][12..20], &big[12..20]);
            joined.extend_from_slice(&s[52..]);
        }
        assert_eq!(segs[2].len(), 52 + 500);
        assert_eq!(joined, payload);
    }

    #[test]
    fn a_tcp6_super_segment_is_split_with_payload_lengths() {
        let payload = vec![7u8; 3000];
        let segs = split(&tcp6(5, &payload), GSO_TCPV6, 1400);
        assert_eq!(segs.iter().map(|s| s.len() - 72).collect::<Vec<_>>(), [1400, 1400, 200]);
        for s in &segs {
            assert!(checksums_ok(s));
            assert_eq!(usize::from(get16(s, 4)), s.len() - 40);
        }
    }

    #[test]
    fn partial_checksum_is_completed() {
        let mut p = tcp4(1, 0x10, b"hello world");
        // What the kernel hands us with CHECKSUM_PARTIAL: only the pseudo-header sum.
        let len = p.len();
        let partial = fold(pseudo_sum(&p, len - 20));
        put16(&mut p, 36, partial);
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..Default::default()
        };
        complete_checksum(&mut p, &h).unwrap();
        assert!(checksums_ok(&p));
        assert_eq!(p, tcp4(1, 0x10, b"hello world"));
    }

    #[test]
    fn other_gso_types_are_refused() {
        let h = VnetHdr {
            gso_type: 3,
            ..Default::default()
        };
        let r = segment_tcp(&tcp4(1, 0x10, b"x"), &h, &mut [0u8; 100], |_| {});
        assert_eq!(r, Err(OffloadError::UnsupportedGso(3)));
    }

    #[test]
    fn consecutive_segments_coalesce_and_resegment_to_the_same_packets() {
        let payload: Vec<u8> = (0..3500u32).map(|i| (i * 7) as u8).collect();
        let orig = tcp4(77, 0x18, &payload);
        let segs = split(&orig, GSO_TCPV4, 1000);
        let refs: Vec<&[u8]> = segs.iter().map(|s| s.as_slice()).collect();
        assert_eq!(coalesce_runs(&refs), vec![0..4]);
        let mut out = Vec::new();
        write_coalesced(&refs, &mut out);
        let h = VnetHdr::parse(&out).unwrap();
        assert_eq!(
            (h.gso_type, h.gso_size, h.hdr_len, h.csum_start),
            (GSO_TCPV4, 1000, 52, 20)
        );
        let mut merged = out[VNET_HDR_LEN..].to_vec();
        assert_eq!(&merged[52..], &payload[..]);
        complete_checksum(&mut merged, &h).unwrap();
        assert!(checksums_ok(&merged));
        // Splitting it again gives back exactly the received segments (IDs aside).
        let again = split(&merged, GSO_TCPV4, 1000);
        assert_eq!(again.len(), 4);
        for (a, b) in again.iter().zip(&segs) {
            assert_eq!(a[20..], b[20..]);
        }
    }

    #[test]
    fn gaps_flags_and_other_flows_break_runs() {
        let a = tcp4(0, 0x10, &[1; 100]);
        let b = tcp4(100, 0x10, &[2; 100]);
        let gap = tcp4(300, 0x10, &[3; 100]); // starts a new run
        let short = tcp4(400, 0x10, &[4; 50]); // a short segment ends a run
        let after_short = tcp4(450, 0x10, &[5; 50]);
        let fin = tcp4(500, 0x11, &[6; 100]);
        let mut other_port = tcp4(600, 0x10, &[7; 100]);
        other_port[21] ^= 1;
        let pure_ack = tcp4(700, 0x10, &[]);
        let v6a = tcp6(0, &[1; 100]);
        let v6b = tcp6(100, &[1; 100]);
        let pkts = [
            &a,
            &b,
            &gap,
            &short,
            &after_short,
            &fin,
            &other_port,
            &pure_ack,
            &v6a,
            &v6b,
        ];
        let refs: Vec<&[u8]> = pkts.iter().map(|p| p.as_slice()).collect();
        assert_eq!(coalesce_runs(&refs), vec![0..2, 2..4, 4..5, 5..6, 6..7, 7..8, 8..10]);
    }
}
