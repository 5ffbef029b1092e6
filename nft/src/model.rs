//! The desired state as plain data: a [`Table`] with its chains, rules,
//! sets and maps. Values here are what the kernel stores (keys as the raw
//! bytes a lookup compares), so a table read back from the kernel compares
//! equal to the one applied (see [`Table::canonical`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::consts::*;
use crate::error::{Error, Result};
use crate::expr::Expr;

/// Table family. `inet` sees IPv4 and IPv6 (rules check `meta nfproto` first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Inet,
    Ip,
    Ip6,
}

impl Family {
    pub fn nfproto(self) -> u8 {
        match self {
            Family::Inet => NFPROTO_INET,
            Family::Ip => NFPROTO_IPV4,
            Family::Ip6 => NFPROTO_IPV6,
        }
    }

    pub fn from_nfproto(v: u8) -> Option<Family> {
        match v {
            NFPROTO_INET => Some(Family::Inet),
            NFPROTO_IPV4 => Some(Family::Ip),
            NFPROTO_IPV6 => Some(Family::Ip6),
            _ => None,
        }
    }

    /// nft's keyword: `inet`, `ip`, `ip6`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `table <family> <name> { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    pub chains: BTreeMap<String, Chain>,
    pub sets: BTreeMap<String, Set>,
}

impl Table {
    pub fn new(family: Family, name: impl Into<String>) -> Table {
        Table {
            family,
            name: name.into(),
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
        }
    }

    /// Add (or replace) a chain; returns it for adding rules.
    pub fn chain(&mut self, chain: Chain) -> &mut Chain {
        let name = chain.name.clone();
        self.chains.insert(name.clone(), chain);
        self.chains.get_mut(&name).expect("just inserted")
    }

    /// Add (or replace) a set or map.
    pub fn set(&mut self, set: Set) -> &mut Set {
        let name = set.name.clone();
        self.sets.insert(name.clone(), set);
        self.sets.get_mut(&name).expect("just inserted")
    }

    /// The form the kernel gives back: interval elements always carry their
    /// end, an element timeout equal to the set's default is dropped, and the
    /// contents of dynamic sets (filled by the packet path) are left out.
    pub fn canonical(&self) -> Table {
        let mut t = self.clone();
        for s in t.sets.values_mut() {
            if s.flags.dynamic {
                s.elements.clear();
                continue;
            }
            let interval = s.flags.interval;
            let default = s.timeout;
            for (k, e) in s.elements.iter_mut() {
                if interval && e.end.is_none() {
                    e.end = Some(k.clone());
                }
                if e.timeout.is_some() && e.timeout == default {
                    e.timeout = None;
                }
            }
        }
        t
    }

    /// Whether [`canonical`](Self::canonical) would change nothing (checked without copying).
    pub fn is_canonical(&self) -> bool {
        self.sets.values().all(|s| {
            if s.flags.dynamic {
                return s.elements.is_empty();
            }
            s.elements
                .values()
                .all(|e| !((s.flags.interval && e.end.is_none()) || (e.timeout.is_some() && e.timeout == s.timeout)))
        })
    }

    /// Check what the kernel would refuse, before anything is sent: names,
    /// key lengths, element data, jump targets, sets referenced by rules.
    pub fn validate(&self) -> Result<()> {
        check_name("table", &self.name)?;
        for (name, c) in &self.chains {
            check_name("chain", name)?;
            if name != &c.name {
                return Err(Error::invalid(
                    format!("chain {name}"),
                    format!("stored under a different name {}", c.name),
                ));
            }
            for (i, r) in c.rules.iter().enumerate() {
                let what = || format!("rule {} #{} of chain {name}", self.family, i + 1);
                if r.exprs.is_empty() {
                    return Err(Error::invalid(what(), "no expressions"));
                }
                if r.comment.as_ref().is_some_and(|c| c.len() > 128) {
                    return Err(Error::invalid(what(), "comment longer than 128 bytes"));
                }
                for e in &r.exprs {
                    if let Some(target) = e.jump_target() {
                        self.check_jump(target, &what())?;
                    }
                    if let Some(set) = e.set_ref() {
                        if !self.sets.contains_key(set) {
                            return Err(Error::invalid(
                                what(),
                                format!("refers to set @{set} which is not in the table"),
                            ));
                        }
                    }
                }
            }
        }
        for (name, s) in &self.sets {
            check_name("set", name)?;
            if name != &s.name {
                return Err(Error::invalid(
                    format!("set {name}"),
                    format!("stored under a different name {}", s.name),
                ));
            }
            s.validate()?;
            for e in s.elements.values() {
                if let Some(ElemData::Verdict(v)) = &e.data {
                    if let Some(target) = v.chain() {
                        self.check_jump(target, &format!("element of map {name}"))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn check_jump(&self, target: &str, what: &str) -> Result<()> {
        match self.chains.get(target) {
            None => Err(Error::invalid(
                what,
                format!("jumps to chain {target} which is not in the table"),
            )),
            Some(c) if c.base.is_some() => Err(Error::invalid(what, format!("jumps to base chain {target}"))),
            Some(_) => Ok(()),
        }
    }
}

fn check_name(what: &str, name: &str) -> Result<()> {
    // NFT_NAME_MAXLEN is 256 including the NUL; set names 256 too.
    if name.is_empty() || name.len() > 255 || name.contains('\0') {
        return Err(Error::invalid(
            format!("{what} name {name:?}"),
            "must be 1..=255 bytes without NUL",
        ));
    }
    Ok(())
}

/// `chain <name> { [type <kind> hook <hook> priority <p>; policy <policy>;] rules }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// `Some` for a base chain (attached to a netfilter hook).
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
}

impl Chain {
    /// A regular chain (reached by jump/goto).
    pub fn regular(name: impl Into<String>) -> Chain {
        Chain {
            name: name.into(),
            base: None,
            rules: Vec::new(),
        }
    }

    /// A base chain, e.g. `type nat hook postrouting priority srcnat; policy accept;`
    /// is `Chain::base("x", ChainKind::Nat, Hook::Postrouting, prio::SRCNAT, Policy::Accept)`.
    pub fn base(name: impl Into<String>, kind: ChainKind, hook: Hook, priority: i32, policy: Policy) -> Chain {
        Chain {
            name: name.into(),
            base: Some(BaseChain {
                hook,
                priority,
                kind,
                policy,
            }),
            rules: Vec::new(),
        }
    }

    pub fn rule(&mut self, rule: Rule) -> &mut Chain {
        self.rules.push(rule);
        self
    }
}

/// nft's named priorities (`priority srcnat` is 100, ...).
pub mod prio {
    pub const RAW: i32 = -300;
    pub const MANGLE: i32 = -150;
    pub const DSTNAT: i32 = -100;
    pub const FILTER: i32 = 0;
    pub const SECURITY: i32 = 50;
    pub const SRCNAT: i32 = 100;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub hook: Hook,
    pub priority: i32,
    pub kind: ChainKind,
    pub policy: Policy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    /// `NF_INET_*` hook number.
    pub fn number(self) -> u32 {
        match self {
            Hook::Prerouting => 0,
            Hook::Input => 1,
            Hook::Forward => 2,
            Hook::Output => 3,
            Hook::Postrouting => 4,
        }
    }

    pub fn from_number(n: u32) -> Option<Hook> {
        Some(match n {
            0 => Hook::Prerouting,
            1 => Hook::Input,
            2 => Hook::Forward,
            3 => Hook::Output,
            4 => Hook::Postrouting,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    Filter,
    Nat,
    Route,
}

impl ChainKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChainKind::Filter => "filter",
            ChainKind::Nat => "nat",
            ChainKind::Route => "route",
        }
    }

    pub fn parse(s: &str) -> Option<ChainKind> {
        Some(match s {
            "filter" => ChainKind::Filter,
            "nat" => ChainKind::Nat,
            "route" => ChainKind::Route,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Accept,
    Drop,
}

/// One rule: expressions evaluated in order, and an optional comment that
/// `nft list` shows (stored as rule userdata in libnftnl's TLV format).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub exprs: Vec<Expr>,
    pub comment: Option<String>,
}

impl Rule {
    /// A rule from pieces, e.g. `Rule::of([nfproto_ipv4(), ip_saddr_in("pods"), masquerade()])`.
    pub fn of(parts: impl IntoIterator<Item = Vec<Expr>>) -> Rule {
        Rule {
            exprs: parts.into_iter().flatten().collect(),
            comment: None,
        }
    }

    pub fn comment(mut self, c: impl Into<String>) -> Rule {
        self.comment = Some(c.into());
        self
    }
}

/// A verdict: in an `immediate` expression or as a verdict map's data.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Continue,
    Return,
    Jump(String),
    Goto(String),
}

impl Verdict {
    pub fn chain(&self) -> Option<&str> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            _ => None,
        }
    }

    pub fn code(&self) -> i32 {
        match self {
            Verdict::Accept => NF_ACCEPT,
            Verdict::Drop => NF_DROP,
            Verdict::Continue => NFT_CONTINUE,
            Verdict::Return => NFT_RETURN,
            Verdict::Jump(_) => NFT_JUMP,
            Verdict::Goto(_) => NFT_GOTO,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Continue => f.write_str("continue"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
        }
    }
}

/// A key or data field type (nft's datatype names in the docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyType {
    /// `ipv4_addr`
    Ipv4Addr,
    /// `ipv6_addr`
    Ipv6Addr,
    /// `inet_proto` (1 byte, e.g. 6 = tcp)
    InetProto,
    /// `inet_service` (2 bytes, big-endian port)
    InetService,
    /// `mark` (4 bytes, host order)
    Mark,
    /// `ifname` (16 bytes, NUL-padded)
    IfName,
    /// `ether_addr`
    EtherAddr,
    /// `integer` of the given byte length (e.g. numgen/jhash results: 4).
    Integer(u32),
}

impl KeyType {
    /// nft's datatype id (what `NFTA_SET_KEY_TYPE` carries).
    pub fn id(self) -> u32 {
        match self {
            KeyType::Ipv4Addr => TYPE_IPADDR,
            KeyType::Ipv6Addr => TYPE_IP6ADDR,
            KeyType::InetProto => TYPE_INET_PROTOCOL,
            KeyType::InetService => TYPE_INET_SERVICE,
            KeyType::Mark => TYPE_MARK,
            KeyType::IfName => TYPE_IFNAME,
            KeyType::EtherAddr => TYPE_ETHERADDR,
            KeyType::Integer(_) => TYPE_INTEGER,
        }
    }

    /// Byte length of one value.
    #[allow(clippy::len_without_is_empty)] // reason: a datatype's length is never zero
    pub fn len(self) -> u32 {
        match self {
            KeyType::Ipv4Addr => 4,
            KeyType::Ipv6Addr => 16,
            KeyType::InetProto => 1,
            KeyType::InetService => 2,
            KeyType::Mark => 4,
            KeyType::IfName => 16,
            KeyType::EtherAddr => 6,
            KeyType::Integer(n) => n,
        }
    }

    pub fn from_id(id: u32, len: u32) -> Option<KeyType> {
        Some(match id {
            TYPE_IPADDR => KeyType::Ipv4Addr,
            TYPE_IP6ADDR => KeyType::Ipv6Addr,
            TYPE_INET_PROTOCOL => KeyType::InetProto,
            TYPE_INET_SERVICE => KeyType::InetService,
            TYPE_MARK => KeyType::Mark,
            TYPE_IFNAME => KeyType::IfName,
            TYPE_ETHERADDR => KeyType::EtherAddr,
            TYPE_INTEGER => KeyType::Integer(len),
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            KeyType::Ipv4Addr => "ipv4_addr",
            KeyType::Ipv6Addr => "ipv6_addr",
            KeyType::InetProto => "inet_proto",
            KeyType::InetService => "inet_service",
            KeyType::Mark => "mark",
            KeyType::IfName => "ifname",
            KeyType::EtherAddr => "ether_addr",
            KeyType::Integer(_) => "integer",
        }
    }
}

/// Byte length of a (possibly concatenated) key: one field is its natural
/// length; in a concatenation every field takes whole 32-bit registers.
pub fn fields_len(fields: &[KeyType]) -> u32 {
    match fields {
        [one] => one.len(),
        many => many.iter().map(|k| k.len().div_ceil(4) * 4).sum(),
    }
}

/// nft's id of a concatenation: field ids shifted in 6 bits at a time.
pub fn fields_id(fields: &[KeyType]) -> u32 {
    fields.iter().fold(0, |acc, k| (acc << TYPE_BITS) | k.id())
}

/// What a map yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataType {
    /// A verdict map (`: verdict`).
    Verdict,
    /// A value (`: ipv4_addr`, `: ipv4_addr . inet_service`, ...).
    Value(Vec<KeyType>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetFlags {
    /// `flags interval`: elements are ranges (CIDRs).
    pub interval: bool,
    /// `flags timeout`: elements may expire.
    pub timeout: bool,
    /// `flags dynamic`: the packet path adds elements (`update @set`).
    pub dynamic: bool,
    /// `flags constant`: contents fixed at creation.
    pub constant: bool,
}

impl SetFlags {
    pub fn bits(self, map: bool, concat_interval: bool) -> u32 {
        let mut b = 0;
        if self.constant {
            b |= NFT_SET_CONSTANT;
        }
        if self.interval {
            b |= NFT_SET_INTERVAL;
        }
        if map {
            b |= NFT_SET_MAP;
        }
        if self.timeout {
            b |= NFT_SET_TIMEOUT;
        }
        if self.dynamic {
            b |= NFT_SET_EVAL;
        }
        if concat_interval {
            b |= NFT_SET_CONCAT;
        }
        b
    }

    pub fn from_bits(b: u32) -> SetFlags {
        SetFlags {
            interval: b & NFT_SET_INTERVAL != 0,
            timeout: b & NFT_SET_TIMEOUT != 0,
            dynamic: b & NFT_SET_EVAL != 0,
            constant: b & NFT_SET_CONSTANT != 0,
        }
    }
}

/// A set, or a map when `data` is set. Keys are the raw bytes the kernel
/// compares (build them with [`key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    /// One type, or a concatenation (`ipv4_addr . inet_proto . inet_service`).
    pub key: Vec<KeyType>,
    pub data: Option<DataType>,
    pub flags: SetFlags,
    /// Default element timeout (`timeout 3h`).
    pub timeout: Option<Duration>,
    /// key (the range start for interval sets) → element.
    pub elements: BTreeMap<Vec<u8>, Elem>,
}

impl Set {
    /// A plain set of `key`.
    pub fn new(name: impl Into<String>, key: Vec<KeyType>) -> Set {
        Set {
            name: name.into(),
            key,
            data: None,
            flags: SetFlags::default(),
            timeout: None,
            elements: BTreeMap::new(),
        }
    }

    /// A map `key : data`.
    pub fn map(name: impl Into<String>, key: Vec<KeyType>, data: DataType) -> Set {
        Set {
            data: Some(data),
            ..Set::new(name, key)
        }
    }

    /// `flags interval` set of `ipv4_addr` or `ipv6_addr`, for CIDRs.
    pub fn cidrs(name: impl Into<String>, v6: bool) -> Set {
        let mut s = Set::new(name, vec![if v6 { KeyType::Ipv6Addr } else { KeyType::Ipv4Addr }]);
        s.flags.interval = true;
        s
    }

    pub fn key_len(&self) -> u32 {
        fields_len(&self.key)
    }

    pub fn data_len(&self) -> Option<u32> {
        match &self.data {
            None => None,
            // sizeof(struct nft_verdict) as nft declares it.
            Some(DataType::Verdict) => Some(16),
            Some(DataType::Value(f)) => Some(fields_len(f)),
        }
    }

    /// Whether elements are sent with `NFTA_SET_ELEM_KEY_END` (concatenated
    /// ranges, the kernel's pipapo set) instead of a start and an end element.
    pub fn uses_key_end(&self) -> bool {
        self.flags.interval && self.key.len() > 1
    }

    /// Insert a plain element.
    pub fn insert(&mut self, key: Vec<u8>) -> &mut Set {
        self.elements.insert(key, Elem::default());
        self
    }

    /// Insert a map element.
    pub fn insert_map(&mut self, key: Vec<u8>, data: ElemData) -> &mut Set {
        self.elements.insert(
            key,
            Elem {
                data: Some(data),
                ..Elem::default()
            },
        );
        self
    }

    /// Insert a CIDR as a range (interval sets of one address field).
    pub fn insert_cidr(&mut self, net: ipnetwork::IpNetwork) -> &mut Set {
        let (start, end) = cidr_range(net);
        self.elements.insert(
            start,
            Elem {
                end: Some(end),
                ..Elem::default()
            },
        );
        self
    }

    pub fn validate(&self) -> Result<()> {
        let what = || format!("set {}", self.name);
        if self.key.is_empty() {
            return Err(Error::invalid(what(), "no key type"));
        }
        if self.key.len() > 5 {
            // 6 bits per field in a 32-bit type id.
            return Err(Error::invalid(
                what(),
                "more than 5 concatenated fields cannot be typed",
            ));
        }
        if let Some(DataType::Value(f)) = &self.data {
            if f.is_empty() || f.len() > 5 {
                return Err(Error::invalid(what(), "data must have 1..=5 fields"));
            }
        }
        if self.timeout.is_some() && !self.flags.timeout {
            return Err(Error::invalid(what(), "a default timeout needs flags timeout"));
        }
        let klen = self.key_len() as usize;
        let dlen = self.data_len().map(|d| d as usize);
        let mut prev_end: Option<&[u8]> = None;
        for (k, e) in &self.elements {
            let ewhat = || format!("element {} of set {}", hex(k), self.name);
            if k.len() != klen {
                return Err(Error::invalid(
                    ewhat(),
                    format!("key is {} bytes, the set's key is {klen}", k.len()),
                ));
            }
            if let Some(end) = &e.end {
                if !self.flags.interval {
                    return Err(Error::invalid(ewhat(), "a range in a set without flags interval"));
                }
                if end.len() != klen || end.as_slice() < k.as_slice() {
                    return Err(Error::invalid(
                        ewhat(),
                        "range end shorter than the key or before the start",
                    ));
                }
            }
            if self.flags.interval && !self.uses_key_end() {
                if let Some(pe) = prev_end {
                    if pe >= k.as_slice() {
                        return Err(Error::invalid(ewhat(), "overlaps the previous range"));
                    }
                }
                prev_end = Some(e.end.as_deref().unwrap_or(k));
            }
            match (&e.data, &self.data, dlen) {
                (None, None, _) => {}
                (Some(ElemData::Verdict(_)), Some(DataType::Verdict), _) => {}
                (Some(ElemData::Value(v)), Some(DataType::Value(_)), Some(n)) if v.len() == n => {}
                (Some(ElemData::Value(v)), Some(DataType::Value(_)), Some(n)) => {
                    return Err(Error::invalid(
                        ewhat(),
                        format!("data is {} bytes, the map's data is {n}", v.len()),
                    ));
                }
                (None, Some(_), _) => return Err(Error::invalid(ewhat(), "a map element needs data")),
                _ => return Err(Error::invalid(ewhat(), "data does not match the set's data type")),
            }
            if e.timeout.is_some() && !self.flags.timeout {
                return Err(Error::invalid(ewhat(), "an element timeout needs flags timeout"));
            }
        }
        Ok(())
    }
}

/// One element. For interval sets `end` is the last key inside the range
/// (inclusive; `None` means the range is the single key).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Elem {
    pub end: Option<Vec<u8>>,
    pub data: Option<ElemData>,
    pub timeout: Option<Duration>,
}

/// A map element's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElemData {
    Verdict(Verdict),
    Value(Vec<u8>),
}

/// `[first, last]` address of a CIDR as key bytes.
pub fn cidr_range(net: ipnetwork::IpNetwork) -> (Vec<u8>, Vec<u8>) {
    match net {
        ipnetwork::IpNetwork::V4(n) => (n.network().octets().to_vec(), n.broadcast().octets().to_vec()),
        ipnetwork::IpNetwork::V6(n) => {
            let start = u128::from(n.network());
            let host = if n.prefix() == 0 {
                u128::MAX
            } else {
                (1u128 << (128 - n.prefix())) - 1
            };
            (start.to_be_bytes().to_vec(), (start | host).to_be_bytes().to_vec())
        }
    }
}

/// Builders for key and data bytes. A concatenation pads every field to a
/// multiple of 4 bytes, as the kernel's registers hold them:
/// `key::concat(&[key::ipv4(a), key::proto(6), key::port(80)])`.
pub mod key {
    use super::*;

    pub fn ipv4(a: Ipv4Addr) -> Vec<u8> {
        a.octets().to_vec()
    }

    pub fn ipv6(a: Ipv6Addr) -> Vec<u8> {
        a.octets().to_vec()
    }

    pub fn ip(a: IpAddr) -> Vec<u8> {
        match a {
            IpAddr::V4(a) => ipv4(a),
            IpAddr::V6(a) => ipv6(a),
        }
    }

    /// `inet_proto` (tcp = 6, udp = 17, sctp = 132).
    pub fn proto(p: u8) -> Vec<u8> {
        vec![p]
    }

    /// `inet_service`: a port, big-endian.
    pub fn port(p: u16) -> Vec<u8> {
        p.to_be_bytes().to_vec()
    }

    /// `mark` and other 32-bit host-order integers (numgen/jhash results).
    pub fn u32_host(v: u32) -> Vec<u8> {
        v.to_ne_bytes().to_vec()
    }

    /// An interface name, NUL-padded to 16 bytes.
    pub fn ifname(name: &str) -> Vec<u8> {
        let mut v = name.as_bytes().to_vec();
        v.resize(16, 0);
        v
    }

    /// Fields joined as a concatenation (each padded to 4 bytes).
    pub fn concat(fields: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in fields {
            out.extend_from_slice(f);
            out.resize(out.len().div_ceil(4) * 4, 0);
        }
        out
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Big-endian `b + 1`; `None` on overflow (the range runs to the top).
pub(crate) fn incr(b: &[u8]) -> Option<Vec<u8>> {
    let mut v = b.to_vec();
    for i in (0..v.len()).rev() {
        if v[i] == 0xff {
            v[i] = 0;
        } else {
            v[i] += 1;
            return Some(v);
        }
    }
    None
}

/// Big-endian `b - 1` (saturating at zero).
pub(crate) fn decr(b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    for i in (0..v.len()).rev() {
        if v[i] == 0 {
            v[i] = 0xff;
        } else {
            v[i] -= 1;
            return v;
        }
    }
    vec![0; b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_become_inclusive_ranges() {
        assert_eq!(
            cidr_range("10.244.1.0/24".parse().unwrap()),
            (vec![10, 244, 1, 0], vec![10, 244, 1, 255])
        );
        assert_eq!(cidr_range("0.0.0.0/0".parse().unwrap()), (vec![0; 4], vec![255; 4]));
        let (s, e) = cidr_range("fd00::/8".parse().unwrap());
        assert_eq!((s[0], s[1], e[0], e[1], e[15]), (0xfd, 0, 0xfd, 0xff, 0xff));
    }

    #[test]
    fn big_endian_step() {
        assert_eq!(incr(&[10, 0, 0, 255]), Some(vec![10, 0, 1, 0]));
        assert_eq!(incr(&[255, 255]), None);
        assert_eq!(decr(&[10, 0, 1, 0]), vec![10, 0, 0, 255]);
        assert_eq!(decr(&[0, 0]), vec![0, 0]);
    }

    #[test]
    fn concat_ids_and_lengths_match_nft() {
        // nft: `ipv4_addr . inet_proto . inet_service` is type 0x730d, 12 bytes.
        let k = [KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService];
        assert_eq!((fields_id(&k), fields_len(&k)), (0x730d, 12));
        assert_eq!(fields_len(&[KeyType::InetService]), 2);
        assert_eq!(
            key::concat(&[key::ipv4(Ipv4Addr::new(10, 96, 0, 10)), key::proto(6), key::port(80)]),
            vec![10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0]
        );
    }

    #[test]
    fn validation_names_the_problem() {
        let mut s = Set::map("m", vec![KeyType::Ipv4Addr], DataType::Verdict);
        s.insert(vec![1, 2, 3, 4]);
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("needs data"), "{e}");
        let mut s = Set::cidrs("c", false);
        s.insert_cidr("10.0.0.0/8".parse().unwrap())
            .insert_cidr("10.1.0.0/16".parse().unwrap());
        assert!(s.validate().unwrap_err().to_string().contains("overlaps"));
        let mut t = Table::new(Family::Inet, "t");
        t.chain(Chain::regular("a"))
            .rule(Rule::of([vec![Expr::Verdict(Verdict::Jump("b".into()))]]));
        assert!(t.validate().unwrap_err().to_string().contains("jumps to chain b"));
    }
}
