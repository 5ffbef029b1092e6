//! weft's rtnetlink: one [`Handle`] (one socket, bound to the netns it was
//! opened in), typed [`Link`]s, addresses and [`Route`]s, and one [`Error`]
//! that names the failed operation as the `ip` command it equals and
//! carries the kernel's errno.
//!
//! Used by the CNI plugin (bridge, veth pairs, pod addresses and routes) and
//! the node agent (WireGuard link, routes to other nodes' pod CIDRs).
//!
//! ```no_run
//! # async fn demo() -> weft_netlink::Result<()> {
//! let nl = weft_netlink::Handle::here()?; // a socket in this thread's netns
//! if let Some(l) = nl.link("weft0").await? {
//!     println!("{} has MTU {}", l.name, l.mtu);
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod address;
mod error;
mod link;
pub mod netns;
mod route;

use std::fs::File;

pub use error::{Cause, Error, Result};
pub use link::{format_mac, parse_mac, Link, Veth};
pub use netlink_packet_route::link::InfoKind;
pub use netlink_packet_route::route::RouteProtocol;
pub use route::{Route, MAIN_TABLE};

/// One rtnetlink socket, served by a task on the current tokio runtime.
/// Every request it sends acts in the netns the socket was opened in,
/// whatever thread sends it.
pub struct Handle {
    inner: rtnetlink::Handle,
}

impl Handle {
    /// A socket in the netns of the calling thread. Needs a tokio runtime
    /// with IO enabled (the connection runs as a task on it).
    pub fn here() -> Result<Self> {
        let (conn, inner, _) =
            rtnetlink::new_connection().map_err(|e| Error::new("open rtnetlink socket", Cause::Kernel(e)))?;
        tokio::spawn(conn);
        Ok(Self { inner })
    }

    /// A socket inside `ns`, opened on a short-lived thread that entered
    /// it (see [`netns::run_in`]); this thread never changes netns.
    pub fn in_netns(ns: &File) -> Result<Self> {
        let rt = tokio::runtime::Handle::current();
        let (conn, inner, _) = netns::run_in(ns, || {
            // The socket registers with this runtime's reactor.
            let _guard = rt.enter();
            rtnetlink::new_connection()
        })
        .map_err(|e| Error::new("open rtnetlink socket in netns", Cause::Kernel(e)))?;
        tokio::spawn(conn);
        Ok(Self { inner })
    }
}
