//! Objects ⇄ nf_tables messages: the batch writer used by the engine, and
//! the parsers for dump replies. Attribute layouts follow what nft 1.0.6
//! sends (verified with `strace -e write=all nft -f ...`, see the golden tests).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::consts::*;
use crate::error::{Error, Result};
use crate::expr::{parse_data, put_verdict, Data, Expr};
use crate::model::*;
use crate::wire::{be32, be64, string, Attrs, Msg, MsgWriter};

/// Upper bound for one message's element list; the nested attribute's
/// length is 16 bits, so a big element change becomes several messages.
const ELEMS_PER_MSG_BYTES: usize = 48 * 1024;

/// One atomic transaction being written: BATCH_BEGIN, object messages
/// (each with NLM_F_ACK and its own sequence number), BATCH_END.
#[derive(Debug)]
pub struct Batch {
    pub(crate) w: MsgWriter,
    /// seq → what the message does, for error reports.
    pub(crate) ops: Vec<(u32, String)>,
    pub(crate) begin_seq: u32,
    next_seq: u32,
    /// Readable change list for logs (one line per object, not per message).
    pub(crate) changes: Vec<String>,
    set_id: u32,
}

pub(crate) fn msg_type(t: u8) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | u16::from(t)
}

impl Batch {
    pub fn new(first_seq: u32) -> Batch {
        let mut w = MsgWriter::new();
        w.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first_seq, 0, NFNL_SUBSYS_NFTABLES);
        w.end();
        Batch {
            w,
            ops: Vec::new(),
            begin_seq: first_seq,
            next_seq: first_seq + 1,
            changes: Vec::new(),
            set_id: 0,
        }
    }

    /// Number of object messages so far.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn start(&mut self, ty: u8, flags: u16, family: Family, op: String) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.w.begin(
            msg_type(ty),
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            family.nfproto(),
            0,
        );
        self.ops.push((seq, op));
    }

    /// Close with BATCH_END; returns the bytes and the next free sequence number.
    pub fn finish(mut self) -> Result<FinishedBatch> {
        let seq = self.next_seq;
        self.w
            .begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES);
        self.w.end();
        if self.w.overflow {
            return Err(Error::invalid(
                "transaction",
                "an attribute exceeds 64 KiB (a rule with too many expressions?)",
            ));
        }
        Ok(FinishedBatch {
            bytes: self.w.buf,
            ops: self.ops,
            begin_seq: self.begin_seq,
            next_seq: seq + 1,
            changes: self.changes,
        })
    }

    /// `add table <family> <name>` (no error when it exists).
    pub fn add_table(&mut self, family: Family, name: &str) {
        self.start(
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE,
            family,
            format!("add table {family} {name}"),
        );
        self.w.put_str(NFTA_TABLE_NAME, name);
        self.w.put_be32(NFTA_TABLE_FLAGS, 0);
        self.w.end();
    }

    /// `delete table <family> <name>`
    pub fn del_table(&mut self, family: Family, name: &str) {
        self.start(NFT_MSG_DELTABLE, 0, family, format!("delete table {family} {name}"));
        self.w.put_str(NFTA_TABLE_NAME, name);
        self.w.end();
    }

    /// `add chain <family> <table> <name> [{ type .. hook .. priority ..; policy ..; }]`;
    /// on an existing base chain this updates the policy.
    pub fn add_chain(&mut self, family: Family, table: &str, c: &Chain) {
        self.start(
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE,
            family,
            format!("add chain {family} {table} {}", c.name),
        );
        self.w.put_str(NFTA_CHAIN_TABLE, table);
        self.w.put_str(NFTA_CHAIN_NAME, &c.name);
        if let Some(b) = &c.base {
            self.w.put_str(NFTA_CHAIN_TYPE, b.kind.as_str());
            self.w
                .put_be32(NFTA_CHAIN_POLICY, if b.policy == Policy::Accept { 1 } else { 0 });
            let h = self.w.nest(NFTA_CHAIN_HOOK);
            self.w.put_be32(NFTA_HOOK_HOOKNUM, b.hook.number());
            self.w.put_be32(NFTA_HOOK_PRIORITY, b.priority as u32);
            self.w.nest_end(h);
        }
        self.w.end();
    }

    /// `delete chain ...` (it must be empty and unreferenced by then).
    pub fn del_chain(&mut self, family: Family, table: &str, name: &str) {
        self.start(
            NFT_MSG_DELCHAIN,
            0,
            family,
            format!("delete chain {family} {table} {name}"),
        );
        self.w.put_str(NFTA_CHAIN_TABLE, table);
        self.w.put_str(NFTA_CHAIN_NAME, name);
        self.w.end();
    }

    /// `flush chain ...`: DELRULE with no handle.
    pub fn flush_chain(&mut self, family: Family, table: &str, name: &str) {
        self.start(
            NFT_MSG_DELRULE,
            0,
            family,
            format!("flush chain {family} {table} {name}"),
        );
        self.w.put_str(NFTA_RULE_TABLE, table);
        self.w.put_str(NFTA_RULE_CHAIN, name);
        self.w.end();
    }

    /// `add rule <family> <table> <chain> <exprs> [comment ".."]` (appended).
    pub fn add_rule(&mut self, family: Family, table: &str, chain: &str, index: usize, r: &Rule) {
        self.start(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            family,
            format!("add rule {family} {table} {chain} #{}: {r}", index + 1),
        );
        self.w.put_str(NFTA_RULE_TABLE, table);
        self.w.put_str(NFTA_RULE_CHAIN, chain);
        let l = self.w.nest(NFTA_RULE_EXPRESSIONS);
        for e in &r.exprs {
            e.encode(&mut self.w);
        }
        self.w.nest_end(l);
        if let Some(c) = &r.comment {
            self.w.put(NFTA_RULE_USERDATA, &comment_udata(c));
        }
        self.w.end();
    }

    /// `add set|map ...` (without elements).
    pub fn add_set(&mut self, family: Family, table: &str, s: &Set) {
        self.start(
            NFT_MSG_NEWSET,
            NLM_F_CREATE,
            family,
            format!("add set {family} {table} {}", s.name),
        );
        self.w.put_str(NFTA_SET_TABLE, table);
        self.w.put_str(NFTA_SET_NAME, &s.name);
        self.w
            .put_be32(NFTA_SET_FLAGS, s.flags.bits(s.data.is_some(), s.uses_key_end()));
        self.w.put_be32(NFTA_SET_KEY_TYPE, fields_id(&s.key));
        self.w.put_be32(NFTA_SET_KEY_LEN, s.key_len());
        match &s.data {
            None => {}
            Some(DataType::Verdict) => {
                self.w.put_be32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
                // nft sends 0 here; the kernel uses sizeof(struct nft_verdict).
                self.w.put_be32(NFTA_SET_DATA_LEN, 0);
            }
            Some(DataType::Value(f)) => {
                self.w.put_be32(NFTA_SET_DATA_TYPE, fields_id(f));
                self.w.put_be32(NFTA_SET_DATA_LEN, fields_len(f));
            }
        }
        // The kernel requires a transaction-local id (rules may refer to a
        // new set by it; this crate refers by name).
        self.set_id += 1;
        self.w.put_be32(NFTA_SET_ID, self.set_id);
        if let Some(t) = s.timeout {
            self.w.put_be64(NFTA_SET_TIMEOUT, t.as_millis() as u64);
        }
        let ud = set_udata(s);
        if !ud.is_empty() {
            self.w.put(NFTA_SET_USERDATA, &ud);
        }
        if s.uses_key_end() {
            let d = self.w.nest(NFTA_SET_DESC);
            {
                // The per-field lengths a concatenated range set (pipapo) needs.
                let c = self.w.nest(NFTA_SET_DESC_CONCAT);
                for k in &s.key {
                    let e = self.w.nest(NFTA_LIST_ELEM);
                    self.w.put_be32(NFTA_SET_FIELD_LEN, k.len());
                    self.w.nest_end(e);
                }
                self.w.nest_end(c);
            }
            self.w.nest_end(d);
        }
        self.w.end();
    }

    pub fn del_set(&mut self, family: Family, table: &str, name: &str) {
        self.start(NFT_MSG_DELSET, 0, family, format!("delete set {family} {table} {name}"));
        self.w.put_str(NFTA_SET_TABLE, table);
        self.w.put_str(NFTA_SET_NAME, name);
        self.w.end();
    }

    /// Add (or, with `delete`, remove) elements, split over as many
    /// messages as the 64 KiB attribute limit needs.
    pub fn elems<'a>(
        &mut self,
        family: Family,
        table: &str,
        s: &Set,
        elems: impl IntoIterator<Item = (&'a Vec<u8>, &'a Elem)>,
        delete: bool,
    ) {
        let verb = if delete { "delete" } else { "add" };
        let ty = if delete { NFT_MSG_DELSETELEM } else { NFT_MSG_NEWSETELEM };
        // (list nest offset, kernel elements so far, model elements so far, first key)
        let mut open: Option<(usize, usize, usize, String)> = None;
        for (k, e) in elems {
            if open.is_none() {
                self.start(
                    ty,
                    if delete { 0 } else { NLM_F_CREATE },
                    family,
                    format!("{verb} element {family} {table} {}", s.name),
                );
                self.w.put_str(NFTA_SET_ELEM_LIST_TABLE, table);
                self.w.put_str(NFTA_SET_ELEM_LIST_SET, &s.name);
                open = Some((self.w.nest(NFTA_SET_ELEM_LIST_ELEMENTS), 0, 0, hex(k)));
            }
            let n_in_msg = open.as_ref().map(|o| o.1).unwrap_or(0);
            let next = self.put_elem(s, k, e, delete, n_in_msg);
            if let Some(o) = open.as_mut() {
                o.1 = next;
                o.2 += 1;
                if self.w.buf.len() - o.0 > ELEMS_PER_MSG_BYTES {
                    if let Some(o) = open.take() {
                        self.close_elems(o);
                    }
                }
            }
        }
        if let Some(o) = open {
            self.close_elems(o);
        }
    }

    /// End an element message; its op names the first key and the count,
    /// e.g. `add element ip t m { 0a60000a06000000 00500000.. (412 elements) }`.
    fn close_elems(&mut self, (at, _, n, first): (usize, usize, usize, String)) {
        self.w.nest_end(at);
        self.w.end();
        if let Some((_, op)) = self.ops.last_mut() {
            if n == 1 {
                op.push_str(&format!(" {{ {first} }}"));
            } else {
                op.push_str(&format!(" {{ {first}.. ({n} elements) }}"));
            }
        }
    }

    /// Write one model element (one or two kernel elements); `idx` is the
    /// count so far in this message (libnftnl numbers list entries 1, 2, ...;
    /// the kernel ignores the number). Returns the new count.
    fn put_elem(&mut self, s: &Set, k: &[u8], e: &Elem, delete: bool, mut idx: usize) -> usize {
        let w = &mut self.w;
        let mut one = |w: &mut MsgWriter, key: &[u8], key_end: Option<&[u8]>, end_flag: bool, with_data: bool| {
            idx += 1;
            let n = w.nest(idx.min(0x3fff) as u16);
            if end_flag {
                w.put_be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
            }
            let kn = w.nest(NFTA_SET_ELEM_KEY);
            w.put(NFTA_DATA_VALUE, key);
            w.nest_end(kn);
            if let Some(ke) = key_end {
                let kn = w.nest(NFTA_SET_ELEM_KEY_END);
                w.put(NFTA_DATA_VALUE, ke);
                w.nest_end(kn);
            }
            if with_data {
                if let Some(t) = e.timeout {
                    w.put_be64(NFTA_SET_ELEM_TIMEOUT, t.as_millis() as u64);
                }
                match &e.data {
                    Some(ElemData::Verdict(v)) => put_verdict(w, NFTA_SET_ELEM_DATA, v),
                    Some(ElemData::Value(v)) => {
                        let dn = w.nest(NFTA_SET_ELEM_DATA);
                        w.put(NFTA_DATA_VALUE, v);
                        w.nest_end(dn);
                    }
                    None => {}
                }
            }
            w.nest_end(n);
        };
        let with_data = !delete;
        if s.uses_key_end() {
            let end = e.end.as_deref().unwrap_or(k);
            one(w, k, Some(end), false, with_data);
        } else if s.flags.interval {
            // nft's encoding of a range: the start, then an "interval end"
            // element at the first key after the range (none when the range
            // runs to the top of the key space).
            one(w, k, None, false, with_data);
            if let Some(after) = incr(e.end.as_deref().unwrap_or(k)) {
                one(w, &after, None, true, false);
            }
        } else {
            one(w, k, None, false, with_data);
        }
        idx
    }
}

/// A batch ready to send.
#[derive(Debug)]
pub struct FinishedBatch {
    pub bytes: Vec<u8>,
    pub ops: Vec<(u32, String)>,
    pub begin_seq: u32,
    pub next_seq: u32,
    pub changes: Vec<String>,
}

/// libnftnl's rule userdata: TLV {type u8, len u8, value}, the comment
/// NUL-terminated (what `nft add rule ... comment "x"` stores).
pub fn comment_udata(c: &str) -> Vec<u8> {
    let mut v = vec![UDATA_RULE_COMMENT, (c.len() + 1).min(255) as u8];
    v.extend_from_slice(&c.as_bytes()[..c.len().min(254)]);
    v.push(0);
    v
}

/// Set userdata as nft writes it (TLV, like rule comments): the byte order
/// of integer keys/data, so `nft list` prints host-order values (numgen or
/// jhash results, marks) as numbers rather than byte-swapped.
fn set_udata(s: &Set) -> Vec<u8> {
    let host = |f: &[KeyType]| matches!(f, [KeyType::Integer(_)] | [KeyType::Mark]);
    let mut v = Vec::new();
    if host(&s.key) {
        v.extend_from_slice(&[UDATA_SET_KEYBYTEORDER, 4]);
        v.extend_from_slice(&BYTEORDER_HOST.to_ne_bytes());
    }
    if let Some(DataType::Value(f)) = &s.data {
        if host(f) {
            v.extend_from_slice(&[UDATA_SET_DATABYTEORDER, 4]);
            v.extend_from_slice(&BYTEORDER_HOST.to_ne_bytes());
        }
    }
    v
}

fn parse_comment(ud: &[u8]) -> Option<String> {
    let mut rest = ud;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], rest[1] as usize);
        let val = rest.get(2..2 + len)?;
        if ty == UDATA_RULE_COMMENT {
            return Some(string(val));
        }
        rest = &rest[2 + len..];
    }
    None
}

/// A single-message request (GETGEN, a dump, ...).
pub fn request(ty: u8, flags: u16, seq: u32, family: u8, attrs: impl FnOnce(&mut MsgWriter)) -> Vec<u8> {
    let mut w = MsgWriter::new();
    w.begin(msg_type(ty), NLM_F_REQUEST | flags, seq, family, 0);
    attrs(&mut w);
    w.end();
    w.buf
}

fn attr_str(m: &Msg<'_>, ty: u16) -> Option<String> {
    m.attrs().find(|(t, _)| *t == ty).map(|(_, p)| string(p))
}

/// The table name of a NEWTABLE/NEWCHAIN/NEWRULE/NEWSET message (all use attribute 1).
pub fn table_of(m: &Msg<'_>) -> Option<String> {
    attr_str(m, 1)
}

/// A chain from a NEWCHAIN dump message (without rules).
pub fn parse_chain(m: &Msg<'_>) -> Result<Chain> {
    let mut name = None;
    let mut hook = None;
    let mut prio = None;
    let mut policy = None;
    let mut kind = None;
    for (ty, p) in m.attrs() {
        match ty {
            NFTA_CHAIN_NAME => name = Some(string(p)),
            NFTA_CHAIN_TYPE => kind = Some(string(p)),
            NFTA_CHAIN_POLICY => policy = be32(p),
            NFTA_CHAIN_HOOK => {
                for (t, v) in Attrs(p) {
                    match t {
                        NFTA_HOOK_HOOKNUM => hook = be32(v),
                        NFTA_HOOK_PRIORITY => prio = be32(v).map(|x| x as i32),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let name = name.ok_or_else(|| Error::decode("chain", "no name"))?;
    let base = match hook {
        None => None,
        Some(h) => {
            let what = || format!("chain {name}");
            Some(BaseChain {
                hook: Hook::from_number(h).ok_or_else(|| Error::decode(what(), format!("hook {h}")))?,
                priority: prio.unwrap_or(0),
                kind: kind
                    .as_deref()
                    .and_then(ChainKind::parse)
                    .ok_or_else(|| Error::decode(what(), format!("type {kind:?}")))?,
                policy: if policy == Some(0) {
                    Policy::Drop
                } else {
                    Policy::Accept
                },
            })
        }
    };
    Ok(Chain {
        name,
        base,
        rules: Vec::new(),
    })
}

/// `(chain name, rule)` from a NEWRULE dump message.
pub fn parse_rule(m: &Msg<'_>) -> Result<(String, Rule)> {
    let mut chain = None;
    let mut rule = Rule::default();
    for (ty, p) in m.attrs() {
        match ty {
            NFTA_RULE_CHAIN => chain = Some(string(p)),
            NFTA_RULE_EXPRESSIONS => {
                for (t, e) in Attrs(p) {
                    if t == NFTA_LIST_ELEM {
                        rule.exprs.push(Expr::decode(e)?);
                    }
                }
            }
            NFTA_RULE_USERDATA => rule.comment = parse_comment(p),
            _ => {}
        }
    }
    Ok((chain.ok_or_else(|| Error::decode("rule", "no chain"))?, rule))
}

fn split_type(id: u32, desc_lens: &[u32], total_len: u32, what: &str) -> Result<Vec<KeyType>> {
    let mut ids = Vec::new();
    let mut rest = id;
    while rest != 0 {
        ids.push(rest & ((1 << TYPE_BITS) - 1));
        rest >>= TYPE_BITS;
    }
    ids.reverse();
    if ids.is_empty() {
        ids.push(0);
    }
    let single = ids.len() == 1;
    ids.iter()
        .enumerate()
        .map(|(i, &t)| {
            let len = if single {
                total_len
            } else {
                desc_lens.get(i).copied().unwrap_or(4)
            };
            KeyType::from_id(t, len)
                .ok_or_else(|| Error::decode(what, format!("unsupported datatype id {t} in {id:#x}")))
        })
        .collect()
}

/// A set from a NEWSET dump message (without elements).
pub fn parse_set(m: &Msg<'_>) -> Result<Option<Set>> {
    let (mut name, mut flags, mut ktype, mut klen, mut dtype, mut dlen, mut timeout) = (None, 0, 0, 0, None, 0, None);
    let mut desc_lens = Vec::new();
    for (ty, p) in m.attrs() {
        match ty {
            NFTA_SET_NAME => name = Some(string(p)),
            NFTA_SET_FLAGS => flags = be32(p).unwrap_or(0),
            NFTA_SET_KEY_TYPE => ktype = be32(p).unwrap_or(0),
            NFTA_SET_KEY_LEN => klen = be32(p).unwrap_or(0),
            NFTA_SET_DATA_TYPE => dtype = be32(p),
            NFTA_SET_DATA_LEN => dlen = be32(p).unwrap_or(0),
            NFTA_SET_TIMEOUT => timeout = be64(p).map(Duration::from_millis),
            NFTA_SET_DESC => {
                for (t, v) in Attrs(p) {
                    if t == NFTA_SET_DESC_CONCAT {
                        for (_, f) in Attrs(v) {
                            if let Some((_, l)) = Attrs(f).find(|(t, _)| *t == NFTA_SET_FIELD_LEN) {
                                desc_lens.push(be32(l).unwrap_or(4));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let name = name.ok_or_else(|| Error::decode("set", "no name"))?;
    if flags & NFT_SET_ANONYMOUS != 0 {
        // Anonymous sets belong to a rule (`{ 1, 2 }` literals); not modelled.
        return Ok(None);
    }
    let what = format!("set {name}");
    let key = split_type(ktype, &desc_lens, klen, &what)?;
    let data = match dtype {
        None => None,
        Some(NFT_DATA_VERDICT) => Some(DataType::Verdict),
        Some(t) => Some(DataType::Value(split_type(t, &[], dlen, &what)?)),
    };
    Ok(Some(Set {
        name,
        key,
        data,
        flags: SetFlags::from_bits(flags),
        timeout,
        elements: BTreeMap::new(),
    }))
}

/// One element as the kernel lists it.
#[derive(Debug)]
pub struct RawElem {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub interval_end: bool,
    pub data: Option<ElemData>,
    pub timeout: Option<Duration>,
}

/// Elements of a NEWSETELEM dump message.
pub fn parse_elems(m: &Msg<'_>, out: &mut Vec<RawElem>) -> Result<()> {
    for (ty, p) in m.attrs() {
        if ty != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for (_, e) in Attrs(p) {
            let mut r = RawElem {
                key: Vec::new(),
                key_end: None,
                interval_end: false,
                data: None,
                timeout: None,
            };
            for (t, v) in Attrs(e) {
                match t {
                    NFTA_SET_ELEM_KEY => {
                        if let Data::Value(k) = parse_data(v)? {
                            r.key = k;
                        }
                    }
                    NFTA_SET_ELEM_KEY_END => {
                        if let Data::Value(k) = parse_data(v)? {
                            r.key_end = Some(k);
                        }
                    }
                    NFTA_SET_ELEM_FLAGS => r.interval_end = be32(v).unwrap_or(0) & NFT_SET_ELEM_INTERVAL_END != 0,
                    NFTA_SET_ELEM_DATA => {
                        r.data = Some(match parse_data(v)? {
                            Data::Value(x) => ElemData::Value(x),
                            Data::Verdict(x) => ElemData::Verdict(x),
                        })
                    }
                    NFTA_SET_ELEM_TIMEOUT => r.timeout = be64(v).map(Duration::from_millis),
                    _ => {}
                }
            }
            out.push(r);
        }
    }
    Ok(())
}

/// Turn listed elements back into the model: start/end pairs become one
/// ranged element (an end with no start before it, like nft's leading
/// "0.0.0.0 end" marker, is dropped).
pub fn assemble(set: &mut Set, mut raw: Vec<RawElem>) {
    if !set.flags.interval || set.uses_key_end() {
        for r in raw {
            let end = if set.flags.interval {
                Some(r.key_end.unwrap_or_else(|| r.key.clone()))
            } else {
                None
            };
            set.elements.insert(
                r.key,
                Elem {
                    end,
                    data: r.data,
                    timeout: r.timeout,
                },
            );
        }
        return;
    }
    // Ascending by key; at equal keys the end of one range sorts before the
    // start of the next (adjacent ranges share that key).
    raw.sort_by(|a, b| a.key.cmp(&b.key).then(b.interval_end.cmp(&a.interval_end)));
    let mut open: Option<RawElem> = None;
    let top = |len: usize| vec![0xffu8; len];
    for r in raw {
        if r.interval_end {
            if let Some(s) = open.take() {
                let end = decr(&r.key);
                set.elements.insert(
                    s.key,
                    Elem {
                        end: Some(end),
                        data: s.data,
                        timeout: s.timeout,
                    },
                );
            }
        } else {
            if let Some(s) = open.take() {
                let end = top(s.key.len());
                set.elements.insert(
                    s.key,
                    Elem {
                        end: Some(end),
                        data: s.data,
                        timeout: s.timeout,
                    },
                );
            }
            open = Some(r);
        }
    }
    if let Some(s) = open {
        let end = top(s.key.len());
        set.elements.insert(
            s.key,
            Elem {
                end: Some(end),
                data: s.data,
                timeout: s.timeout,
            },
        );
    }
}
