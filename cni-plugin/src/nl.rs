//! The plugin's netlink moved to the `weft_netlink` crate. What weft-agent
//! still imports from here (`Nl`, `NlError`, `Link`) forwards to it, with the
//! signatures the agent was written against; this module goes once the agent
//! uses `weft_netlink` itself. The plugin does not use it.

use ipnetwork::IpNetwork;
pub use weft_netlink::Link;

/// A netlink failure (a `weft_netlink::Error`), with the errno when the
/// kernel sent one.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct NlError(#[from] weft_netlink::Error);

impl NlError {
    pub fn errno(&self) -> Option<i32> {
        self.0.errno()
    }
}

impl From<rtnetlink::Error> for NlError {
    fn from(e: rtnetlink::Error) -> Self {
        NlError(weft_netlink::Error::rtnetlink("netlink request", e))
    }
}

impl From<std::io::Error> for NlError {
    fn from(e: std::io::Error) -> Self {
        NlError(weft_netlink::Error::new("netlink", weft_netlink::Cause::Kernel(e)))
    }
}

pub type NlResult<T> = Result<T, NlError>;

/// One rtnetlink socket (a [`weft_netlink::Handle`]).
pub struct Nl(weft_netlink::Handle);

impl Nl {
    pub fn here() -> NlResult<Self> {
        Ok(Self(weft_netlink::Handle::here()?))
    }

    /// `ip link show NAME`
    pub async fn link(&self, name: &str) -> NlResult<Option<Link>> {
        Ok(self.0.link(name).await?)
    }

    /// `ip link show`
    pub async fn links(&self) -> NlResult<Vec<Link>> {
        Ok(self.0.links().await?)
    }

    /// `ip link del NAME`; `false` when there was none.
    pub async fn del_link(&self, name: &str) -> NlResult<bool> {
        Ok(self.0.del_link(name).await?)
    }

    /// `ip addr show dev INDEX`
    pub async fn addresses(&self, index: u32) -> NlResult<Vec<IpNetwork>> {
        Ok(self.0.addresses(index).await?)
    }

    /// `ip addr add ADDR dev INDEX` (IPv6 `nodad`); already there is fine.
    pub async fn add_address(&self, index: u32, addr: IpNetwork) -> NlResult<()> {
        Ok(self.0.add_address(index, addr).await?)
    }
}
