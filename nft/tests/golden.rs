//! Golden tests of the encoding (no root needed): the bytes of our messages
//! against what nft 1.0.6 / libnftnl sends for the same objects.
//!
//! How the expected bytes were obtained: in a throwaway netns,
//! `strace -f -e trace=sendmsg -e write=all nft -f <file>` with the nft text
//! quoted above each case; the hex dump of the batch was split into
//! messages and the payload after the 16-byte nlmsghdr (nfgenmsg +
//! attributes) is pasted here. Where nft sends attributes this crate
//! deliberately does not (set userdata for nft's own pretty-printing,
//! `*_SET_ID` references by id where we refer by name, an explicit
//! `NFTA_BITWISE_OP` = bool that libnftnl sends for some rules only), the
//! test removes them from nft's bytes with `strip` and says so.

use std::collections::BTreeMap;

use weft_nft::build::*;
use weft_nft::codec::Batch;
use weft_nft::{key, prio, Chain, ChainKind, DataType, ElemData, Family, Hook, KeyType, Policy, Rule, Set, Verdict};

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// (type, flags, payload) of each message in a batch.
fn split(buf: &[u8]) -> Vec<(u16, u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[i..i + 4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(buf[i + 4..i + 6].try_into().unwrap());
        let fl = u16::from_ne_bytes(buf[i + 6..i + 8].try_into().unwrap());
        out.push((ty, fl, buf[i + 16..i + len].to_vec()));
        i += (len + 3) & !3;
    }
    out
}

/// Re-encode attributes, dropping those for which `drop(path, type)` is
/// true; `path` is the chain of enclosing attribute types, with the expression
/// name appended for expression data (e.g. `[4, 1, 2, "lookup"]`).
fn strip(attrs: &[u8], path: &mut Vec<String>, drop: &dyn Fn(&[String], u16) -> bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut expr_name = None;
    while i + 4 <= attrs.len() {
        let len = u16::from_ne_bytes([attrs[i], attrs[i + 1]]) as usize;
        let raw_ty = u16::from_ne_bytes([attrs[i + 2], attrs[i + 3]]);
        let ty = raw_ty & 0x3fff;
        let body = &attrs[i + 4..i + len];
        if ty == 1 && raw_ty & 0x8000 == 0 && body.last() == Some(&0) {
            expr_name = Some(String::from_utf8_lossy(&body[..body.len() - 1]).into_owned());
        }
        if !drop(path, ty) {
            let new_body = if raw_ty & 0x8000 != 0 {
                path.push(ty.to_string());
                if ty == 2 {
                    if let Some(n) = &expr_name {
                        path.push(n.clone());
                    }
                }
                let b = strip(body, path, drop);
                if ty == 2 && expr_name.is_some() {
                    path.pop();
                }
                path.pop();
                b
            } else {
                body.to_vec()
            };
            let l = 4 + new_body.len();
            out.extend_from_slice(&(l as u16).to_ne_bytes());
            out.extend_from_slice(&raw_ty.to_ne_bytes());
            out.extend_from_slice(&new_body);
            out.resize(out.len() + ((l + 3) & !3) - l, 0);
        }
        i += (len + 3) & !3;
    }
    out
}

/// nft's payload with attributes removed (the nfgenmsg's 4 bytes kept).
fn nft_without(hex: &str, drop: &dyn Fn(&[String], u16) -> bool) -> Vec<u8> {
    let b = unhex(hex);
    let mut v = b[..4].to_vec();
    v.extend(strip(&b[4..], &mut Vec::new(), drop));
    v
}

fn no_drop(_: &[String], _: u16) -> bool {
    false
}

fn in_expr(p: &[String], name: &str) -> bool {
    p.last().map(String::as_str) == Some(name)
}

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Our messages (payloads) for one batch, after BATCH_BEGIN.
fn ours(build: impl FnOnce(&mut Batch)) -> Vec<(u16, u16, Vec<u8>)> {
    let mut b = Batch::new(100);
    build(&mut b);
    let f = b.finish().unwrap();
    let msgs = split(&f.bytes);
    // BATCH_BEGIN / BATCH_END exactly as nft: type 0x10/0x11, NLM_F_REQUEST, nfgenmsg {AF_UNSPEC, v0, res_id=htons(10)}.
    assert_eq!((msgs[0].0, msgs[0].1, hexs(&msgs[0].2)), (0x10, 0x1, "0000000a".into()));
    let last = msgs.last().unwrap();
    assert_eq!((last.0, last.1, hexs(&last.2)), (0x11, 0x1, "0000000a".into()));
    msgs[1..msgs.len() - 1].to_vec()
}

fn assert_msg(got: &(u16, u16, Vec<u8>), ty: u16, want: Vec<u8>) {
    assert_eq!(got.0, ty, "message type");
    assert!(
        got.1 & 0x5 == 0x5,
        "every object message has NLM_F_REQUEST|NLM_F_ACK: {:#x}",
        got.1
    );
    assert_eq!(hexs(&got.2), hexs(&want));
}

// `add table inet weft`
const NFT_NEWTABLE: &str = "010000000900010077656674000000000800020000000000";
// `add chain inet weft mesh-postrouting { type nat hook postrouting priority srcnat; policy accept; }`
const NFT_CHAIN_POST: &str = "01000000090001007765667400000000150003006d6573682d706f7374726f7574696e6700000000080007006e61740008000500000000011400048008000100000000040800020000000064";
// `add chain inet weft mesh-forward { type filter hook forward priority mangle; policy accept; }`
const NFT_CHAIN_FWD: &str = "01000000090001007765667400000000110003006d6573682d666f7277617264000000000b00070066696c7465720000080005000000000114000480080001000000000208000200ffffff6a";
// `add set inet weft mesh-pods-v4 { type ipv4_addr; flags interval; }` (nft adds userdata 0x0d)
const NFT_SET_PODS: &str = "01000000090001007765667400000000110002006d6573682d706f64732d76340000000008000300000000040800040000000007080005000000000408000a00000000010a000d000004020000000000";
// `add element inet weft mesh-pods-v4 { 10.244.1.0/24 }` (the second NEWSETELEM nft sends; it refers to the set by id too)
const NFT_ELEM_PODS: &str = "01000000090001007765667400000000110002006d6573682d706f64732d76340000000008000400000000012c000380100001800c000180080001000af401001800028008000300000000010c000180080001000af40200";
// `add rule inet weft mesh-forward oifname "weft-wg" tcp flags syn / syn,rst tcp option maxseg size set rt mtu`
const NFT_RULE_MSS: &str = "01000000090001007765667400000000110002006d6573682d666f727761726400000000f801048024000180090001006d6574610000000014000280080002000000000708000100000000013800018008000100636d70002c000280080001000000000108000200000000001800038014000100776566742d776700000000000000000024000180090001006d6574610000000014000280080002000000001008000100000000012c00018008000100636d700020000280080001000000000108000200000000000c0003800500010006000000340001800c0001007061796c6f6164002400028008000100000000010800020000000002080003000000000d08000400000000014c0001800c00010062697477697365003c00028008000100000000010800020000000001080006000000000008000300000000010c00048005000100060000000c00058005000100000000002c00018008000100636d700020000280080001000000000108000200000000000c00038005000100020000002000018007000100727400001400028008000200000000030800010000000001400001800e000100627974656f726465720000002c000280080001000000000108000200000000010800030000000001080004000000000208000500000000023c0001800b00010065787468647200002c00028008000700000000010500020002000000080003000000000208000400000000020800060000000001";
// `add rule inet weft mesh-postrouting ip saddr @mesh-pods-v4 ip daddr != @mesh-pods-v4 masquerade comment "hi"`
const NFT_RULE_MASQ: &str = "01000000090001007765667400000000150002006d6573682d706f7374726f7574696e67000000004801048024000180090001006d6574610000000014000280080002000000000f08000100000000012c00018008000100636d700020000280080001000000000108000200000000000c0003800500010002000000340001800c0001007061796c6f6164002400028008000100000000010800020000000001080003000000000c0800040000000004380001800b0001006c6f6f6b75700000280002800800020000000001110001006d6573682d706f64732d7634000000000800040000000001340001800c0001007061796c6f616400240002800800010000000001080002000000000108000300000000100800040000000004400001800b0001006c6f6f6b75700000300002800800020000000001110001006d6573682d706f64732d7634000000000800040000000001080005000000000114000180090001006d6173710000000004000280090007000003686900000000";

#[test]
fn mesh_messages_match_nft() {
    let mut pods = Set::cidrs("mesh-pods-v4", false);
    pods.insert_cidr("10.244.1.0/24".parse().unwrap());
    let post = Chain::base(
        "mesh-postrouting",
        ChainKind::Nat,
        Hook::Postrouting,
        prio::SRCNAT,
        Policy::Accept,
    );
    let fwd = Chain::base(
        "mesh-forward",
        ChainKind::Filter,
        Hook::Forward,
        prio::MANGLE,
        Policy::Accept,
    );
    let mss = Rule::of([oifname_eq("weft-wg"), tcp_flags_syn(), tcp_mss_clamp_rt_mtu()]);
    let masq = Rule::of([
        nfproto_ipv4(),
        ip_saddr_in("mesh-pods-v4"),
        ip_daddr_not_in("mesh-pods-v4"),
        masquerade(),
    ])
    .comment("hi");
    let m = ours(|b| {
        b.add_table(Family::Inet, "weft");
        b.add_chain(Family::Inet, "weft", &post);
        b.add_chain(Family::Inet, "weft", &fwd);
        b.add_set(Family::Inet, "weft", &pods);
        b.elems(Family::Inet, "weft", &pods, pods.elements.iter(), false);
        b.add_rule(Family::Inet, "weft", "mesh-forward", 0, &mss);
        b.add_rule(Family::Inet, "weft", "mesh-postrouting", 0, &masq);
    });
    assert_eq!(m.len(), 7);
    assert_msg(&m[0], 0xa00, unhex(NFT_NEWTABLE));
    assert_msg(&m[1], 0xa03, unhex(NFT_CHAIN_POST));
    assert_msg(&m[2], 0xa03, unhex(NFT_CHAIN_FWD));
    assert_msg(
        &m[3],
        0xa09,
        nft_without(NFT_SET_PODS, &|p, t| p.is_empty() && t == 0x0d),
    );
    assert_msg(&m[4], 0xa0c, nft_without(NFT_ELEM_PODS, &|p, t| p.is_empty() && t == 4));
    assert_msg(
        &m[5],
        0xa06,
        nft_without(NFT_RULE_MSS, &|p, t| in_expr(p, "bitwise") && t == 6),
    );
    assert_msg(
        &m[6],
        0xa06,
        nft_without(NFT_RULE_MASQ, &|p, t| in_expr(p, "lookup") && t == 4),
    );
    // Table and chains need no stripping at all.
    assert_eq!(unhex(NFT_NEWTABLE), nft_without(NFT_NEWTABLE, &no_drop));
}

// `add map ip kp service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }`
const NFT_SET_VMAP: &str = "02000000070001006b70000010000200736572766963652d697073000800030000000008080004000000730d080005000000000c08000600ffffff00080007000000000008000a000000000120000d00000400000000010400000000030800040d0000000100060400000000";
// `add element ip kp service-ips { 10.96.0.10 . tcp . 80 : goto svc1 }`
const NFT_ELEM_VMAP: &str = "02000000070001006b70000010000200736572766963652d697073000800040000000001380003803400018014000180100001000a60000a06000000005000001c0002801800028008000100fffffffc090002007376633100000000";
// `add set ip kp aff { type ipv4_addr; flags dynamic,timeout; timeout 3h; }`
const NFT_SET_AFF: &str = "02000000070001006b700000080002006166660008000300000000300800040000000007080005000000000408000a00000000020c000b000000000000a4cb800a000d000004020000000000";
// `add rule ip kp nat-prerouting ip daddr . meta l4proto . th dport vmap @service-ips`
const NFT_RULE_VMAP: &str = "02000000070001006b700000130002006e61742d707265726f7574696e670000cc000480340001800c0001007061796c6f61640024000280080001000000000108000200000000010800030000000010080004000000000424000180090001006d657461000000001400028008000200000000100800010000000009340001800c0001007061796c6f61640024000280080001000000000a0800020000000002080003000000000208000400000000023c0001800b0001006c6f6f6b757000002c0002800800020000000001080003000000000010000100736572766963652d697073000800040000000001";
// `add rule ip kp svc1 ct state new,established accept`
const NFT_RULE_CT: &str = "02000000070001006b700000090002007376633100000000c40004802000018007000100637400001400028008000200000000000800010000000001440001800c0001006269747769736500340002800800010000000001080002000000000108000300000000040c000480080001000a0000000c00058008000100000000002c00018008000100636d700020000280080001000000000108000200000000010c0003800800010000000000300001800e000100696d6d6564696174650000001c0002800800010000000000100002800c0002800800010000000001";
// `add rule ip kp svc1 meta l4proto tcp dnat to 10.0.0.1:8080`
const NFT_RULE_DNAT: &str = "02000000070001006b700000090002007376633100000000e400048024000180090001006d6574610000000014000280080002000000001008000100000000012c00018008000100636d700020000280080001000000000108000200000000000c00038005000100060000002c0001800e000100696d6d6564696174650000001800028008000100000000010c000280080001000a0000012c0001800e000100696d6d6564696174650000001800028008000100000000020c000280060001001f90000038000180080001006e6174002c00028008000100000000010800020000000002080003000000000108000500000000020800070000000002";
// `add rule ip kp svc1 masquerade fully-random`
const NFT_RULE_MASQ_FR: &str =
    "02000000070001006b700000090002007376633100000000200004801c000180090001006d617371000000000c0002800800010000000010";

#[test]
fn service_messages_match_nft() {
    use weft_nft::ct_state;
    let mut vmap = Set::map(
        "service-ips",
        vec![KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
        DataType::Verdict,
    );
    vmap.insert_map(
        key::concat(&[key::ipv4("10.96.0.10".parse().unwrap()), key::proto(TCP), key::port(80)]),
        ElemData::Verdict(Verdict::Goto("svc1".into())),
    );
    let mut aff = Set::new("aff", vec![KeyType::Ipv4Addr]);
    aff.flags.dynamic = true;
    aff.flags.timeout = true;
    aff.timeout = Some(std::time::Duration::from_secs(3 * 3600));
    let m = ours(|b| {
        b.add_set(Family::Ip, "kp", &vmap);
        b.elems(Family::Ip, "kp", &vmap, vmap.elements.iter(), false);
        b.add_set(Family::Ip, "kp", &aff);
        let r = Rule::of([vmap_rule()]);
        b.add_rule(Family::Ip, "kp", "nat-prerouting", 0, &r);
        b.add_rule(
            Family::Ip,
            "kp",
            "svc1",
            0,
            &Rule::of([ct_state(ct_state::NEW | ct_state::ESTABLISHED), accept()]),
        );
        b.add_rule(
            Family::Ip,
            "kp",
            "svc1",
            1,
            &Rule::of([l4proto(TCP), dnat_to("10.0.0.1".parse().unwrap(), Some(8080))]),
        );
        b.add_rule(Family::Ip, "kp", "svc1", 2, &Rule::of([masquerade_fully_random()]));
    });
    assert_eq!(m.len(), 7);
    assert_msg(
        &m[0],
        0xa09,
        nft_without(NFT_SET_VMAP, &|p, t| p.is_empty() && t == 0x0d),
    );
    assert_msg(&m[1], 0xa0c, nft_without(NFT_ELEM_VMAP, &|p, t| p.is_empty() && t == 4));
    // nft numbered this set 2 in its batch, we number it 2 as well (second set of ours).
    assert_msg(
        &m[2],
        0xa09,
        nft_without(NFT_SET_AFF, &|p, t| p.is_empty() && t == 0x0d),
    );
    assert_msg(
        &m[3],
        0xa06,
        nft_without(NFT_RULE_VMAP, &|p, t| in_expr(p, "lookup") && t == 4),
    );
    assert_msg(&m[4], 0xa06, unhex(NFT_RULE_CT));
    assert_msg(&m[5], 0xa06, unhex(NFT_RULE_DNAT));
    assert_msg(&m[6], 0xa06, unhex(NFT_RULE_MASQ_FR));
}

fn vmap_rule() -> Vec<weft_nft::Expr> {
    vmap(&[Field::IpDaddr, Field::L4Proto, Field::ThDport], "service-ips")
}

#[test]
fn rules_print_like_nft() {
    let cases: BTreeMap<&str, Rule> = [
        (
            "meta nfproto ipv4 ip saddr @mesh-pods-v4 ip daddr != @mesh-cluster-v4 masquerade",
            Rule::of([nfproto_ipv4(), ip_saddr_in("mesh-pods-v4"), ip_daddr_not_in("mesh-cluster-v4"), masquerade()]),
        ),
        (
            "meta oifname \"weft-wg\" meta l4proto tcp tcp flags & 0x06 0x02 tcp option maxseg size set rt mtu comment \"c\"",
            Rule::of([oifname_eq("weft-wg"), tcp_flags_syn(), tcp_mss_clamp_rt_mtu()]).comment("c"),
        ),
        ("ip daddr . meta l4proto . th dport vmap @service-ips", Rule::of([vmap_rule()])),
        ("numgen random mod 3 vmap @svc-eps", Rule::of([numgen_vmap(weft_nft::NumgenKind::Random, 3, "svc-eps")])),
        ("meta l4proto tcp dnat ip to 0x0a000001:0x1f90", Rule::of([l4proto(TCP), dnat_to("10.0.0.1".parse().unwrap(), Some(8080))])),
        ("fib daddr type 0x2 drop", Rule::of([fib_daddr_type_local(), drop()])),
    ]
    .into_iter()
    .collect();
    for (want, rule) in cases {
        assert_eq!(rule.to_string(), want);
    }
}
