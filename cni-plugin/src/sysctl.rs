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
