//! WireGuard peers as data: what the device has, what it should have, and
//! the smallest change between the two.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::SystemTime;

use ipnetwork::IpNetwork;

use crate::key::PublicKey;

/// A peer the mesh wants: one per other node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// The node it stands for (for logs and metric labels).
    pub node: String,
    pub key: PublicKey,
    pub endpoint: SocketAddr,
    pub allowed_ips: BTreeSet<IpNetwork>,
}

/// A peer as the device reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerState {
    pub key: Option<PublicKey>,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: BTreeSet<IpNetwork>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// One change to the device's peer list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    Add(PeerSpec),
    /// Endpoint and/or allowed IPs differ; the whole allowed-IP list is replaced.
    Update(PeerSpec),
    Remove(PublicKey),
}

impl fmt::Display for PeerChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ips = |s: &PeerSpec| {
            s.allowed_ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            PeerChange::Add(s) => write!(
                f,
                "add peer {} ({}) endpoint {} allowed {}",
                s.key,
                s.node,
                s.endpoint,
                ips(s)
            ),
            PeerChange::Update(s) => write!(
                f,
                "update peer {} ({}) endpoint {} allowed {}",
                s.key,
                s.node,
                s.endpoint,
                ips(s)
            ),
            PeerChange::Remove(k) => write!(f, "remove peer {k}"),
        }
    }
}

/// The changes that turn `current` into `desired`, in a stable order
/// (removals first, so an address range moving between peers never
/// overlaps for a moment).
///
/// `applied` is the endpoint each key had when the agent last set it. A
/// peer whose device endpoint differs from the wanted one only because
/// WireGuard roamed (the peer wrote from another address, and the device
/// follows it) is left alone: the endpoint is set again only when the wanted
/// endpoint itself changed since it was applied, or was never applied by
/// this process.
pub fn diff(
    current: &[PeerState],
    desired: &BTreeMap<PublicKey, PeerSpec>,
    applied: &BTreeMap<PublicKey, SocketAddr>,
) -> Vec<PeerChange> {
    let have: BTreeMap<PublicKey, &PeerState> = current.iter().filter_map(|p| p.key.map(|k| (k, p))).collect();
    let mut out: Vec<PeerChange> = have
        .keys()
        .filter(|k| !desired.contains_key(k))
        .map(|k| PeerChange::Remove(*k))
        .collect();
    for (k, want) in desired {
        match have.get(k) {
            None => out.push(PeerChange::Add(want.clone())),
            Some(got) => {
                let roamed = got.endpoint.is_some() && applied.get(k) == Some(&want.endpoint);
                let endpoint_differs = got.endpoint != Some(want.endpoint) && !roamed;
                if endpoint_differs || got.allowed_ips != want.allowed_ips {
                    out.push(PeerChange::Update(want.clone()))
                }
            }
        }
    }
    out
}

/// The changes from one wanted peer list to the next, without reading the
/// device (the event path: the device is read and diffed on every full pass).
pub fn diff_wanted(old: &BTreeMap<PublicKey, PeerSpec>, new: &BTreeMap<PublicKey, PeerSpec>) -> Vec<PeerChange> {
    let mut out: Vec<PeerChange> = old
        .keys()
        .filter(|k| !new.contains_key(k))
        .map(|k| PeerChange::Remove(*k))
        .collect();
    for (k, want) in new {
        match old.get(k) {
            None => out.push(PeerChange::Add(want.clone())),
            Some(had) if had.endpoint != want.endpoint || had.allowed_ips != want.allowed_ips => {
                out.push(PeerChange::Update(want.clone()))
            }
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    fn spec(n: u8, ep: &str, ips: &[&str]) -> PeerSpec {
        PeerSpec {
            node: format!("node-{n}"),
            key: key(n),
            endpoint: ep.parse().unwrap(),
            allowed_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    fn state(s: &PeerSpec) -> PeerState {
        PeerState {
            key: Some(s.key),
            endpoint: Some(s.endpoint),
            allowed_ips: s.allowed_ips.clone(),
            rx_bytes: 5,
            ..Default::default()
        }
    }

    fn want(specs: &[PeerSpec]) -> BTreeMap<PublicKey, PeerSpec> {
        specs.iter().map(|s| (s.key, s.clone())).collect()
    }

    #[test]
    fn table() {
        let a = spec(1, "172.30.0.11:51820", &["10.244.1.0/24", "fd00:10:244:1::/64"]);
        let b = spec(2, "172.30.0.12:51820", &["10.244.2.0/24"]);
        let b_moved = spec(2, "172.30.0.99:51820", &["10.244.2.0/24"]);
        let b_more = spec(2, "172.30.0.12:51820", &["10.244.2.0/24", "fd00:10:244:2::/64"]);
        // (name, device has, wanted, expected changes)
        type Case = (&'static str, Vec<PeerState>, Vec<PeerSpec>, Vec<PeerChange>);
        let cases: Vec<Case> = vec![
            ("empty", vec![], vec![], vec![]),
            (
                "up to date",
                vec![state(&a), state(&b)],
                vec![a.clone(), b.clone()],
                vec![],
            ),
            (
                "new node",
                vec![state(&a)],
                vec![a.clone(), b.clone()],
                vec![PeerChange::Add(b.clone())],
            ),
            (
                "deleted node",
                vec![state(&a), state(&b)],
                vec![a.clone()],
                vec![PeerChange::Remove(key(2))],
            ),
            (
                "endpoint moved",
                vec![state(&a), state(&b)],
                vec![a.clone(), b_moved.clone()],
                vec![PeerChange::Update(b_moved.clone())],
            ),
            (
                "cidr added",
                vec![state(&b)],
                vec![b_more.clone()],
                vec![PeerChange::Update(b_more.clone())],
            ),
            (
                "key changed: old removed, new added",
                vec![state(&a)],
                vec![PeerSpec {
                    key: key(9),
                    ..a.clone()
                }],
                vec![
                    PeerChange::Remove(key(1)),
                    PeerChange::Add(PeerSpec {
                        key: key(9),
                        ..a.clone()
                    }),
                ],
            ),
            (
                "a keyless entry from the device is ignored",
                vec![PeerState::default()],
                vec![],
                vec![],
            ),
        ];
        for (name, cur, des, expect) in cases {
            assert_eq!(diff(&cur, &want(&des), &BTreeMap::new()), expect, "{name}");
        }
    }

    #[test]
    fn a_roamed_endpoint_is_kept_until_the_wanted_one_changes() {
        let b = spec(2, "172.30.0.12:51820", &["10.244.2.0/24"]);
        let mut roamed = state(&b);
        roamed.endpoint = Some("172.30.0.99:40000".parse().unwrap());
        let applied: BTreeMap<PublicKey, SocketAddr> = [(key(2), b.endpoint)].into();
        // The device followed the peer to a new address: no change.
        assert_eq!(
            diff(std::slice::from_ref(&roamed), &want(std::slice::from_ref(&b)), &applied),
            vec![]
        );
        // Allowed IPs changed: the update carries the wanted endpoint.
        let b_more = spec(2, "172.30.0.12:51820", &["10.244.2.0/24", "fd00:10:244:2::/64"]);
        assert_eq!(
            diff(
                std::slice::from_ref(&roamed),
                &want(std::slice::from_ref(&b_more)),
                &applied
            ),
            vec![PeerChange::Update(b_more)]
        );
        // The Node now publishes another endpoint: it is applied.
        let b_moved = spec(2, "172.30.0.13:51820", &["10.244.2.0/24"]);
        assert_eq!(
            diff(
                std::slice::from_ref(&roamed),
                &want(std::slice::from_ref(&b_moved)),
                &applied
            ),
            vec![PeerChange::Update(b_moved)]
        );
        // Never applied by this process (a fresh agent): set once.
        assert_eq!(
            diff(&[roamed], &want(std::slice::from_ref(&b)), &BTreeMap::new()),
            vec![PeerChange::Update(b)]
        );
    }

    #[test]
    fn wanted_lists_diff_like_the_device() {
        let a = spec(1, "172.30.0.11:51820", &["10.244.1.0/24"]);
        let b = spec(2, "172.30.0.12:51820", &["10.244.2.0/24"]);
        let b_moved = spec(2, "172.30.0.99:51820", &["10.244.2.0/24"]);
        let c = spec(3, "172.30.0.13:51820", &["10.244.3.0/24"]);
        let old = want(&[a.clone(), b.clone()]);
        let new = want(&[b_moved.clone(), c.clone()]);
        assert_eq!(
            diff_wanted(&old, &new),
            vec![
                PeerChange::Remove(key(1)),
                PeerChange::Update(b_moved),
                PeerChange::Add(c)
            ]
        );
        assert_eq!(diff_wanted(&old, &old), vec![]);
    }

    #[test]
    fn ten_thousand_peers_diff_to_one_change() {
        let specs: Vec<PeerSpec> = (0..10_000u32)
            .map(|i| {
                let mut k = [0u8; 32];
                k[..4].copy_from_slice(&i.to_be_bytes());
                PeerSpec {
                    node: format!("n{i}"),
                    key: PublicKey(k),
                    endpoint: SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 51820)),
                    allowed_ips: [IpNetwork::V4(
                        ipnetwork::Ipv4Network::new([100, (i >> 8) as u8, i as u8, 0].into(), 24).unwrap(),
                    )]
                    .into(),
                }
            })
            .collect();
        let mut cur: Vec<PeerState> = specs.iter().map(state).collect();
        cur.pop();
        let changes = diff(&cur, &want(&specs), &BTreeMap::new());
        assert_eq!(changes, vec![PeerChange::Add(specs[9_999].clone())]);
    }
}
