//! The model rendered as the engine's desired table: one `inet weft-svc` table (never
//! `weft`: the mesh owns `inet weft`), laid out like kube-proxy's nftables mode.
//!
//! ```text
//! nat-prerouting / nat-output (dstnat)   → jump services
//! services        ip daddr . meta l4proto . th dport vmap @service-ips-v4 (and -v6)
//!                 fib daddr type local, not loopback: meta l4proto . th dport vmap @service-nodeports-v4 (-v6)
//! svc-<hash>-…    one per frontend with backends: mark for masquerade (per `Masquerade`),
//!                 numgen random mod N vmap @eps-<hash>-… (keys 0..N-1, 4-byte host order)
//! ep-<hash>-…     one per backend of a frontend: hairpin mark, dnat to ip:port
//! nat-postrouting (srcnat)               meta mark & 0x4000 == 0x4000 masquerade fully-random
//! filter-input / filter-forward / filter-output (dstnat-10), filter-output-post-dnat (dstnat+10):
//!                 ct state new → service-endpoints-check (no-endpoint-services-v4/-v6 →
//!                 jump reject-chain or drop), nodeport-endpoints-check (input only),
//!                 cluster-ips-check (forward and after dnat on output: reject traffic to a
//!                 ClusterIP that no frontend took).
//! ```
//!
//! A frontend with backends is in `service-ips-*` / `service-nodeports-*`; one without is in
//! `no-endpoint-services-*` / `no-endpoint-nodeports-*` instead, never both. NodePort frontends on
//! a specific node address are in `service-ips-*` with that address; `AnyLocal` ones in the
//! nodeport maps.
//!
//! Not rendered yet (the model carries them; nothing here pretends otherwise):
//! - `affinity_timeout` (sessionAffinity ClientIP): no affinity sets, plain random choice;
//! - `LbAlgorithm::SourceHash` and `Maglev` are rendered as `numgen random`;
//!   `RoundRobin` is `numgen inc`;
//! - `source_ranges` (loadBalancerSourceRanges, kube-proxy's firewall-check): not enforced;
//! - `short_circuit` (externalTrafficPolicy Local exceptions for pod and node sources): only
//!   the frontend's `pool` is used;
//! - the drop of the rest of the service CIDR (the model does not know it).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use weft_nft::build::{self, Field};
use weft_nft::{
    ct_state, key, prio, Chain, ChainKind, DataType, ElemData, Family, Hook, KeyType, NumgenKind, Policy, Rule, Set,
    Table, Verdict,
};

use crate::model::Model;
use crate::types::{
    Backend, Frontend, FrontendAddr, FrontendKey, IpFamily, LbAlgorithm, Masquerade, NoBackends, Protocol,
};

/// The table's name (in family `inet`).
pub const TABLE: &str = "weft-svc";
/// The masquerade mark bit, as kube-proxy's.
pub const MASQ_MARK: u32 = 0x4000;
/// The longest chain or set name this renderer makes (the kernel allows 255 bytes).
pub const MAX_NAME: usize = 200;

const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

fn fam(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "v4",
        IpFamily::V6 => "v6",
    }
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => build::TCP,
        Protocol::Udp => build::UDP,
        Protocol::Sctp => build::SCTP,
    }
}

fn nfproto(f: IpFamily) -> Vec<weft_nft::Expr> {
    match f {
        IpFamily::V4 => build::nfproto_ipv4(),
        IpFamily::V6 => build::nfproto_ipv6(),
    }
}

fn daddr_field(f: IpFamily) -> Field {
    match f {
        IpFamily::V4 => Field::IpDaddr,
        IpFamily::V6 => Field::Ip6Daddr,
    }
}

fn addr_key(f: IpFamily) -> KeyType {
    match f {
        IpFamily::V4 => KeyType::Ipv4Addr,
        IpFamily::V6 => KeyType::Ipv6Addr,
    }
}

/// 64-bit FNV-1a: stable across Rust releases, unlike `DefaultHasher`.
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `<prefix>-<hash of id>-<readable id>`: deterministic, unique by the hash of the full id,
/// readable in `nft list`, only `[A-Za-z0-9._/-]`, at most [`MAX_NAME`] bytes.
fn object_name(prefix: &str, id: &str) -> String {
    let readable: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut name = format!("{prefix}-{:016x}-{readable}", fnv1a(id));
    name.truncate(MAX_NAME);
    name
}

/// The frontend's identity as text: service, port name, protocol, kind, address, port.
fn frontend_id(k: &FrontendKey) -> String {
    format!(
        "{}/{}/{}/{}/{}/{}/{}",
        k.service.namespace, k.service.name, k.port_name, k.protocol, k.kind, k.addr, k.port
    )
}

/// The per-frontend chain's name.
pub fn frontend_chain(k: &FrontendKey) -> String {
    object_name("svc", &frontend_id(k))
}

/// The per-frontend endpoint map's name.
pub fn frontend_map(k: &FrontendKey) -> String {
    object_name("eps", &frontend_id(k))
}

/// The chain of one backend of one frontend.
pub fn backend_chain(k: &FrontendKey, b: &Backend) -> String {
    object_name("ep", &format!("{}/{}", frontend_id(k), b.endpoint_string()))
}

fn service_key(k: &FrontendKey, ip: IpAddr) -> Vec<u8> {
    key::concat(&[key::ip(ip), key::proto(proto_number(k.protocol)), key::port(k.port)])
}

fn nodeport_key(k: &FrontendKey) -> Vec<u8> {
    key::concat(&[key::proto(proto_number(k.protocol)), key::port(k.port)])
}

fn goto(chain: &str) -> ElemData {
    ElemData::Verdict(Verdict::Goto(chain.into()))
}

/// Renders the whole model as one `inet weft-svc` table (both families in one table; every
/// `ip`/`ip6` match is guarded by `meta nfproto`). Pure: builds values, no I/O.
pub fn render(model: &Model) -> Table {
    let mut t = Table::new(Family::Inet, TABLE);
    base_chains(&mut t);
    let mut cidr_sets: BTreeMap<Vec<IpNetwork>, String> = BTreeMap::new();
    for (k, f) in model.frontends() {
        let family = k.addr.family();
        let (map, key) = match k.addr {
            FrontendAddr::Ip(ip) => ("services", service_key(k, ip)),
            FrontendAddr::AnyLocal(_) => ("nodeports", nodeport_key(k)),
        };
        if f.pool.backends.is_empty() {
            let verdict = match f.no_backends {
                NoBackends::Reject => Verdict::Jump("reject-chain".into()),
                NoBackends::Drop => Verdict::Drop,
            };
            let name = format!("no-endpoint-{map}-{}", fam(family));
            set_mut(&mut t, &name).insert_map(key, ElemData::Verdict(verdict));
            continue;
        }
        let chain = frontend_chain(k);
        let name = format!(
            "service-{}-{}",
            if map == "services" { "ips" } else { "nodeports" },
            fam(family)
        );
        set_mut(&mut t, &name).insert_map(key, goto(&chain));
        frontend(&mut t, k, f, family, &mut cidr_sets);
    }
    for ip in model.cluster_ips() {
        let name = format!("cluster-ips-{}", fam(IpFamily::of(&ip)));
        set_mut(&mut t, &name).insert(key::ip(ip));
    }
    t
}

fn set_mut<'a>(t: &'a mut Table, name: &str) -> &'a mut Set {
    t.sets
        .get_mut(name)
        .unwrap_or_else(|| panic!("set {name} is created by base_chains"))
}

/// The fixed part: base chains, the dispatch chains and the (possibly empty) maps they use.
fn base_chains(t: &mut Table) {
    for f in FAMILIES {
        let a = addr_key(f);
        let s = fam(f);
        for name in [format!("service-ips-{s}"), format!("no-endpoint-services-{s}")] {
            t.set(Set::map(
                name,
                vec![a, KeyType::InetProto, KeyType::InetService],
                DataType::Verdict,
            ));
        }
        for name in [format!("service-nodeports-{s}"), format!("no-endpoint-nodeports-{s}")] {
            t.set(Set::map(
                name,
                vec![KeyType::InetProto, KeyType::InetService],
                DataType::Verdict,
            ));
        }
        t.set(Set::new(format!("cluster-ips-{s}"), vec![a]));
    }

    for (name, hook) in [("nat-prerouting", Hook::Prerouting), ("nat-output", Hook::Output)] {
        t.chain(Chain::base(name, ChainKind::Nat, hook, prio::DSTNAT, Policy::Accept))
            .rule(Rule::of([build::jump("services")]));
    }
    t.chain(Chain::base(
        "nat-postrouting",
        ChainKind::Nat,
        Hook::Postrouting,
        prio::SRCNAT,
        Policy::Accept,
    ))
    .rule(Rule::of([
        build::mark_and_eq(MASQ_MARK, MASQ_MARK),
        build::masquerade_fully_random(),
    ]));

    let services = t.chain(Chain::regular("services"));
    for f in FAMILIES {
        let s = fam(f);
        services.rule(Rule::of([
            nfproto(f),
            build::vmap(
                &[daddr_field(f), Field::L4Proto, Field::ThDport],
                &format!("service-ips-{s}"),
            ),
        ]));
    }
    for f in FAMILIES {
        services.rule(Rule::of([
            build::fib_daddr_type_local(),
            nfproto(f),
            not_loopback(f),
            build::vmap(
                &[Field::L4Proto, Field::ThDport],
                &format!("service-nodeports-{}", fam(f)),
            ),
        ]));
    }

    let check = t.chain(Chain::regular("service-endpoints-check"));
    for f in FAMILIES {
        check.rule(Rule::of([
            nfproto(f),
            build::vmap(
                &[daddr_field(f), Field::L4Proto, Field::ThDport],
                &format!("no-endpoint-services-{}", fam(f)),
            ),
        ]));
    }
    let check = t.chain(Chain::regular("nodeport-endpoints-check"));
    for f in FAMILIES {
        check.rule(Rule::of([
            build::fib_daddr_type_local(),
            nfproto(f),
            not_loopback(f),
            build::vmap(
                &[Field::L4Proto, Field::ThDport],
                &format!("no-endpoint-nodeports-{}", fam(f)),
            ),
        ]));
    }
    let check = t.chain(Chain::regular("cluster-ips-check"));
    for f in FAMILIES {
        check.rule(Rule::of([
            nfproto(f),
            build::in_set(&[daddr_field(f)], &format!("cluster-ips-{}", fam(f)), false),
            build::jump("reject-chain"),
        ]));
    }
    t.chain(Chain::regular("reject-chain"))
        .rule(Rule::of([build::reject_tcp_reset()]))
        .rule(Rule::of([build::reject_icmpx_port_unreachable()]));

    let new = || build::ct_state(ct_state::NEW);
    let filter = |name: &str, hook, priority| Chain::base(name, ChainKind::Filter, hook, priority, Policy::Accept);
    t.chain(filter("filter-input", Hook::Input, prio::DSTNAT - 10))
        .rule(Rule::of([new(), build::jump("nodeport-endpoints-check")]))
        .rule(Rule::of([new(), build::jump("service-endpoints-check")]));
    t.chain(filter("filter-forward", Hook::Forward, prio::DSTNAT - 10))
        .rule(Rule::of([new(), build::jump("service-endpoints-check")]))
        .rule(Rule::of([new(), build::jump("cluster-ips-check")]));
    t.chain(filter("filter-output", Hook::Output, prio::DSTNAT - 10))
        .rule(Rule::of([new(), build::jump("service-endpoints-check")]));
    // After nat-output's dnat: what is still addressed to a ClusterIP found no frontend.
    t.chain(filter("filter-output-post-dnat", Hook::Output, prio::DSTNAT + 10))
        .rule(Rule::of([new(), build::jump("cluster-ips-check")]));
}

/// `ip daddr != 127.0.0.0/8` / `ip6 daddr != ::1` (NodePorts are not served on loopback).
fn not_loopback(f: IpFamily) -> Vec<weft_nft::Expr> {
    match f {
        IpFamily::V4 => build::addr_prefix(Field::IpDaddr, "127.0.0.0/8".parse().expect("a valid CIDR"), true),
        IpFamily::V6 => build::field_neq(Field::Ip6Daddr, key::ip(std::net::Ipv6Addr::LOCALHOST.into())),
    }
}

/// The frontend's chain, its endpoint map and one chain per backend.
fn frontend(
    t: &mut Table,
    k: &FrontendKey,
    f: &Frontend,
    family: IpFamily,
    cidr_sets: &mut BTreeMap<Vec<IpNetwork>, String>,
) {
    let mut chain = Chain::regular(frontend_chain(k));
    match &f.masquerade {
        Masquerade::Never => {}
        Masquerade::Always => {
            chain.rule(Rule::of([build::mark_or(MASQ_MARK)]));
        }
        Masquerade::UnlessSourceIn(cidrs) => {
            let cidrs: Vec<IpNetwork> = cidrs
                .iter()
                .filter(|n| IpFamily::of_net(n) == family)
                .copied()
                .collect();
            if cidrs.is_empty() {
                // No local CIDR of this family: every source is "outside".
                chain.rule(Rule::of([build::mark_or(MASQ_MARK)]));
            } else {
                let next = cidr_sets.len();
                let set = cidr_sets
                    .entry(cidrs.clone())
                    .or_insert_with(|| format!("local-cidrs-{}-{next}", fam(family)))
                    .clone();
                if !t.sets.contains_key(&set) {
                    let s = t.set(Set::cidrs(set.clone(), family == IpFamily::V6));
                    for n in &cidrs {
                        s.insert_cidr(*n);
                    }
                }
                let saddr = match family {
                    IpFamily::V4 => Field::IpSaddr,
                    IpFamily::V6 => Field::Ip6Saddr,
                };
                chain.rule(Rule::of([
                    nfproto(family),
                    build::in_set(&[saddr], &set, true),
                    build::mark_or(MASQ_MARK),
                ]));
            }
        }
    }
    let backends = &f.pool.backends;
    let n = u32::try_from(backends.len()).expect("fewer than 2^32 backends");
    let kind = match f.algorithm {
        LbAlgorithm::RoundRobin => NumgenKind::Inc,
        LbAlgorithm::Random | LbAlgorithm::SourceHash | LbAlgorithm::Maglev => NumgenKind::Random,
    };
    let map = frontend_map(k);
    chain.rule(Rule::of([build::numgen_vmap(kind, n, &map)]));
    t.chain(chain);
    let mut eps = Set::map(map, vec![KeyType::Integer(4)], DataType::Verdict);
    for (i, b) in (0u32..).zip(backends) {
        let ep = backend_chain(k, b);
        eps.insert_map(key::u32_host(i), goto(&ep));
        t.chain(Chain::regular(ep))
            .rule(Rule::of([
                nfproto(IpFamily::of(&b.ip)),
                build::saddr_eq(b.ip),
                build::mark_or(MASQ_MARK),
            ]))
            .rule(Rule::of([
                nfproto(IpFamily::of(&b.ip)),
                build::l4proto(proto_number(k.protocol)),
                build::dnat_to(b.ip, Some(b.port)),
            ]));
    }
    t.set(eps);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_sanitized_and_told_apart_by_the_hash() {
        let long = "x".repeat(400);
        let n = object_name("svc", &long);
        assert_eq!(n.len(), MAX_NAME);
        assert!(n.starts_with("svc-") && n.len() <= 255);
        let a = object_name("ep", "ns/a/[fd00::1]:80");
        assert_eq!(a, object_name("ep", "ns/a/[fd00::1]:80"), "deterministic");
        assert!(a.ends_with("-ns/a/_fd00__1__80"), "{a}");
        // Two ids that sanitize to the same text still get different names.
        assert_ne!(object_name("ep", "a:b"), object_name("ep", "a_b"));
        // Truncated ids that share the first MAX_NAME bytes still differ by the hash.
        assert_ne!(
            object_name("svc", &format!("{long}1")),
            object_name("svc", &format!("{long}2"))
        );
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a("foobar"), 0x8594_4171_f739_67e8);
    }
}
