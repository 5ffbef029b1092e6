//! The mesh's netlink: [`weft_netlink`]'s handle (the one rtnetlink wrapper
//! weft has, shared with the CNI plugin), and the conversion of the mesh's
//! wanted routes into its route type.

use netlink_packet_route::link::InfoKind;
use netlink_packet_route::route::RouteProtocol;
pub use weft_netlink::{Cause, Error as NetError, Handle as Net, Link};

use crate::plan;

/// Is `l` a WireGuard link?
pub fn is_wireguard(l: &Link) -> bool {
    l.kind == Some(InfoKind::Wireguard)
}

/// A wanted route through the WireGuard device `index`:
/// `ip route add DST dev INDEX [src SRC] proto static`.
pub fn through(r: &plan::Route, index: u32) -> weft_netlink::Route {
    weft_netlink::Route::to(r.dst).dev(index).src(r.src)
}

/// The main table's routes that are not the kernel's own (`proto kernel`
/// subnet routes of addresses), with their output link.
pub async fn main_routes(net: &Net) -> Result<Vec<(plan::Route, Option<u32>)>, NetError> {
    Ok(net
        .routes()
        .await?
        .into_iter()
        .filter(|r| r.proto != RouteProtocol::Kernel)
        .map(|r| (plan::Route { dst: r.dst, src: r.src }, r.oif))
        .collect())
}

/// An error for something the kernel answered that the agent cannot use.
pub fn invalid(op: impl Into<String>, msg: impl Into<String>) -> NetError {
    NetError::new(op, Cause::Invalid(msg.into()))
}
