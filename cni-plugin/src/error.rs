//! The plugin's errors, named after the step that failed, and their mapping
//! to CNI error codes (the one place that mapping happens).

use std::path::PathBuf;

use weft_cni_types::{code, CniError};
use weft_ipam::IpamError;
use weft_netlink::Error as NlError;

/// weft's own CNI error code (the spec leaves 100 and up to plugins): CHECK
/// found the attachment different from what ADD made.
pub const CODE_CHECK_FAILED: u32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("open netns {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}: {source}")]
    Netlink {
        step: String,
        #[source]
        source: NlError,
    },
    #[error("{step}: {source}")]
    Sysctl {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("ipam: {0}")]
    Ipam(#[from] IpamError),
    /// A delegated plugin's own error, passed on with its code.
    #[error("ipam plugin {plugin}: {err}")]
    Delegate { plugin: String, err: CniError },
    #[error("check: {0}")]
    Check(String),
    #[error("{0}")]
    Cni(#[from] CniError),
    /// DEL and GC keep going after a failure; these are all the failures.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Many(Vec<Error>),
}

impl Error {
    pub fn netlink(step: impl Into<String>) -> impl FnOnce(NlError) -> Error {
        let step = step.into();
        move |source| Error::Netlink { step, source }
    }

    fn code(&self) -> u32 {
        match self {
            // The runtime's netns is gone: nothing to clean up for ADD/CHECK.
            Error::Netns { source, .. } if source.kind() == std::io::ErrorKind::NotFound => code::UNKNOWN_CONTAINER,
            Error::Netns { .. } | Error::Netlink { .. } | Error::Sysctl { .. } => code::IO_FAILURE,
            Error::Ipam(e) => e.cni_code(),
            Error::Delegate { err, .. } => err.code,
            Error::Check(_) => CODE_CHECK_FAILED,
            Error::Cni(e) => e.code,
            Error::Many(all) => all.first().map_or(code::IO_FAILURE, Error::code),
        }
    }
}

impl From<Error> for CniError {
    fn from(e: Error) -> Self {
        match e {
            Error::Cni(c) => c,
            other => CniError::new(other.code(), other.to_string()),
        }
    }
}
