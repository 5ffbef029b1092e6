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
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

/// Open a netns file such as `/var/run/netns/pod1` or `/proc/PID/ns/net`.
pub fn open(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// Run `f` on a fresh thread that has entered `ns`; return its result.
pub fn run_in<T: Send>(ns: &File, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // setns(2) with CLONE_NEWNET changes only the calling thread.
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            f()
        })
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
    })
}
