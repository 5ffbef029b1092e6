//! nftables for the mesh: masquerade pods' traffic to destinations outside
//! the cluster, and clamp the TCP MSS of connections through the tunnel.
//!
//! Everything lives in table `inet weft`, in chains and sets whose names
//! start with `mesh-`; other chains of that table (Service rules) and every
//! other table are never touched. The whole change is one `nft -f -` batch,
//! which the kernel applies atomically. The batch carries a hash of the
//! wanted state in a rule comment, so a restarted agent sees "up to date"
//! without parsing nft's output.

use std::fmt::Write as _;
use std::process::Stdio;

use ipnetwork::IpNetwork;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

pub const TABLE: &str = "weft";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("run nft: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft {what} failed: {stderr}")]
    Failed { what: &'static str, stderr: String },
}

/// What the mesh's rules depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshRules<'a> {
    pub wg_iface: &'a str,
    pub pod_cidrs: &'a [IpNetwork],
    pub cluster_cidrs: &'a [IpNetwork],
}

fn elements(cidrs: &[IpNetwork], v4: bool) -> Vec<String> {
    cidrs
        .iter()
        .filter(|c| c.is_ipv4() == v4)
        .map(ToString::to_string)
        .collect()
}

/// The rule lines (without the state marker).
fn body(r: &MeshRules) -> String {
    let mut s = String::new();
    for (fam, v4, ty) in [("v4", true, "ipv4_addr"), ("v6", false, "ipv6_addr")] {
        for (set, cidrs) in [("pods", r.pod_cidrs), ("cluster", r.cluster_cidrs)] {
            let name = format!("mesh-{set}-{fam}");
            let _ = writeln!(s, "add set inet {TABLE} {name} {{ type {ty}; flags interval; }}");
            let _ = writeln!(s, "flush set inet {TABLE} {name}");
            let els = elements(cidrs, v4);
            if !els.is_empty() {
                let _ = writeln!(s, "add element inet {TABLE} {name} {{ {} }}", els.join(", "));
            }
        }
    }
    let _ = writeln!(
        s,
        "add chain inet {TABLE} mesh-postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}"
    );
    let _ = writeln!(
        s,
        "add chain inet {TABLE} mesh-forward {{ type filter hook forward priority mangle; policy accept; }}"
    );
    let _ = writeln!(s, "flush chain inet {TABLE} mesh-postrouting");
    let _ = writeln!(s, "flush chain inet {TABLE} mesh-forward");
    // Pods → outside the cluster: masquerade to the node's address. Pod → pod
    // and pod → anything in the cluster CIDRs keeps the pod's address.
    for (ip, fam) in [("ip", "v4"), ("ip6", "v6")] {
        let _ = writeln!(
            s,
            "add rule inet {TABLE} mesh-postrouting {ip} saddr @mesh-pods-{fam} {ip} daddr != @mesh-cluster-{fam} masquerade"
        );
    }
    // TCP through the tunnel: MSS from the route's MTU, so a peer with a
    // larger MTU (or a host socket that missed the device MTU) cannot send
    // segments that only ICMP "too big" could save.
    for dir in ["oifname", "iifname"] {
        let _ = writeln!(
            s,
            "add rule inet {TABLE} mesh-forward {dir} \"{}\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu",
            r.wg_iface
        );
    }
    s
}

/// A short hash of the wanted state.
pub fn state_hash(r: &MeshRules) -> String {
    let d = Sha256::digest(body(r).as_bytes());
    hex::encode(&d[..8])
}

fn marker(hash: &str) -> String {
    format!("weft-mesh {hash}")
}

/// The whole batch: the table (created if missing), our sets and chains
/// re-filled, and the state marker.
pub fn render(r: &MeshRules) -> String {
    let mut s = format!("add table inet {TABLE}\n");
    s.push_str(&body(r));
    let _ = writeln!(
        s,
        "insert rule inet {TABLE} mesh-forward counter comment \"{}\"",
        marker(&state_hash(r))
    );
    s
}

async fn nft(args: &[&str], stdin: Option<&str>, what: &'static str) -> Result<String, NftError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await.map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().await.map_err(NftError::Spawn)?;
    if !out.status.success() {
        return Err(NftError::Failed {
            what,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Apply the rules unless the kernel already has exactly them; returns
/// whether anything changed.
pub async fn apply(r: &MeshRules<'_>) -> Result<bool, NftError> {
    let want = marker(&state_hash(r));
    // `nft list chain inet weft mesh-forward`; missing table/chain = not applied.
    if let Ok(text) = nft(&["list", "chain", "inet", TABLE, "mesh-forward"], None, "list").await {
        if text.contains(&want) {
            return Ok(false);
        }
    }
    nft(&["-f", "-"], Some(&render(r)), "apply batch").await?;
    Ok(true)
}

/// `nft delete table inet weft`; a missing table is fine.
pub async fn delete_table() -> Result<bool, NftError> {
    match nft(&["delete", "table", "inet", TABLE], None, "delete table").await {
        Ok(_) => Ok(true),
        Err(NftError::Failed { stderr, .. }) if stderr.contains("No such file or directory") => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden() {
        let pods = ["10.244.1.0/24".parse().unwrap(), "fd00:10:244:1::/64".parse().unwrap()];
        let cluster = ["10.244.0.0/16".parse().unwrap()];
        let r = MeshRules {
            wg_iface: "weft-wg",
            pod_cidrs: &pods,
            cluster_cidrs: &cluster,
        };
        let text = render(&r);
        let want = format!(
            "add table inet weft
add set inet weft mesh-pods-v4 {{ type ipv4_addr; flags interval; }}
flush set inet weft mesh-pods-v4
add element inet weft mesh-pods-v4 {{ 10.244.1.0/24 }}
add set inet weft mesh-cluster-v4 {{ type ipv4_addr; flags interval; }}
flush set inet weft mesh-cluster-v4
add element inet weft mesh-cluster-v4 {{ 10.244.0.0/16 }}
add set inet weft mesh-pods-v6 {{ type ipv6_addr; flags interval; }}
flush set inet weft mesh-pods-v6
add element inet weft mesh-pods-v6 {{ fd00:10:244:1::/64 }}
add set inet weft mesh-cluster-v6 {{ type ipv6_addr; flags interval; }}
flush set inet weft mesh-cluster-v6
add chain inet weft mesh-postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
add chain inet weft mesh-forward {{ type filter hook forward priority mangle; policy accept; }}
flush chain inet weft mesh-postrouting
flush chain inet weft mesh-forward
add rule inet weft mesh-postrouting ip saddr @mesh-pods-v4 ip daddr != @mesh-cluster-v4 masquerade
add rule inet weft mesh-postrouting ip6 saddr @mesh-pods-v6 ip6 daddr != @mesh-cluster-v6 masquerade
add rule inet weft mesh-forward oifname \"weft-wg\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu
add rule inet weft mesh-forward iifname \"weft-wg\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu
insert rule inet weft mesh-forward counter comment \"weft-mesh {}\"
",
            state_hash(&r)
        );
        assert_eq!(text, want);
    }

    #[test]
    fn hash_follows_content() {
        let a: Vec<IpNetwork> = vec!["10.244.1.0/24".parse().unwrap()];
        let b: Vec<IpNetwork> = vec!["10.244.2.0/24".parse().unwrap()];
        let hash = |p: &[IpNetwork]| {
            state_hash(&MeshRules {
                wg_iface: "weft-wg",
                pod_cidrs: p,
                cluster_cidrs: p,
            })
        };
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a), hash(&a));
    }
}
