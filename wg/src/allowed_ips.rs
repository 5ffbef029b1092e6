//! WireGuard's cryptokey routing table: allowed-IP prefixes → peer, looked up by
//! longest prefix match on a packet's destination (sending) and checked against
//! its source (receiving).
//!
//! One hash map per prefix length, probed from the longest length present:
//! a cluster has a handful of distinct lengths (/32 node addresses, /24 pod
//! CIDRs), so a lookup is a few hash probes, with no locking (the table is
//! part of an immutable snapshot).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid prefix {0:?}")]
pub struct CidrError(String);

/// An IP prefix with the host bits cleared (`10.1.2.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

fn max_len(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// The address as a u128 with the host bits beyond `len` cleared.
fn masked_bits(addr: &IpAddr, len: u8) -> u128 {
    let (bits, width) = match addr {
        IpAddr::V4(a) => (u32::from(*a) as u128, 32u32),
        IpAddr::V6(a) => (u128::from(*a), 128u32),
    };
    let host = width - u32::from(len);
    if host >= 128 {
        0
    } else {
        (bits >> host) << host
    }
}

impl Cidr {
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, CidrError> {
        if len > max_len(&addr) {
            return Err(CidrError(format!("{addr}/{len}")));
        }
        let bits = masked_bits(&addr, len);
        let addr = match addr {
            IpAddr::V4(_) => IpAddr::V4((bits as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(bits.into()),
        };
        Ok(Cidr { addr, len })
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CidrError(s.to_string());
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => {
                let addr: IpAddr = a.parse().map_err(|_| bad())?;
                (addr, l.parse().map_err(|_| bad())?)
            }
            None => {
                let addr: IpAddr = s.parse().map_err(|_| bad())?;
                (addr, max_len(&addr))
            }
        };
        Cidr::new(addr, len).map_err(|_| bad())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Prefix → value, for one address family.
#[derive(Debug, Clone)]
struct Family<V> {
    /// (prefix length, masked address → value), longest length first.
    by_len: Vec<(u8, HashMap<u128, V>)>,
}

impl<V: Clone> Family<V> {
    fn new() -> Self {
        Family { by_len: Vec::new() }
    }

    fn insert(&mut self, c: &Cidr, v: V) {
        let i = match self.by_len.iter().position(|(l, _)| *l <= c.len) {
            Some(i) if self.by_len[i].0 == c.len => i,
            Some(i) => {
                self.by_len.insert(i, (c.len, HashMap::new()));
                i
            }
            None => {
                self.by_len.push((c.len, HashMap::new()));
                self.by_len.len() - 1
            }
        };
        self.by_len[i].1.insert(masked_bits(&c.addr, c.len), v);
    }

    fn lookup(&self, addr: &IpAddr) -> Option<&V> {
        self.by_len.iter().find_map(|(len, m)| m.get(&masked_bits(addr, *len)))
    }
}

/// The routing table of a device.
#[derive(Debug, Clone)]
pub struct AllowedIps<V> {
    v4: Family<V>,
    v6: Family<V>,
}

impl<V: Clone> Default for AllowedIps<V> {
    fn default() -> Self {
        AllowedIps {
            v4: Family::new(),
            v6: Family::new(),
        }
    }
}

impl<V: Clone> AllowedIps<V> {
    /// Add `c` → `v`; a prefix already present moves to `v` (as in WireGuard,
    /// a prefix belongs to at most one peer).
    pub fn insert(&mut self, c: &Cidr, v: V) {
        match c.addr {
            IpAddr::V4(_) => self.v4.insert(c, v),
            IpAddr::V6(_) => self.v6.insert(c, v),
        }
    }

    /// The value of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: &IpAddr) -> Option<&V> {
        match addr {
            IpAddr::V4(_) => self.v4.lookup(addr),
            IpAddr::V6(_) => self.v6.lookup(addr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_are_parsed_masked_and_printed() {
        let cases = [
            ("10.1.2.3/24", "10.1.2.0/24"),
            ("10.1.2.3", "10.1.2.3/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("fd00::1/64", "fd00::/64"),
            ("::/0", "::/0"),
            ("fd00::1", "fd00::1/128"),
        ];
        for (input, want) in cases {
            assert_eq!(c(input).to_string(), want, "{input}");
        }
        for bad in ["10.0.0.0/33", "fd00::/129", "nonsense/8", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lookup_takes_the_longest_matching_prefix() {
        let mut t = AllowedIps::default();
        t.insert(&c("0.0.0.0/0"), "default");
        t.insert(&c("10.0.0.0/8"), "ten");
        t.insert(&c("10.1.0.0/16"), "ten-one");
        t.insert(&c("10.1.2.7/32"), "host");
        t.insert(&c("fd00::/64"), "v6");
        let cases = [
            ("10.1.2.7", Some("host")),
            ("10.1.2.8", Some("ten-one")),
            ("10.2.0.1", Some("ten")),
            ("192.168.0.1", Some("default")),
            ("fd00::5", Some("v6")),
            ("fd01::5", None),
        ];
        for (addr, want) in cases {
            assert_eq!(t.lookup(&addr.parse().unwrap()).copied(), want, "{addr}");
        }
    }

    #[test]
    fn a_prefix_inserted_twice_belongs_to_the_last_value() {
        let mut t = AllowedIps::default();
        t.insert(&c("10.244.1.0/24"), 1);
        t.insert(&c("10.244.1.0/24"), 2);
        assert_eq!(t.lookup(&"10.244.1.9".parse().unwrap()), Some(&2));
    }
}
