//! The mesh's rules through the engine, cross-checked with `nft -j list`.
mod common;

use common::*;
use weft_nft::Family;

const P4: &[&str] = &["10.244.1.0/24"];
const C4: &[&str] = &["10.244.0.0/16", "10.96.0.0/16"];
const P6: &[&str] = &["fd00:10:244:1::/64"];
const C6: &[&str] = &["fd00:10:244::/56"];

#[test]
fn mesh_table_lists_exactly_like_nft_loads_it() {
    let ns = Netns::new("mesh");
    let mut e = ns.engine();
    let stats = e.apply(&mesh_table(P4, C4, P6, C6)).unwrap();
    assert!(stats.full && stats.messages > 0, "{stats:?}");
    assert_same_as_nft(&ns, "inet", "weft", &mesh_nft(P4, C4, P6, C6));
    // Read back into the model: equal to what was applied.
    let back = e.read_table(Family::Inet, "weft").unwrap().expect("table exists");
    assert_eq!(back.canonical(), mesh_table(P4, C4, P6, C6).canonical());
    // Applying the same again sends nothing.
    let again = e.apply(&mesh_table(P4, C4, P6, C6)).unwrap();
    assert!(again.is_noop(), "{again:?}");
}

#[test]
fn mesh_set_change_is_element_add_and_delete_only() {
    let ns = Netns::new("meshd");
    let mut e = ns.engine();
    e.apply(&mesh_table(P4, C4, P6, C6)).unwrap();
    let p4b = ["10.244.1.0/24", "10.244.7.0/24"];
    let stats = e.apply(&mesh_table(&p4b, &["10.244.0.0/16"], P6, C6)).unwrap();
    assert_eq!(stats.messages, 2, "one element add, one element delete: {stats:?}");
    assert!(!stats.full);
    assert_same_as_nft(&ns, "inet", "weft", &mesh_nft(&p4b, &["10.244.0.0/16"], P6, C6));
}

#[test]
fn a_table_written_by_nft_is_adopted_without_changes() {
    let ns = Netns::new("meshadopt");
    // nft writes interval sets with its leading "0.0.0.0 interval end" marker; reading
    // it back must still give the same model.
    ns.nft_file(&mesh_nft(P4, C4, P6, C6));
    let mut e = ns.engine();
    let adopted = e.adopt(Family::Inet, "weft").unwrap().expect("nft created it");
    assert_eq!(adopted.canonical(), mesh_table(P4, C4, P6, C6).canonical());
    let s = e.apply(&mesh_table(P4, C4, P6, C6)).unwrap();
    assert!(s.is_noop(), "{s:?}");
}

#[test]
fn mesh_drift_is_repaired() {
    let ns = Netns::new("meshdrift");
    let mut e = ns.engine();
    let t = mesh_table(P4, C4, P6, C6);
    e.apply(&t).unwrap();
    let want = ns.table_json("inet", "weft");
    for d in [
        "flush set inet weft mesh-pods-v4",
        "flush chain inet weft mesh-postrouting",
        "delete rule inet weft mesh-forward handle 0",
        "delete element inet weft mesh-cluster-v4 { 10.96.0.0/16 }",
        "delete table inet weft",
    ] {
        let d = if d.contains("handle 0") {
            let h = ns.rule_handles("inet", "weft", "mesh-forward")[1];
            d.replace("handle 0", &format!("handle {h}"))
        } else {
            d.to_string()
        };
        ns.nft_file(&d);
        assert_ne!(
            ns.has_table("inet", "weft").then(|| ns.table_json("inet", "weft")),
            Some(want.clone()),
            "`{d}` changed nothing"
        );
        assert!(e.changed_since_commit().unwrap(), "generation must move after `{d}`");
        assert!(e.verify(&t).unwrap(), "drift after `{d}` not found");
        assert_eq!(ns.table_json("inet", "weft"), want, "not repaired after `{d}`");
    }
}
