//! The netlink operations of the mesh, each named after the `ip` command it
//! equals. Links and addresses reuse the plugin's [`weft_cni::nl::Nl`];
//! routes with a preferred source, deletions and the WireGuard link are here.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::InfoKind;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkWireguard, RouteMessageBuilder};
use weft_cni::nl::{Link, Nl, NlError};

use crate::plan::Route;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: NlError,
    },
    #[error("{op}: {msg}")]
    Invalid { op: String, msg: String },
}

impl NetError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetError::Netlink { source, .. } => source.errno(),
            NetError::Invalid { .. } => None,
        }
    }
}

type Result<T> = std::result::Result<T, NetError>;

fn nl_err(op: impl Into<String>) -> impl FnOnce(NlError) -> NetError {
    let op = op.into();
    move |source| NetError::Netlink { op, source }
}

fn rt_err(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let op = op.into();
    move |e| NetError::Netlink {
        op,
        source: NlError::from(e),
    }
}

/// Two rtnetlink sockets in the agent's netns (the plugin's helper and a raw handle).
pub struct Net {
    nl: Nl,
    handle: Handle,
}

impl Net {
    pub fn here() -> Result<Self> {
        let nl = Nl::here().map_err(nl_err("open rtnetlink socket"))?;
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetError::Netlink {
            op: "open rtnetlink socket".into(),
            source: NlError::from(e),
        })?;
        tokio::spawn(conn);
        Ok(Self { nl, handle })
    }

    /// `ip link show NAME`
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        self.nl.link(name).await.map_err(nl_err(format!("ip link show {name}")))
    }

    /// `ip link del NAME`; `false` when there was none.
    pub async fn del_link(&self, name: &str) -> Result<bool> {
        self.nl
            .del_link(name)
            .await
            .map_err(nl_err(format!("ip link del {name}")))
    }

    /// `ip link add NAME type wireguard` (needs the kernel module).
    pub async fn add_wireguard(&self, name: &str) -> Result<()> {
        self.handle
            .link()
            .add(LinkWireguard::new(name).build())
            .execute()
            .await
            .map_err(rt_err(format!("ip link add {name} type wireguard")))
    }

    /// `ip link set dev INDEX mtu MTU up`
    pub async fn set_mtu_up(&self, index: u32, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(rt_err(format!("ip link set dev {index} mtu {mtu} up")))
    }

    /// `ip addr show dev INDEX`
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>> {
        self.nl.addresses(index).await.map_err(nl_err("ip addr show"))
    }

    /// `ip addr add ADDR dev INDEX [nodad]`
    pub async fn add_address(&self, index: u32, addr: IpNetwork) -> Result<()> {
        self.nl
            .add_address(index, addr)
            .await
            .map_err(nl_err(format!("ip addr add {addr}")))
    }

    /// `ip addr del ADDR dev INDEX`
    pub async fn del_address(&self, index: u32, addr: IpNetwork) -> Result<()> {
        let op = format!("ip addr del {addr}");
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(rt_err(op.clone()))?;
        for m in msgs {
            let matches = m.header.prefix_len == addr.prefix()
                && m.attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Address(ip) if *ip == addr.ip()));
            if matches {
                self.handle
                    .address()
                    .del(m)
                    .execute()
                    .await
                    .map_err(rt_err(op.clone()))?;
            }
        }
        Ok(())
    }

    /// The MTU of the link holding `ip` (the underlay), if any.
    pub async fn mtu_of_link_with(&self, ip: IpAddr) -> Result<Option<u32>> {
        let links = self.nl.links().await.map_err(nl_err("ip link show"))?;
        for l in links {
            let addrs = self.addresses(l.index).await?;
            if addrs.iter().any(|a| a.ip() == ip) {
                return Ok(Some(l.mtu));
            }
        }
        Ok(None)
    }

    /// Routes of the main table through link `index` that were not made by
    /// the kernel (`ip route show dev X proto static`, both families).
    pub async fn routes_via(&self, index: u32) -> Result<Vec<Route>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            let msgs: Vec<RouteMessage> = self
                .handle
                .route()
                .get(msg)
                .execute()
                .try_collect()
                .await
                .map_err(rt_err("ip route show"))?;
            out.extend(msgs.iter().filter_map(|m| ours(m, index)));
        }
        Ok(out)
    }

    fn route_msg(r: &Route, index: u32) -> std::result::Result<RouteMessage, String> {
        let b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.dst.ip(), r.dst.prefix())
            .map_err(|e| e.to_string())?;
        let b = match r.src {
            Some(s) => b.pref_source(s).map_err(|e| e.to_string())?,
            None => b,
        };
        Ok(b.output_interface(index).protocol(RouteProtocol::Static).build())
    }

    /// `ip route add DST dev INDEX [src SRC] proto static`
    pub async fn add_route(&self, r: &Route, index: u32) -> Result<()> {
        let op = format!("ip route add {} dev {index} src {:?}", r.dst, r.src);
        let msg = Self::route_msg(r, index).map_err(|msg| NetError::Invalid { op: op.clone(), msg })?;
        match self.handle.route().add(msg).execute().await.map_err(rt_err(op)) {
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// `ip route del DST dev INDEX`
    pub async fn del_route(&self, r: &Route, index: u32) -> Result<()> {
        let op = format!("ip route del {} dev {index}", r.dst);
        let msg = Self::route_msg(r, index).map_err(|msg| NetError::Invalid { op: op.clone(), msg })?;
        match self.handle.route().del(msg).execute().await.map_err(rt_err(op)) {
            Err(e) if e.errno() == Some(libc::ESRCH) => Ok(()),
            other => other,
        }
    }
}

/// Is `kind` a WireGuard link?
pub fn is_wireguard(l: &Link) -> bool {
    l.kind == Some(InfoKind::Wireguard)
}

fn addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

/// A main-table unicast route through `index` that the kernel did not make.
fn ours(m: &RouteMessage, index: u32) -> Option<Route> {
    if m.header.protocol == RouteProtocol::Kernel || m.header.kind != RouteType::Unicast {
        return None;
    }
    let mut dst = None;
    let mut src = None;
    let mut oif = None;
    let mut table = u32::from(m.header.table);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = addr(d),
            RouteAttribute::PrefSource(s) => src = addr(s),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    if oif != Some(index) || table != 254 {
        return None;
    }
    let dst = IpNetwork::new(dst?, m.header.destination_prefix_length).ok()?;
    Some(Route { dst, src })
}
