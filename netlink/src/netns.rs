//! Entering a network namespace without ever switching a thread back.
//!
//! To talk to the kernel inside another netns, a short-lived thread enters
//! it, does its work there (opens a netlink socket, writes a sysctl) and
//! exits. A socket stays bound to the netns it was created in, so the
//! caller then uses it from its own thread. The thread's netns dies with the
//! thread: no early return can leave a thread in the wrong netns.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use nix::sched::{setns, CloneFlags};

/// Run `f` on a fresh thread that has entered `ns` (a file such as
/// `/var/run/netns/pod1` or `/proc/PID/ns/net`); return its result.
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
