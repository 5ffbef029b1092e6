//! A kube-proxy-shaped table (every expression Services need) through the
//! engine, cross-checked against nft's own load of the same text.
mod common;

use std::time::Duration;

use common::*;
use weft_nft::build::*;
use weft_nft::*;

pub const SVC_NFT: &str = include_str!("services.nft");

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

fn v4(s: &str) -> Vec<u8> {
    key::ip(ip(s))
}

pub fn services_table() -> Table {
    let mut t = Table::new(Family::Ip, "weft-svc");
    let svc_key = vec![KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService];
    let sk = |a: &str, p: u8, port: u16| key::concat(&[v4(a), key::proto(p), key::port(port)]);
    let goto_ = |c: &str| ElemData::Verdict(Verdict::Goto(c.into()));
    t.set(Set::map("service-ips", svc_key.clone(), DataType::Verdict))
        .insert_map(sk("10.96.0.10", TCP, 80), goto_("svc1"))
        .insert_map(sk("10.96.0.11", UDP, 53), goto_("svc2"));
    t.set(Set::map("no-endpoints", svc_key, DataType::Verdict))
        .insert_map(sk("10.96.0.12", TCP, 80), ElemData::Verdict(Verdict::Drop));
    t.set(Set::map("svc1-eps", vec![KeyType::Integer(4)], DataType::Verdict))
        .insert_map(key::u32_host(0), goto_("ep1"))
        .insert_map(key::u32_host(1), goto_("ep2"));
    t.set(Set::map(
        "natmap",
        vec![KeyType::Ipv4Addr, KeyType::InetService],
        DataType::Value(vec![KeyType::Ipv4Addr, KeyType::InetService]),
    ))
    .insert_map(
        key::concat(&[v4("10.96.0.13"), key::port(80)]),
        ElemData::Value(key::concat(&[v4("10.0.0.3"), key::port(8080)])),
    );
    let mut aff = Set::new("aff-ep1", vec![KeyType::Ipv4Addr]);
    aff.flags = SetFlags {
        dynamic: true,
        timeout: true,
        ..SetFlags::default()
    };
    aff.timeout = Some(Duration::from_secs(3 * 3600));
    t.set(aff);
    let mut blocked = Set::new("blocked", vec![KeyType::Ipv4Addr, KeyType::InetService]);
    blocked.flags.interval = true;
    blocked.elements.insert(
        key::concat(&[v4("10.1.0.0"), key::port(22)]),
        Elem {
            end: Some(key::concat(&[v4("10.1.255.255"), key::port(22)])),
            ..Elem::default()
        },
    );
    t.set(blocked);

    t.chain(Chain::regular("ep1"))
        .rule(Rule::of([set_update(
            &[Field::IpSaddr],
            "aff-ep1",
            Some(Duration::from_secs(3 * 3600)),
        )]))
        .rule(Rule::of([l4proto(TCP), dnat_to(ip("10.0.0.1"), Some(8080))]));
    t.chain(Chain::regular("ep2"))
        .rule(Rule::of([l4proto(TCP), counter(), dnat_to(ip("10.0.0.2"), Some(8080))]));
    t.chain(Chain::regular("ep3")).rule(Rule::of([
        l4proto(TCP),
        dnat_map(&[Field::IpDaddr, Field::ThDport], "natmap", false, true),
    ]));
    t.chain(Chain::regular("svc1"))
        .rule(Rule::of([
            addr_prefix(Field::IpSaddr, "10.244.0.0/16".parse().unwrap(), true),
            mark_or(0x4000),
        ]))
        .rule(Rule::of([ip_saddr_in("aff-ep1"), goto("ep1")]))
        .rule(Rule::of([numgen_vmap(NumgenKind::Random, 2, "svc1-eps")]));
    t.chain(Chain::regular("svc2"))
        .rule(Rule::of([jhash_vmap(&[Field::IpSaddr], 2, 0x1234, "svc1-eps")]))
        .rule(Rule::of([numgen_vmap(NumgenKind::Inc, 2, "svc1-eps")]))
        .rule(Rule::of([dnat_to(ip("10.0.0.9"), None)]));
    t.chain(Chain::regular("firewall"))
        .rule(Rule::of([
            fib_daddr_type_local(),
            vmap(&[Field::IpDaddr, Field::L4Proto, Field::ThDport], "no-endpoints"),
        ]))
        .rule(Rule::of([
            in_set(&[Field::IpSaddr, Field::ThDport], "blocked", false),
            drop(),
        ]))
        .rule(Rule::of([reject_tcp_reset()]))
        .rule(Rule::of([reject_icmp_port_unreachable()]))
        .rule(Rule::of([ct_mark_eq(0x10), ct_mark_set(0x20)]))
        .rule(Rule::of([
            build::ct_state(ct_state::ESTABLISHED | ct_state::RELATED),
            accept(),
        ]))
        .rule(Rule::of([
            field_range(Field::IpSaddr, v4("10.0.0.0"), v4("10.0.0.9"), false),
            ret(),
        ]))
        .rule(Rule::of([mark_set(1)]));
    t.chain(Chain::base(
        "filter-input",
        ChainKind::Filter,
        Hook::Input,
        -110,
        Policy::Accept,
    ))
    .rule(Rule::of([build::ct_state(ct_state::NEW), jump("firewall")]));
    t.chain(Chain::base(
        "nat-prerouting",
        ChainKind::Nat,
        Hook::Prerouting,
        prio::DSTNAT,
        Policy::Accept,
    ))
    .rule(Rule::of([vmap(
        &[Field::IpDaddr, Field::L4Proto, Field::ThDport],
        "service-ips",
    )]))
    .rule(Rule::of([daddr_eq(ip("10.96.0.13")), goto("ep3")]));
    t.chain(Chain::base(
        "nat-postrouting",
        ChainKind::Nat,
        Hook::Postrouting,
        prio::SRCNAT,
        Policy::Accept,
    ))
    .rule(Rule::of([mark_and_eq(0x4000, 0x4000), masquerade_fully_random()]))
    .rule(Rule::of([
        addr_prefix(Field::IpSaddr, "10.9.0.0/16".parse().unwrap(), false),
        snat_to(ip("10.0.0.254"), None),
    ]));
    t
}

#[test]
fn services_table_lists_exactly_like_nft_loads_it() {
    let ns = Netns::new("svc");
    let mut e = ns.engine();
    let t = services_table();
    e.apply(&t).unwrap();
    assert_same_as_nft(&ns, "ip", "weft-svc", SVC_NFT);
    let back = e.read_table(Family::Ip, "weft-svc").unwrap().expect("table exists");
    assert_eq!(
        back.canonical(),
        t.canonical(),
        "read back differs from what was applied"
    );
    assert!(e.apply(&t).unwrap().is_noop());
}
