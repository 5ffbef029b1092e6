//! The one module with `unsafe`: a raw `AF_NETLINK`/`NETLINK_NETFILTER`
//! socket through libc. Everything above it works on byte slices.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// A bound netlink socket talking to the kernel's nfnetlink.
#[derive(Debug)]
pub struct NlSocket {
    fd: OwnedFd,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl NlSocket {
    /// Open the socket inside the network namespace at `netns` (e.g.
    /// `/run/netns/x`): a short-lived thread enters it, opens the socket and
    /// dies there, so no thread of the caller ever switches namespace. The
    /// socket keeps talking to that namespace's nf_tables.
    pub fn open_in_netns(netns: &std::path::Path) -> io::Result<NlSocket> {
        let path = netns.to_path_buf();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path)?;
            // SAFETY: setns on a valid namespace fd only changes this
            // short-lived thread's network namespace.
            cvt(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) })?;
            NlSocket::open()
        })
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
    }

    /// `socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, NETLINK_NETFILTER)`, bound
    /// to a kernel-chosen port id, with extended acks (the kernel's error
    /// string) and capped acks (errors do not echo our whole message back).
    pub fn open() -> io::Result<NlSocket> {
        // SAFETY: plain syscall with constant arguments; the result is checked.
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a valid sockaddr_nl and the length matches it.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })?;
        let s = NlSocket { fd };
        s.setopt(libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, 1)?;
        s.setopt(libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1)?;
        Ok(s)
    }

    fn setopt(&self, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
        // SAFETY: `value` lives across the call and the length is that of a c_int.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
        Ok(())
    }

    fn getopt(&self, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for writes and `len` holds its size.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        })?;
        Ok(value)
    }

    /// Make the send (`rcv == false`) or receive buffer at least `bytes`.
    /// Uses the `*FORCE` variant (root / CAP_NET_ADMIN) so `wmem_max` /
    /// `rmem_max` do not cap it; falls back to the plain option otherwise.
    /// Returns the size the kernel reports afterwards (it doubles the value).
    pub fn ensure_buf(&self, rcv: bool, bytes: usize) -> io::Result<usize> {
        let (force, plain) = if rcv {
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF)
        } else {
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)
        };
        let want = libc::c_int::try_from(bytes.min(i32::MAX as usize / 2)).unwrap_or(i32::MAX / 2);
        if self.setopt(libc::SOL_SOCKET, force, want).is_err() {
            self.setopt(libc::SOL_SOCKET, plain, want)?;
        }
        Ok(self.getopt(libc::SOL_SOCKET, plain)?.max(0) as usize)
    }

    /// Send one datagram (a whole batch) to the kernel.
    pub fn send(&self, buf: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain old data; all-zero is the kernel's address.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: `buf` is valid for reads of its length, `addr` is a valid
            // sockaddr_nl of the given length.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    0,
                    (&addr as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n as usize != buf.len() {
                return Err(io::Error::other(format!(
                    "short netlink send: {n} of {} bytes",
                    buf.len()
                )));
            }
            return Ok(());
        }
    }

    /// Receive one datagram into `buf` (its capacity is the limit), waiting at
    /// most until `deadline`. Times out with `ErrorKind::TimedOut`; a datagram
    /// larger than the buffer is an error (it would be silently truncated).
    pub fn recv(&self, buf: &mut Vec<u8>, deadline: Instant) -> io::Result<()> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left == Duration::ZERO {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no reply from the kernel"));
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd, count 1.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                continue;
            }
            buf.clear();
            let cap = buf.capacity();
            // SAFETY: the spare capacity is valid for writes of `cap` bytes; the
            // kernel writes at most that many (MSG_TRUNC only reports the size).
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    cap,
                    libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n > cap {
                return Err(io::Error::other(format!(
                    "netlink reply of {n} bytes exceeds the {cap}-byte buffer"
                )));
            }
            // SAFETY: the kernel initialised the first `n` bytes (n <= capacity).
            unsafe { buf.set_len(n) };
            return Ok(());
        }
    }
}
