//! Readable rule pieces. Each returns the expressions nft generates for the
//! same words (checked against `nft --debug=netlink`), so
//! `Rule::of([nfproto_ipv4(), ip_saddr_in("pods"), ip_daddr_not_in("cluster"), masquerade()])`
//! is `meta nfproto ipv4 ip saddr @pods ip daddr != @cluster masquerade`.
//!
//! Dependencies are explicit: in an `inet` table put [`nfproto_ipv4`] /
//! [`nfproto_ipv6`] before `ip`/`ip6` matches, and [`l4proto`] before
//! transport matches that need one (nft adds these implicitly).

use std::net::IpAddr;
use std::time::Duration;

use crate::consts::{NFPROTO_IPV4, NFPROTO_IPV6};
use crate::expr::*;
use crate::model::{key, KeyType, Verdict};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;

/// A packet field that can be matched or be part of a concatenated key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    IpSaddr,
    IpDaddr,
    Ip6Saddr,
    Ip6Daddr,
    /// `meta l4proto`
    L4Proto,
    /// `th sport` (any transport with ports)
    ThSport,
    /// `th dport`
    ThDport,
    /// `meta mark`
    Mark,
    IifName,
    OifName,
}

impl Field {
    /// The set key type that holds this field.
    pub fn key_type(self) -> KeyType {
        match self {
            Field::IpSaddr | Field::IpDaddr => KeyType::Ipv4Addr,
            Field::Ip6Saddr | Field::Ip6Daddr => KeyType::Ipv6Addr,
            Field::L4Proto => KeyType::InetProto,
            Field::ThSport | Field::ThDport => KeyType::InetService,
            Field::Mark => KeyType::Mark,
            Field::IifName | Field::OifName => KeyType::IfName,
        }
    }

    /// Load the field into `reg`.
    pub fn load(self, dreg: Reg) -> Expr {
        let p = |base, offset, len| Expr::Payload {
            base,
            offset,
            len,
            dreg,
        };
        match self {
            Field::IpSaddr => p(PayloadBase::Network, 12, 4),
            Field::IpDaddr => p(PayloadBase::Network, 16, 4),
            Field::Ip6Saddr => p(PayloadBase::Network, 8, 16),
            Field::Ip6Daddr => p(PayloadBase::Network, 24, 16),
            Field::ThSport => p(PayloadBase::Transport, 0, 2),
            Field::ThDport => p(PayloadBase::Transport, 2, 2),
            Field::L4Proto => Expr::Meta {
                key: MetaKey::L4Proto,
                dreg,
            },
            Field::Mark => Expr::Meta {
                key: MetaKey::Mark,
                dreg,
            },
            Field::IifName => Expr::Meta {
                key: MetaKey::IifName,
                dreg,
            },
            Field::OifName => Expr::Meta {
                key: MetaKey::OifName,
                dreg,
            },
        }
    }
}

/// Load `fields` as one (concatenated) key starting at reg 1, as nft lays
/// them out: each field in the next free 4-byte register.
pub fn load_concat(fields: &[Field]) -> Vec<Expr> {
    let mut word = 0;
    fields
        .iter()
        .map(|f| {
            let e = f.load(Reg::r32(word));
            word += f.key_type().len().div_ceil(4);
            e
        })
        .collect()
}

fn cmp_eq(data: Vec<u8>) -> Expr {
    Expr::Cmp {
        sreg: Reg::R1,
        op: CmpOp::Eq,
        data,
    }
}

/// `meta nfproto ipv4`
pub fn nfproto_ipv4() -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: MetaKey::NfProto,
            dreg: Reg::R1,
        },
        cmp_eq(vec![NFPROTO_IPV4]),
    ]
}

/// `meta nfproto ipv6`
pub fn nfproto_ipv6() -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: MetaKey::NfProto,
            dreg: Reg::R1,
        },
        cmp_eq(vec![NFPROTO_IPV6]),
    ]
}

/// `meta l4proto <proto>`
pub fn l4proto(proto: u8) -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: MetaKey::L4Proto,
            dreg: Reg::R1,
        },
        cmp_eq(vec![proto]),
    ]
}

/// `<field> == <value>` (value as key bytes, see [`key`]).
pub fn field_eq(field: Field, value: Vec<u8>) -> Vec<Expr> {
    vec![field.load(Reg::R1), cmp_eq(value)]
}

/// `<field> != <value>`
pub fn field_neq(field: Field, value: Vec<u8>) -> Vec<Expr> {
    vec![
        field.load(Reg::R1),
        Expr::Cmp {
            sreg: Reg::R1,
            op: CmpOp::Neq,
            data: value,
        },
    ]
}

/// `<fields> @set` (or `!= @set`).
pub fn in_set(fields: &[Field], set: &str, invert: bool) -> Vec<Expr> {
    let mut v = load_concat(fields);
    v.push(Expr::Lookup {
        set: set.into(),
        sreg: Reg::R1,
        dreg: None,
        invert,
    });
    v
}

pub fn ip_saddr_in(set: &str) -> Vec<Expr> {
    in_set(&[Field::IpSaddr], set, false)
}
pub fn ip_saddr_not_in(set: &str) -> Vec<Expr> {
    in_set(&[Field::IpSaddr], set, true)
}
pub fn ip_daddr_in(set: &str) -> Vec<Expr> {
    in_set(&[Field::IpDaddr], set, false)
}
pub fn ip_daddr_not_in(set: &str) -> Vec<Expr> {
    in_set(&[Field::IpDaddr], set, true)
}
pub fn ip6_saddr_in(set: &str) -> Vec<Expr> {
    in_set(&[Field::Ip6Saddr], set, false)
}
pub fn ip6_saddr_not_in(set: &str) -> Vec<Expr> {
    in_set(&[Field::Ip6Saddr], set, true)
}
pub fn ip6_daddr_in(set: &str) -> Vec<Expr> {
    in_set(&[Field::Ip6Daddr], set, false)
}
pub fn ip6_daddr_not_in(set: &str) -> Vec<Expr> {
    in_set(&[Field::Ip6Daddr], set, true)
}

/// `ip saddr <addr>` / `ip6 saddr <addr>`
pub fn saddr_eq(addr: IpAddr) -> Vec<Expr> {
    match addr {
        IpAddr::V4(_) => field_eq(Field::IpSaddr, key::ip(addr)),
        IpAddr::V6(_) => field_eq(Field::Ip6Saddr, key::ip(addr)),
    }
}

/// `ip daddr <addr>` / `ip6 daddr <addr>`
pub fn daddr_eq(addr: IpAddr) -> Vec<Expr> {
    match addr {
        IpAddr::V4(_) => field_eq(Field::IpDaddr, key::ip(addr)),
        IpAddr::V6(_) => field_eq(Field::Ip6Daddr, key::ip(addr)),
    }
}

/// `iifname "<name>"`
pub fn iifname_eq(name: &str) -> Vec<Expr> {
    field_eq(Field::IifName, key::ifname(name))
}

/// `oifname "<name>"`
pub fn oifname_eq(name: &str) -> Vec<Expr> {
    field_eq(Field::OifName, key::ifname(name))
}

/// `tcp flags syn / syn,rst` (with nft's `meta l4proto tcp` dependency):
/// SYN set, RST clear — the first packet of a connection.
pub fn tcp_flags_syn() -> Vec<Expr> {
    let mut v = l4proto(TCP);
    v.push(Expr::Payload {
        base: PayloadBase::Transport,
        offset: 13,
        len: 1,
        dreg: Reg::R1,
    });
    v.push(Expr::Bitwise {
        sreg: Reg::R1,
        dreg: Reg::R1,
        mask: vec![0x06],
        xor: vec![0],
    });
    v.push(cmp_eq(vec![0x02]));
    v
}

/// `tcp option maxseg size set rt mtu`: clamp the MSS to the route's.
pub fn tcp_mss_clamp_rt_mtu() -> Vec<Expr> {
    vec![
        Expr::Rt {
            key: RtKey::TcpMss,
            dreg: Reg::R1,
        },
        Expr::Byteorder {
            sreg: Reg::R1,
            dreg: Reg::R1,
            hton: true,
            len: 2,
            size: 2,
        },
        Expr::ExthdrWrite {
            op: ExthdrOp::TcpOpt,
            kind: 2,
            offset: 2,
            len: 2,
            sreg: Reg::R1,
        },
    ]
}

/// `masquerade`
pub fn masquerade() -> Vec<Expr> {
    vec![Expr::Masq {
        flags: NatFlags::default(),
        proto: None,
    }]
}

/// `masquerade fully-random`
pub fn masquerade_fully_random() -> Vec<Expr> {
    vec![Expr::Masq {
        flags: NatFlags::FULLY_RANDOM,
        proto: None,
    }]
}

/// `<fields> vmap @set` — e.g. `vmap(&[IpDaddr, L4Proto, ThDport], "service-ips")`
/// is `ip daddr . meta l4proto . th dport vmap @service-ips`.
pub fn vmap(fields: &[Field], set: &str) -> Vec<Expr> {
    let mut v = load_concat(fields);
    v.push(Expr::Lookup {
        set: set.into(),
        sreg: Reg::R1,
        dreg: Some(Reg::VERDICT),
        invert: false,
    });
    v
}

/// `numgen random|inc mod <n> vmap @set` (the map's key is `Integer(4)`, host order).
pub fn numgen_vmap(kind: NumgenKind, modulus: u32, set: &str) -> Vec<Expr> {
    vec![
        Expr::Numgen {
            kind,
            modulus,
            offset: 0,
            dreg: Reg::R1,
        },
        Expr::Lookup {
            set: set.into(),
            sreg: Reg::R1,
            dreg: Some(Reg::VERDICT),
            invert: false,
        },
    ]
}

/// `jhash <fields> mod <n> seed <seed> vmap @set`. The fields are loaded
/// from reg 2 on (as nft does), the hash goes to reg 1.
pub fn jhash_vmap(fields: &[Field], modulus: u32, seed: u32, set: &str) -> Vec<Expr> {
    let mut word = 4;
    let mut v: Vec<Expr> = fields
        .iter()
        .map(|f| {
            let e = f.load(Reg::r32(word));
            word += f.key_type().len().div_ceil(4);
            e
        })
        .collect();
    let len: u32 = match fields {
        [one] => one.key_type().len(),
        many => many.iter().map(|f| f.key_type().len().div_ceil(4) * 4).sum(),
    };
    v.push(Expr::Jhash {
        sreg: Reg::R2,
        len,
        seed,
        modulus,
        offset: 0,
        dreg: Reg::R1,
    });
    v.push(Expr::Lookup {
        set: set.into(),
        sreg: Reg::R1,
        dreg: Some(Reg::VERDICT),
        invert: false,
    });
    v
}

/// `dnat ip to <addr>[:<port>]` / `dnat ip6 to [<addr>]:<port>`; in an `inet`
/// table nft needs `meta l4proto` before a port.
pub fn dnat_to(addr: IpAddr, port: Option<u16>) -> Vec<Expr> {
    nat_to(NatKind::Dnat, addr, port)
}

/// `snat ip to <addr>[:<port>]`
pub fn snat_to(addr: IpAddr, port: Option<u16>) -> Vec<Expr> {
    nat_to(NatKind::Snat, addr, port)
}

fn nat_to(kind: NatKind, addr: IpAddr, port: Option<u16>) -> Vec<Expr> {
    let mut v = vec![Expr::Immediate {
        dreg: Reg::R1,
        data: key::ip(addr),
    }];
    let proto = port.map(|p| {
        v.push(Expr::Immediate {
            dreg: Reg::R2,
            data: key::port(p),
        });
        (Reg::R2, Reg::R2)
    });
    v.push(Expr::Nat {
        kind,
        ipv6: addr.is_ipv6(),
        addr: Some((Reg::R1, Reg::R1)),
        proto,
        flags: NatFlags::default(),
    });
    v
}

/// `dnat ip to <fields> map @map` where the map's data is `ipv4_addr . inet_service`
/// (`with_port`) or just the address.
pub fn dnat_map(fields: &[Field], map: &str, ipv6: bool, with_port: bool) -> Vec<Expr> {
    let mut v = load_concat(fields);
    v.push(Expr::Lookup {
        set: map.into(),
        sreg: Reg::R1,
        dreg: Some(Reg::R1),
        invert: false,
    });
    let port_reg = if ipv6 { Reg::R2 } else { Reg::r32(1) };
    v.push(Expr::Nat {
        kind: NatKind::Dnat,
        ipv6,
        addr: Some((Reg::R1, Reg::R1)),
        proto: with_port.then_some((port_reg, port_reg)),
        flags: NatFlags::default(),
    });
    v
}

/// `ct state <bits>` (any of them), e.g. `ct_state(ct_state::NEW)`.
pub fn ct_state(bits: u32) -> Vec<Expr> {
    vec![
        Expr::Ct {
            key: CtKey::State,
            dreg: Reg::R1,
        },
        Expr::Bitwise {
            sreg: Reg::R1,
            dreg: Reg::R1,
            mask: bits.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: Reg::R1,
            op: CmpOp::Neq,
            data: vec![0; 4],
        },
    ]
}

/// `ct mark <value>`
pub fn ct_mark_eq(value: u32) -> Vec<Expr> {
    vec![
        Expr::Ct {
            key: CtKey::Mark,
            dreg: Reg::R1,
        },
        cmp_eq(value.to_ne_bytes().to_vec()),
    ]
}

/// `ct mark set <value>`
pub fn ct_mark_set(value: u32) -> Vec<Expr> {
    vec![
        Expr::Immediate {
            dreg: Reg::R1,
            data: value.to_ne_bytes().to_vec(),
        },
        Expr::CtSet {
            key: CtKey::Mark,
            sreg: Reg::R1,
        },
    ]
}

/// `meta mark and <mask> == <value>`
pub fn mark_and_eq(mask: u32, value: u32) -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: MetaKey::Mark,
            dreg: Reg::R1,
        },
        Expr::Bitwise {
            sreg: Reg::R1,
            dreg: Reg::R1,
            mask: mask.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        cmp_eq(value.to_ne_bytes().to_vec()),
    ]
}

/// `meta mark set <value>`
pub fn mark_set(value: u32) -> Vec<Expr> {
    vec![
        Expr::Immediate {
            dreg: Reg::R1,
            data: value.to_ne_bytes().to_vec(),
        },
        Expr::MetaSet {
            key: MetaKey::Mark,
            sreg: Reg::R1,
        },
    ]
}

/// `meta mark set meta mark or <bits>` (kube-proxy's masquerade mark).
pub fn mark_or(bits: u32) -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: MetaKey::Mark,
            dreg: Reg::R1,
        },
        Expr::Bitwise {
            sreg: Reg::R1,
            dreg: Reg::R1,
            mask: (!bits).to_ne_bytes().to_vec(),
            xor: bits.to_ne_bytes().to_vec(),
        },
        Expr::MetaSet {
            key: MetaKey::Mark,
            sreg: Reg::R1,
        },
    ]
}

/// `reject with tcp reset` (with nft's `meta l4proto tcp` dependency).
pub fn reject_tcp_reset() -> Vec<Expr> {
    let mut v = l4proto(TCP);
    v.push(Expr::Reject(RejectKind::TcpReset));
    v
}

/// `reject with icmp type port-unreachable` (in `ip` tables; in `inet`
/// tables put `nfproto_ipv4()` first).
pub fn reject_icmp_port_unreachable() -> Vec<Expr> {
    vec![Expr::Reject(RejectKind::Icmp(3))]
}

/// `reject with icmpv6 type port-unreachable`
pub fn reject_icmpv6_port_unreachable() -> Vec<Expr> {
    vec![Expr::Reject(RejectKind::Icmp(4))]
}

/// `reject with icmpx type port-unreachable` (inet tables, either family).
pub fn reject_icmpx_port_unreachable() -> Vec<Expr> {
    vec![Expr::Reject(RejectKind::Icmpx(1))]
}

/// `fib daddr type local`
pub fn fib_daddr_type_local() -> Vec<Expr> {
    vec![
        Expr::Fib {
            flags: fib_flags::DADDR,
            result: FibResult::AddrType,
            dreg: Reg::R1,
        },
        // RTN_LOCAL = 2, a host-order u32.
        cmp_eq(2u32.to_ne_bytes().to_vec()),
    ]
}

/// `update @set { <fields> timeout <t> }` (session affinity).
pub fn set_update(fields: &[Field], set: &str, timeout: Option<Duration>) -> Vec<Expr> {
    let mut v = load_concat(fields);
    v.push(Expr::Dynset {
        set: set.into(),
        op: DynsetOp::Update,
        sreg_key: Reg::R1,
        sreg_data: None,
        timeout,
    });
    v
}

/// `ip saddr != <from>-<to>` style range match on one field.
pub fn field_range(field: Field, from: Vec<u8>, to: Vec<u8>, neq: bool) -> Vec<Expr> {
    vec![
        field.load(Reg::R1),
        Expr::Range {
            sreg: Reg::R1,
            neq,
            from,
            to,
        },
    ]
}

/// `ip saddr [!=] 10.0.0.0/8` (any address field; v4 or v6) as nft writes
/// it: a byte-aligned prefix loads only its bytes, others are masked.
pub fn addr_prefix(field: Field, net: ipnetwork::IpNetwork, neq: bool) -> Vec<Expr> {
    let addr = key::ip(net.network());
    let prefix = u32::from(net.prefix());
    let op = if neq { CmpOp::Neq } else { CmpOp::Eq };
    let Expr::Payload { base, offset, .. } = field.load(Reg::R1) else {
        // Not a payload field: compare the whole value.
        return vec![
            field.load(Reg::R1),
            Expr::Cmp {
                sreg: Reg::R1,
                op,
                data: addr,
            },
        ];
    };
    if prefix % 8 == 0 {
        let n = (prefix / 8) as usize;
        return vec![
            Expr::Payload {
                base,
                offset,
                len: n as u32,
                dreg: Reg::R1,
            },
            Expr::Cmp {
                sreg: Reg::R1,
                op,
                data: addr[..n].to_vec(),
            },
        ];
    }
    let mut mask = vec![0u8; addr.len()];
    for (i, m) in mask.iter_mut().enumerate() {
        let bits = prefix.saturating_sub(i as u32 * 8).min(8);
        *m = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
    }
    let masked: Vec<u8> = addr.iter().zip(&mask).map(|(a, m)| a & m).collect();
    vec![
        field.load(Reg::R1),
        Expr::Bitwise {
            sreg: Reg::R1,
            dreg: Reg::R1,
            xor: vec![0; mask.len()],
            mask,
        },
        Expr::Cmp {
            sreg: Reg::R1,
            op,
            data: masked,
        },
    ]
}

pub fn counter() -> Vec<Expr> {
    vec![Expr::Counter]
}
pub fn accept() -> Vec<Expr> {
    vec![Expr::Verdict(Verdict::Accept)]
}
pub fn drop() -> Vec<Expr> {
    vec![Expr::Verdict(Verdict::Drop)]
}
pub fn ret() -> Vec<Expr> {
    vec![Expr::Verdict(Verdict::Return)]
}
pub fn jump(chain: &str) -> Vec<Expr> {
    vec![Expr::Verdict(Verdict::Jump(chain.into()))]
}
pub fn goto(chain: &str) -> Vec<Expr> {
    vec![Expr::Verdict(Verdict::Goto(chain.into()))]
}
