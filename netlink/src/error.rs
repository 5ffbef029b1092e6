//! The one error of this crate: which operation failed (written as the `ip`
//! command it equals) and why.

/// A failed netlink operation, e.g.
/// `ip link add weft0 type bridge: File exists (os error 17)`.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {cause}")]
pub struct Error {
    op: String,
    #[source]
    cause: Cause,
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// The kernel refused the request with an errno.
    #[error(transparent)]
    Kernel(std::io::Error),
    /// The request could not be sent or its answer not read (socket,
    /// decoding); no errno from the kernel.
    #[error(transparent)]
    Netlink(rtnetlink::Error),
    /// The request cannot be built (e.g. a route whose gateway is of
    /// another family than its destination).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn new(op: impl Into<String>, cause: Cause) -> Self {
        Self { op: op.into(), cause }
    }

    /// An rtnetlink failure of `op`: the kernel's errno when it sent one.
    pub fn rtnetlink(op: impl Into<String>, e: rtnetlink::Error) -> Self {
        let cause = match e {
            rtnetlink::Error::NetlinkError(m) => Cause::Kernel(m.to_io()),
            other => Cause::Netlink(other),
        };
        Self::new(op, cause)
    }

    /// The `ip` command the failed operation equals.
    pub fn op(&self) -> &str {
        &self.op
    }

    pub fn cause(&self) -> &Cause {
        &self.cause
    }

    /// The kernel's errno, when the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match &self.cause {
            Cause::Kernel(e) => e.raw_os_error(),
            Cause::Netlink(_) | Cause::Invalid(_) => None,
        }
    }

    /// Whether the kernel refused with `errno` (`libc::EEXIST`, ...).
    pub fn is(&self, errno: i32) -> bool {
        self.errno() == Some(errno)
    }
}

/// `map_err` helper: an rtnetlink failure of `op`.
pub(crate) fn op(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let op = op.into();
    move |e| Error::rtnetlink(op, e)
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_as_a_breadcrumb_with_the_errno() {
        let e = Error::new(
            "ip link add weft0 type bridge",
            Cause::Kernel(std::io::Error::from_raw_os_error(libc::EEXIST)),
        );
        assert_eq!(e.op(), "ip link add weft0 type bridge");
        assert_eq!(e.errno(), Some(libc::EEXIST));
        assert!(e.is(libc::EEXIST) && !e.is(libc::ENODEV));
        let text = e.to_string();
        assert!(text.starts_with("ip link add weft0 type bridge: File exists"), "{text}");
        // The source chain does not repeat the message.
        let src = std::error::Error::source(&e).expect("cause").to_string();
        assert!(text.ends_with(&src), "{text} / {src}");
    }

    #[test]
    fn no_errno_without_the_kernel() {
        let e = Error::new(
            "ip route add 10.0.0.0/8 via ::1",
            Cause::Invalid("families differ".into()),
        );
        assert_eq!(e.errno(), None);
        assert_eq!(e.to_string(), "ip route add 10.0.0.0/8 via ::1: families differ");
        let e = Error::rtnetlink("ip link show", rtnetlink::Error::RequestFailed);
        assert_eq!(e.errno(), None);
        assert!(matches!(e.cause(), Cause::Netlink(_)));
    }
}
