//! Throwaway network namespaces for the privileged tests, and `nft` as the
//! cross-check (never the path under test).
#![allow(dead_code)] // reason: each test binary uses a different subset

use std::path::PathBuf;
use std::process::Command;

use weft_nft::Engine;

/// A network namespace `nfte-<tag>-<pid>`, deleted on drop (also on panic).
pub struct Netns {
    pub name: String,
    pub tag: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        assert!(
            nix_is_root(),
            "privileged test: must run as root (it creates network namespaces); refusing to skip"
        );
        let name = format!("nfte-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Netns {
            name,
            tag: tag.to_string(),
        };
        ns.exec("ip", &["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    pub fn engine(&self) -> Engine {
        Engine::new_in_netns(&self.path()).expect("open engine in netns")
    }

    /// Run a command inside the namespace; panics on failure.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name, cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Run a command inside the namespace; returns (success, stdout+stderr).
    pub fn try_exec(&self, cmd: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .output()
            .expect("spawn ip");
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), s)
    }

    pub fn nft(&self, args: &[&str]) -> String {
        self.exec("nft", args)
    }

    /// Load nft syntax with `nft -f`.
    pub fn nft_file(&self, text: &str) {
        let path = std::env::temp_dir().join(format!("{}-{}.nft", self.name, rand_suffix()));
        std::fs::write(&path, text).unwrap();
        self.exec("nft", &["-f", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(path);
    }

    /// `nft -j list table <family> <name>` without handles and metainfo.
    pub fn table_json(&self, family: &str, name: &str) -> serde_json::Value {
        let out = self.nft(&["-j", "list", "table", family, name]);
        let mut v: serde_json::Value = serde_json::from_str(&out).expect("nft -j output is JSON");
        strip(&mut v);
        v
    }

    /// Whether `nft list table` finds it.
    pub fn has_table(&self, family: &str, name: &str) -> bool {
        self.try_exec("nft", &["list", "table", family, name]).0
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Drop handles and metainfo; order objects by kind and name (rules keep
/// their order within a chain) and set elements by value, since listings
/// follow creation order and hash order, which carry no meaning here.
fn strip(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("handle");
            for x in m.values_mut() {
                strip(x);
            }
            if let Some(serde_json::Value::Array(a)) = m.get_mut("elem") {
                a.sort_by_key(|x| x.to_string());
            }
            if let Some(serde_json::Value::Array(a)) = m.get_mut("nftables") {
                a.sort_by_key(|x| {
                    let rank = ["table", "set", "map", "chain", "rule"]
                        .iter()
                        .position(|k| x.get(k).is_some());
                    let obj = x
                        .as_object()
                        .and_then(|o| o.values().next())
                        .cloned()
                        .unwrap_or_default();
                    let name = obj
                        .get("chain")
                        .or(obj.get("name"))
                        .map(|n| n.to_string())
                        .unwrap_or_default();
                    (rank, name)
                });
            }
        }
        serde_json::Value::Array(a) => {
            a.retain(|x| x.get("metainfo").is_none());
            for x in a {
                strip(x);
            }
        }
        _ => {}
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Assert that our table lists exactly like nft's own load of `nft_text`
/// (loaded into a second namespace).
pub fn assert_same_as_nft(ours: &Netns, family: &str, table: &str, nft_text: &str) {
    let anchor = Netns::new(&format!("{}-ref", ours.tag));
    anchor.nft_file(nft_text);
    let want = anchor.table_json(family, table);
    let got = ours.table_json(family, table);
    if got != want {
        // Leave both listings for a diff.
        let dir = std::env::temp_dir();
        let _ = std::fs::write(
            dir.join(format!("{}-got.json", ours.tag)),
            serde_json::to_string_pretty(&got).unwrap(),
        );
        let _ = std::fs::write(
            dir.join(format!("{}-want.json", ours.tag)),
            serde_json::to_string_pretty(&want).unwrap(),
        );
    }
    assert_eq!(
        serde_json::to_string_pretty(&got).unwrap(),
        serde_json::to_string_pretty(&want).unwrap(),
        "our table differs from nft's load of the same text:\n{nft_text}"
    );
}

use weft_nft::build::*;
use weft_nft::{prio, Chain, ChainKind, Family, Hook, Policy, Rule, Set, Table};

/// The mesh's table as node-agent renders it today (`node-agent/src/nft.rs`).
pub fn mesh_table(pods4: &[&str], cluster4: &[&str], pods6: &[&str], cluster6: &[&str]) -> Table {
    let mut t = Table::new(Family::Inet, "weft");
    for (name, v6, cidrs) in [
        ("mesh-pods-v4", false, pods4),
        ("mesh-cluster-v4", false, cluster4),
        ("mesh-pods-v6", true, pods6),
        ("mesh-cluster-v6", true, cluster6),
    ] {
        let s = t.set(Set::cidrs(name, v6));
        for c in cidrs {
            s.insert_cidr(c.parse().unwrap());
        }
    }
    let post = t.chain(Chain::base(
        "mesh-postrouting",
        ChainKind::Nat,
        Hook::Postrouting,
        prio::SRCNAT,
        Policy::Accept,
    ));
    post.rule(Rule::of([
        nfproto_ipv4(),
        ip_saddr_in("mesh-pods-v4"),
        ip_daddr_not_in("mesh-cluster-v4"),
        masquerade(),
    ]));
    post.rule(Rule::of([
        nfproto_ipv6(),
        ip6_saddr_in("mesh-pods-v6"),
        ip6_daddr_not_in("mesh-cluster-v6"),
        masquerade(),
    ]));
    let fwd = t.chain(Chain::base(
        "mesh-forward",
        ChainKind::Filter,
        Hook::Forward,
        prio::MANGLE,
        Policy::Accept,
    ));
    for dir in [oifname_eq("weft-wg"), iifname_eq("weft-wg")] {
        fwd.rule(Rule::of([dir, tcp_flags_syn(), tcp_mss_clamp_rt_mtu()]).comment("mss clamp"));
    }
    t
}

/// The same table in nft syntax.
pub fn mesh_nft(pods4: &[&str], cluster4: &[&str], pods6: &[&str], cluster6: &[&str]) -> String {
    let els = |c: &[&str]| {
        if c.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", c.join(", "))
        }
    };
    format!(
        r#"table inet weft {{
  set mesh-cluster-v4 {{ type ipv4_addr; flags interval;{} }}
  set mesh-cluster-v6 {{ type ipv6_addr; flags interval;{} }}
  set mesh-pods-v4 {{ type ipv4_addr; flags interval;{} }}
  set mesh-pods-v6 {{ type ipv6_addr; flags interval;{} }}
  chain mesh-forward {{
    type filter hook forward priority mangle; policy accept;
    oifname "weft-wg" tcp flags syn / syn,rst tcp option maxseg size set rt mtu comment "mss clamp"
    iifname "weft-wg" tcp flags syn / syn,rst tcp option maxseg size set rt mtu comment "mss clamp"
  }}
  chain mesh-postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr @mesh-pods-v4 ip daddr != @mesh-cluster-v4 masquerade
    ip6 saddr @mesh-pods-v6 ip6 daddr != @mesh-cluster-v6 masquerade
  }}
}}
"#,
        els(cluster4),
        els(cluster6),
        els(pods4),
        els(pods6)
    )
}

impl Netns {
    /// Run `f` on a new thread that has entered this namespace (the thread
    /// ends with `f`, so nothing else ever runs in the wrong namespace).
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }

    /// Rule handles of a chain (`nft -a`), to prove a chain was not rewritten.
    pub fn rule_handles(&self, family: &str, table: &str, chain: &str) -> Vec<u64> {
        let out = self.nft(&["-j", "-a", "list", "chain", family, table, chain]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("rule").and_then(|r| r["handle"].as_u64()))
            .collect()
    }

    /// Elements of a set as nft prints them (JSON values, sorted).
    pub fn elements(&self, family: &str, table: &str, set: &str, map: bool) -> Vec<String> {
        let kind = if map { "map" } else { "set" };
        let out = self.nft(&["-j", "list", kind, family, table, set]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut els: Vec<String> = v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get(kind))
            .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
            .map(|e| e.to_string())
            .collect();
        els.sort();
        els
    }
}
