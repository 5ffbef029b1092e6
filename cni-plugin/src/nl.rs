//! Netlink, as the few operations weft needs, each named after the `ip`
//! command it equals. One [`Nl`] is one rtnetlink socket, bound to the netns
//! it was opened in.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::netns;

/// A netlink failure, with the errno when the kernel sent one.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NlError(String, Option<i32>);

impl NlError {
    pub fn errno(&self) -> Option<i32> {
        self.1
    }

    fn is(&self, errno: i32) -> bool {
        self.1 == Some(errno)
    }
}

impl From<rtnetlink::Error> for NlError {
    fn from(e: rtnetlink::Error) -> Self {
        match &e {
            rtnetlink::Error::NetlinkError(m) => {
                let io = m.to_io();
                NlError(io.to_string(), io.raw_os_error())
            }
            _ => NlError(e.to_string(), None),
        }
    }
}

impl From<std::io::Error> for NlError {
    fn from(e: std::io::Error) -> Self {
        NlError(e.to_string(), e.raw_os_error())
    }
}

pub type NlResult<T> = Result<T, NlError>;

/// A link as weft looks at it.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    pub controller: Option<u32>,
    pub kind: Option<InfoKind>,
    pub hairpin: Option<bool>,
}

impl Link {
    fn from_msg(m: &LinkMessage) -> Self {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: String::new(),
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
            controller: None,
            kind: None,
            hairpin: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(mac) => l.mac = format_mac(mac),
                LinkAttribute::Mtu(v) => l.mtu = *v,
                LinkAttribute::Controller(c) => l.controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(k) => l.kind = Some(k.clone()),
                            LinkInfo::PortData(InfoPortData::BridgePort(p)) => {
                                l.hairpin = p.iter().find_map(|x| match x {
                                    InfoBridgePort::HairpinMode(h) => Some(*h),
                                    _ => None,
                                })
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }
}

pub fn format_mac(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

/// A route as weft compares them: destination and gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
}

/// One rtnetlink socket, served by a task on the current tokio runtime.
pub struct Nl {
    handle: Handle,
}

impl Nl {
    /// A socket in the netns of the calling thread.
    pub fn here() -> NlResult<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// A socket inside `ns` (opened on a short-lived thread, see [`netns`]).
    pub fn in_netns(ns: &File) -> NlResult<Self> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = netns::run_in(ns, || {
            // The socket registers with this runtime's reactor.
            let _guard = rt.enter();
            rtnetlink::new_connection()
        })?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// `ip link show NAME`; `None` when there is no such link.
    pub async fn link(&self, name: &str) -> NlResult<Option<Link>> {
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(Link::from_msg)),
            Err(e) => {
                let e = NlError::from(e);
                if e.is(libc::ENODEV) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// `ip link show`
    pub async fn links(&self) -> NlResult<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self.handle.link().get().execute().try_collect().await?;
        Ok(msgs.iter().map(Link::from_msg).collect())
    }

    /// `ip link add NAME type bridge` with a fixed MAC and MTU, left down so
    /// the caller can configure it before it comes up (see
    /// [`crate::sysctl::no_dad`]). Safe when many processes race to create
    /// it: the losers find the winner's bridge.
    pub async fn ensure_bridge(&self, name: &str, mtu: u32, mac: [u8; 6]) -> NlResult<Link> {
        if let Some(l) = self.link(name).await? {
            if l.kind != Some(InfoKind::Bridge) {
                return Err(NlError(
                    format!("{name} exists and is not a bridge"),
                    Some(libc::EEXIST),
                ));
            }
            return Ok(l);
        }
        // A fixed address keeps the bridge's MAC stable as ports come and go
        // (otherwise it follows the lowest port MAC and pods' ARP entries for
        // the gateway go stale).
        let msg = LinkMessageBuilder::<LinkBridge>::new(name)
            .mtu(mtu)
            .address(mac.to_vec())
            .build();
        match self.handle.link().add(msg).execute().await.map_err(NlError::from) {
            Ok(()) => {}
            Err(e) if e.is(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        self.link(name)
            .await?
            .ok_or_else(|| NlError(format!("bridge {name} vanished after creation"), None))
    }

    /// `ip link set dev INDEX up`
    pub async fn set_up(&self, index: u32) -> NlResult<()> {
        Ok(self
            .handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await?)
    }

    /// `ip link set dev INDEX type bridge_slave hairpin on|off`
    pub async fn set_hairpin(&self, index: u32, on: bool) -> NlResult<()> {
        Ok(self
            .handle
            .link()
            .set_port(LinkBridgePort::new(index).hairpin(on).build())
            .execute()
            .await?)
    }

    /// `ip link add HOST mtu M master BRIDGE up type veth peer name PEER mtu M
    /// netns PEER_NS`, as one request: the peer is born inside the pod's
    /// netns (never visible on the host), the host end comes up already on
    /// the bridge. (The peer cannot be created up: the kernel opens it before
    /// it is paired and `veth_open` refuses with ENOTCONN.)
    pub async fn add_veth(&self, host: &str, peer: &str, mtu: u32, peer_ns: &File, bridge: u32) -> NlResult<()> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .mtu(mtu)
            .setns_by_fd(peer_ns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(host, peer)
            .mtu(mtu)
            .controller(bridge)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        Ok(self.handle.link().add(msg).execute().await?)
    }

    /// `ip link del NAME`; `false` when it did not exist.
    pub async fn del_link(&self, name: &str) -> NlResult<bool> {
        let Some(l) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(l.index).execute().await.map_err(NlError::from) {
            Ok(()) => Ok(true),
            Err(e) if e.is(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `ip addr add ADDR dev INDEX [nodad]`; an address already there is fine.
    /// IPv6 addresses skip duplicate address detection: the pod can use its
    /// address at once instead of after ~1-2 s of "tentative".
    pub async fn add_address(&self, index: u32, addr: IpNetwork) -> NlResult<()> {
        let mut req = self.handle.address().add(index, addr.ip(), addr.prefix());
        if addr.is_ipv6() {
            let m = req.message_mut();
            m.header.flags |= AddressHeaderFlags::Nodad;
        }
        match req.execute().await.map_err(NlError::from) {
            Ok(()) => Ok(()),
            Err(e) if e.is(libc::EEXIST) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `ip addr show dev INDEX` (addresses with prefix length).
    pub async fn addresses(&self, index: u32) -> NlResult<Vec<IpNetwork>> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => IpNetwork::new(*ip, m.header.prefix_len).ok(),
                    _ => None,
                })
            })
            .collect())
    }

    /// `ip route add DST [via GW] dev OIF`; a route already there is fine.
    pub async fn add_route(&self, dst: IpNetwork, gw: Option<IpAddr>, oif: u32) -> NlResult<()> {
        let b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .map_err(|e| NlError(e.to_string(), None))?;
        let b = match gw {
            Some(g) => b.gateway(g).map_err(|e| NlError(e.to_string(), None))?,
            None => b,
        };
        let msg = b.output_interface(oif).build();
        match self.handle.route().add(msg).execute().await.map_err(NlError::from) {
            Ok(()) => Ok(()),
            Err(e) if e.is(libc::EEXIST) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `ip route show` and `ip -6 route show` (main table).
    pub async fn routes(&self) -> NlResult<Vec<RouteEntry>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            let msgs: Vec<RouteMessage> = self.handle.route().get(msg).execute().try_collect().await?;
            out.extend(msgs.iter().filter_map(route_entry));
        }
        Ok(out)
    }
}

fn route_entry(m: &RouteMessage) -> Option<RouteEntry> {
    let v6 = m.header.address_family == AddressFamily::Inet6;
    let mut dst = None;
    let mut gw = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = addr(d),
            RouteAttribute::Gateway(g) => gw = addr(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let dst = match dst {
        Some(ip) => IpNetwork::new(ip, m.header.destination_prefix_length).ok()?,
        None if v6 => "::/0".parse().ok()?,
        None => "0.0.0.0/0".parse().ok()?,
    };
    Some(RouteEntry { dst, gw, oif })
}

fn addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}
