//! Routes of the main table: `ip route show|add|del`.

use std::fmt;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType, RouteVia};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

use crate::error::op;
use crate::{Cause, Error, Handle, Result};

/// The main routing table (`ip route` without `table`).
pub const MAIN_TABLE: u32 = 254;

/// A unicast route of the main table, as weft reads and writes them:
/// `ip route add DST [via GW] [dev OIF] [src SRC] proto PROTO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    /// The output link's index.
    pub oif: Option<u32>,
    /// The preferred source address (`src`).
    pub src: Option<IpAddr>,
    /// Who made it: `static` for weft's own (the default), `kernel` for a
    /// subnet route the kernel adds with an address.
    pub proto: RouteProtocol,
}

impl Route {
    /// A static route to `dst`; add a gateway, a link or a source with the
    /// fields or [`Self::via`], [`Self::dev`], [`Self::src`].
    pub fn to(dst: IpNetwork) -> Self {
        Self {
            dst,
            gw: None,
            oif: None,
            src: None,
            proto: RouteProtocol::Static,
        }
    }

    pub fn via(mut self, gw: Option<IpAddr>) -> Self {
        self.gw = gw;
        self
    }

    pub fn dev(mut self, oif: u32) -> Self {
        self.oif = Some(oif);
        self
    }

    pub fn src(mut self, src: Option<IpAddr>) -> Self {
        self.src = src;
        self
    }

    /// The request adding this route (pure). Refused when the source's
    /// family differs from the destination's (an IPv4 route may have an
    /// IPv6 gateway: RFC 5549, sent as `RTA_VIA`).
    pub fn to_message(&self) -> Result<RouteMessage> {
        let bad = |e: &dyn fmt::Display| Error::new(format!("ip route add {self}"), Cause::Invalid(e.to_string()));
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.dst.network(), self.dst.prefix())
            .map_err(|e| bad(&e))?;
        if let Some(g) = self.gw {
            b = b.gateway(g).map_err(|e| bad(&e))?;
        }
        if let Some(s) = self.src {
            b = b.pref_source(s).map_err(|e| bad(&e))?;
        }
        if let Some(i) = self.oif {
            b = b.output_interface(i);
        }
        Ok(b.protocol(self.proto).table_id(MAIN_TABLE).build())
    }

    /// Read a kernel route message (pure): `None` unless it is a unicast
    /// route of the main table.
    pub fn from_message(m: &RouteMessage) -> Option<Self> {
        if m.header.kind != RouteType::Unicast {
            return None;
        }
        let mut r = Route::to(default_of(m.header.address_family)?);
        r.proto = m.header.protocol;
        let mut dst = None;
        let mut table = u32::from(m.header.table);
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(d) => dst = ip_of(d),
                RouteAttribute::Gateway(g) => r.gw = ip_of(g),
                // An IPv4 route via an IPv6 gateway (RFC 5549).
                RouteAttribute::Via(RouteVia::Inet6(g)) => r.gw = Some(IpAddr::V6(*g)),
                RouteAttribute::Via(RouteVia::Inet(g)) => r.gw = Some(IpAddr::V4(*g)),
                RouteAttribute::PrefSource(s) => r.src = ip_of(s),
                RouteAttribute::Oif(i) => r.oif = Some(*i),
                RouteAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        if table != MAIN_TABLE {
            return None;
        }
        if let Some(d) = dst {
            r.dst = IpNetwork::new(d, m.header.destination_prefix_length).ok()?;
        }
        Some(r)
    }
}

/// `ip route add` syntax: `10.244.2.0/24 via 10.0.0.2 dev 5 src 10.0.0.1 proto static`.
impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(g) = self.gw {
            write!(f, " via {g}")?;
        }
        if let Some(i) = self.oif {
            write!(f, " dev {i}")?;
        }
        if let Some(s) = self.src {
            write!(f, " src {s}")?;
        }
        match self.proto {
            RouteProtocol::Static => write!(f, " proto static"),
            RouteProtocol::Kernel => write!(f, " proto kernel"),
            RouteProtocol::Boot => write!(f, " proto boot"),
            other => write!(f, " proto {}", u8::from(other)),
        }
    }
}

/// The route without a destination attribute: the family's default route.
fn default_of(family: AddressFamily) -> Option<IpNetwork> {
    match family {
        AddressFamily::Inet => "0.0.0.0/0".parse().ok(),
        AddressFamily::Inet6 => "::/0".parse().ok(),
        _ => None,
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

impl Handle {
    /// `ip route show` and `ip -6 route show`: the main table's unicast routes.
    pub async fn routes(&self) -> Result<Vec<Route>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            let msgs: Vec<RouteMessage> = self.inner.route().get(msg).execute().try_collect().await.map_err(op(
                if family == AddressFamily::Inet {
                    "ip route show"
                } else {
                    "ip -6 route show"
                },
            ))?;
            out.extend(msgs.iter().filter_map(Route::from_message));
        }
        Ok(out)
    }

    /// The routes through link `index` that the kernel did not make
    /// (`ip route show dev INDEX` without `proto kernel`, both families).
    pub async fn routes_via(&self, index: u32) -> Result<Vec<Route>> {
        Ok(self
            .routes()
            .await?
            .into_iter()
            .filter(|r| r.oif == Some(index) && r.proto != RouteProtocol::Kernel)
            .collect())
    }

    /// `ip route add ROUTE`; the same route already there is fine.
    pub async fn add_route(&self, r: &Route) -> Result<()> {
        let msg = r.to_message()?;
        match self
            .inner
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(op(format!("ip route add {r}")))
        {
            Err(e) if e.is(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// `ip route replace ROUTE`: whatever route had this destination (with
    /// the same metric) in the main table is replaced by this one.
    pub async fn replace_route(&self, r: &Route) -> Result<()> {
        let msg = r.to_message()?;
        self.inner
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(op(format!("ip route replace {r}")))
    }

    /// `ip route del ROUTE`; a route not there is fine.
    pub async fn del_route(&self, r: &Route) -> Result<()> {
        let msg = r.to_message()?;
        match self
            .inner
            .route()
            .del(msg)
            .execute()
            .await
            .map_err(op(format!("ip route del {r}")))
        {
            Err(e) if e.is(libc::ESRCH) => Ok(()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn a_route_round_trips_through_its_message() {
        let routes = [
            Route::to(net("10.244.2.0/24"))
                .dev(5)
                .src(Some("10.0.0.1".parse().unwrap())),
            Route::to(net("0.0.0.0/0"))
                .via(Some("10.77.0.1".parse().unwrap()))
                .dev(2),
            Route::to(net("::/0")).via(Some("fd00:77::1".parse().unwrap())).dev(2),
            Route::to(net("fd00:10:244:2::/64")).dev(9),
        ];
        for r in routes {
            let m = r.to_message().unwrap();
            assert_eq!(m.header.protocol, RouteProtocol::Static);
            assert_eq!(Route::from_message(&m), Some(r.clone()), "{r}");
        }
    }

    #[test]
    fn a_source_of_another_family_is_refused_naming_the_route() {
        let r = Route::to(net("10.0.0.0/8"))
            .dev(1)
            .src(Some("fd00::1".parse().unwrap()));
        let e = r.to_message().unwrap_err();
        assert_eq!(e.op(), "ip route add 10.0.0.0/8 dev 1 src fd00::1 proto static");
        assert!(matches!(e.cause(), Cause::Invalid(_)));
        // IPv4 via an IPv6 gateway is a real route (RFC 5549).
        let r = Route::to(net("10.0.0.0/8"))
            .via(Some("fd00::1".parse().unwrap()))
            .dev(1);
        assert_eq!(Route::from_message(&r.to_message().unwrap()), Some(r));
    }

    #[test]
    fn only_main_table_unicast_routes_are_read() {
        let base = Route::to(net("10.1.0.0/16")).dev(3).to_message().unwrap();
        let mut local = base.clone();
        local.attributes.retain(|a| !matches!(a, RouteAttribute::Table(_)));
        local.header.table = 255;
        assert_eq!(Route::from_message(&local), None, "the local table");
        let mut other = base.clone();
        other.header.kind = RouteType::BlackHole;
        assert_eq!(Route::from_message(&other), None, "not unicast");
        let mut kernel = base.clone();
        kernel.header.protocol = RouteProtocol::Kernel;
        assert_eq!(Route::from_message(&kernel).unwrap().proto, RouteProtocol::Kernel);
        assert_eq!(
            Route::from_message(&kernel).unwrap().to_string(),
            "10.1.0.0/16 dev 3 proto kernel"
        );
    }
}
