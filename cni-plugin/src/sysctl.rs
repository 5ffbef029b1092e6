//! The few sysctls weft sets, in the netns of the calling process.

use std::fs;
use std::io;
use std::path::Path;

/// Write `value` to a sysctl file unless it already holds it (a read is
/// cheaper than a write, and the value is usually set already).
pub fn ensure(path: &Path, value: &str) -> io::Result<()> {
    match fs::read_to_string(path) {
        Ok(cur) if cur.trim() == value => Ok(()),
        _ => fs::write(path, value),
    }
}

/// `sysctl net.ipv4.ip_forward=1` / `net.ipv6.conf.all.forwarding=1`: the
/// node routes between pods, the bridge and other nodes.
pub fn enable_forwarding(v4: bool, v6: bool) -> io::Result<()> {
    if v4 {
        ensure(Path::new("/proc/sys/net/ipv4/ip_forward"), "1")?;
    }
    if v6 {
        ensure(Path::new("/proc/sys/net/ipv6/conf/all/forwarding"), "1")?;
    }
    Ok(())
}

/// `sysctl net.ipv6.conf.DEV.accept_dad=0`, before DEV comes up.
///
/// The node answers for pods it routes to: to forward an IPv6 packet to a pod
/// (from another node, through the tunnel) the node sends a neighbour
/// solicitation from the bridge's link-local address, and while that address
/// is still tentative (duplicate address detection, 1-2 s after the bridge
/// comes up) the kernel holds the solicitation back, so the first pods of a
/// node were unreachable over IPv6 from other nodes for that long. The link-
/// local address is derived from the bridge's MAC, which weft fixes, so DAD
/// guards against nothing here. A node without IPv6 has no such file: fine.
pub fn no_dad(dev: &str) -> io::Result<()> {
    match ensure(&Path::new("/proc/sys/net/ipv6/conf").join(dev).join("accept_dad"), "0") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// `sysctl net.ipv4.conf.DEV.arp_notify=1` (and, with `v6`,
/// `net.ipv6.conf.DEV.ndisc_notify=1`), in the netns of the calling thread.
///
/// When DEV comes up or its MAC address is set, the kernel then sends a
/// gratuitous ARP for each IPv4 address and an unsolicited neighbour
/// advertisement (override flag set) for each IPv6 address, so the node and
/// other pods that cached another MAC for a reused address (a re-created
/// pod, a requested IP) update the entry at once instead of after their
/// cache times out (tens of seconds). The same messages the reference
/// `bridge` plugin sends itself.
pub fn announce(dev: &str, v6: bool) -> io::Result<()> {
    ensure(&Path::new("/proc/sys/net/ipv4/conf").join(dev).join("arp_notify"), "1")?;
    if v6 {
        ensure(
            &Path::new("/proc/sys/net/ipv6/conf").join(dev).join("ndisc_notify"),
            "1",
        )?;
    }
    Ok(())
}
