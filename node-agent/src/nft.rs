//! nftables for the mesh, through weft's netlink engine ([`weft_nft`]; no
//! `nft` process): masquerade pods' traffic to destinations outside the
//! cluster, clamp the TCP MSS of connections through the tunnel, and (strict
//! mode) drop traffic to other nodes' pod CIDRs that would leave the node
//! outside the tunnel.
//!
//! The mesh owns table `inet weft` whole; Services get tables of their own,
//! so neither loop's repairs can touch the other's rules, and no other table
//! is ever touched. The desired table is a value ([`table`]); the engine
//! diffs it against what it last committed and sends only the difference in
//! one atomic batch. Drift: before each pass the engine asks the kernel for
//! the ruleset generation; when someone else committed since our last commit
//! (or every [`VERIFY_EVERY`] passes) it dumps our table, compares it with the
//! desired one and repairs only the difference.

use ipnetwork::IpNetwork;
use weft_nft::build::*;
use weft_nft::{prio, Chain, ChainKind, Engine, Family, Hook, Policy, Rule, Set, Table};

pub const TABLE: &str = "weft";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(transparent)]
    Engine(#[from] weft_nft::Error),
    #[error("nftables worker thread: {0}")]
    Join(String),
}

/// What the mesh's rules depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshRules<'a> {
    pub wg_iface: &'a str,
    pub pod_cidrs: &'a [IpNetwork],
    pub cluster_cidrs: &'a [IpNetwork],
    /// Other nodes' pod CIDRs: reachable only through the tunnel.
    pub remote_pod_cidrs: &'a [IpNetwork],
    /// Drop traffic to `remote_pod_cidrs` that leaves through another device.
    pub strict: bool,
}

fn fill(t: &mut Table, name: &str, v6: bool, cidrs: &[IpNetwork]) {
    let s = t.set(Set::cidrs(name, v6));
    for c in cidrs.iter().filter(|c| c.is_ipv6() == v6) {
        s.insert_cidr(IpNetwork::new(c.network(), c.prefix()).expect("network of a valid CIDR"));
    }
}

/// The mesh's table as a value:
///
/// ```text
/// table inet weft {
///   set mesh-pods-v4 { type ipv4_addr; flags interval; elements = { <own pod CIDR> } }
///   set mesh-cluster-v4 { … }  set mesh-remote-v4 { … }  (and -v6)
///   chain mesh-postrouting { type nat hook postrouting priority srcnat; policy accept;
///     ip saddr @mesh-pods-v4 ip daddr != @mesh-cluster-v4 masquerade
///     ip6 saddr @mesh-pods-v6 ip6 daddr != @mesh-cluster-v6 masquerade }
///   chain mesh-forward { type filter hook forward priority mangle; policy accept;
///     jump mesh-strict
///     oifname "weft-wg" tcp flags syn / syn,rst tcp option maxseg size set rt mtu
///     iifname "weft-wg" tcp flags syn / syn,rst tcp option maxseg size set rt mtu }
///   chain mesh-output { type filter hook output priority mangle; policy accept; jump mesh-strict }
///   chain mesh-strict {
///     ip daddr @mesh-remote-v4 meta oifname != "weft-wg" counter drop
///     ip6 daddr @mesh-remote-v6 meta oifname != "weft-wg" counter drop }
/// }
/// ```
pub fn table(r: &MeshRules) -> Table {
    let mut t = Table::new(Family::Inet, TABLE);
    for (v6, fam) in [(false, "v4"), (true, "v6")] {
        fill(&mut t, &format!("mesh-pods-{fam}"), v6, r.pod_cidrs);
        fill(&mut t, &format!("mesh-cluster-{fam}"), v6, r.cluster_cidrs);
        if r.strict {
            fill(&mut t, &format!("mesh-remote-{fam}"), v6, r.remote_pod_cidrs);
        }
    }
    // Pods → outside the cluster: masquerade to the node's address. Pod → pod
    // and pod → anything in the cluster CIDRs keeps the pod's address.
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
    if r.strict {
        fwd.rule(Rule::of([jump("mesh-strict")]));
    }
    // TCP through the tunnel: MSS from the route's MTU, so a peer with a
    // larger MTU (or a host socket that missed the device MTU) cannot send
    // segments that only ICMP "too big" could save.
    for dir in [oifname_eq(r.wg_iface), iifname_eq(r.wg_iface)] {
        fwd.rule(Rule::of([dir, tcp_flags_syn(), tcp_mss_clamp_rt_mtu()]));
    }
    if r.strict {
        // Forwarded pod traffic and the node's own (hostNetwork pods) alike:
        // another node's pod CIDR is reached through the tunnel or not at
        // all, whatever the routing table says.
        t.chain(Chain::base(
            "mesh-output",
            ChainKind::Filter,
            Hook::Output,
            prio::MANGLE,
            Policy::Accept,
        ))
        .rule(Rule::of([jump("mesh-strict")]));
        let strict = t.chain(Chain::regular("mesh-strict"));
        strict.rule(
            Rule::of([
                nfproto_ipv4(),
                ip_daddr_in("mesh-remote-v4"),
                field_neq(Field::OifName, weft_nft::key::ifname(r.wg_iface)),
                counter(),
                drop(),
            ])
            .comment("another node's pods only through the tunnel"),
        );
        strict.rule(
            Rule::of([
                nfproto_ipv6(),
                ip6_daddr_in("mesh-remote-v6"),
                field_neq(Field::OifName, weft_nft::key::ifname(r.wg_iface)),
                counter(),
                drop(),
            ])
            .comment("another node's pods only through the tunnel"),
        );
    }
    t
}

/// What one [`TableSync::apply`] did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The change list (empty: up to date).
    pub changes: Vec<String>,
    /// Someone else changed our table and it was put back.
    pub repaired: bool,
}

/// One loop's engine for one table (the mesh's `inet weft`, the Services'
/// `inet weft-svc`): one netlink socket, opened on first use in the agent's
/// netns and kept for the life of the process.
#[derive(Default)]
pub struct TableSync {
    engine: Option<Engine>,
    passes: u64,
}

/// Verify against the kernel at least every this many passes even when the
/// generation did not move (cheap: the mesh table is a few dozen objects).
const VERIFY_EVERY: u64 = 10;

impl TableSync {
    /// Make the kernel's table equal `desired`: an incremental apply,
    /// or a verify-and-repair when someone else committed since our last
    /// commit, on the first pass of a process (adopting what a previous one
    /// left, without a flush), and every [`VERIFY_EVERY`] passes.
    pub async fn apply(&mut self, desired: Table) -> Result<Outcome, NftError> {
        let engine = self.engine.take();
        self.passes += 1;
        let periodic = self.passes.is_multiple_of(VERIFY_EVERY);
        let (engine, result) = tokio::task::spawn_blocking(move || {
            let mut engine = match engine {
                Some(e) => e,
                None => match Engine::new() {
                    Ok(e) => e,
                    Err(e) => return (None, Err(e)),
                },
            };
            let r = sync(&mut engine, &desired, periodic);
            (Some(engine), r)
        })
        .await
        .map_err(|e| NftError::Join(e.to_string()))?;
        self.engine = engine;
        Ok(result?)
    }
}

fn sync(e: &mut Engine, desired: &Table, periodic: bool) -> Result<Outcome, weft_nft::Error> {
    let first = e.committed(desired.family, &desired.name).is_none();
    if first || periodic || e.changed_since_commit()? {
        if first {
            e.adopt(desired.family, &desired.name)?;
        }
        let had = e.committed(desired.family, &desired.name).is_some();
        let drift = e.verify(desired)?;
        let mut out = Outcome::default();
        if drift {
            // A first pass that finds nothing (a new node) creates; one that
            // finds a different table adopts a previous process's work.
            let what = if !had {
                "created"
            } else if first {
                "adopted and updated"
            } else {
                "repaired"
            };
            out.repaired = had && !first;
            out.changes.push(format!("nft table inet {}: {what}", desired.name));
        }
        return Ok(out);
    }
    let stats = e.apply(desired)?;
    Ok(Outcome {
        changes: stats.changes,
        repaired: false,
    })
}

/// `nft delete table inet NAME`; a missing table is fine.
pub async fn delete_table(name: &'static str) -> Result<bool, NftError> {
    tokio::task::spawn_blocking(move || {
        let mut e = Engine::new()?;
        Ok(e.delete_table(Family::Inet, name)?)
    })
    .await
    .map_err(|e| NftError::Join(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNetwork> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn the_mesh_table_renders_as_nft_would_list_it() {
        let pods = nets(&["10.244.1.0/24", "fd00:10:244:1::/64"]);
        let cluster = nets(&["10.244.0.0/16"]);
        let remote = nets(&["10.244.2.0/24", "fd00:10:244:2::/64"]);
        let r = MeshRules {
            wg_iface: "weft-wg",
            pod_cidrs: &pods,
            cluster_cidrs: &cluster,
            remote_pod_cidrs: &remote,
            strict: true,
        };
        let t = table(&r);
        t.validate().unwrap();
        let rules: Vec<String> = t
            .chains
            .values()
            .flat_map(|c| c.rules.iter().map(move |r| format!("{}: {r}", c.name)))
            .collect();
        let want = [
            "mesh-forward: jump mesh-strict",
            "mesh-forward: meta oifname \"weft-wg\" meta l4proto tcp tcp flags & 0x06 0x02 tcp option maxseg size set rt mtu",
            "mesh-forward: meta iifname \"weft-wg\" meta l4proto tcp tcp flags & 0x06 0x02 tcp option maxseg size set rt mtu",
            "mesh-output: jump mesh-strict",
            "mesh-postrouting: meta nfproto ipv4 ip saddr @mesh-pods-v4 ip daddr != @mesh-cluster-v4 masquerade",
            "mesh-postrouting: meta nfproto ipv6 ip6 saddr @mesh-pods-v6 ip6 daddr != @mesh-cluster-v6 masquerade",
            "mesh-strict: meta nfproto ipv4 ip daddr @mesh-remote-v4 meta oifname != \"weft-wg\" counter drop comment \"another node's pods only through the tunnel\"",
            "mesh-strict: meta nfproto ipv6 ip6 daddr @mesh-remote-v6 meta oifname != \"weft-wg\" counter drop comment \"another node's pods only through the tunnel\"",
        ];
        assert_eq!(rules, want);
        let sizes: Vec<(String, usize)> = t.sets.values().map(|s| (s.name.clone(), s.elements.len())).collect();
        assert_eq!(
            sizes,
            [
                ("mesh-cluster-v4".to_string(), 1),
                ("mesh-cluster-v6".to_string(), 0),
                ("mesh-pods-v4".to_string(), 1),
                ("mesh-pods-v6".to_string(), 1),
                ("mesh-remote-v4".to_string(), 1),
                ("mesh-remote-v6".to_string(), 1),
            ]
        );
        // Without strict mode: no strict chains or remote sets.
        let loose = table(&MeshRules { strict: false, ..r });
        assert!(!loose.chains.contains_key("mesh-strict"));
        assert!(!loose.sets.contains_key("mesh-remote-v4"));
        loose.validate().unwrap();
    }
}
