//! The engine: one netlink socket, the tables it last committed (in
//! memory), and the diff from those to a desired table sent as one atomic
//! batch. It never lists the kernel's table on an incremental apply; only
//! [`Engine::adopt`] and [`Engine::verify`] read it back.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::codec::{self, Batch, FinishedBatch, RawElem};
use crate::consts::*;
use crate::error::{Error, OpFailure, Result};
use crate::model::*;
use crate::sys::NlSocket;
use crate::wire::{be32, messages, Msg, MsgWriter};

/// Default time a kernel round trip may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Receive buffer: dump replies are at most 32 KiB per datagram.
const RX_BUF: usize = 256 * 1024;

/// What one [`Engine::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Object messages in the batch (0: nothing was sent).
    pub messages: usize,
    /// Bytes of the batch.
    pub bytes: usize,
    /// Whether the whole table was (re)created rather than diffed.
    pub full: bool,
    /// Readable change list, one line per object, for logs.
    pub changes: Vec<String>,
}

impl ApplyStats {
    /// True when the kernel already had the desired table ("up to date").
    pub fn is_noop(&self) -> bool {
        self.messages == 0
    }
}

/// One netlink socket to nf_tables and what it last committed.
#[derive(Debug)]
pub struct Engine {
    sock: NlSocket,
    seq: u32,
    timeout: Duration,
    committed: BTreeMap<(Family, String), Table>,
    committed_gen: Option<u32>,
    /// Tables whose last transaction failed or whose outcome is unknown: the
    /// next apply first reads them back (drift is the usual cause of a refusal).
    suspect: BTreeSet<(Family, String)>,
    rx: Vec<u8>,
    sndbuf: usize,
    rcvbuf: usize,
}

impl Engine {
    /// Open the socket in the calling thread's network namespace.
    pub fn new() -> Result<Engine> {
        Ok(Engine::with_socket(
            NlSocket::open().map_err(|e| Error::io("open NETLINK_NETFILTER socket", e))?,
        ))
    }

    /// Open the socket in the network namespace at `path` (`/run/netns/<name>`,
    /// `/proc/<pid>/ns/net`), from a short-lived thread; use it from anywhere.
    pub fn new_in_netns(path: &Path) -> Result<Engine> {
        let sock = NlSocket::open_in_netns(path)
            .map_err(|e| Error::io(format!("open NETLINK_NETFILTER socket in {}", path.display()), e))?;
        Ok(Engine::with_socket(sock))
    }

    fn with_socket(sock: NlSocket) -> Engine {
        // Start sequence numbers somewhere unlikely to collide with a previous process's.
        let seq = std::process::id().wrapping_mul(7919) & 0x00ff_ffff;
        Engine {
            sock,
            seq,
            timeout: DEFAULT_TIMEOUT,
            committed: BTreeMap::new(),
            committed_gen: None,
            suspect: BTreeSet::new(),
            rx: Vec::with_capacity(RX_BUF),
            sndbuf: 0,
            rcvbuf: 0,
        }
    }

    /// Change the per-round-trip timeout.
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// The table as this engine last committed it (canonical form).
    pub fn committed(&self, family: Family, name: &str) -> Option<&Table> {
        self.committed.get(&(family, name.to_string()))
    }

    /// Forget what was committed: the next [`apply`](Self::apply) re-creates the table whole.
    pub fn forget(&mut self, family: Family, name: &str) {
        self.committed.remove(&(family, name.to_string()));
        self.suspect.remove(&(family, name.to_string()));
    }

    /// The ruleset generation right after this engine's last commit
    /// (compare with [`generation`](Self::generation) to see whether anyone
    /// else committed since).
    pub fn committed_generation(&self) -> Option<u32> {
        self.committed_gen
    }

    /// Make the kernel's table equal to `desired` in one atomic transaction.
    ///
    /// The diff is against what this engine last committed: new sets and
    /// chains are created, elements added/removed one by one, a chain whose
    /// rules differ is flushed and rewritten, objects no longer wanted are
    /// deleted (after the flushes that unreference them), a base chain whose
    /// hook, priority or type changed is deleted and created again. After a
    /// refused or unanswered transaction the next apply first reads the
    /// table back (the one case where apply lists it). Without
    /// a previous commit (first apply, no [`adopt`](Self::adopt), or after an
    /// unknown outcome) the table is replaced whole (`add table; delete
    /// table; add table ...` in one batch). Nothing is listed from the kernel.
    pub fn apply(&mut self, desired: &Table) -> Result<ApplyStats> {
        desired.validate()?;
        // Usually already canonical: then diff against it in place (no copy).
        let want: Cow<'_, Table> = if desired.is_canonical() {
            Cow::Borrowed(desired)
        } else {
            Cow::Owned(desired.canonical())
        };
        let key = (want.family, want.name.clone());
        self.refresh_if_suspect(&key)?;
        let full = !self.committed.contains_key(&key);
        let (batch, delta) = match self.committed.get(&key) {
            Some(old) => plan(old, &want, Batch::new(self.seq), false),
            None => {
                let mut b = Batch::new(self.seq);
                b.add_table(want.family, &want.name);
                b.del_table(want.family, &want.name);
                b.changes.push(format!("replace table {} {}", want.family, want.name));
                plan(&Table::new(want.family, want.name.clone()), &want, b, true)
            }
        };
        if batch.is_empty() {
            return Ok(ApplyStats {
                full,
                ..ApplyStats::default()
            });
        }
        let fb = batch.finish()?;
        let stats = ApplyStats {
            messages: fb.ops.len(),
            bytes: fb.bytes.len(),
            full,
            changes: fb.changes.clone(),
        };
        match self.transact(fb) {
            Ok(()) => {
                match self.committed.get_mut(&key) {
                    Some(c) => delta.apply_to(c),
                    None => {
                        self.committed.insert(key.clone(), want.into_owned());
                    }
                }
                self.committed_gen = self.generation().ok();
                self.suspect.remove(&key);
                Ok(stats)
            }
            Err(e) => {
                // Refused (the kernel aborted, often because someone else changed the
                // table) or unknown outcome (timeout, socket error): the next apply
                // starts from what the kernel really has.
                self.suspect.insert(key);
                Err(e)
            }
        }
    }

    /// Apply a partial update to a table this engine committed (or adopted),
    /// for callers that know what changed (a Service's endpoints, one
    /// chain): the cost is that of the change, not of the table, so one
    /// element change stays flat at any map size. Sends the same kind of
    /// batch [`apply`](Self::apply) would for the same difference.
    pub fn apply_changes(&mut self, family: Family, table: &str, changes: &[Change]) -> Result<ApplyStats> {
        let key = (family, table.to_string());
        self.refresh_if_suspect(&key)?;
        let what = || format!("table {family} {table}");
        let committed = self
            .committed
            .get(&key)
            .ok_or_else(|| Error::invalid(what(), "not committed by this engine: apply or adopt it first"))?;
        let (old, new) = sub_tables(committed, family, table, changes)?;
        let new = new.canonical();
        validate_partial(committed, &old, &new)?;
        let (batch, delta) = plan(&old, &new, Batch::new(self.seq), false);
        if batch.is_empty() {
            return Ok(ApplyStats::default());
        }
        let fb = batch.finish()?;
        let stats = ApplyStats {
            messages: fb.ops.len(),
            bytes: fb.bytes.len(),
            full: false,
            changes: fb.changes.clone(),
        };
        match self.transact(fb) {
            Ok(()) => {
                if let Some(c) = self.committed.get_mut(&key) {
                    delta.apply_to(c);
                }
                self.committed_gen = self.generation().ok();
                self.suspect.remove(&key);
                Ok(stats)
            }
            Err(e) => {
                self.suspect.insert(key);
                Err(e)
            }
        }
    }

    /// `nft delete table <family> <name>`; `Ok(false)` when it did not exist.
    pub fn delete_table(&mut self, family: Family, name: &str) -> Result<bool> {
        self.committed.remove(&(family, name.to_string()));
        let mut b = Batch::new(self.seq);
        b.del_table(family, name);
        match self.transact(b.finish()?) {
            Ok(()) => {
                self.committed_gen = self.generation().ok();
                Ok(true)
            }
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The ruleset generation id (`NFT_MSG_GETGEN`): it moves on every
    /// commit by anyone. One small round trip.
    pub fn generation(&mut self) -> Result<u32> {
        let seq = self.next_seq();
        let req = codec::request(NFT_MSG_GETGEN, 0, seq, 0, |_| {});
        self.send(&req, "get generation")?;
        let mut gen = None;
        self.read_replies(seq, "get generation", false, |m| {
            if m.ty == codec::msg_type(NFT_MSG_NEWGEN) {
                gen = m.attrs().find(|(t, _)| *t == NFTA_GEN_ID).and_then(|(_, p)| be32(p));
                return Ok(true);
            }
            Ok(false)
        })?;
        gen.ok_or_else(|| Error::decode("generation", "NEWGEN without NFTA_GEN_ID"))
    }

    /// Whether someone committed since this engine's last commit.
    pub fn changed_since_commit(&mut self) -> Result<bool> {
        let now = self.generation()?;
        Ok(self.committed_gen != Some(now))
    }

    /// Read the table from the kernel (`None` when it does not exist) and
    /// take it as "last committed", so that a restarted process changes only
    /// what differs on its next [`apply`](Self::apply).
    pub fn adopt(&mut self, family: Family, name: &str) -> Result<Option<Table>> {
        let key = (family, name.to_string());
        let t = self.read_table(family, name)?;
        self.suspect.remove(&key);
        match &t {
            Some(t) => {
                self.committed.insert(key, t.canonical());
            }
            None => {
                self.committed.remove(&key);
            }
        }
        self.committed_gen = self.generation().ok();
        Ok(t)
    }

    /// Compare the kernel's table with `desired` and repair it if it
    /// differs; returns whether drift was found. The repair is one batch
    /// computed against what the kernel really has (so dynamic sets keep
    /// their contents), or a whole replacement when the kernel's table cannot
    /// be read into the model. Only this table is touched.
    pub fn verify(&mut self, desired: &Table) -> Result<bool> {
        desired.validate()?;
        let want = desired.canonical();
        let key = (want.family, want.name.clone());
        match self.read_table(want.family, &want.name) {
            Ok(Some(actual)) => {
                let actual = actual.canonical();
                if actual == want {
                    self.committed.insert(key, want);
                    self.committed_gen = self.generation().ok();
                    return Ok(false);
                }
                self.committed.insert(key, actual);
            }
            Ok(None) | Err(Error::Decode { .. }) => {
                self.committed.remove(&key);
            }
            Err(e) => return Err(e),
        }
        self.apply(desired)?;
        Ok(true)
    }

    /// Dump one table (chains, rules, sets, elements) into the model. The
    /// generation is read before and after; a commit in between restarts.
    pub fn read_table(&mut self, family: Family, name: &str) -> Result<Option<Table>> {
        for _ in 0..5 {
            let before = self.generation()?;
            let t = self.read_table_once(family, name)?;
            if self.generation()? == before {
                return Ok(t);
            }
        }
        Err(Error::decode(
            format!("table {family} {name}"),
            "kept changing while being read (5 tries)",
        ))
    }

    fn read_table_once(&mut self, family: Family, name: &str) -> Result<Option<Table>> {
        let fam = family.nfproto();
        let what = format!("get table {family} {name}");
        let seq = self.next_seq();
        let req = codec::request(NFT_MSG_GETTABLE, NLM_F_ACK, seq, fam, |w| {
            w.put_str(NFTA_TABLE_NAME, name)
        });
        self.send(&req, &what)?;
        match self.read_replies(seq, &what, false, |_| Ok(false)) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut t = Table::new(family, name);
        let mut chains = Vec::new();
        self.dump(
            NFT_MSG_GETCHAIN,
            fam,
            &format!("list chains of {family} {name}"),
            |_| {},
            |m| {
                if codec::table_of(m).as_deref() == Some(name) {
                    chains.push(codec::parse_chain(m)?);
                }
                Ok(())
            },
        )?;
        for c in chains {
            t.chains.insert(c.name.clone(), c);
        }
        let mut rules = Vec::new();
        self.dump(
            NFT_MSG_GETRULE,
            fam,
            &format!("list rules of {family} {name}"),
            |w| w.put_str(NFTA_RULE_TABLE, name),
            |m| {
                if codec::table_of(m).as_deref() == Some(name) {
                    rules.push(codec::parse_rule(m)?);
                }
                Ok(())
            },
        )?;
        for (chain, r) in rules {
            match t.chains.get_mut(&chain) {
                Some(c) => c.rules.push(r),
                None => return Err(Error::decode(format!("rule of chain {chain}"), "chain not listed")),
            }
        }
        let mut sets = Vec::new();
        self.dump(
            NFT_MSG_GETSET,
            fam,
            &format!("list sets of {family} {name}"),
            |w| w.put_str(NFTA_SET_TABLE, name),
            |m| {
                if codec::table_of(m).as_deref() == Some(name) {
                    if let Some(s) = codec::parse_set(m)? {
                        sets.push(s);
                    }
                }
                Ok(())
            },
        )?;
        for mut s in sets {
            let mut raw: Vec<RawElem> = Vec::new();
            let set_name = s.name.clone();
            self.dump(
                NFT_MSG_GETSETELEM,
                fam,
                &format!("list elements of set {family} {name} {set_name}"),
                |w| {
                    w.put_str(NFTA_SET_ELEM_LIST_TABLE, name);
                    w.put_str(NFTA_SET_ELEM_LIST_SET, &set_name);
                },
                |m| codec::parse_elems(m, &mut raw),
            )?;
            codec::assemble(&mut s, raw);
            t.sets.insert(s.name.clone(), s);
        }
        Ok(Some(t))
    }

    /// After a failed transaction, take the kernel's table as the base again.
    fn refresh_if_suspect(&mut self, key: &(Family, String)) -> Result<()> {
        if !self.suspect.contains(key) {
            return Ok(());
        }
        match self.read_table(key.0, &key.1) {
            Ok(Some(t)) => {
                self.committed.insert(key.clone(), t.canonical());
            }
            Ok(None) | Err(Error::Decode { .. }) => {
                self.committed.remove(key);
            }
            Err(e) => return Err(e),
        }
        self.suspect.remove(key);
        Ok(())
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, bytes: &[u8], op: &str) -> Result<()> {
        self.sock.send(bytes).map_err(|e| Error::io(format!("{op}: send"), e))
    }

    /// Send a dump request and feed every reply message to `each`.
    fn dump(
        &mut self,
        ty: u8,
        family: u8,
        op: &str,
        attrs: impl FnOnce(&mut MsgWriter),
        mut each: impl FnMut(&Msg<'_>) -> Result<()>,
    ) -> Result<()> {
        let seq = self.next_seq();
        let req = codec::request(ty, NLM_F_DUMP, seq, family, attrs);
        self.send(&req, op)?;
        self.read_replies(seq, op, true, |m| {
            if m.flags & NLM_F_DUMP_INTR != 0 {
                return Err(Error::decode(op.to_string(), "dump interrupted by a concurrent commit"));
            }
            each(m)?;
            Ok(false)
        })
    }

    /// Read replies to request `seq` until NLMSG_DONE (dumps), an ack or
    /// error, or until `each` returns true.
    fn read_replies(
        &mut self,
        seq: u32,
        op: &str,
        dump: bool,
        mut each: impl FnMut(&Msg<'_>) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let mut rx = std::mem::take(&mut self.rx);
        let result = (|| loop {
            self.sock.recv(&mut rx, deadline).map_err(|e| self.recv_error(op, e))?;
            for m in messages(&rx) {
                if m.seq != seq {
                    continue; // a late reply to an earlier request
                }
                match m.ty {
                    NLMSG_ERROR => {
                        let errno = m
                            .payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(0);
                        if errno != 0 {
                            return Err(Error::kernel(op.to_string(), -errno));
                        }
                        if !dump {
                            return Ok(());
                        }
                    }
                    NLMSG_DONE if dump => return Ok(()),
                    _ => {
                        // A dump part, or a single reply (an ack may still follow).
                        if each(&m)? {
                            return Ok(());
                        }
                    }
                }
            }
        })();
        self.rx = rx;
        result
    }

    fn recv_error(&self, op: &str, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::TimedOut {
            Error::Timeout {
                op: op.to_string(),
                timeout: self.timeout,
            }
        } else {
            Error::io(format!("{op}: receive"), e)
        }
    }

    /// Send a batch and collect one ack per object message. Every refused
    /// message is reported with the object it was about.
    ///
    /// Buffer sizing (why 100k+ elements never fail with ENOBUFS): the batch
    /// goes to the kernel as one datagram, so the send buffer is raised to
    /// twice its size (SO_SNDBUFFORCE as root); the kernel queues all acks
    /// before sendmsg returns, so the receive buffer is raised to hold one
    /// ack per message (about 1 KiB of skb each, counted generously).
    /// Element lists are split into messages of ≤ 48 KiB, so 100k elements
    /// are ~150 messages and acks, not 100k.
    fn transact(&mut self, fb: FinishedBatch) -> Result<()> {
        let need_snd = fb.bytes.len() * 2 + 64 * 1024;
        if need_snd > self.sndbuf {
            self.sndbuf = self
                .sock
                .ensure_buf(false, need_snd)
                .map_err(|e| Error::io("size send buffer", e))?;
        }
        let need_rcv = fb.ops.len() * 2048 + RX_BUF;
        if need_rcv > self.rcvbuf {
            self.rcvbuf = self
                .sock
                .ensure_buf(true, need_rcv)
                .map_err(|e| Error::io("size receive buffer", e))?;
        }
        if self.sndbuf < fb.bytes.len() + 1024 {
            return Err(Error::Io {
                op: format!("send a {}-byte transaction", fb.bytes.len()),
                source: std::io::Error::other(format!(
                    "socket send buffer is {} bytes (not root? raise net.core.wmem_max)",
                    self.sndbuf
                )),
            });
        }
        self.seq = fb.next_seq;
        self.sock
            .send(&fb.bytes)
            .map_err(|e| Error::io("send transaction", e))?;
        let first = fb.begin_seq + 1;
        let n = fb.ops.len();
        let mut acked = vec![false; n];
        let mut left = n;
        let mut failures = Vec::new();
        let mut deadline = Instant::now() + self.timeout;
        let mut rx = std::mem::take(&mut self.rx);
        let result = (|| {
            while left > 0 {
                match self.sock.recv(&mut rx, deadline) {
                    Ok(()) => {}
                    // After a commit-level error, missing acks mean the kernel stopped early.
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut && !failures.is_empty() => break,
                    Err(e) => return Err(self.recv_error("transaction acks", e)),
                }
                for m in messages(&rx) {
                    if m.ty != NLMSG_ERROR {
                        continue;
                    }
                    let errno = m
                        .payload
                        .get(..4)
                        .map(|b| -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(0);
                    let message = ext_ack_msg(&m);
                    if m.seq == fb.begin_seq {
                        if errno != 0 {
                            failures.push(OpFailure {
                                op: "commit transaction".into(),
                                errno,
                                message,
                            });
                            deadline = Instant::now() + Duration::from_millis(50);
                        }
                        continue;
                    }
                    let Some(i) = m.seq.checked_sub(first).map(|i| i as usize).filter(|&i| i < n) else {
                        continue;
                    };
                    if !acked[i] {
                        acked[i] = true;
                        left -= 1;
                    }
                    if errno != 0 {
                        failures.push(OpFailure {
                            op: fb.ops[i].1.clone(),
                            errno,
                            message,
                        });
                    }
                }
            }
            Ok(())
        })();
        self.rx = rx;
        result?;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::Transaction { failures })
        }
    }
}

/// One part of a partial update ([`Engine::apply_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Insert or replace elements (`upsert`) and remove elements (by key) of an existing set.
    Elements {
        set: String,
        upsert: Vec<(Vec<u8>, Elem)>,
        remove: Vec<Vec<u8>>,
    },
    /// Create a chain, or replace its rules (and base definition).
    Chain(Chain),
    /// Delete a chain (its rules first).
    DeleteChain(String),
    /// Create a set, or redefine it with exactly these elements.
    Set(Set),
    /// Delete a set.
    DeleteSet(String),
}

/// The parts of `committed` a change list touches (`old`) and what they
/// become (`new`); `plan(old, new)` is then exactly the change.
fn sub_tables(committed: &Table, family: Family, table: &str, changes: &[Change]) -> Result<(Table, Table)> {
    let mut old = Table::new(family, table);
    let mut new = Table::new(family, table);
    let mut full_sets = BTreeSet::new();
    // The definition without elements (never clone a big map's contents).
    let def_only = |s: &Set| Set {
        name: s.name.clone(),
        key: s.key.clone(),
        data: s.data.clone(),
        flags: s.flags,
        timeout: s.timeout,
        elements: BTreeMap::new(),
    };
    for ch in changes {
        match ch {
            Change::Elements { set, upsert, remove } => {
                let base = match (new.sets.get(set), committed.sets.get(set)) {
                    (Some(n), _) if full_sets.contains(set) => def_only(n),
                    (_, Some(c)) => def_only(c),
                    _ => return Err(Error::invalid(format!("set {set}"), "not in the table")),
                };
                let cs = committed.sets.get(set);
                let os = old.sets.entry(set.clone()).or_insert_with(|| base.clone());
                for k in remove.iter().chain(upsert.iter().map(|(k, _)| k)) {
                    if let Some(e) = cs.and_then(|c| c.elements.get(k)) {
                        os.elements.entry(k.clone()).or_insert_with(|| e.clone());
                    }
                }
                let ns = new.sets.entry(set.clone()).or_insert(base);
                for k in remove {
                    ns.elements.remove(k);
                }
                for (k, e) in upsert {
                    ns.elements.insert(k.clone(), e.clone());
                }
            }
            Change::Chain(c) => {
                if let Some(oc) = committed.chains.get(&c.name) {
                    old.chains.entry(c.name.clone()).or_insert_with(|| oc.clone());
                }
                new.chains.insert(c.name.clone(), c.clone());
            }
            Change::DeleteChain(n) => {
                if let Some(oc) = committed.chains.get(n) {
                    old.chains.entry(n.clone()).or_insert_with(|| oc.clone());
                }
                new.chains.remove(n);
            }
            Change::Set(s) => {
                if let Some(os) = committed.sets.get(&s.name) {
                    old.sets.insert(s.name.clone(), os.clone());
                    if set_def_differs(os, s) {
                        // Chains using a redefined set are rewritten with it.
                        for (n, c) in &committed.chains {
                            let uses = c
                                .rules
                                .iter()
                                .flat_map(|r| &r.exprs)
                                .any(|e| e.set_ref() == Some(s.name.as_str()));
                            if uses && !new.chains.contains_key(n) {
                                old.chains.insert(n.clone(), c.clone());
                                new.chains.insert(n.clone(), c.clone());
                            }
                        }
                    }
                }
                new.sets.insert(s.name.clone(), s.clone());
                full_sets.insert(s.name.clone());
            }
            Change::DeleteSet(n) => {
                if let Some(os) = committed.sets.get(n) {
                    old.sets.entry(n.clone()).or_insert_with(|| def_only(os));
                }
                new.sets.remove(n);
                full_sets.remove(n);
            }
        }
    }
    Ok((old, new))
}

/// Check the touched parts of a partial update against the table they land in.
fn validate_partial(committed: &Table, old: &Table, new: &Table) -> Result<()> {
    let chain_after = |name: &str| -> Option<bool> {
        if let Some(c) = new.chains.get(name) {
            return Some(c.base.is_some());
        }
        if old.chains.contains_key(name) {
            return None; // deleted by this change
        }
        committed.chains.get(name).map(|c| c.base.is_some())
    };
    let set_after =
        |name: &str| new.sets.contains_key(name) || (!old.sets.contains_key(name) && committed.sets.contains_key(name));
    let check_jump = |target: &str, what: &str| match chain_after(target) {
        None => Err(Error::invalid(
            what,
            format!("jumps to chain {target} which is not in the table"),
        )),
        Some(true) => Err(Error::invalid(what, format!("jumps to base chain {target}"))),
        Some(false) => Ok(()),
    };
    // A deleted chain must not stay referenced by what remains (the kernel
    // would refuse with EBUSY). This scans the table's verdict maps: O(table)
    // only for changes that delete chains.
    let deleted: BTreeSet<&str> = old
        .chains
        .keys()
        .filter(|n| !new.chains.contains_key(*n))
        .map(String::as_str)
        .collect();
    if !deleted.is_empty() {
        for (cname, c) in &committed.chains {
            if old.chains.contains_key(cname) || new.chains.contains_key(cname) {
                continue;
            }
            for r in &c.rules {
                if let Some(t) = r
                    .exprs
                    .iter()
                    .find_map(|e| e.jump_target().filter(|t| deleted.contains(t)))
                {
                    return Err(Error::invalid(
                        format!("delete chain {t}"),
                        format!("still jumped to from chain {cname}"),
                    ));
                }
            }
        }
        for (sname, s) in &committed.sets {
            if s.data != Some(DataType::Verdict) || (new.sets.contains_key(sname) && !old.sets.contains_key(sname)) {
                continue;
            }
            let (os, ns) = (old.sets.get(sname), new.sets.get(sname));
            for (k, e) in &s.elements {
                let Some(ElemData::Verdict(v)) = &e.data else { continue };
                let Some(t) = v.chain().filter(|t| deleted.contains(t)) else {
                    continue;
                };
                // Still there unless this change removes or replaces it.
                let touched = os.is_some_and(|o| o.elements.contains_key(k));
                let still = if touched {
                    ns.and_then(|n| n.elements.get(k)) == Some(e)
                } else {
                    ns.is_some() || os.is_none()
                };
                if still {
                    return Err(Error::invalid(
                        format!("delete chain {t}"),
                        format!("still the verdict of an element of map {sname}"),
                    ));
                }
            }
        }
    }
    for (name, s) in &new.sets {
        s.validate()?;
        for e in s.elements.values() {
            if let Some(ElemData::Verdict(v)) = &e.data {
                if let Some(t) = v.chain() {
                    check_jump(t, &format!("element of map {name}"))?;
                }
            }
        }
    }
    for (name, c) in &new.chains {
        for (i, r) in c.rules.iter().enumerate() {
            let what = format!("rule #{} of chain {name}", i + 1);
            for e in &r.exprs {
                if let Some(t) = e.jump_target() {
                    check_jump(t, &what)?;
                }
                if let Some(s) = e.set_ref() {
                    if !set_after(s) {
                        return Err(Error::invalid(
                            what,
                            format!("refers to set @{s} which is not in the table"),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The extended-ack message (`NLMSGERR_ATTR_MSG`) of an error reply.
fn ext_ack_msg(m: &Msg<'_>) -> Option<String> {
    if m.flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // errno (4) + the echoed nlmsghdr (16; capped acks carry no payload).
    let tlvs = m.payload.get(20..)?;
    crate::wire::Attrs(tlvs)
        .find(|(t, _)| *t == NLMSGERR_ATTR_MSG)
        .map(|(_, p)| crate::wire::string(p))
}

type ElemRef<'a> = (&'a Vec<u8>, &'a Elem);

/// Elements to delete (gone or changed) and to add (new or changed): one
/// merge pass over both sorted maps, no lookups.
fn diff_elements<'a>(
    old: &'a BTreeMap<Vec<u8>, Elem>,
    new: &'a BTreeMap<Vec<u8>, Elem>,
) -> (Vec<ElemRef<'a>>, Vec<ElemRef<'a>>) {
    use std::cmp::Ordering;
    let (mut del, mut add) = (Vec::new(), Vec::new());
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => del.extend(a.by_ref()),
            (None, Some(_)) => add.extend(b.by_ref()),
            (Some(x), Some(y)) => match x.0.cmp(y.0) {
                Ordering::Less => del.push(a.next().expect("peeked")),
                Ordering::Greater => add.push(b.next().expect("peeked")),
                Ordering::Equal => {
                    let (x, y) = (a.next().expect("peeked"), b.next().expect("peeked"));
                    if x.1 != y.1 {
                        del.push(x);
                        add.push(y);
                    }
                }
            },
        }
    }
    (del, add)
}

fn set_def_differs(a: &Set, b: &Set) -> bool {
    a.key != b.key || a.data != b.data || a.flags != b.flags || a.timeout != b.timeout
}

fn base_differs(a: &Chain, b: &Chain) -> bool {
    match (&a.base, &b.base) {
        (None, None) => false,
        (Some(x), Some(y)) => x.hook != y.hook || x.priority != y.priority || x.kind != y.kind,
        _ => true,
    }
}

/// The batch that turns `old` into `new` (both canonical). `full`: `old` is
/// an empty placeholder after a table replacement already in the batch.
fn plan(old: &Table, new: &Table, mut b: Batch, full: bool) -> (Batch, Delta) {
    let (fam, t) = (new.family, new.name.as_str());
    if full {
        b.add_table(fam, t);
    }
    // Sets: which are new, gone, redefined; element diffs of the rest.
    let mut set_new = Vec::new();
    let mut set_del = Vec::new();
    let mut set_elems: Vec<(&Set, Vec<ElemRef<'_>>, Vec<ElemRef<'_>>)> = Vec::new();
    for (name, s) in &new.sets {
        match old.sets.get(name) {
            None => set_new.push(s),
            Some(o) if set_def_differs(o, s) => {
                set_del.push(o);
                set_new.push(s);
            }
            Some(o) => {
                let (del, add) = diff_elements(&o.elements, &s.elements);
                if !del.is_empty() || !add.is_empty() {
                    set_elems.push((s, del, add));
                }
            }
        }
    }
    for (name, o) in &old.sets {
        if !new.sets.contains_key(name) {
            set_del.push(o);
        }
    }
    let recreated_sets: BTreeSet<&str> = set_del
        .iter()
        .filter(|s| new.sets.contains_key(&s.name))
        .map(|s| s.name.as_str())
        .collect();

    // Chains.
    let mut flush = Vec::new();
    let mut chain_del = Vec::new();
    let mut chain_add = Vec::new(); // created or policy-updated
    let mut rewrite = Vec::new(); // chains whose rules are (re)written
    for (name, c) in &new.chains {
        let uses_recreated = c
            .rules
            .iter()
            .flat_map(|r| &r.exprs)
            .any(|e| e.set_ref().is_some_and(|s| recreated_sets.contains(s)));
        match old.chains.get(name) {
            None => {
                chain_add.push(c);
                if !c.rules.is_empty() {
                    rewrite.push(c);
                }
                b.changes.push(format!("add chain {name} ({} rules)", c.rules.len()));
            }
            Some(o) if base_differs(o, c) => {
                flush.push(name.as_str());
                chain_del.push(name.as_str());
                chain_add.push(c);
                rewrite.push(c);
                b.changes
                    .push(format!("recreate chain {name}: type/hook/priority changed"));
            }
            Some(o) => {
                if o.base != c.base {
                    chain_add.push(c);
                    b.changes.push(format!("chain {name}: policy changed"));
                }
                if o.rules != c.rules || uses_recreated {
                    if !o.rules.is_empty() {
                        flush.push(name.as_str());
                    }
                    rewrite.push(c);
                    b.changes.push(format!(
                        "rewrite chain {name} ({} → {} rules)",
                        o.rules.len(),
                        c.rules.len()
                    ));
                }
            }
        }
    }
    for (name, o) in &old.chains {
        if !new.chains.contains_key(name) {
            if !o.rules.is_empty() {
                flush.push(name.as_str());
            }
            chain_del.push(name.as_str());
            b.changes.push(format!("delete chain {name}"));
        }
    }
    for s in &set_del {
        if recreated_sets.contains(s.name.as_str()) {
            b.changes.push(format!("recreate set {}: type/flags changed", s.name));
        } else {
            b.changes.push(format!("delete set {}", s.name));
        }
    }
    for s in &set_new {
        if !recreated_sets.contains(s.name.as_str()) {
            b.changes
                .push(format!("add set {} ({} elements)", s.name, s.elements.len()));
        }
    }
    for (s, del, add) in &set_elems {
        b.changes
            .push(format!("set {}: +{} -{} elements", s.name, add.len(), del.len()));
    }

    // The order the kernel needs (see the module docs of the engine).
    for (s, del, _) in &set_elems {
        if !del.is_empty() {
            b.elems(fam, t, s, del.iter().copied(), true);
        }
    }
    for c in &flush {
        b.flush_chain(fam, t, c);
    }
    for s in &set_del {
        b.del_set(fam, t, &s.name);
    }
    for c in &chain_del {
        b.del_chain(fam, t, c);
    }
    for s in &set_new {
        b.add_set(fam, t, s);
    }
    for c in &chain_add {
        b.add_chain(fam, t, c);
    }
    for s in &set_new {
        if !s.elements.is_empty() {
            b.elems(fam, t, s, s.elements.iter(), false);
        }
    }
    for (s, _, add) in &set_elems {
        if !add.is_empty() {
            b.elems(fam, t, s, add.iter().copied(), false);
        }
    }
    for c in &rewrite {
        for (i, r) in c.rules.iter().enumerate() {
            b.add_rule(fam, t, &c.name, i, r);
        }
    }
    // The same change as data, to bring the engine's copy up to date
    // without copying the whole table.
    let mut put: BTreeMap<&str, &Chain> = BTreeMap::new();
    for c in chain_add.iter().chain(&rewrite) {
        put.insert(c.name.as_str(), c);
    }
    let d = Delta {
        set_put: set_new.iter().map(|s| (*s).clone()).collect(),
        set_del: set_del
            .iter()
            .filter(|s| !new.sets.contains_key(&s.name))
            .map(|s| s.name.clone())
            .collect(),
        elems: set_elems
            .iter()
            .map(|(s, del, add)| {
                let del = del.iter().map(|(k, _)| (*k).clone()).collect();
                let add = add.iter().map(|(k, e)| ((*k).clone(), (*e).clone())).collect();
                (s.name.clone(), del, add)
            })
            .collect(),
        chain_put: put.into_values().cloned().collect(),
        chain_del: chain_del
            .iter()
            .filter(|c| !new.chains.contains_key(**c))
            .map(|c| c.to_string())
            .collect(),
    };
    (b, d)
}

type ElemDelta = (String, Vec<Vec<u8>>, Vec<(Vec<u8>, Elem)>);

/// A committed change in data form (see [`plan`]).
#[derive(Debug, Default)]
struct Delta {
    set_put: Vec<Set>,
    set_del: Vec<String>,
    elems: Vec<ElemDelta>,
    chain_put: Vec<Chain>,
    chain_del: Vec<String>,
}

impl Delta {
    fn apply_to(self, t: &mut Table) {
        for n in self.set_del {
            t.sets.remove(&n);
        }
        for s in self.set_put {
            t.sets.insert(s.name.clone(), s);
        }
        for (n, del, add) in self.elems {
            if let Some(s) = t.sets.get_mut(&n) {
                for k in del {
                    s.elements.remove(&k);
                }
                s.elements.extend(add);
            }
        }
        for n in self.chain_del {
            t.chains.remove(&n);
        }
        for c in self.chain_put {
            t.chains.insert(c.name.clone(), c);
        }
    }
}
