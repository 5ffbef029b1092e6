//! Address ranges as integer intervals, the same arithmetic for IPv4 and IPv6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use crate::config::RangeConf;

/// An address as a number, family kept alongside.
pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

pub(crate) fn from_u128(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// One range: a subnet, the interval `[start, end]` handed out, and the
/// gateway (never handed out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    start: u128,
    end: u128,
    pub gateway: IpAddr,
}

impl Range {
    /// Defaults as host-local's: gateway = network + 1; start = the first
    /// address after the network and the gateway; end = broadcast - 1 for IPv4, the
    /// last address for IPv6. The network address is never handed out.
    pub fn new(c: &RangeConf) -> Result<Self, String> {
        let subnet = IpNetwork::new(c.subnet.network(), c.subnet.prefix()).map_err(|e| e.to_string())?;
        let v4 = subnet.is_ipv4();
        let net = to_u128(subnet.network());
        let bits = if v4 { 32 } else { 128 };
        let host_bits = bits - subnet.prefix() as u32;
        if subnet.prefix() == 0 {
            // Every address: its gateway would claim the whole address
            // space on the bridge (the node's default route included).
            return Err(format!("subnet {subnet} is every address; give the node's pod CIDR"));
        }
        if host_bits < 2 {
            return Err(format!("subnet {subnet} has no room for a gateway and a pod"));
        }
        let last = if host_bits == 128 {
            u128::MAX
        } else {
            net + ((1u128 << host_bits) - 1)
        };
        let max = if v4 { last - 1 } else { last };
        let inside = |field: &str, ip: IpAddr| -> Result<u128, String> {
            if ip.is_ipv4() != v4 || !subnet.contains(ip) {
                return Err(format!("{field} {ip} is outside subnet {subnet}"));
            }
            Ok(to_u128(ip))
        };
        let gateway = match c.gateway {
            Some(ip) => {
                inside("gateway", ip)?;
                ip
            }
            None => from_u128(net + 1, v4),
        };
        let start = match c.range_start {
            Some(ip) => inside("rangeStart", ip)?,
            // The first address after the network, or after the gateway
            // when the gateway is that first address.
            None if to_u128(gateway) == net + 1 => net + 2,
            None => net + 1,
        };
        let end = match c.range_end {
            Some(ip) => inside("rangeEnd", ip)?,
            None => max,
        };
        if start == net || (v4 && end == last) {
            return Err(format!(
                "range {}-{} includes the network or broadcast address",
                from_u128(start, v4),
                from_u128(end, v4)
            ));
        }
        if start > end {
            return Err(format!(
                "rangeStart {} is after rangeEnd {}",
                from_u128(start, v4),
                from_u128(end, v4)
            ));
        }
        Ok(Self {
            subnet,
            start,
            end,
            gateway,
        })
    }

    pub fn is_ipv4(&self) -> bool {
        self.subnet.is_ipv4()
    }

    pub fn first(&self) -> IpAddr {
        from_u128(self.start, self.is_ipv4())
    }

    pub fn last(&self) -> IpAddr {
        from_u128(self.end, self.is_ipv4())
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && (self.start..=self.end).contains(&to_u128(ip))
    }

    /// How many addresses this range can hand out.
    pub fn usable(&self) -> u128 {
        let size = self.end - self.start + 1;
        if self.contains(self.gateway) {
            size - 1
        } else {
            size
        }
    }

    fn overlaps(&self, o: &Range) -> bool {
        self.is_ipv4() == o.is_ipv4() && self.start <= o.end && o.start <= self.end
    }
}

/// Ranges of one family from which one address is handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    pub ranges: Vec<Range>,
}

impl RangeSet {
    pub fn new(ranges: Vec<Range>) -> Result<Self, String> {
        let v4 = ranges[0].is_ipv4();
        if ranges.iter().any(|r| r.is_ipv4() != v4) {
            return Err("a range set mixes IPv4 and IPv6".into());
        }
        for (i, a) in ranges.iter().enumerate() {
            if ranges[i + 1..].iter().any(|b| a.overlaps(b)) {
                return Err(format!("range {i} overlaps another range of the set"));
            }
        }
        Ok(Self { ranges })
    }

    pub fn is_ipv4(&self) -> bool {
        self.ranges[0].is_ipv4()
    }

    pub fn overlaps(&self, o: &RangeSet) -> bool {
        self.ranges.iter().any(|a| o.ranges.iter().any(|b| a.overlaps(b)))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }

    /// The range an address belongs to.
    pub fn range_of(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    pub fn usable(&self) -> u128 {
        self.ranges.iter().map(Range::usable).sum()
    }

    pub fn describe(&self) -> String {
        self.ranges
            .iter()
            .map(|r| format!("{}-{}", r.first(), r.last()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The next free address after `last` (round robin), skipping gateways
    /// and what `taken` says is in use. Visits at most `taken`-count + number
    /// of gateways + 1 candidates before it finds one, so a nearly full /24
    /// or a sparse /64 costs the same handful of lookups per allocation.
    pub fn next_free(&self, last: Option<IpAddr>, taken: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
        // Position of `last`: (range index, numeric address).
        let (mut ri, mut n) = match last.and_then(|ip| {
            self.ranges
                .iter()
                .position(|r| r.contains(ip))
                .map(|i| (i, to_u128(ip)))
        }) {
            Some((i, n)) => (i, n),
            None => (self.ranges.len() - 1, self.ranges[self.ranges.len() - 1].end),
        };
        let v4 = self.is_ipv4();
        // Bounded walk: the whole set once at the most, so an exhausted set
        // ends; callers check capacity first so this stays short in practice.
        let mut budget = self.usable() + self.ranges.len() as u128 + 1;
        while budget > 0 {
            budget -= 1;
            let r = &self.ranges[ri];
            if n >= r.end {
                ri = (ri + 1) % self.ranges.len();
                n = self.ranges[ri].start;
            } else {
                n += 1;
            }
            let ip = from_u128(n, v4);
            if ip != self.ranges[ri].gateway && !taken(ip) {
                return Some(ip);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn set(specs: &[(&str, Option<&str>, Option<&str>)]) -> RangeSet {
        RangeSet::new(
            specs
                .iter()
                .map(|(s, a, b)| {
                    Range::new(&RangeConf {
                        subnet: s.parse().unwrap(),
                        range_start: a.map(|x| x.parse().unwrap()),
                        range_end: b.map(|x| x.parse().unwrap()),
                        gateway: None,
                    })
                    .unwrap()
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn ipv4_defaults_skip_network_gateway_broadcast() {
        let s = set(&[("10.0.0.0/29", None, None)]);
        // .0 network, .1 gateway, .7 broadcast: .2 to .6 usable.
        assert_eq!(s.usable(), 5);
        let mut taken = HashSet::new();
        let mut last = None;
        let mut got = vec![];
        while let Some(ip) = s.next_free(last, |ip| taken.contains(&ip)) {
            taken.insert(ip);
            last = Some(ip);
            got.push(ip.to_string());
        }
        assert_eq!(got, ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]);
    }

    #[test]
    fn round_robin_wraps_across_ranges() {
        let s = set(&[
            ("10.0.0.0/24", Some("10.0.0.10"), Some("10.0.0.11")),
            ("10.0.1.0/24", Some("10.0.1.10"), Some("10.0.1.10")),
        ]);
        let last = Some("10.0.1.10".parse().unwrap());
        assert_eq!(s.next_free(last, |_| false).unwrap().to_string(), "10.0.0.10");
        let last = Some("10.0.0.11".parse().unwrap());
        assert_eq!(s.next_free(last, |_| false).unwrap().to_string(), "10.0.1.10");
    }

    #[test]
    fn ipv6_uses_last_address_and_is_sparse() {
        let s = set(&[("fd00::/64", None, None)]);
        assert_eq!(s.ranges[0].last().to_string(), "fd00::ffff:ffff:ffff:ffff");
        assert_eq!(s.next_free(None, |_| false).unwrap().to_string(), "fd00::2");
    }

    #[test]
    fn exhausted_returns_none() {
        let s = set(&[("10.0.0.0/30", None, None)]);
        assert_eq!(s.usable(), 1);
        assert!(s.next_free(None, |_| true).is_none());
    }
}
