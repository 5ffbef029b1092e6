//! Addresses: `ip addr show|add|del`.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};

use crate::error::op;
use crate::{Handle, Result};

/// The address (with prefix length) an address message carries (pure).
fn address_of(m: &AddressMessage) -> Option<IpNetwork> {
    m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => IpNetwork::new(*ip, m.header.prefix_len).ok(),
        _ => None,
    })
}

impl Handle {
    async fn address_messages(&self, index: u32) -> Result<Vec<AddressMessage>> {
        let msgs: Vec<AddressMessage> = self
            .inner
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(op(format!("ip addr show dev {index}")))?;
        // The filter is applied by the kernel only on strict sockets.
        Ok(msgs.into_iter().filter(|m| m.header.index == index).collect())
    }

    /// `ip addr show dev INDEX`: the addresses with their prefix length.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>> {
        Ok(self
            .address_messages(index)
            .await?
            .iter()
            .filter_map(address_of)
            .collect())
    }

    /// `ip addr add ADDR dev INDEX [nodad]`; an address already there is fine.
    pub async fn add_address(&self, index: u32, addr: IpNetwork) -> Result<()> {
        self.ensure_address(index, addr).await.map(|_| ())
    }

    /// `ip addr add ADDR dev INDEX [nodad]`; `false` when the address was
    /// already there (this call did not add it, so it is not the caller's
    /// to take back). IPv6 addresses skip duplicate address detection: they
    /// are usable at once instead of after ~1-2 s of "tentative".
    pub async fn ensure_address(&self, index: u32, addr: IpNetwork) -> Result<bool> {
        let nodad = if addr.is_ipv6() { " nodad" } else { "" };
        let mut req = self.inner.address().add(index, addr.ip(), addr.prefix());
        if addr.is_ipv6() {
            req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        }
        match req
            .execute()
            .await
            .map_err(op(format!("ip addr add {addr} dev {index}{nodad}")))
        {
            Ok(()) => Ok(true),
            Err(e) if e.is(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `ip addr del ADDR dev INDEX`; an address not there is fine.
    pub async fn del_address(&self, index: u32, addr: IpNetwork) -> Result<()> {
        let cmd = format!("ip addr del {addr} dev {index}");
        for m in self.address_messages(index).await? {
            if address_of(&m) == Some(addr) {
                match self.inner.address().del(m).execute().await.map_err(op(cmd.clone())) {
                    Err(e) if !e.is(libc::EADDRNOTAVAIL) => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The MTU of the link holding `ip` (the underlay), if any link does.
    pub async fn mtu_of_link_with(&self, ip: IpAddr) -> Result<Option<u32>> {
        for l in self.links().await? {
            if self.addresses(l.index).await?.iter().any(|a| a.ip() == ip) {
                return Ok(Some(l.mtu));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_message_gives_the_address_with_its_prefix() {
        let mut m = AddressMessage::default();
        m.header.prefix_len = 64;
        m.attributes = vec![AddressAttribute::Address("fd00:77::1".parse().unwrap())];
        assert_eq!(address_of(&m), Some("fd00:77::1/64".parse().unwrap()));
        m.header.prefix_len = 200;
        assert_eq!(address_of(&m), None, "an impossible prefix is no address");
        assert_eq!(address_of(&AddressMessage::default()), None);
    }
}
