//! One error type for the crate: every variant names the object or step
//! (`op`), and kernel failures carry the errno and the kernel's own message.

use std::fmt;
use std::io;
use std::time::Duration;

/// One message of a batch that the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpFailure {
    /// The object, in nft words: `add rule inet weft mesh-forward #1`.
    pub op: String,
    /// Positive errno (`libc::ENOENT`, ...).
    pub errno: i32,
    /// The kernel's extended-ack message, when it gave one.
    pub message: Option<String>,
}

impl fmt::Display for OpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, io::Error::from_raw_os_error(self.errno))?;
        if let Some(m) = &self.message {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening or configuring the socket, or a send/receive failed.
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
    /// A single request (dump, GETGEN, ...) failed in the kernel.
    #[error("{op}: {source}")]
    Kernel {
        op: String,
        errno: i32,
        #[source]
        source: io::Error,
    },
    /// The transaction was aborted; every message the kernel refused is listed
    /// (the first one is usually the cause, later ones may follow from it).
    #[error("transaction aborted: {}", failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Transaction { failures: Vec<OpFailure> },
    /// No reply in time.
    #[error("{op}: no reply from the kernel within {timeout:?}")]
    Timeout { op: String, timeout: Duration },
    /// The desired table is not valid (checked before anything is sent).
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
    /// The kernel sent something this crate cannot parse.
    #[error("decode {what}: {reason}")]
    Decode { what: String, reason: String },
}

impl Error {
    /// The errno of a kernel failure (the first one of a transaction).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Transaction { failures } => failures.first().map(|f| f.errno),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn decode(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Decode {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Error {
        Error::Io { op: op.into(), source }
    }

    pub(crate) fn kernel(op: impl Into<String>, errno: i32) -> Error {
        Error::Kernel {
            op: op.into(),
            errno,
            source: io::Error::from_raw_os_error(errno),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
