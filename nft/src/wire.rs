//! Netlink framing: a message/attribute writer and an attribute reader.
//! Everything is native-endian in the headers and, for nf_tables, big-endian
//! in most 32/64-bit attribute values (the `be32`/`be64` helpers).

use crate::consts::*;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A buffer of netlink messages (a batch, or one request).
#[derive(Debug, Default, Clone)]
pub struct MsgWriter {
    pub buf: Vec<u8>,
    msg_start: usize,
    /// Set when a nested attribute grew past the 16-bit length field.
    pub overflow: bool,
}

impl MsgWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Start a message: nlmsghdr + nfgenmsg (`family`, version 0, `res_id` big-endian).
    pub fn begin(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
        self.msg_start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
    }

    /// Finish the current message (patch its length).
    pub fn end(&mut self) {
        let len = (self.buf.len() - self.msg_start) as u32;
        self.buf[self.msg_start..self.msg_start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    pub fn put(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        if len > u16::MAX as usize {
            self.overflow = true;
        }
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len() + align4(len) - len, 0);
    }

    /// A NUL-terminated string.
    pub fn put_str(&mut self, ty: u16, s: &str) {
        let len = 4 + s.len() + 1;
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.buf.resize(self.buf.len() + align4(len) - len, 0);
    }

    pub fn put_be32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    pub fn put_be64(&mut self, ty: u16, v: u64) {
        self.put(ty, &v.to_be_bytes());
    }

    pub fn put_u8(&mut self, ty: u16, v: u8) {
        self.put(ty, &[v]);
    }

    /// Open a nested attribute; pass the returned offset to [`nest_end`](Self::nest_end).
    pub fn nest(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    pub fn nest_end(&mut self, at: usize) {
        let len = self.buf.len() - at;
        if len > u16::MAX as usize {
            self.overflow = true;
        }
        self.buf[at..at + 2].copy_from_slice(&(len as u16).to_ne_bytes());
    }

    /// Size of the message being written so far.
    pub fn current_len(&self) -> usize {
        self.buf.len() - self.msg_start
    }
}

/// A received netlink message.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// Everything after nlmsghdr (for nf_tables: nfgenmsg + attributes).
    pub payload: &'a [u8],
}

impl<'a> Msg<'a> {
    /// The attributes after the nfgenmsg header.
    pub fn attrs(&self) -> Attrs<'a> {
        Attrs(self.payload.get(4..).unwrap_or(&[]))
    }

    /// nfgenmsg's family byte.
    pub fn family(&self) -> u8 {
        self.payload.first().copied().unwrap_or(0)
    }
}

/// Split a datagram into netlink messages. Malformed trailing bytes end the iteration.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Msg<'_>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
        if len < 16 || len > rest.len() {
            return None;
        }
        let m = Msg {
            ty: u16::from_ne_bytes(rest[4..6].try_into().ok()?),
            flags: u16::from_ne_bytes(rest[6..8].try_into().ok()?),
            seq: u32::from_ne_bytes(rest[8..12].try_into().ok()?),
            payload: &rest[16..len],
        };
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some(m)
    })
}

/// Iterator over `(type without flags, payload)` of a run of attributes.
#[derive(Debug, Clone, Copy)]
pub struct Attrs<'a>(pub &'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let b = self.0;
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            self.0 = &[];
            return None;
        }
        self.0 = b.get(align4(len)..).unwrap_or(&[]);
        Some((ty, &b[4..len]))
    }
}

pub fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

pub fn be64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

/// A NUL-terminated (or not) string attribute.
pub fn string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}
