//! Links: `ip link show|add|set|del`, and the netns ids links refer to.

use std::fs::File;
use std::os::fd::AsRawFd;

use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::link::{
    BridgePortState, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkWireguard};

use crate::error::op;
use crate::{Cause, Error, Handle, Result};

/// A link as weft looks at it (`ip -d link show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`, empty for links without one.
    pub mac: String,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The bridge (or other controller) this link is a port of.
    pub controller: Option<u32>,
    pub kind: Option<InfoKind>,
    /// A bridge port's hairpin mode.
    pub hairpin: Option<bool>,
    /// A bridge port's STP state: whether it forwards frames yet.
    pub forwarding: Option<bool>,
    /// `IFLA_LINK`: for a veth, the peer's index (in the peer's netns).
    pub peer_index: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the id this netns gives the netns the peer
    /// lives in; absent when the peer is in the same netns.
    pub peer_netnsid: Option<i32>,
}

impl Link {
    /// Read a kernel link message (pure).
    pub fn from_message(m: &LinkMessage) -> Self {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: String::new(),
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
            controller: None,
            kind: None,
            hairpin: None,
            forwarding: None,
            peer_index: None,
            peer_netnsid: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(mac) => l.mac = format_mac(mac),
                LinkAttribute::Mtu(v) => l.mtu = *v,
                LinkAttribute::Controller(c) => l.controller = Some(*c),
                LinkAttribute::Link(p) => l.peer_index = Some(*p),
                LinkAttribute::LinkNetNsId(id) => l.peer_netnsid = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(k) => l.kind = Some(k.clone()),
                            LinkInfo::PortData(InfoPortData::BridgePort(p)) => {
                                for x in p {
                                    match x {
                                        InfoBridgePort::HairpinMode(h) => l.hairpin = Some(*h),
                                        InfoBridgePort::State(st) => {
                                            l.forwarding = Some(*st == BridgePortState::Forwarding)
                                        }
                                        _ => {}
                                    }
                                }
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

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

/// `aa:bb:cc:dd:ee:ff` back to six bytes; `None` for anything else.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let b: Vec<u8> = s
        .split(':')
        .map(|x| (x.len() == 2).then(|| u8::from_str_radix(x, 16).ok()).flatten())
        .collect::<Option<_>>()?;
    b.try_into().ok()
}

/// A veth pair to create: `host` on this side, its `peer` born in `peer_ns`.
pub struct Veth<'a> {
    pub host: &'a str,
    pub peer: &'a str,
    pub mtu: u32,
    pub peer_ns: &'a File,
    /// The bridge the host end is a port of.
    pub bridge: u32,
}

impl Handle {
    /// `ip link show NAME`; `None` when there is no such link.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut s = self.inner.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(e) => {
                let e = Error::rtnetlink(format!("ip link show {name}"), e);
                if e.is(libc::ENODEV) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// `ip link show`
    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .inner
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(op("ip link show"))?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    /// `ip link add NAME address MAC mtu MTU type bridge`, left down so the
    /// caller can configure it before it comes up. Safe when many processes
    /// race to create it: the losers find the winner's bridge. The flag is
    /// whether this call created it. A link of that name that is not a
    /// bridge is an error (EEXIST).
    ///
    /// A fixed MAC keeps the bridge's address stable as ports come and go
    /// (a bridge otherwise takes the lowest port MAC, and neighbours' entries
    /// for the gateway go stale).
    pub async fn ensure_bridge(&self, name: &str, mtu: u32, mac: [u8; 6]) -> Result<(Link, bool)> {
        let cmd = format!("ip link add {name} type bridge");
        let check = |l: Link| {
            if l.kind == Some(InfoKind::Bridge) {
                Ok(l)
            } else {
                Err(Error::new(
                    cmd.clone(),
                    Cause::Kernel(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        format!("{name} exists and is not a bridge"),
                    )),
                ))
            }
        };
        if let Some(l) = self.link(name).await? {
            return Ok((check(l)?, false));
        }
        let msg = LinkMessageBuilder::<LinkBridge>::new(name)
            .mtu(mtu)
            .address(mac.to_vec())
            .build();
        let created = match self.inner.link().add(msg).execute().await.map_err(op(cmd.clone())) {
            Ok(()) => true,
            Err(e) if e.is(libc::EEXIST) => false,
            Err(e) => return Err(e),
        };
        let l = self.link(name).await?.ok_or_else(|| {
            Error::new(
                cmd.clone(),
                Cause::Invalid(format!("bridge {name} vanished after creation")),
            )
        })?;
        Ok((check(l)?, created))
    }

    /// Whether any link is a port of `bridge` (`ip link show master BRIDGE`).
    pub async fn has_ports(&self, bridge: u32) -> Result<bool> {
        Ok(self.links().await?.iter().any(|l| l.controller == Some(bridge)))
    }

    /// `ip link set dev INDEX up`
    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.inner
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(op(format!("ip link set dev {index} up")))
    }

    /// `ip link set dev INDEX mtu MTU up`
    pub async fn set_mtu_up(&self, index: u32, mtu: u32) -> Result<()> {
        self.inner
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(op(format!("ip link set dev {index} mtu {mtu} up")))
    }

    /// `ip link set dev INDEX address MAC`. Setting the address a link
    /// already has still notifies the kernel's listeners that it changed:
    /// with `arp_notify` / `ndisc_notify` on, the link then announces its
    /// addresses (gratuitous ARP, unsolicited neighbour advertisement).
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        self.inner
            .link()
            .set(LinkUnspec::new_with_index(index).address(mac.to_vec()).build())
            .execute()
            .await
            .map_err(op(format!("ip link set dev {index} address {}", format_mac(&mac))))
    }

    /// `ip link set dev INDEX type bridge_slave hairpin on|off`
    pub async fn set_hairpin(&self, index: u32, on: bool) -> Result<()> {
        let word = if on { "on" } else { "off" };
        self.inner
            .link()
            .set_port(LinkBridgePort::new(index).hairpin(on).build())
            .execute()
            .await
            .map_err(op(format!("ip link set dev {index} type bridge_slave hairpin {word}")))
    }

    /// `ip link add HOST mtu M master BRIDGE up type veth peer name PEER mtu M
    /// netns PEER_NS`, as one request: the peer is born inside its netns
    /// (never visible here), the host end comes up already on the bridge.
    /// (The peer cannot be created up: the kernel opens it before it is
    /// paired and `veth_open` refuses with ENOTCONN.)
    pub async fn add_veth(&self, v: &Veth<'_>) -> Result<()> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(v.peer.to_string())
            .mtu(v.mtu)
            .setns_by_fd(v.peer_ns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(v.host, v.peer)
            .mtu(v.mtu)
            .controller(v.bridge)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.inner.link().add(msg).execute().await.map_err(op(format!(
            "ip link add {} mtu {} master {} up type veth peer name {} netns FD",
            v.host, v.mtu, v.bridge, v.peer
        )))
    }

    /// `ip link add NAME type wireguard` (needs the kernel module: without
    /// it the kernel answers EOPNOTSUPP).
    pub async fn add_wireguard(&self, name: &str) -> Result<()> {
        self.inner
            .link()
            .add(LinkWireguard::new(name).build())
            .execute()
            .await
            .map_err(op(format!("ip link add {name} type wireguard")))
    }

    /// `ip link del NAME`; `false` when there was none.
    pub async fn del_link(&self, name: &str) -> Result<bool> {
        let Some(l) = self.link(name).await? else {
            return Ok(false);
        };
        self.del(l.index, format!("ip link del {name}")).await
    }

    /// `ip link del dev INDEX`; `false` when there was none.
    pub async fn del_link_index(&self, index: u32) -> Result<bool> {
        self.del(index, format!("ip link del dev {index}")).await
    }

    async fn del(&self, index: u32, cmd: String) -> Result<bool> {
        match self.inner.link().del(index).execute().await.map_err(op(cmd)) {
            Ok(()) => Ok(true),
            Err(e) if e.is(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The id this socket's netns gives the netns `ns` (`ip netns list-id`),
    /// `None` when it has none. The kernel assigns one as soon as a link
    /// here is reported with a peer in `ns` (see [`Link::peer_netnsid`]).
    pub async fn netnsid_of(&self, ns: &File) -> Result<Option<i32>> {
        let cmd = "ip netns list-id target FD";
        let mut msg = NsidMessage::default();
        msg.attributes.push(NsidAttribute::Fd(ns.as_raw_fd() as u32));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
        req.header.flags = NLM_F_REQUEST;
        let mut replies = self.inner.clone().request(req).map_err(op(cmd))?;
        while let Some(m) = replies.next().await {
            match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(r)) => {
                    return Ok(r.attributes.iter().find_map(|a| match a {
                        NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                        _ => None,
                    }))
                }
                NetlinkPayload::Error(e) => return Err(Error::rtnetlink(cmd, rtnetlink::Error::NetlinkError(e))),
                _ => {}
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::LinkHeader;

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let m = [0x02, 0xab, 0, 0x10, 0xff, 0x7];
        assert_eq!(format_mac(&m), "02:ab:00:10:ff:07");
        assert_eq!(parse_mac("02:ab:00:10:ff:07"), Some(m));
        for bad in [
            "",
            "02:ab:00:10:ff",
            "02:ab:00:10:ff:07:01",
            "02:ab:00:10:ff:g7",
            "2:ab:00:10:ff:07:",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_veth_bridge_port_message_is_read_whole() {
        let mut m = LinkMessage::default();
        m.header = LinkHeader {
            index: 7,
            flags: LinkFlags::Up,
            ..m.header
        };
        m.attributes = vec![
            LinkAttribute::IfName("weftec43057c07a".into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 9]),
            LinkAttribute::Mtu(1420),
            LinkAttribute::Controller(3),
            LinkAttribute::Link(2),
            LinkAttribute::LinkNetNsId(5),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::PortData(InfoPortData::BridgePort(vec![
                    InfoBridgePort::HairpinMode(true),
                    InfoBridgePort::State(BridgePortState::Forwarding),
                ])),
            ]),
        ];
        let l = Link::from_message(&m);
        assert_eq!(
            l,
            Link {
                index: 7,
                name: "weftec43057c07a".into(),
                mac: "02:00:00:00:00:09".into(),
                mtu: 1420,
                up: true,
                controller: Some(3),
                kind: Some(InfoKind::Veth),
                hairpin: Some(true),
                forwarding: Some(true),
                peer_index: Some(2),
                peer_netnsid: Some(5),
            }
        );
        let mut down = m.clone();
        down.header.flags = LinkFlags::empty();
        down.attributes.truncate(1);
        let l = Link::from_message(&down);
        assert!(!l.up && l.kind.is_none() && l.forwarding.is_none() && l.peer_index.is_none());
    }
}
