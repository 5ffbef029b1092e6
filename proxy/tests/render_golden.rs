//! Golden tests of the renderer: every `tests/fixtures/NAME.json` (the model's fixtures) →
//! the `inet weft-svc` table as text (chains with their rules via `Rule`'s `Display`, sets
//! with decoded elements) in `tests/render_golden/NAME.txt`. Every rendered table must pass
//! `Table::validate()`. After an intended change, regenerate with
//! `WEFT_UPDATE_GOLDEN=1 cargo test -p weft-proxy --test render_golden` and review the diff.

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use weft_nft::{ElemData, KeyType, Table};
use weft_proxy::render;

mod render_fixtures;
use render_fixtures::{fixtures, model};

/// One field of a key, decoded by its type.
fn field_text(t: KeyType, b: &[u8]) -> String {
    match t {
        KeyType::Ipv4Addr => Ipv4Addr::from(<[u8; 4]>::try_from(b).expect("4 bytes")).to_string(),
        KeyType::Ipv6Addr => Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes")).to_string(),
        KeyType::InetProto => match b[0] {
            6 => "tcp".into(),
            17 => "udp".into(),
            132 => "sctp".into(),
            p => p.to_string(),
        },
        KeyType::InetService => u16::from_be_bytes([b[0], b[1]]).to_string(),
        KeyType::Integer(4) | KeyType::Mark => u32::from_ne_bytes(b.try_into().expect("4 bytes")).to_string(),
        _ => format!("{b:02x?}"),
    }
}

fn key_text(types: &[KeyType], b: &[u8]) -> String {
    if let [one] = types {
        return field_text(*one, b);
    }
    let mut at = 0;
    let mut parts = Vec::new();
    for t in types {
        let len = t.len() as usize;
        parts.push(field_text(*t, &b[at..at + len]));
        at += len.div_ceil(4) * 4;
    }
    assert_eq!(at, b.len(), "key length");
    parts.join(" . ")
}

fn table_text(t: &Table) -> String {
    let mut out = format!("table {} {}\n", t.family, t.name);
    for (name, s) in &t.sets {
        let types: Vec<&str> = s.key.iter().map(|k| k.name()).collect();
        write!(out, "set {name} : {}", types.join(" . ")).unwrap();
        match &s.data {
            Some(weft_nft::DataType::Verdict) => out.push_str(" : verdict"),
            Some(weft_nft::DataType::Value(v)) => {
                let v: Vec<&str> = v.iter().map(|k| k.name()).collect();
                write!(out, " : {}", v.join(" . ")).unwrap();
            }
            None => {}
        }
        if s.flags.interval {
            out.push_str(" flags interval");
        }
        out.push('\n');
        for (k, e) in &s.elements {
            write!(out, "  {}", key_text(&s.key, k)).unwrap();
            if let Some(end) = &e.end {
                write!(out, "-{}", key_text(&s.key, end)).unwrap();
            }
            match &e.data {
                Some(ElemData::Verdict(v)) => write!(out, " : {v}").unwrap(),
                Some(ElemData::Value(v)) => write!(out, " : {v:02x?}").unwrap(),
                None => {}
            }
            out.push('\n');
        }
    }
    for (name, c) in &t.chains {
        write!(out, "chain {name}").unwrap();
        if let Some(b) = &c.base {
            write!(
                out,
                " {{ type {} hook {} priority {}; policy {:?} }}",
                b.kind.as_str(),
                b.hook.as_str(),
                b.priority,
                b.policy
            )
            .unwrap();
        }
        out.push('\n');
        for r in &c.rules {
            writeln!(out, "  {r}").unwrap();
        }
    }
    out
}

#[test]
fn rendered_tables_match_golden_files_and_validate() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests");
    let fixtures = fixtures();
    let update = std::env::var_os("WEFT_UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for f in &fixtures {
        let m = model(f);
        let table = render::render(&m);
        table
            .validate()
            .unwrap_or_else(|e| panic!("{}: rendered table invalid: {e}", f.display()));
        assert_eq!(table.name, "weft-svc");
        assert!(table.chains.keys().chain(table.sets.keys()).all(|n| n.len() <= 255));
        // Deterministic: the same model renders the same table.
        assert_eq!(
            render::render(&m),
            table,
            "{}: render is not deterministic",
            f.display()
        );
        let got = table_text(&table);
        let golden = dir
            .join("render_golden")
            .join(f.file_stem().unwrap())
            .with_extension("txt");
        if update {
            fs::write(&golden, &got).expect("write golden");
            continue;
        }
        match fs::read_to_string(&golden) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!("{}:\n--- want\n{want}\n--- got\n{got}", golden.display())),
            Err(e) => failures.push(format!(
                "{}: {e} (generate with WEFT_UPDATE_GOLDEN=1)",
                golden.display()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
