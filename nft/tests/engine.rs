//! The diff engine against the real kernel: what each change sends, that
//! the result lists as expected, restart/adopt, drift repair, errors.
mod common;

use std::net::Ipv4Addr;

use common::*;
use weft_nft::build::*;
use weft_nft::*;

fn vip(i: u32) -> Vec<u8> {
    key::concat(&[
        key::ipv4(Ipv4Addr::from(0x0a60_0000 + i)),
        key::proto(TCP),
        key::port(80),
    ])
}

/// `ip weft-t`: a vmap of `n` VIPs jumping to `chains` endpoint chains.
fn table(n: u32, chains: u32) -> Table {
    let mut t = Table::new(Family::Ip, "weft-t");
    let m = t.set(Set::map(
        "service-ips",
        vec![KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
        DataType::Verdict,
    ));
    for i in 0..n {
        m.insert_map(vip(i), ElemData::Verdict(Verdict::Goto(format!("ep-{}", i % chains))));
    }
    for c in 0..chains {
        t.chain(Chain::regular(format!("ep-{c}"))).rule(Rule::of([
            l4proto(TCP),
            dnat_to(format!("10.0.2.{}", c + 2).parse().unwrap(), Some(8080)),
        ]));
    }
    t.chain(Chain::base(
        "nat-prerouting",
        ChainKind::Nat,
        Hook::Prerouting,
        prio::DSTNAT,
        Policy::Accept,
    ))
    .rule(Rule::of([vmap(&[Field::IpDaddr, Field::L4Proto, Field::ThDport], "service-ips")]).comment("services"));
    t
}

#[test]
fn element_add_and_delete_send_one_message_each() {
    let ns = Netns::new("elem");
    let mut e = ns.engine();
    let mut t = table(10, 2);
    e.apply(&t).unwrap();
    assert_eq!(ns.elements("ip", "weft-t", "service-ips", true).len(), 10);

    t.sets
        .get_mut("service-ips")
        .unwrap()
        .insert_map(vip(100), ElemData::Verdict(Verdict::Goto("ep-1".into())));
    let s = e.apply(&t).unwrap();
    assert_eq!((s.messages, s.full), (1, false), "{s:?}");
    assert_eq!(s.changes, vec!["set service-ips: +1 -0 elements".to_string()]);
    let els = ns.elements("ip", "weft-t", "service-ips", true);
    assert_eq!(els.len(), 11);
    assert!(
        els.iter().any(|e| e.contains("10.96.0.100") && e.contains("ep-1")),
        "{els:?}"
    );

    t.sets.get_mut("service-ips").unwrap().elements.remove(&vip(3));
    let s = e.apply(&t).unwrap();
    assert_eq!(s.messages, 1, "{s:?}");
    let els = ns.elements("ip", "weft-t", "service-ips", true);
    assert_eq!(els.len(), 10);
    assert!(!els.iter().any(|e| e.contains("\"10.96.0.3\"")), "{els:?}");

    // Changing an element's verdict is a delete and an add.
    t.sets
        .get_mut("service-ips")
        .unwrap()
        .insert_map(vip(4), ElemData::Verdict(Verdict::Goto("ep-1".into())));
    let s = e.apply(&t).unwrap();
    assert_eq!(s.messages, 2, "{s:?}");
    let els = ns.elements("ip", "weft-t", "service-ips", true);
    assert!(
        els.iter().any(|e| e.contains("\"10.96.0.4\"") && e.contains("ep-1")),
        "{els:?}"
    );
    // The engine's copy was updated by the diff alone, and equals the desired table.
    assert_eq!(e.committed(Family::Ip, "weft-t"), Some(&t.canonical()));
}

#[test]
fn changed_chain_is_rewritten_and_others_untouched() {
    let ns = Netns::new("rewrite");
    let mut e = ns.engine();
    let mut t = table(4, 2);
    e.apply(&t).unwrap();
    let before0 = ns.rule_handles("ip", "weft-t", "ep-0");
    let before1 = ns.rule_handles("ip", "weft-t", "ep-1");
    t.chains.get_mut("ep-1").unwrap().rules = vec![
        Rule::of([counter()]),
        Rule::of([l4proto(TCP), dnat_to("10.0.2.9".parse().unwrap(), Some(8081))]),
    ];
    let s = e.apply(&t).unwrap();
    assert_eq!(s.messages, 3, "flush + 2 rules: {s:?}");
    assert_eq!(
        ns.rule_handles("ip", "weft-t", "ep-0"),
        before0,
        "ep-0 must keep its rules"
    );
    let after1 = ns.rule_handles("ip", "weft-t", "ep-1");
    assert_eq!(after1.len(), 2);
    assert!(after1.iter().all(|h| !before1.contains(h)));
    let text = ns.nft(&["list", "chain", "ip", "weft-t", "ep-1"]);
    assert!(text.contains("dnat to 10.0.2.9:8081"), "{text}");
}

#[test]
fn removed_objects_are_deleted_in_a_valid_order() {
    let ns = Netns::new("delete");
    let mut e = ns.engine();
    let mut t = table(6, 3);
    let mut extra = Set::cidrs("extra", false);
    extra.insert_cidr("10.1.0.0/16".parse().unwrap());
    t.set(extra);
    t.chains
        .get_mut("ep-2")
        .unwrap()
        .rules
        .insert(0, Rule::of([ip_saddr_in("extra"), drop()]));
    e.apply(&t).unwrap();

    // Drop chain ep-2 (referenced by map elements), and set `extra` (used by ep-2's rule).
    let mut t2 = t.clone();
    t2.chains.remove("ep-2");
    t2.sets.remove("extra");
    t2.sets
        .get_mut("service-ips")
        .unwrap()
        .elements
        .retain(|_, e| e.data != Some(ElemData::Verdict(Verdict::Goto("ep-2".into()))));
    let s = e.apply(&t2).unwrap();
    assert!(
        s.changes.contains(&"delete chain ep-2".to_string()) && s.changes.contains(&"delete set extra".to_string()),
        "{s:?}"
    );
    let text = ns.nft(&["list", "table", "ip", "weft-t"]);
    assert!(!text.contains("ep-2") && !text.contains("extra"), "{text}");
    assert_eq!(
        e.read_table(Family::Ip, "weft-t").unwrap().unwrap().canonical(),
        t2.canonical()
    );

    // A base chain's priority change: deleted and created again in the same transaction.
    let mut t3 = t2.clone();
    t3.chains
        .get_mut("nat-prerouting")
        .unwrap()
        .base
        .as_mut()
        .unwrap()
        .priority = -90;
    let s = e.apply(&t3).unwrap();
    assert!(
        s.changes.iter().any(|c| c.starts_with("recreate chain nat-prerouting")),
        "{s:?}"
    );
    let text = ns.nft(&["list", "chain", "ip", "weft-t", "nat-prerouting"]);
    assert!(text.contains("priority dstnat + 10"), "{text}");
    // And a policy change is an update in place.
    let mut t4 = t3.clone();
    t4.chains
        .get_mut("nat-prerouting")
        .unwrap()
        .base
        .as_mut()
        .unwrap()
        .policy = Policy::Drop;
    let s = e.apply(&t4).unwrap();
    assert_eq!(s.changes, vec!["chain nat-prerouting: policy changed".to_string()]);
    assert!(ns
        .nft(&["list", "chain", "ip", "weft-t", "nat-prerouting"])
        .contains("policy drop"));
    assert_eq!(
        e.read_table(Family::Ip, "weft-t").unwrap().unwrap().canonical(),
        t4.canonical()
    );
    assert_eq!(e.committed(Family::Ip, "weft-t"), Some(&t4.canonical()));
}

#[test]
fn restarted_engine_adopts_and_changes_only_the_difference() {
    let ns = Netns::new("adopt");
    let t = table(50, 5);
    {
        let mut first = ns.engine();
        first.apply(&t).unwrap();
    }
    let handles = ns.rule_handles("ip", "weft-t", "nat-prerouting");
    let gen_before = ns.engine().generation().unwrap();
    let mut second = ns.engine();
    let adopted = second.adopt(Family::Ip, "weft-t").unwrap().expect("table exists");
    assert_eq!(
        adopted.canonical(),
        t.canonical(),
        "adopted table must equal what was applied"
    );
    let s = second.apply(&t).unwrap();
    assert!(s.is_noop(), "{s:?}");
    assert_eq!(second.generation().unwrap(), gen_before, "nothing was committed");
    assert!(!second.changed_since_commit().unwrap());
    let mut t2 = t.clone();
    t2.sets.get_mut("service-ips").unwrap().elements.remove(&vip(7));
    assert_eq!(second.apply(&t2).unwrap().messages, 1);
    assert_eq!(ns.rule_handles("ip", "weft-t", "nat-prerouting"), handles);
    // adopt of a missing table
    assert!(second.adopt(Family::Ip, "nope").unwrap().is_none());
}

#[test]
fn drift_is_seen_by_generation_and_repaired_by_verify() {
    let ns = Netns::new("drift");
    let mut e = ns.engine();
    let t = table(8, 2);
    e.apply(&t).unwrap();
    let want = ns.table_json("ip", "weft-t");
    assert!(!e.changed_since_commit().unwrap());
    assert!(!e.verify(&t).unwrap(), "no drift yet");

    let drifts: [&[&str]; 4] = [
        &["flush", "chain", "ip", "weft-t", "nat-prerouting"],
        &[
            "delete",
            "element",
            "ip",
            "weft-t",
            "service-ips",
            "{ 10.96.0.3 . tcp . 80 }",
        ],
        &["add", "rule", "ip", "weft-t", "ep-0", "drop"],
        &["delete", "table", "ip", "weft-t"],
    ];
    for d in drifts {
        ns.nft(d);
        assert!(
            e.changed_since_commit().unwrap(),
            "generation must move after `nft {d:?}`"
        );
        assert!(e.verify(&t).unwrap(), "drift after `nft {d:?}` must be found");
        assert_eq!(ns.table_json("ip", "weft-t"), want, "not repaired after `nft {d:?}`");
        assert!(!e.changed_since_commit().unwrap());
        assert!(!e.verify(&t).unwrap());
    }
}

#[test]
fn verify_keeps_the_contents_of_dynamic_sets() {
    let ns = Netns::new("dyn");
    let mut e = ns.engine();
    let mut t = table(2, 1);
    let mut aff = Set::new("aff", vec![KeyType::Ipv4Addr]);
    aff.flags = SetFlags {
        dynamic: true,
        timeout: true,
        ..SetFlags::default()
    };
    aff.timeout = Some(std::time::Duration::from_secs(3600));
    t.set(aff);
    t.chains
        .get_mut("ep-0")
        .unwrap()
        .rules
        .insert(0, Rule::of([set_update(&[Field::IpSaddr], "aff", None)]));
    e.apply(&t).unwrap();
    // What the packet path would add:
    ns.nft(&["add", "element", "ip", "weft-t", "aff", "{ 10.0.1.2 }"]);
    ns.nft(&["flush", "chain", "ip", "weft-t", "ep-0"]);
    assert!(e.verify(&t).unwrap());
    let els = ns.elements("ip", "weft-t", "aff", false);
    assert!(
        els.iter().any(|x| x.contains("10.0.1.2")),
        "affinity entry lost: {els:?}"
    );
    assert!(ns
        .nft(&["list", "chain", "ip", "weft-t", "ep-0"])
        .contains("update @aff"));
}

#[test]
fn kernel_errors_name_the_object_and_leave_the_last_commit_in_place() {
    let ns = Netns::new("err");
    let mut e = ns.engine();
    let t = table(2, 1);
    e.apply(&t).unwrap();
    // masquerade in a prerouting chain: the kernel refuses it (EOPNOTSUPP).
    let mut bad = t.clone();
    bad.chains
        .get_mut("nat-prerouting")
        .unwrap()
        .rules
        .push(Rule::of([masquerade()]));
    let err = e.apply(&bad).unwrap_err();
    let Error::Transaction { failures } = &err else {
        panic!("want a transaction error, got {err:?}")
    };
    assert!(
        failures
            .iter()
            .any(|f| f.op.starts_with("add rule ip weft-t nat-prerouting #2") && f.errno == libc::EOPNOTSUPP),
        "{err}"
    );
    // Nothing of the bad batch landed, and the engine still diffs from the good state.
    assert_eq!(ns.rule_handles("ip", "weft-t", "nat-prerouting").len(), 1);
    let mut t2 = t.clone();
    t2.sets.get_mut("service-ips").unwrap().elements.remove(&vip(0));
    assert_eq!(e.apply(&t2).unwrap().messages, 1);

    // Invalid desired state is refused before anything is sent.
    let mut dangling = t2.clone();
    dangling
        .chains
        .get_mut("ep-0")
        .unwrap()
        .rules
        .push(Rule::of([jump("nowhere")]));
    let err = e.apply(&dangling).unwrap_err();
    assert!(
        matches!(err, Error::Invalid { .. }) && err.to_string().contains("nowhere"),
        "{err}"
    );
    let mut badkey = t2.clone();
    badkey
        .sets
        .get_mut("service-ips")
        .unwrap()
        .insert_map(vec![1, 2, 3], ElemData::Verdict(Verdict::Accept));
    assert!(matches!(e.apply(&badkey).unwrap_err(), Error::Invalid { .. }));
}

#[test]
fn delete_table_reports_whether_it_existed() {
    let ns = Netns::new("deltab");
    let mut e = ns.engine();
    e.apply(&table(1, 1)).unwrap();
    assert!(e.delete_table(Family::Ip, "weft-t").unwrap());
    assert!(!ns.has_table("ip", "weft-t"));
    assert!(!e.delete_table(Family::Ip, "weft-t").unwrap());
    // After a delete the next apply re-creates the whole table.
    let s = e.apply(&table(1, 1)).unwrap();
    assert!(s.full);
    assert!(ns.has_table("ip", "weft-t"));
}

#[test]
fn interval_sets_read_back_in_the_same_form() {
    let ns = Netns::new("ival");
    let mut e = ns.engine();
    let mut t = Table::new(Family::Inet, "weft-i");
    let s = t.set(Set::cidrs("v4", false));
    for c in [
        "0.0.0.0/8",
        "10.0.0.0/24",
        "10.0.1.0/24",
        "192.168.1.7/32",
        "240.0.0.0/4",
    ] {
        s.insert_cidr(c.parse().unwrap());
    }
    let s6 = t.set(Set::cidrs("v6", true));
    for c in ["fd00::/8", "2001:db8::1/128", "ff00::/8"] {
        s6.insert_cidr(c.parse().unwrap());
    }
    e.apply(&t).unwrap();
    let back = e.read_table(Family::Inet, "weft-i").unwrap().unwrap();
    assert_eq!(back.canonical(), t.canonical());
    let els = ns.elements("inet", "weft-i", "v4", false);
    assert_eq!(els.len(), 5, "{els:?}");
    assert!(
        els.iter().any(|e| e.contains("240.0.0.0") && e.contains("\"len\":4")),
        "{els:?}"
    );
    // Overlapping ranges are refused before sending.
    t.sets
        .get_mut("v4")
        .unwrap()
        .insert_cidr("10.0.0.128/25".parse().unwrap());
    assert!(matches!(e.apply(&t).unwrap_err(), Error::Invalid { .. }));
}

#[test]
fn a_hundred_thousand_elements_in_one_transaction() {
    let ns = Netns::new("big");
    let mut e = ns.engine();
    let t = table(100_000, 4);
    let s = e.apply(&t).unwrap();
    assert!(s.messages > 100, "elements must be split over messages: {}", s.messages);
    let count = ns
        .nft(&["list", "map", "ip", "weft-t", "service-ips"])
        .matches("goto ep-")
        .count();
    assert_eq!(count, 100_000);
    let back = e.read_table(Family::Ip, "weft-t").unwrap().unwrap();
    assert_eq!(back.sets["service-ips"].elements.len(), 100_000);
}

#[test]
fn partial_changes_send_only_the_change_and_keep_the_model_in_step() {
    let ns = Netns::new("partial");
    let mut e = ns.engine();
    let mut t = table(20, 2);
    e.apply(&t).unwrap();
    let goto_ = |c: &str| ElemData::Verdict(Verdict::Goto(c.into()));
    let el = |c: &str| Elem {
        data: Some(goto_(c)),
        ..Elem::default()
    };

    // One element in, one out.
    let s = e
        .apply_changes(
            Family::Ip,
            "weft-t",
            &[Change::Elements {
                set: "service-ips".into(),
                upsert: vec![(vip(500), el("ep-0"))],
                remove: vec![vip(1)],
            }],
        )
        .unwrap();
    assert_eq!(s.messages, 2, "{s:?}");
    let m = t.sets.get_mut("service-ips").unwrap();
    m.elements.remove(&vip(1));
    m.insert_map(vip(500), goto_("ep-0"));
    // The engine's model followed: the full table now diffs to nothing, and so does the kernel.
    assert!(e.apply(&t).unwrap().is_noop());
    assert!(!e.verify(&t).unwrap());

    // A new chain with an element pointing at it, in one change list.
    let mut ep9 = Chain::regular("ep-9");
    ep9.rule(Rule::of([
        l4proto(TCP),
        dnat_to("10.0.2.99".parse().unwrap(), Some(80)),
    ]));
    let s = e
        .apply_changes(
            Family::Ip,
            "weft-t",
            &[
                Change::Chain(ep9.clone()),
                Change::Elements {
                    set: "service-ips".into(),
                    upsert: vec![(vip(2), el("ep-9"))],
                    remove: vec![],
                },
            ],
        )
        .unwrap();
    assert_eq!(s.messages, 4, "add chain, its rule, element delete+add: {s:?}");
    t.chain(ep9);
    t.sets.get_mut("service-ips").unwrap().insert_map(vip(2), goto_("ep-9"));
    assert!(
        !e.verify(&t).unwrap(),
        "kernel must equal the model after partial changes"
    );

    // Deleting a chain still referenced by an element is refused before sending.
    let err = e
        .apply_changes(Family::Ip, "weft-t", &[Change::DeleteChain("ep-9".into())])
        .unwrap_err();
    assert!(
        matches!(err, Error::Invalid { .. }) && err.to_string().contains("ep-9"),
        "{err}"
    );
    // With the element gone it works.
    e.apply_changes(
        Family::Ip,
        "weft-t",
        &[
            Change::Elements {
                set: "service-ips".into(),
                upsert: vec![],
                remove: vec![vip(2)],
            },
            Change::DeleteChain("ep-9".into()),
        ],
    )
    .unwrap();
    t.chains.remove("ep-9");
    t.sets.get_mut("service-ips").unwrap().elements.remove(&vip(2));
    assert!(!e.verify(&t).unwrap());
    // Unknown table.
    assert!(e.apply_changes(Family::Ip, "other", &[]).is_err());
}

#[test]
fn a_round_trip_past_its_timeout_is_a_typed_error_and_late_replies_are_ignored() {
    let ns = Netns::new("timeout");
    let mut e = ns.engine();
    e.set_timeout(std::time::Duration::ZERO);
    let err = e.generation().unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("get generation"), "{err}");
    // The kernel's (late) reply to that request is still queued; the next
    // request must skip it by sequence number and get its own answer.
    e.set_timeout(DEFAULT_TIMEOUT);
    let g = e.generation().unwrap();
    e.apply(&table(1, 1)).unwrap();
    assert_ne!(e.generation().unwrap(), g);
}

#[test]
fn an_apply_refused_after_outside_changes_recovers_on_the_next_apply() {
    let ns = Netns::new("recover");
    let mut e = ns.engine();
    let mut t = table(4, 2);
    e.apply(&t).unwrap();
    ns.nft(&["delete", "table", "ip", "weft-t"]);
    t.sets.get_mut("service-ips").unwrap().elements.remove(&vip(0));
    // The engine diffs from its last commit: the table is gone, the kernel says so, naming the object.
    let err = e.apply(&t).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    assert!(
        err.to_string().contains("delete element ip weft-t service-ips"),
        "{err}"
    );
    // The next apply starts from what the kernel has, and repairs.
    let s = e.apply(&t).unwrap();
    assert!(s.full, "{s:?}");
    assert!(!e.verify(&t).unwrap());
    assert_eq!(ns.elements("ip", "weft-t", "service-ips", true).len(), 3);
}
