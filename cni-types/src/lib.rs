//! The CNI protocol as types: what a runtime hands a plugin (environment and
//! network configuration) and what a plugin hands back (a Result or an Error),
//! for every version weft speaks (0.3.0 to 1.1.0).
//!
//! This crate is pure: it parses and renders, it never touches the kernel.
//! Both `weft` and `weft-ipam` use it, and so does the agent for the conflist
//! it writes ([`weftconf::WeftConf`]).
#![forbid(unsafe_code)]

pub mod error;
pub mod invocation;
pub mod netconf;
pub mod result;
pub mod skel;
pub mod version;
pub mod weftconf;

pub use error::{code, CniError};
pub use invocation::{AttachmentKey, Command, ContainerId, IfName, Invocation};
pub use netconf::{parse_config, NetConfBase};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::Version;
