//! Every raw syscall weft-wg makes, and the only module with `unsafe`.
//!
//! - the TUN device: `open("/dev/net/tun")` + `TUNSETIFF` (`ip tuntap add mode tun`
//!   without persistence: the link disappears when the fd is closed) and
//!   `TUNSETOFFLOAD`, which makes the kernel hand us TCP super-segments;
//! - UDP `sendmsg` with a `UDP_SEGMENT` control message (UDP GSO: one call sends
//!   many equally sized datagrams, the kernel or the NIC splits them);
//! - UDP `recvmsg` reading the `UDP_GRO` control message (the kernel hands us
//!   several datagrams of one flow glued together, with their size).
//!
//! Everything else works on safe std types (`File`, `UdpSocket`) built on these fds.

use std::fs::{File, OpenOptions};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (a union in C).
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// What the TUN device was opened with.
pub struct TunFd {
    pub file: File,
    /// The kernel accepted TUNSETOFFLOAD (checksum + TSO4/6): reads may return
    /// GSO super-segments with partial checksums.
    pub offload: bool,
}

/// Create (or attach to) the TUN device `name`: IFF_TUN | IFF_NO_PI | IFF_VNET_HDR.
///
/// With IFF_VNET_HDR every read and write starts with a 10-byte
/// `struct virtio_net_hdr` (the kernel default size) describing checksum and
/// segmentation state of the packet that follows.
pub fn open_tun(name: &str) -> io::Result<TunFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name must be 1-15 bytes",
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads a `struct ifreq` (40 bytes, name + flags) from the
    // pointer, which points to a live, correctly laid out IfReq.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // Offer the kernel checksum offload and TCP segmentation offload: it then
    // stops computing TCP checksums and segmenting for us and passes up to 64 KB
    // TCP packets, described by the virtio_net_hdr (gso_type, gso_size, csum_start).
    let features = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long).
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, features as libc::c_ulong) };
    Ok(TunFd { file, offload: rc == 0 })
}

/// Enable UDP_GRO on a UDP socket: the kernel may coalesce datagrams of one
/// flow into one read; `recv_gro` reports the segment size.
pub fn enable_udp_gro(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads size_of::<c_int>() bytes from a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_GRO,
            &one as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A sockaddr_in/sockaddr_in6 in a sockaddr_storage.
fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET) into the storage.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 (family AF_INET6) into the storage.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Room for one control message carrying an int (UDP_GRO) or a u16 (UDP_SEGMENT).
#[repr(C, align(8))]
struct CmsgBuf([u8; 32]);

/// Send `buf` to `dst`; with `segment = Some(n)`, as datagrams of `n` bytes each
/// (the last one may be shorter) through one UDP GSO `sendmsg`.
pub fn send_gso(fd: RawFd, buf: &[u8], dst: &SocketAddr, segment: Option<u16>) -> io::Result<usize> {
    let (mut ss, sslen) = to_sockaddr(dst);
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut cmsg = CmsgBuf([0; 32]);
    // SAFETY: msghdr is plain old data; zero is "no name, no iov, no control".
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = &mut ss as *mut _ as *mut libc::c_void;
    msg.msg_namelen = sslen;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(seg) = segment {
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
        msg.msg_control = cmsg.0.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space;
        // SAFETY: msg_control points to `space` (<= 32) zeroed, 8-aligned bytes, so
        // CMSG_FIRSTHDR returns a valid header pointer inside the buffer and
        // CMSG_DATA has room for the u16 (checked by CMSG_SPACE).
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg);
        }
    }
    // SAFETY: every pointer in msg (name, iov -> buf, control) is live for the call;
    // the kernel only reads them.
    let n = unsafe { libc::sendmsg(fd, &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// One `recvmsg`: (bytes read, sender, GRO segment size if the kernel coalesced
/// several datagrams into `buf`).
pub fn recv_gro(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<SocketAddr>, Option<usize>)> {
    // SAFETY: sockaddr_storage is plain old data.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut cmsg = CmsgBuf([0; 32]);
    // SAFETY: msghdr is plain old data.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = &mut ss as *mut _ as *mut libc::c_void;
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = cmsg.0.len();
    // SAFETY: name, iov (-> buf, writable for buf.len()) and control are live and
    // writable for the sizes given; the kernel writes at most that much.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut segment = None;
    // SAFETY: the kernel filled msg_controllen bytes of control messages; the
    // CMSG_* macros walk them within those bounds.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                segment = usize::try_from(v).ok().filter(|&s| s > 0);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, from_sockaddr(&ss), segment))
}

/// SIGTERM and SIGINT, blocked in the calling thread (and every thread it
/// spawns afterwards) so that only [`wait_for_termination`] receives them.
pub struct TermSignals(libc::sigset_t);

pub fn block_termination_signals() -> io::Result<TermSignals> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use;
    // pthread_sigmask only reads the set.
    unsafe {
        let mut set: libc::sigset_t = zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(TermSignals(set))
    }
}

/// Block until SIGTERM or SIGINT arrives; returns the signal number.
pub fn wait_for_termination(s: &TermSignals) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: sigwait reads the initialised set and writes one c_int.
    unsafe { libc::sigwait(&s.0, &mut sig) };
    sig
}
