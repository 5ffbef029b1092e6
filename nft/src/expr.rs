//! nf_tables expressions as the kernel runs them: loads into registers,
//! comparisons, lookups, verdicts, NAT. One [`Expr`] is one
//! `NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA }` of a rule; what
//! `nft --debug=netlink` prints as `[ payload load 4b @ network header + 12 => reg 1 ]`.
//! [`crate::build`] has the readable rule pieces made of these.

use std::fmt;
use std::time::Duration;

use crate::consts::*;
use crate::error::{Error, Result};
use crate::model::{hex, Verdict};
use crate::wire::{be32, be64, string, Attrs, MsgWriter};

/// A register. The kernel has a verdict register, four 16-byte registers
/// (`reg 1..4`) that overlap sixteen 4-byte ones (`reg 8..23`); a 4-byte
/// register at the start of a 16-byte one is the same register and the
/// kernel reports it by its 16-byte name, so this type always uses that one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reg(u32);

impl Reg {
    pub const VERDICT: Reg = Reg(0);
    pub const R1: Reg = Reg(1);
    pub const R2: Reg = Reg(2);
    pub const R3: Reg = Reg(3);
    pub const R4: Reg = Reg(4);

    /// The `i`-th 4-byte register (`NFT_REG32_00 + i`), i in 0..16.
    pub fn r32(i: u32) -> Reg {
        Reg::from_raw(8 + i.min(15))
    }

    /// From the kernel's number, in canonical form.
    pub fn from_raw(n: u32) -> Reg {
        if (8..=23).contains(&n) && (n - 8).is_multiple_of(4) {
            Reg((n - 8) / 4 + 1)
        } else {
            Reg(n)
        }
    }

    pub fn raw(self) -> u32 {
        self.0
    }

    /// Offset in 4-byte units from the start of the register file (reg 1 = 0).
    pub fn word(self) -> u32 {
        match self.0 {
            1..=4 => (self.0 - 1) * 4,
            n => n.saturating_sub(8),
        }
    }
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reg {}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    LinkLayer,
    Network,
    Transport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl CmpOp {
    fn code(self) -> u32 {
        self as u32
    }
    fn from_code(c: u32) -> Option<CmpOp> {
        [CmpOp::Eq, CmpOp::Neq, CmpOp::Lt, CmpOp::Lte, CmpOp::Gt, CmpOp::Gte]
            .get(c as usize)
            .copied()
    }
    fn sym(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Neq => "!=",
            CmpOp::Lt => "<",
            CmpOp::Lte => "<=",
            CmpOp::Gt => ">",
            CmpOp::Gte => ">=",
        }
    }
}

/// `meta` keys (`NFT_META_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    Len,
    Protocol,
    Mark,
    Iif,
    Oif,
    IifName,
    OifName,
    NfProto,
    L4Proto,
    Other(u32),
}

impl MetaKey {
    fn code(self) -> u32 {
        match self {
            MetaKey::Len => 0,
            MetaKey::Protocol => 1,
            MetaKey::Mark => 3,
            MetaKey::Iif => 4,
            MetaKey::Oif => 5,
            MetaKey::IifName => 6,
            MetaKey::OifName => 7,
            MetaKey::NfProto => 15,
            MetaKey::L4Proto => 16,
            MetaKey::Other(n) => n,
        }
    }
    fn from_code(c: u32) -> MetaKey {
        match c {
            0 => MetaKey::Len,
            1 => MetaKey::Protocol,
            3 => MetaKey::Mark,
            4 => MetaKey::Iif,
            5 => MetaKey::Oif,
            6 => MetaKey::IifName,
            7 => MetaKey::OifName,
            15 => MetaKey::NfProto,
            16 => MetaKey::L4Proto,
            n => MetaKey::Other(n),
        }
    }
    fn name(self) -> String {
        match self {
            MetaKey::Len => "length".into(),
            MetaKey::Protocol => "protocol".into(),
            MetaKey::Mark => "mark".into(),
            MetaKey::Iif => "iif".into(),
            MetaKey::Oif => "oif".into(),
            MetaKey::IifName => "iifname".into(),
            MetaKey::OifName => "oifname".into(),
            MetaKey::NfProto => "nfproto".into(),
            MetaKey::L4Proto => "l4proto".into(),
            MetaKey::Other(n) => format!("key{n}"),
        }
    }
}

/// `ct` keys (`NFT_CT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtKey {
    State,
    Direction,
    Status,
    Mark,
    L3Protocol,
    Protocol,
    ProtoDst,
    Other(u32),
}

impl CtKey {
    fn code(self) -> u32 {
        match self {
            CtKey::State => 0,
            CtKey::Direction => 1,
            CtKey::Status => 2,
            CtKey::Mark => 3,
            CtKey::L3Protocol => 7,
            CtKey::Protocol => 10,
            CtKey::ProtoDst => 12,
            CtKey::Other(n) => n,
        }
    }
    fn from_code(c: u32) -> CtKey {
        match c {
            0 => CtKey::State,
            1 => CtKey::Direction,
            2 => CtKey::Status,
            3 => CtKey::Mark,
            7 => CtKey::L3Protocol,
            10 => CtKey::Protocol,
            12 => CtKey::ProtoDst,
            n => CtKey::Other(n),
        }
    }
    fn name(self) -> String {
        match self {
            CtKey::State => "state".into(),
            CtKey::Direction => "direction".into(),
            CtKey::Status => "status".into(),
            CtKey::Mark => "mark".into(),
            CtKey::L3Protocol => "l3proto".into(),
            CtKey::Protocol => "protocol".into(),
            CtKey::ProtoDst => "proto-dst".into(),
            CtKey::Other(n) => format!("key{n}"),
        }
    }
}

/// `ct state` bits.
pub mod ct_state {
    pub const INVALID: u32 = 1;
    pub const ESTABLISHED: u32 = 2;
    pub const RELATED: u32 = 4;
    pub const NEW: u32 = 8;
    pub const UNTRACKED: u32 = 64;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    Snat,
    Dnat,
}

/// NAT range flags we set (`NF_NAT_RANGE_*`); the kernel derives "map ips"
/// and "proto specified" from the registers given, so those are not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NatFlags {
    pub random: bool,
    pub persistent: bool,
    pub fully_random: bool,
}

const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;

impl NatFlags {
    pub const FULLY_RANDOM: NatFlags = NatFlags {
        random: false,
        persistent: false,
        fully_random: true,
    };
    fn bits(self) -> u32 {
        (if self.random { 0x4 } else { 0 })
            | (if self.persistent { 0x8 } else { 0 })
            | (if self.fully_random { 0x10 } else { 0 })
    }
    fn from_bits(b: u32) -> NatFlags {
        NatFlags {
            random: b & 0x4 != 0,
            persistent: b & 0x8 != 0,
            fully_random: b & 0x10 != 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumgenKind {
    Inc,
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// `reject with icmp|icmpv6 type <code>` (port-unreachable: 3 for ICMP, 4 for ICMPv6).
    Icmp(u8),
    /// `reject with tcp reset`.
    TcpReset,
    /// `reject with icmpx type <code>` (port-unreachable = 1), family-independent.
    Icmpx(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FibResult {
    Oif,
    OifName,
    AddrType,
}

/// `fib` input flags: which address and which interface the lookup uses.
pub mod fib_flags {
    pub const SADDR: u32 = 1;
    pub const DADDR: u32 = 2;
    pub const MARK: u32 = 4;
    pub const IIF: u32 = 8;
    pub const OIF: u32 = 16;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExthdrOp {
    Ipv6,
    TcpOpt,
    Ipv4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtKey {
    ClassId,
    NextHop4,
    NextHop6,
    /// `rt mtu`: the route's TCP MSS (MTU minus headers), host order, 2 bytes.
    TcpMss,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DynsetOp {
    Add,
    Update,
    Delete,
}

/// One kernel expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `payload load <len>b @ <base> + <offset> => dreg`
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: Reg,
    },
    /// `cmp <op> sreg <data>`
    Cmp { sreg: Reg, op: CmpOp, data: Vec<u8> },
    /// `dreg = (sreg & mask) ^ xor` (over `mask.len()` bytes)
    Bitwise {
        sreg: Reg,
        dreg: Reg,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// `meta load <key> => dreg`
    Meta { key: MetaKey, dreg: Reg },
    /// `meta set <key> with sreg`
    MetaSet { key: MetaKey, sreg: Reg },
    /// `lookup sreg set <set> [dreg]`; `dreg` is `Some` for maps
    /// (`Reg::VERDICT` for verdict maps); `invert` is `!= @set`.
    Lookup {
        set: String,
        sreg: Reg,
        dreg: Option<Reg>,
        invert: bool,
    },
    /// `immediate dreg <verdict>` (dreg = `Reg::VERDICT`)
    Verdict(Verdict),
    /// `immediate dreg <data>`
    Immediate { dreg: Reg, data: Vec<u8> },
    /// `counter` (its values are state, not configuration; never compared)
    Counter,
    /// `masq [flags] [proto_min .. proto_max]`
    Masq { flags: NatFlags, proto: Option<(Reg, Reg)> },
    /// `nat snat|dnat <family> addr_min..addr_max proto_min..proto_max`
    Nat {
        kind: NatKind,
        ipv6: bool,
        addr: Option<(Reg, Reg)>,
        proto: Option<(Reg, Reg)>,
        flags: NatFlags,
    },
    /// `numgen dreg = inc|random mod <modulus> offset <offset>`
    Numgen {
        kind: NumgenKind,
        modulus: u32,
        offset: u32,
        dreg: Reg,
    },
    /// `hash dreg = jhash(sreg, len, seed) % modulus + offset`
    Jhash {
        sreg: Reg,
        len: u32,
        seed: u32,
        modulus: u32,
        offset: u32,
        dreg: Reg,
    },
    /// `ct load <key> => dreg`
    Ct { key: CtKey, dreg: Reg },
    /// `ct set <key> with sreg`
    CtSet { key: CtKey, sreg: Reg },
    /// `reject type ... code ...`
    Reject(RejectKind),
    /// `fib <flags> <result> => dreg`
    Fib { flags: u32, result: FibResult, dreg: Reg },
    /// `exthdr load <op> <type> <len>b @ <offset> => dreg`
    ExthdrLoad {
        op: ExthdrOp,
        kind: u8,
        offset: u32,
        len: u32,
        dreg: Reg,
    },
    /// `exthdr write <op> sreg => <type> <len>b @ <offset>`
    ExthdrWrite {
        op: ExthdrOp,
        kind: u8,
        offset: u32,
        len: u32,
        sreg: Reg,
    },
    /// `rt load <key> => dreg`
    Rt { key: RtKey, dreg: Reg },
    /// `byteorder dreg = hton|ntoh(sreg, len, size)`
    Byteorder {
        sreg: Reg,
        dreg: Reg,
        hton: bool,
        len: u32,
        size: u32,
    },
    /// `dynset add|update|delete sreg_key [: sreg_data] @set [timeout]`
    Dynset {
        set: String,
        op: DynsetOp,
        sreg_key: Reg,
        sreg_data: Option<Reg>,
        timeout: Option<Duration>,
    },
    /// `range ==|!= sreg from to`
    Range {
        sreg: Reg,
        neq: bool,
        from: Vec<u8>,
        to: Vec<u8>,
    },
    /// An expression this crate does not model (read back from a table
    /// someone else wrote): its name and raw `NFTA_EXPR_DATA`.
    Unknown { name: String, data: Vec<u8> },
}

// Per-expression attribute numbers (NFTA_<EXPR>_*).
mod a {
    pub const PAYLOAD_DREG: u16 = 1;
    pub const PAYLOAD_BASE: u16 = 2;
    pub const PAYLOAD_OFFSET: u16 = 3;
    pub const PAYLOAD_LEN: u16 = 4;
    pub const CMP_SREG: u16 = 1;
    pub const CMP_OP: u16 = 2;
    pub const CMP_DATA: u16 = 3;
    pub const BITWISE_SREG: u16 = 1;
    pub const BITWISE_DREG: u16 = 2;
    pub const BITWISE_LEN: u16 = 3;
    pub const BITWISE_MASK: u16 = 4;
    pub const BITWISE_XOR: u16 = 5;
    pub const BITWISE_OP: u16 = 6;
    pub const META_DREG: u16 = 1;
    pub const META_KEY: u16 = 2;
    pub const META_SREG: u16 = 3;
    pub const LOOKUP_SET: u16 = 1;
    pub const LOOKUP_SREG: u16 = 2;
    pub const LOOKUP_DREG: u16 = 3;
    pub const LOOKUP_FLAGS: u16 = 5;
    pub const IMMEDIATE_DREG: u16 = 1;
    pub const IMMEDIATE_DATA: u16 = 2;
    pub const MASQ_FLAGS: u16 = 1;
    pub const MASQ_PROTO_MIN: u16 = 2;
    pub const MASQ_PROTO_MAX: u16 = 3;
    pub const NAT_TYPE: u16 = 1;
    pub const NAT_FAMILY: u16 = 2;
    pub const NAT_ADDR_MIN: u16 = 3;
    pub const NAT_ADDR_MAX: u16 = 4;
    pub const NAT_PROTO_MIN: u16 = 5;
    pub const NAT_PROTO_MAX: u16 = 6;
    pub const NAT_FLAGS: u16 = 7;
    pub const NG_DREG: u16 = 1;
    pub const NG_MODULUS: u16 = 2;
    pub const NG_TYPE: u16 = 3;
    pub const NG_OFFSET: u16 = 4;
    pub const HASH_SREG: u16 = 1;
    pub const HASH_DREG: u16 = 2;
    pub const HASH_LEN: u16 = 3;
    pub const HASH_MODULUS: u16 = 4;
    pub const HASH_SEED: u16 = 5;
    pub const HASH_OFFSET: u16 = 6;
    pub const HASH_TYPE: u16 = 7;
    pub const CT_DREG: u16 = 1;
    pub const CT_KEY: u16 = 2;
    pub const CT_SREG: u16 = 4;
    pub const REJECT_TYPE: u16 = 1;
    pub const REJECT_CODE: u16 = 2;
    pub const FIB_DREG: u16 = 1;
    pub const FIB_RESULT: u16 = 2;
    pub const FIB_FLAGS: u16 = 3;
    pub const EXTHDR_DREG: u16 = 1;
    pub const EXTHDR_TYPE: u16 = 2;
    pub const EXTHDR_OFFSET: u16 = 3;
    pub const EXTHDR_LEN: u16 = 4;
    pub const EXTHDR_OP: u16 = 6;
    pub const EXTHDR_SREG: u16 = 7;
    pub const RT_DREG: u16 = 1;
    pub const RT_KEY: u16 = 2;
    pub const BYTEORDER_SREG: u16 = 1;
    pub const BYTEORDER_DREG: u16 = 2;
    pub const BYTEORDER_OP: u16 = 3;
    pub const BYTEORDER_LEN: u16 = 4;
    pub const BYTEORDER_SIZE: u16 = 5;
    pub const DYNSET_SET_NAME: u16 = 1;
    pub const DYNSET_OP: u16 = 3;
    pub const DYNSET_SREG_KEY: u16 = 4;
    pub const DYNSET_SREG_DATA: u16 = 5;
    pub const DYNSET_TIMEOUT: u16 = 6;
    pub const RANGE_SREG: u16 = 1;
    pub const RANGE_OP: u16 = 2;
    pub const RANGE_FROM: u16 = 3;
    pub const RANGE_TO: u16 = 4;
}

fn put_value(w: &mut MsgWriter, ty: u16, data: &[u8]) {
    let n = w.nest(ty);
    w.put(NFTA_DATA_VALUE, data);
    w.nest_end(n);
}

/// `NFTA_DATA_VERDICT { CODE, [CHAIN] }` nested in attribute `ty`.
pub(crate) fn put_verdict(w: &mut MsgWriter, ty: u16, v: &Verdict) {
    let n = w.nest(ty);
    let inner = w.nest(NFTA_DATA_VERDICT);
    w.put_be32(NFTA_VERDICT_CODE, v.code() as u32);
    if let Some(c) = v.chain() {
        w.put_str(NFTA_VERDICT_CHAIN, c);
    }
    w.nest_end(inner);
    w.nest_end(n);
}

/// Parse `NFTA_DATA_VALUE` / `NFTA_DATA_VERDICT` (the contents of a data attribute).
pub(crate) enum Data {
    Value(Vec<u8>),
    Verdict(Verdict),
}

pub(crate) fn parse_data(b: &[u8]) -> Result<Data> {
    for (ty, p) in Attrs(b) {
        match ty {
            NFTA_DATA_VALUE => return Ok(Data::Value(p.to_vec())),
            NFTA_DATA_VERDICT => {
                let mut code = None;
                let mut chain = None;
                for (t, v) in Attrs(p) {
                    match t {
                        NFTA_VERDICT_CODE => code = be32(v).map(|c| c as i32),
                        NFTA_VERDICT_CHAIN => chain = Some(string(v)),
                        _ => {}
                    }
                }
                let v = match (code, chain) {
                    (Some(NF_ACCEPT), _) => Verdict::Accept,
                    (Some(NF_DROP), _) => Verdict::Drop,
                    (Some(NFT_CONTINUE), _) => Verdict::Continue,
                    (Some(NFT_RETURN), _) => Verdict::Return,
                    (Some(NFT_JUMP), Some(c)) => Verdict::Jump(c),
                    (Some(NFT_GOTO), Some(c)) => Verdict::Goto(c),
                    (c, _) => return Err(Error::decode("verdict", format!("unsupported code {c:?}"))),
                };
                return Ok(Data::Verdict(v));
            }
            _ => {}
        }
    }
    Err(Error::decode("data", "neither value nor verdict"))
}

fn value(b: &[u8], what: &str) -> Result<Vec<u8>> {
    match parse_data(b)? {
        Data::Value(v) => Ok(v),
        Data::Verdict(_) => Err(Error::decode(what, "verdict where a value was expected")),
    }
}

impl Expr {
    /// The kernel's expression name (`NFTA_EXPR_NAME`).
    pub fn kernel_name(&self) -> &str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Lookup { .. } => "lookup",
            Expr::Verdict(_) | Expr::Immediate { .. } => "immediate",
            Expr::Counter => "counter",
            Expr::Masq { .. } => "masq",
            Expr::Nat { .. } => "nat",
            Expr::Numgen { .. } => "numgen",
            Expr::Jhash { .. } => "hash",
            Expr::Ct { .. } | Expr::CtSet { .. } => "ct",
            Expr::Reject(_) => "reject",
            Expr::Fib { .. } => "fib",
            Expr::ExthdrLoad { .. } | Expr::ExthdrWrite { .. } => "exthdr",
            Expr::Rt { .. } => "rt",
            Expr::Byteorder { .. } => "byteorder",
            Expr::Dynset { .. } => "dynset",
            Expr::Range { .. } => "range",
            Expr::Unknown { name, .. } => name,
        }
    }

    /// The chain a jump/goto goes to.
    pub fn jump_target(&self) -> Option<&str> {
        match self {
            Expr::Verdict(v) => v.chain(),
            _ => None,
        }
    }

    /// The named set this expression uses.
    pub fn set_ref(&self) -> Option<&str> {
        match self {
            Expr::Lookup { set, .. } | Expr::Dynset { set, .. } => Some(set),
            _ => None,
        }
    }

    /// Append this expression as one `NFTA_LIST_ELEM`.
    pub(crate) fn encode(&self, w: &mut MsgWriter) {
        let elem = w.nest(NFTA_LIST_ELEM);
        w.put_str(NFTA_EXPR_NAME, self.kernel_name());
        let d = w.nest(NFTA_EXPR_DATA);
        self.encode_data(w);
        w.nest_end(d);
        w.nest_end(elem);
    }

    fn encode_data(&self, w: &mut MsgWriter) {
        let reg = |w: &mut MsgWriter, ty: u16, r: Reg| w.put_be32(ty, r.raw());
        match self {
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                reg(w, a::PAYLOAD_DREG, *dreg);
                w.put_be32(a::PAYLOAD_BASE, *base as u32);
                w.put_be32(a::PAYLOAD_OFFSET, *offset);
                w.put_be32(a::PAYLOAD_LEN, *len);
            }
            Expr::Cmp { sreg, op, data } => {
                reg(w, a::CMP_SREG, *sreg);
                w.put_be32(a::CMP_OP, op.code());
                put_value(w, a::CMP_DATA, data);
            }
            Expr::Bitwise { sreg, dreg, mask, xor } => {
                reg(w, a::BITWISE_SREG, *sreg);
                reg(w, a::BITWISE_DREG, *dreg);
                w.put_be32(a::BITWISE_LEN, mask.len() as u32);
                put_value(w, a::BITWISE_MASK, mask);
                put_value(w, a::BITWISE_XOR, xor);
            }
            Expr::Meta { key, dreg } => {
                w.put_be32(a::META_KEY, key.code());
                reg(w, a::META_DREG, *dreg);
            }
            Expr::MetaSet { key, sreg } => {
                w.put_be32(a::META_KEY, key.code());
                reg(w, a::META_SREG, *sreg);
            }
            Expr::Lookup {
                set,
                sreg,
                dreg,
                invert,
            } => {
                reg(w, a::LOOKUP_SREG, *sreg);
                if let Some(d) = dreg {
                    reg(w, a::LOOKUP_DREG, *d);
                }
                w.put_str(a::LOOKUP_SET, set);
                if *invert {
                    w.put_be32(a::LOOKUP_FLAGS, 1);
                }
            }
            Expr::Verdict(v) => {
                reg(w, a::IMMEDIATE_DREG, Reg::VERDICT);
                put_verdict(w, a::IMMEDIATE_DATA, v);
            }
            Expr::Immediate { dreg, data } => {
                reg(w, a::IMMEDIATE_DREG, *dreg);
                put_value(w, a::IMMEDIATE_DATA, data);
            }
            Expr::Counter => {
                w.put_be64(1, 0);
                w.put_be64(2, 0);
            }
            Expr::Masq { flags, proto } => {
                if flags.bits() != 0 {
                    w.put_be32(a::MASQ_FLAGS, flags.bits());
                }
                if let Some((min, max)) = proto {
                    reg(w, a::MASQ_PROTO_MIN, *min);
                    if max != min {
                        reg(w, a::MASQ_PROTO_MAX, *max);
                    }
                }
            }
            Expr::Nat {
                kind,
                ipv6,
                addr,
                proto,
                flags,
            } => {
                w.put_be32(a::NAT_TYPE, if *kind == NatKind::Snat { 0 } else { 1 });
                w.put_be32(a::NAT_FAMILY, if *ipv6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 } as u32);
                // As nft: the max register only when it differs from the min
                // (the kernel uses min for both), "proto specified" with a port.
                if let Some((min, max)) = addr {
                    reg(w, a::NAT_ADDR_MIN, *min);
                    if max != min {
                        reg(w, a::NAT_ADDR_MAX, *max);
                    }
                }
                if let Some((min, max)) = proto {
                    reg(w, a::NAT_PROTO_MIN, *min);
                    if max != min {
                        reg(w, a::NAT_PROTO_MAX, *max);
                    }
                }
                let bits = flags.bits()
                    | if proto.is_some() {
                        NF_NAT_RANGE_PROTO_SPECIFIED
                    } else {
                        0
                    };
                if bits != 0 {
                    w.put_be32(a::NAT_FLAGS, bits);
                }
            }
            Expr::Numgen {
                kind,
                modulus,
                offset,
                dreg,
            } => {
                reg(w, a::NG_DREG, *dreg);
                w.put_be32(a::NG_MODULUS, *modulus);
                w.put_be32(a::NG_TYPE, if *kind == NumgenKind::Inc { 0 } else { 1 });
                w.put_be32(a::NG_OFFSET, *offset);
            }
            Expr::Jhash {
                sreg,
                len,
                seed,
                modulus,
                offset,
                dreg,
            } => {
                reg(w, a::HASH_SREG, *sreg);
                reg(w, a::HASH_DREG, *dreg);
                w.put_be32(a::HASH_LEN, *len);
                w.put_be32(a::HASH_MODULUS, *modulus);
                w.put_be32(a::HASH_SEED, *seed);
                if *offset != 0 {
                    w.put_be32(a::HASH_OFFSET, *offset);
                }
                w.put_be32(a::HASH_TYPE, 0);
            }
            Expr::Ct { key, dreg } => {
                w.put_be32(a::CT_KEY, key.code());
                reg(w, a::CT_DREG, *dreg);
            }
            Expr::CtSet { key, sreg } => {
                w.put_be32(a::CT_KEY, key.code());
                reg(w, a::CT_SREG, *sreg);
            }
            Expr::Reject(k) => match k {
                RejectKind::Icmp(c) => {
                    w.put_be32(a::REJECT_TYPE, 0);
                    w.put_u8(a::REJECT_CODE, *c);
                }
                RejectKind::TcpReset => w.put_be32(a::REJECT_TYPE, 1),
                RejectKind::Icmpx(c) => {
                    w.put_be32(a::REJECT_TYPE, 2);
                    w.put_u8(a::REJECT_CODE, *c);
                }
            },
            Expr::Fib { flags, result, dreg } => {
                reg(w, a::FIB_DREG, *dreg);
                w.put_be32(a::FIB_RESULT, *result as u32 + 1);
                w.put_be32(a::FIB_FLAGS, *flags);
            }
            Expr::ExthdrLoad {
                op,
                kind,
                offset,
                len,
                dreg,
            } => {
                reg(w, a::EXTHDR_DREG, *dreg);
                w.put_u8(a::EXTHDR_TYPE, *kind);
                w.put_be32(a::EXTHDR_OFFSET, *offset);
                w.put_be32(a::EXTHDR_LEN, *len);
                w.put_be32(a::EXTHDR_OP, *op as u32);
            }
            Expr::ExthdrWrite {
                op,
                kind,
                offset,
                len,
                sreg,
            } => {
                reg(w, a::EXTHDR_SREG, *sreg);
                w.put_u8(a::EXTHDR_TYPE, *kind);
                w.put_be32(a::EXTHDR_OFFSET, *offset);
                w.put_be32(a::EXTHDR_LEN, *len);
                w.put_be32(a::EXTHDR_OP, *op as u32);
            }
            Expr::Rt { key, dreg } => {
                w.put_be32(a::RT_KEY, *key as u32);
                reg(w, a::RT_DREG, *dreg);
            }
            Expr::Byteorder {
                sreg,
                dreg,
                hton,
                len,
                size,
            } => {
                reg(w, a::BYTEORDER_SREG, *sreg);
                reg(w, a::BYTEORDER_DREG, *dreg);
                w.put_be32(a::BYTEORDER_OP, u32::from(*hton));
                w.put_be32(a::BYTEORDER_LEN, *len);
                w.put_be32(a::BYTEORDER_SIZE, *size);
            }
            Expr::Dynset {
                set,
                op,
                sreg_key,
                sreg_data,
                timeout,
            } => {
                w.put_be32(a::DYNSET_SREG_KEY, sreg_key.raw());
                if let Some(d) = sreg_data {
                    w.put_be32(a::DYNSET_SREG_DATA, d.raw());
                }
                w.put_be32(a::DYNSET_OP, *op as u32);
                w.put_str(a::DYNSET_SET_NAME, set);
                if let Some(t) = timeout {
                    w.put_be64(a::DYNSET_TIMEOUT, t.as_millis() as u64);
                }
            }
            Expr::Range { sreg, neq, from, to } => {
                reg(w, a::RANGE_SREG, *sreg);
                w.put_be32(a::RANGE_OP, u32::from(*neq));
                put_value(w, a::RANGE_FROM, from);
                put_value(w, a::RANGE_TO, to);
            }
            Expr::Unknown { data, .. } => w.buf.extend_from_slice(data),
        }
    }

    /// Parse one `NFTA_LIST_ELEM`'s contents.
    pub(crate) fn decode(elem: &[u8]) -> Result<Expr> {
        let mut name = None;
        let mut data: &[u8] = &[];
        for (ty, p) in Attrs(elem) {
            match ty {
                NFTA_EXPR_NAME => name = Some(string(p)),
                NFTA_EXPR_DATA => data = p,
                _ => {}
            }
        }
        let name = name.ok_or_else(|| Error::decode("expression", "no name"))?;
        let mut u = [None::<&[u8]>; 16];
        for (ty, p) in Attrs(data) {
            if let Some(slot) = u.get_mut(ty as usize) {
                *slot = Some(p);
            }
        }
        let what = format!("expression {name}");
        let get = |i: u16| u[i as usize];
        let n32 = |i: u16| get(i).and_then(be32);
        let need = |i: u16| n32(i).ok_or_else(|| Error::decode(what.clone(), format!("attribute {i} missing")));
        let reg = |i: u16| need(i).map(Reg::from_raw);
        let opt_reg = |i: u16| n32(i).map(Reg::from_raw);
        let val = |i: u16| match get(i) {
            Some(p) => value(p, &what),
            None => Err(Error::decode(what.clone(), format!("attribute {i} missing"))),
        };
        let pair = |min: u16, max: u16| opt_reg(min).map(|lo| (lo, opt_reg(max).unwrap_or(lo)));
        let e = match name.as_str() {
            "payload" if get(a::PAYLOAD_DREG).is_some() => Expr::Payload {
                base: match need(a::PAYLOAD_BASE)? {
                    0 => PayloadBase::LinkLayer,
                    1 => PayloadBase::Network,
                    2 => PayloadBase::Transport,
                    _ => {
                        return Ok(Expr::Unknown {
                            name,
                            data: data.to_vec(),
                        })
                    }
                },
                offset: need(a::PAYLOAD_OFFSET)?,
                len: need(a::PAYLOAD_LEN)?,
                dreg: reg(a::PAYLOAD_DREG)?,
            },
            "cmp" => Expr::Cmp {
                sreg: reg(a::CMP_SREG)?,
                op: CmpOp::from_code(need(a::CMP_OP)?).ok_or_else(|| Error::decode(what.clone(), "bad op"))?,
                data: val(a::CMP_DATA)?,
            },
            "bitwise" if n32(a::BITWISE_OP).unwrap_or(0) == 0 && get(a::BITWISE_MASK).is_some() => Expr::Bitwise {
                sreg: reg(a::BITWISE_SREG)?,
                dreg: reg(a::BITWISE_DREG)?,
                mask: val(a::BITWISE_MASK)?,
                xor: val(a::BITWISE_XOR)?,
            },
            "meta" => {
                let key = MetaKey::from_code(need(a::META_KEY)?);
                match opt_reg(a::META_DREG) {
                    Some(dreg) => Expr::Meta { key, dreg },
                    None => Expr::MetaSet {
                        key,
                        sreg: reg(a::META_SREG)?,
                    },
                }
            }
            "lookup" => Expr::Lookup {
                set: get(a::LOOKUP_SET)
                    .map(string)
                    .ok_or_else(|| Error::decode(what.clone(), "no set name"))?,
                sreg: reg(a::LOOKUP_SREG)?,
                dreg: opt_reg(a::LOOKUP_DREG),
                invert: n32(a::LOOKUP_FLAGS).unwrap_or(0) & 1 != 0,
            },
            "immediate" => {
                let dreg = reg(a::IMMEDIATE_DREG)?;
                let d = get(a::IMMEDIATE_DATA).ok_or_else(|| Error::decode(what.clone(), "no data"))?;
                match parse_data(d)? {
                    Data::Verdict(v) => Expr::Verdict(v),
                    Data::Value(data) => Expr::Immediate { dreg, data },
                }
            }
            "counter" => Expr::Counter,
            "masq" => Expr::Masq {
                flags: NatFlags::from_bits(n32(a::MASQ_FLAGS).unwrap_or(0)),
                proto: pair(a::MASQ_PROTO_MIN, a::MASQ_PROTO_MAX),
            },
            "nat" => Expr::Nat {
                kind: if need(a::NAT_TYPE)? == 0 {
                    NatKind::Snat
                } else {
                    NatKind::Dnat
                },
                ipv6: need(a::NAT_FAMILY)? == u32::from(NFPROTO_IPV6),
                addr: pair(a::NAT_ADDR_MIN, a::NAT_ADDR_MAX),
                proto: pair(a::NAT_PROTO_MIN, a::NAT_PROTO_MAX),
                flags: NatFlags::from_bits(n32(a::NAT_FLAGS).unwrap_or(0)),
            },
            "numgen" => Expr::Numgen {
                kind: if need(a::NG_TYPE)? == 0 {
                    NumgenKind::Inc
                } else {
                    NumgenKind::Random
                },
                modulus: need(a::NG_MODULUS)?,
                offset: n32(a::NG_OFFSET).unwrap_or(0),
                dreg: reg(a::NG_DREG)?,
            },
            "hash" if n32(a::HASH_TYPE).unwrap_or(0) == 0 && get(a::HASH_SEED).is_some() => Expr::Jhash {
                sreg: reg(a::HASH_SREG)?,
                len: need(a::HASH_LEN)?,
                seed: need(a::HASH_SEED)?,
                modulus: need(a::HASH_MODULUS)?,
                offset: n32(a::HASH_OFFSET).unwrap_or(0),
                dreg: reg(a::HASH_DREG)?,
            },
            "ct" if get(a::CT_DREG).is_some() && get(3).is_none() => Expr::Ct {
                key: CtKey::from_code(need(a::CT_KEY)?),
                dreg: reg(a::CT_DREG)?,
            },
            "ct" if get(a::CT_SREG).is_some() && get(3).is_none() => Expr::CtSet {
                key: CtKey::from_code(need(a::CT_KEY)?),
                sreg: reg(a::CT_SREG)?,
            },
            "reject" => {
                let code = get(a::REJECT_CODE).and_then(|p| p.first().copied()).unwrap_or(0);
                Expr::Reject(match need(a::REJECT_TYPE)? {
                    0 => RejectKind::Icmp(code),
                    1 => RejectKind::TcpReset,
                    2 => RejectKind::Icmpx(code),
                    _ => {
                        return Ok(Expr::Unknown {
                            name,
                            data: data.to_vec(),
                        })
                    }
                })
            }
            "fib" => Expr::Fib {
                flags: need(a::FIB_FLAGS)?,
                result: match need(a::FIB_RESULT)? {
                    1 => FibResult::Oif,
                    2 => FibResult::OifName,
                    3 => FibResult::AddrType,
                    _ => {
                        return Ok(Expr::Unknown {
                            name,
                            data: data.to_vec(),
                        })
                    }
                },
                dreg: reg(a::FIB_DREG)?,
            },
            "exthdr" => {
                let op = match n32(a::EXTHDR_OP).unwrap_or(0) {
                    0 => ExthdrOp::Ipv6,
                    1 => ExthdrOp::TcpOpt,
                    2 => ExthdrOp::Ipv4,
                    _ => {
                        return Ok(Expr::Unknown {
                            name,
                            data: data.to_vec(),
                        })
                    }
                };
                let kind = get(a::EXTHDR_TYPE).and_then(|p| p.first().copied()).unwrap_or(0);
                let offset = need(a::EXTHDR_OFFSET)?;
                let len = need(a::EXTHDR_LEN)?;
                match opt_reg(a::EXTHDR_DREG) {
                    Some(dreg) => Expr::ExthdrLoad {
                        op,
                        kind,
                        offset,
                        len,
                        dreg,
                    },
                    None => Expr::ExthdrWrite {
                        op,
                        kind,
                        offset,
                        len,
                        sreg: reg(a::EXTHDR_SREG)?,
                    },
                }
            }
            "rt" => Expr::Rt {
                key: match need(a::RT_KEY)? {
                    0 => RtKey::ClassId,
                    1 => RtKey::NextHop4,
                    2 => RtKey::NextHop6,
                    3 => RtKey::TcpMss,
                    _ => {
                        return Ok(Expr::Unknown {
                            name,
                            data: data.to_vec(),
                        })
                    }
                },
                dreg: reg(a::RT_DREG)?,
            },
            "byteorder" => Expr::Byteorder {
                sreg: reg(a::BYTEORDER_SREG)?,
                dreg: reg(a::BYTEORDER_DREG)?,
                hton: need(a::BYTEORDER_OP)? == 1,
                len: need(a::BYTEORDER_LEN)?,
                size: need(a::BYTEORDER_SIZE)?,
            },
            "dynset" => Expr::Dynset {
                set: get(a::DYNSET_SET_NAME)
                    .map(string)
                    .ok_or_else(|| Error::decode(what.clone(), "no set name"))?,
                op: match need(a::DYNSET_OP)? {
                    0 => DynsetOp::Add,
                    1 => DynsetOp::Update,
                    _ => DynsetOp::Delete,
                },
                sreg_key: reg(a::DYNSET_SREG_KEY)?,
                sreg_data: opt_reg(a::DYNSET_SREG_DATA),
                timeout: get(a::DYNSET_TIMEOUT)
                    .and_then(be64)
                    .filter(|&ms| ms != 0)
                    .map(Duration::from_millis),
            },
            "range" => Expr::Range {
                sreg: reg(a::RANGE_SREG)?,
                neq: need(a::RANGE_OP)? == 1,
                from: val(a::RANGE_FROM)?,
                to: val(a::RANGE_TO)?,
            },
            _ => Expr::Unknown {
                name,
                data: data.to_vec(),
            },
        };
        Ok(e)
    }
}

// ---------------------------------------------------------------------------
// Display: close to nft's syntax for the patterns this crate builds; anything
// else falls back to the kernel-level form (`[ kind ... ]`).

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "ipv6-icmp".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

fn payload_label(base: PayloadBase, offset: u32, len: u32) -> String {
    match (base, offset, len) {
        (PayloadBase::Network, 12, 4) => "ip saddr".into(),
        (PayloadBase::Network, 16, 4) => "ip daddr".into(),
        (PayloadBase::Network, 9, 1) => "ip protocol".into(),
        (PayloadBase::Network, 8, 16) => "ip6 saddr".into(),
        (PayloadBase::Network, 24, 16) => "ip6 daddr".into(),
        (PayloadBase::Transport, 0, 2) => "th sport".into(),
        (PayloadBase::Transport, 2, 2) => "th dport".into(),
        (PayloadBase::Transport, 13, 1) => "tcp flags".into(),
        (b, o, l) => {
            let b = match b {
                PayloadBase::LinkLayer => "ll",
                PayloadBase::Network => "nh",
                PayloadBase::Transport => "th",
            };
            format!("@{b},{},{}", o * 8, l * 8)
        }
    }
}

/// Format a compared value the way its source suggests.
fn format_value(label: &str, data: &[u8]) -> String {
    let word = |d: &[u8]| {
        let mut b = [0u8; 4];
        b[..d.len().min(4)].copy_from_slice(&d[..d.len().min(4)]);
        u32::from_ne_bytes(b)
    };
    if label.ends_with("ifname") {
        return format!("\"{}\"", string(data));
    }
    if label.ends_with("nfproto") && data.len() == 1 {
        return match data[0] {
            NFPROTO_IPV4 => "ipv4".into(),
            NFPROTO_IPV6 => "ipv6".into(),
            n => n.to_string(),
        };
    }
    if (label.ends_with("l4proto") || label.ends_with("protocol")) && data.len() == 1 {
        return proto_name(data[0]);
    }
    if label.ends_with("addr") && data.len() == 4 {
        return std::net::Ipv4Addr::new(data[0], data[1], data[2], data[3]).to_string();
    }
    if label.ends_with("addr") && data.len() == 16 {
        let b: [u8; 16] = data.try_into().unwrap_or([0; 16]);
        return std::net::Ipv6Addr::from(b).to_string();
    }
    if label.ends_with("port") && data.len() == 2 {
        return u16::from_be_bytes([data[0], data[1]]).to_string();
    }
    if label.ends_with("tcp flags") && data.len() == 1 {
        return format!("0x{:02x}", data[0]);
    }
    if (label.contains("mark") || label.contains("ct state") || label.contains("type")) && data.len() == 4 {
        return format!("0x{:x}", word(data));
    }
    format!("0x{}", hex(data))
}

/// Print a rule's expressions like nft would (approximately), for logs.
pub fn fmt_exprs(exprs: &[Expr], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    use std::collections::BTreeMap;
    // What each register holds, and the loads since the last consumer (for concatenations).
    let mut regs: BTreeMap<Reg, String> = BTreeMap::new();
    let mut pending: Vec<String> = Vec::new();
    let mut out: Vec<String> = Vec::new();
    let label = |regs: &BTreeMap<Reg, String>, r: &Reg| regs.get(r).cloned().unwrap_or_else(|| r.to_string());
    for e in exprs {
        fn load(r: Reg, l: String, regs: &mut BTreeMap<Reg, String>, pending: &mut Vec<String>) {
            regs.insert(r, l.clone());
            pending.push(l);
        }
        match e {
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => load(*dreg, payload_label(*base, *offset, *len), &mut regs, &mut pending),
            Expr::Meta { key, dreg } => load(*dreg, format!("meta {}", key.name()), &mut regs, &mut pending),
            Expr::Ct { key, dreg } => load(*dreg, format!("ct {}", key.name()), &mut regs, &mut pending),
            Expr::Rt {
                key: RtKey::TcpMss,
                dreg,
            } => load(*dreg, "rt mtu".into(), &mut regs, &mut pending),
            Expr::Rt { key, dreg } => load(*dreg, format!("rt {key:?}").to_lowercase(), &mut regs, &mut pending),
            Expr::Fib { flags, result, dreg } => {
                let by = if flags & fib_flags::DADDR != 0 {
                    "daddr"
                } else {
                    "saddr"
                };
                let res = match result {
                    FibResult::Oif => "oif",
                    FibResult::OifName => "oifname",
                    FibResult::AddrType => "type",
                };
                load(*dreg, format!("fib {by} {res}"), &mut regs, &mut pending)
            }
            Expr::Numgen {
                kind,
                modulus,
                offset,
                dreg,
            } => {
                let k = if *kind == NumgenKind::Inc { "inc" } else { "random" };
                let off = if *offset != 0 {
                    format!(" offset {offset}")
                } else {
                    String::new()
                };
                load(*dreg, format!("numgen {k} mod {modulus}{off}"), &mut regs, &mut pending)
            }
            Expr::Jhash {
                sreg,
                seed,
                modulus,
                offset,
                dreg,
                ..
            } => {
                let src = std::mem::take(&mut pending).join(" . ");
                let src = if src.is_empty() { label(&regs, sreg) } else { src };
                let off = if *offset != 0 {
                    format!(" offset {offset}")
                } else {
                    String::new()
                };
                load(
                    *dreg,
                    format!("jhash {src} mod {modulus} seed 0x{seed:x}{off}"),
                    &mut regs,
                    &mut pending,
                )
            }
            Expr::ExthdrLoad {
                kind: 2,
                op: ExthdrOp::TcpOpt,
                dreg,
                ..
            } => load(*dreg, "tcp option maxseg size".into(), &mut regs, &mut pending),
            Expr::Immediate { dreg, data } => {
                regs.insert(*dreg, format!("0x{}", hex(data)));
                pending.push(format!("0x{}", hex(data)));
            }
            Expr::Bitwise { sreg, dreg, mask, xor } => {
                let l = label(&regs, sreg);
                let x = if xor.iter().all(|&b| b == 0) {
                    String::new()
                } else {
                    format!(" ^ {}", format_value(&l, xor))
                };
                let l2 = format!("{l} & {}{x}", format_value(&l, mask));
                regs.insert(*dreg, l2);
                pending.pop();
                pending.push(regs[dreg].clone());
            }
            Expr::Byteorder { sreg, dreg, .. } => {
                let l = label(&regs, sreg);
                regs.insert(*dreg, l);
            }
            Expr::Cmp { sreg, op, data } => {
                let l = label(&regs, sreg);
                let base = l.split(" & ").next().unwrap_or(&l).to_string();
                let op = if *op == CmpOp::Eq {
                    String::new()
                } else {
                    format!("{} ", op.sym())
                };
                out.push(format!("{l} {op}{}", format_value(&base, data)));
                pending.clear();
            }
            Expr::Range { sreg, neq, from, to } => {
                let l = label(&regs, sreg);
                let op = if *neq { "!= " } else { "" };
                out.push(format!("{l} {op}{}-{}", format_value(&l, from), format_value(&l, to)));
                pending.clear();
            }
            Expr::Lookup {
                set,
                sreg,
                dreg,
                invert,
            } => {
                let src = std::mem::take(&mut pending).join(" . ");
                let src = if src.is_empty() { label(&regs, sreg) } else { src };
                match dreg {
                    None => out.push(format!("{src} {}@{set}", if *invert { "!= " } else { "" })),
                    Some(Reg::VERDICT) => out.push(format!("{src} vmap @{set}")),
                    Some(d) => {
                        regs.insert(*d, format!("{src} map @{set}"));
                        pending.push(regs[d].clone());
                    }
                }
            }
            Expr::Dynset { set, op, timeout, .. } => {
                let src = std::mem::take(&mut pending).join(" . ");
                let op = match op {
                    DynsetOp::Add => "add",
                    DynsetOp::Update => "update",
                    DynsetOp::Delete => "delete",
                };
                let t = timeout
                    .map(|t| format!(" timeout {}s", t.as_secs()))
                    .unwrap_or_default();
                out.push(format!("{op} @{set} {{ {src}{t} }}"));
            }
            Expr::MetaSet { key, sreg } => {
                out.push(format!("meta {} set {}", key.name(), label(&regs, sreg)));
                pending.clear();
            }
            Expr::CtSet { key, sreg } => {
                out.push(format!("ct {} set {}", key.name(), label(&regs, sreg)));
                pending.clear();
            }
            Expr::ExthdrWrite {
                op: ExthdrOp::TcpOpt,
                kind: 2,
                sreg,
                ..
            } => {
                out.push(format!("tcp option maxseg size set {}", label(&regs, sreg)));
                pending.clear();
            }
            Expr::Verdict(v) => out.push(v.to_string()),
            Expr::Counter => out.push("counter".into()),
            Expr::Masq { flags, proto } => {
                let mut s = "masquerade".to_string();
                if let Some((lo, _)) = proto {
                    s += &format!(" to :{}", label(&regs, lo));
                }
                if flags.fully_random {
                    s += " fully-random";
                }
                out.push(s);
            }
            Expr::Nat {
                kind,
                ipv6,
                addr,
                proto,
                flags,
            } => {
                let k = if *kind == NatKind::Snat { "snat" } else { "dnat" };
                let fam = if *ipv6 { "ip6" } else { "ip" };
                let a = addr.map(|(lo, _)| label(&regs, &lo)).unwrap_or_default();
                let p = proto
                    .map(|(lo, _)| format!(":{}", label(&regs, &lo)))
                    .unwrap_or_default();
                let fr = if flags.fully_random { " fully-random" } else { "" };
                out.push(format!("{k} {fam} to {a}{p}{fr}"));
                pending.clear();
            }
            Expr::Reject(k) => out.push(match k {
                RejectKind::TcpReset => "reject with tcp reset".into(),
                RejectKind::Icmp(c) => format!("reject with icmp code {c}"),
                RejectKind::Icmpx(c) => format!("reject with icmpx code {c}"),
            }),
            other => out.push(format!("[ {} ]", other.kernel_name())),
        }
    }
    f.write_str(&out.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_use_the_kernels_canonical_names() {
        // NFT_REG32_00 is reg 1, NFT_REG32_04 is reg 2; NFT_REG32_01 stays 9.
        assert_eq!(Reg::r32(0), Reg::R1);
        assert_eq!(Reg::r32(4), Reg::R2);
        assert_eq!(Reg::r32(1).raw(), 9);
        assert_eq!(Reg::from_raw(12), Reg::R2);
    }

    #[test]
    fn every_expression_decodes_to_itself() {
        use crate::build::*;
        let mut all: Vec<Expr> = [
            nfproto_ipv4(),
            ip_saddr_in("s"),
            ip6_daddr_not_in("s6"),
            oifname_eq("weft-wg"),
            tcp_flags_syn(),
            tcp_mss_clamp_rt_mtu(),
            masquerade(),
            masquerade_fully_random(),
            vmap(&[Field::IpDaddr, Field::L4Proto, Field::ThDport], "m"),
            numgen_vmap(NumgenKind::Inc, 3, "m"),
            jhash_vmap(&[Field::IpSaddr, Field::ThSport], 4, 7, "m"),
            dnat_to("10.0.0.1".parse().unwrap(), Some(80)),
            dnat_to("fd00::1".parse().unwrap(), None),
            snat_to("10.0.0.2".parse().unwrap(), None),
            dnat_map(&[Field::IpDaddr, Field::ThDport], "nm", false, true),
            crate::build::ct_state(ct_state::NEW),
            ct_mark_eq(1),
            ct_mark_set(2),
            mark_or(0x4000),
            mark_and_eq(0x4000, 0x4000),
            reject_tcp_reset(),
            reject_icmpx_port_unreachable(),
            reject_icmpv6_port_unreachable(),
            fib_daddr_type_local(),
            set_update(&[Field::IpSaddr], "aff", Some(std::time::Duration::from_secs(60))),
            field_range(Field::ThDport, vec![0, 1], vec![0, 9], true),
            counter(),
            jump("c"),
            goto("c"),
            ret(),
        ]
        .concat();
        all.push(Expr::ExthdrLoad {
            op: ExthdrOp::TcpOpt,
            kind: 2,
            offset: 2,
            len: 2,
            dreg: Reg::R1,
        });
        for e in all {
            let mut w = MsgWriter::new();
            e.encode(&mut w);
            let (_, elem) = Attrs(&w.buf).next().unwrap();
            assert_eq!(Expr::decode(elem).unwrap(), e);
        }
    }
}
