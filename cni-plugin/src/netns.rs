//! Network namespaces.
//!
//! weft never switches the netns of a thread that does anything else: to talk
//! to the kernel inside a pod's netns, a short-lived thread enters it, opens a
//! netlink socket there and exits. A netlink socket stays bound to the netns
//! it was created in, so the plugin then drives the pod's links from its main
//! thread. The thread's netns dies with the thread; nothing needs switching
//! back, so no early return can leave a thread in the wrong netns.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The netns weft itself runs in (the node's). weft's main thread never
/// leaves it, and `/proc/self` is the main thread.
pub const OWN: &str = "/proc/self/ns/net";

/// Open a netns file such as `/var/run/netns/pod1` or `/proc/PID/ns/net`.
pub fn open(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// Whether `ns` is the netns weft runs in: the same nsfs inode (device and
/// inode number), whether it was named `/proc/self/ns/net`, `/proc/1/ns/net`
/// or a bind mount of either under `/var/run/netns`.
pub fn is_own(ns: &File) -> io::Result<bool> {
    let (a, b) = (ns.metadata()?, std::fs::metadata(OWN)?);
    Ok((a.dev(), a.ino()) == (b.dev(), b.ino()))
}

/// Run `f` on a fresh thread that has entered `ns`; return its result.
pub use weft_netlink::netns::run_in;
