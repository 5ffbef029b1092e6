//! weft's nftables engine: typed tables encoded straight to nf_tables
//! netlink messages (no `nft` binary, no libnftnl), a diff against what was
//! last committed, and one atomic batch per change.
//!
//! ```no_run
//! use weft_nft::{build::*, Chain, ChainKind, Engine, Family, Hook, Policy, Rule, Set, Table, prio};
//! let mut t = Table::new(Family::Inet, "weft");
//! t.set(Set::cidrs("mesh-pods-v4", false)).insert_cidr("10.244.1.0/24".parse().unwrap());
//! t.set(Set::cidrs("mesh-cluster-v4", false)).insert_cidr("10.244.0.0/16".parse().unwrap());
//! t.chain(Chain::base("mesh-postrouting", ChainKind::Nat, Hook::Postrouting, prio::SRCNAT, Policy::Accept))
//!     .rule(Rule::of([nfproto_ipv4(), ip_saddr_in("mesh-pods-v4"), ip_daddr_not_in("mesh-cluster-v4"), masquerade()]));
//! let mut engine = Engine::new()?;
//! let stats = engine.apply(&t)?;
//! println!("{} messages: {:?}", stats.messages, stats.changes);
//! # Ok::<(), weft_nft::Error>(())
//! ```
//!
//! All `unsafe` is in the private `sys` module (the socket syscalls).

#![deny(unsafe_code)]

pub mod build;
pub mod codec;
mod consts;
mod engine;
mod error;
pub mod expr;
mod model;
#[allow(unsafe_code)] // reason: raw netlink socket syscalls, each with a SAFETY comment
mod sys;
mod wire;

pub use engine::{ApplyStats, Change, Engine, DEFAULT_TIMEOUT};
pub use error::{Error, OpFailure, Result};
pub use expr::{
    ct_state, fib_flags, CmpOp, CtKey, DynsetOp, Expr, ExthdrOp, FibResult, MetaKey, NatFlags, NatKind, NumgenKind,
    PayloadBase, Reg, RejectKind, RtKey,
};
pub use model::{
    cidr_range, fields_id, fields_len, key, prio, BaseChain, Chain, ChainKind, DataType, Elem, ElemData, Family, Hook,
    KeyType, Policy, Rule, Set, SetFlags, Table, Verdict,
};

impl std::fmt::Display for Rule {
    /// Roughly nft's syntax, for logs: `meta nfproto ipv4 ip saddr @pods masquerade comment "x"`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        expr::fmt_exprs(&self.exprs, f)?;
        if let Some(c) = &self.comment {
            write!(f, " comment {c:?}")?;
        }
        Ok(())
    }
}
