//! weft-wg: userspace WireGuard, a drop-in for `wireguard-go -f IFACE` as
//! weft-agent runs it, built for throughput (TUN TSO, UDP GSO/GRO).
//!
//! ```text
//! weft-wg -f IFACE      # creates TUN IFACE, serves /var/run/wireguard/IFACE.sock
//! ```
//! It always runs in the foreground (the agent detaches it with setsid).
//! SIGTERM/SIGINT remove the socket and exit; the TUN link goes with the process.

#![deny(unsafe_code)]

mod allowed_ips;
mod control;
mod datapath;
mod device;
mod offload;
#[allow(
    unsafe_code,
    reason = "the one module with raw syscalls: TUN ioctls, cmsg sendmsg/recvmsg, sigwait"
)]
mod sys;
mod uapi;

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

fn parse_args(args: &[String]) -> Result<String> {
    let rest: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !matches!(*a, "-f" | "--foreground"))
        .collect();
    match rest.as_slice() {
        [iface] if !iface.starts_with('-') => Ok(iface.to_string()),
        _ => bail!("usage: weft-wg [-f] INTERFACE-NAME"),
    }
}

/// Log, remove the socket and exit: a data thread died (e.g. the TUN link
/// was deleted under us), which is what wireguard-go does too.
fn fatal(socket: &Path, what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("weft-wg: {what}: {e}; exiting");
    let _ = std::fs::remove_file(socket);
    std::process::exit(1);
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .with_context(|| format!("start thread {name}"))?;
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let iface = parse_args(&args)?;
    // Before any thread exists, so all of them inherit the blocked mask.
    let signals = sys::block_termination_signals().context("block SIGTERM/SIGINT")?;
    let tun = sys::open_tun(&iface).with_context(|| format!("create TUN device {iface}"))?;
    if !tun.offload {
        eprintln!("weft-wg: the kernel refused TUN offloads; packets are handled one by one");
    }
    let tun = Arc::new(tun.file);
    let dev = Arc::new(device::Device::new().context("open UDP sockets")?);
    let socket = control::socket_path(&iface);
    let listener = control::listen(&socket)?;

    let (d, t, s) = (dev.clone(), tun.clone(), socket.clone());
    spawn("tun-to-udp", move || match datapath::tun_to_udp(&d, &t) {
        Ok(()) => fatal(&s, "TUN", "closed"),
        Err(e) => fatal(&s, "read TUN", e),
    })?;
    for v6 in [false, true] {
        let (d, t, s) = (dev.clone(), tun.clone(), socket.clone());
        spawn(
            if v6 { "udp6-to-tun" } else { "udp4-to-tun" },
            move || match datapath::udp_to_tun(&d, &t, v6) {
                Ok(()) => fatal(&s, "UDP", "closed"),
                Err(e) => fatal(&s, "receive UDP", e),
            },
        )?;
    }
    let d = dev.clone();
    spawn("timers", move || datapath::timers(&d))?;
    let d = dev.clone();
    spawn("uapi", move || control::serve(listener, &d))?;
    eprintln!("weft-wg: {iface} up, UAPI on {}", socket.display());

    let sig = sys::wait_for_termination(&signals);
    eprintln!("weft-wg: signal {sig}, shutting down");
    let _ = std::fs::remove_file(&socket);
    // Exiting closes the TUN fd; a non-persistent TUN link is deleted with it.
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_line_is_wireguard_go_compatible() {
        assert_eq!(parse_args(&args(&["-f", "wg0"])).unwrap(), "wg0");
        assert_eq!(parse_args(&args(&["--foreground", "wg0"])).unwrap(), "wg0");
        assert_eq!(parse_args(&args(&["wg0"])).unwrap(), "wg0");
        assert!(parse_args(&args(&[])).is_err());
        assert!(parse_args(&args(&["-x", "wg0"])).is_err());
    }
}
