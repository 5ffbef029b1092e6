//! The WireGuard device: the kernel module when it is there, otherwise a
//! userspace implementation (`weft-wg` when it ships beside the agent, else
//! `wireguard-go`) running as its own
//! process.
//!
//! The userspace process is started detached — its own session, stdin/out
//! not tied to the agent — so killing or upgrading the agent never takes the
//! tunnel down. A restarted agent finds the device (the UAPI socket answers,
//! or the kernel link exists) and adopts it: it reads the peers and changes
//! only what differs.
//!
//! Userspace implementations put their UAPI socket in the fixed directory
//! `/var/run/wireguard`. When the configured socket directory differs (the
//! lab runs one agent per node on one filesystem), the process is started in
//! a private mount namespace where that directory is bind-mounted on
//! `/var/run/wireguard`:
//! `setsid unshare --mount --propagation private sh -c 'mount --bind DIR /run/wireguard && exec wireguard-go -f weft-wg'`.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;

use crate::config::{BackendChoice, Settings};
use crate::key::{PrivateKey, PublicKey};
use crate::net::{self, Net, NetError};
use crate::peers::{PeerChange, PeerState};
use crate::uapi::{self, DeviceState, UapiError, Update};

/// Where userspace implementations put their socket.
const STANDARD_SOCKET_DIR: &str = "/var/run/wireguard";
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WgError {
    #[error("userspace WireGuard: {0}")]
    Uapi(#[from] UapiError),
    #[error("kernel WireGuard {op}: {source}")]
    Kernel {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("start {bin}: {source}")]
    Spawn {
        bin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{bin} did not open {socket} within {timeout:?} (its log: {log})")]
    NoSocket {
        bin: String,
        socket: String,
        timeout: Duration,
        log: String,
    },
    #[error("the kernel cannot create a WireGuard link and --wg-backend=kernel: {0}")]
    NoKernelModule(#[source] NetError),
    #[error("no kernel WireGuard, and the external userspace WireGuard (--wg-userspace=external) does not answer on {socket} yet")]
    WaitingForExternal { socket: String },
}

/// `--wg-userspace external`: the userspace implementation is run by someone
/// else (a sidecar container of the DaemonSet pod, so that it outlives agent
/// container restarts); the agent only adopts it, never starts or removes it.
pub const EXTERNAL_USERSPACE: &str = "external";

fn external(s: &Settings) -> bool {
    s.wg_userspace_bin.as_os_str() == EXTERNAL_USERSPACE
}

/// A WireGuard device the agent can read and change.
#[derive(Debug, Clone)]
pub enum Device {
    Kernel { name: String },
    Userspace { socket: PathBuf },
}

impl Device {
    pub fn kind(&self) -> &'static str {
        match self {
            Device::Kernel { .. } => "kernel",
            Device::Userspace { .. } => "userspace",
        }
    }

    /// `wg show IFACE`
    pub async fn get(&self) -> Result<DeviceState, WgError> {
        match self {
            Device::Userspace { socket } => Ok(uapi::get(socket).await?),
            Device::Kernel { name } => kernel_get(name.clone()).await,
        }
    }

    /// `wg set IFACE ...`
    pub async fn apply(&self, u: &Update) -> Result<(), WgError> {
        match self {
            Device::Userspace { socket } => Ok(uapi::set(socket, u).await?),
            Device::Kernel { name } => kernel_apply(name.clone(), u.clone()).await,
        }
    }
}

/// Find the device (adopting one that survived an agent restart) or create it.
/// Returns the device and whether it was created now.
pub async fn ensure(s: &Settings, net: &Net) -> Result<(Device, bool), WgError> {
    let socket = s.wg_socket();
    if s.wg_backend != BackendChoice::Kernel && uapi::get(&socket).await.is_ok() {
        return Ok((Device::Userspace { socket }, false));
    }
    let link = net.link(&s.wg_iface).await?;
    if let Some(l) = &link {
        if net::is_wireguard(l) && s.wg_backend != BackendChoice::Userspace {
            return Ok((
                Device::Kernel {
                    name: s.wg_iface.clone(),
                },
                false,
            ));
        }
        if external(s) {
            // Most likely the sidecar's TUN, its socket not open yet: not ours to remove.
            return Err(WgError::WaitingForExternal {
                socket: socket.display().to_string(),
            });
        }
        // A TUN left by a userspace process that died: start afresh.
        tracing::info!(iface = %s.wg_iface, "removing a stale WireGuard link with no process behind it");
        net.del_link(&s.wg_iface).await?;
    }
    if s.wg_backend != BackendChoice::Userspace {
        match net.add_wireguard(&s.wg_iface).await {
            Ok(()) => {
                return Ok((
                    Device::Kernel {
                        name: s.wg_iface.clone(),
                    },
                    true,
                ))
            }
            Err(e) if s.wg_backend == BackendChoice::Kernel => return Err(WgError::NoKernelModule(e)),
            Err(e) => {
                tracing::info!(error = %e, "no kernel WireGuard; using userspace {}", s.wg_userspace_bin.display())
            }
        }
    }
    if external(s) {
        return Err(WgError::WaitingForExternal {
            socket: socket.display().to_string(),
        });
    }
    start_userspace(s).await?;
    Ok((Device::Userspace { socket }, true))
}

/// The command line that starts the userspace implementation detached.
pub fn userspace_command(s: &Settings) -> Command {
    let mut c = Command::new("setsid");
    let bin = s.wg_userspace_bin.as_os_str();
    if s.wg_socket_dir == Path::new(STANDARD_SOCKET_DIR) {
        c.arg(bin).arg("-f").arg(&s.wg_iface);
    } else {
        // /var/run is a symlink to /run on current distributions.
        c.args(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mkdir -p /run/wireguard && mount --bind \"$0\" /run/wireguard && exec \"$1\" -f \"$2\"")
            .arg(&s.wg_socket_dir)
            .arg(bin)
            .arg(&s.wg_iface);
    }
    // wireguard-go refuses to run on Linux without this.
    c.env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
    c
}

async fn start_userspace(s: &Settings) -> Result<(), WgError> {
    let bin = s.wg_userspace_bin.display().to_string();
    let spawn_err = |source| WgError::Spawn {
        bin: bin.clone(),
        source,
    };
    for d in [&s.wg_socket_dir, &s.run_dir] {
        fs::create_dir_all(d).map_err(spawn_err)?;
    }
    let _ = fs::remove_file(s.wg_socket());
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(s.wg_log_file())
        .map_err(spawn_err)?;
    let mut cmd = userspace_command(s);
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().map_err(spawn_err)?)
        .stderr(log);
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let pid = child.id();
    fs::write(s.wg_pid_file(), format!("{pid}\n")).map_err(spawn_err)?;
    tracing::info!(pid, bin = %bin, iface = %s.wg_iface, "started userspace WireGuard");
    // Reap it if it ever exits while we run; it is not killed when we exit.
    std::thread::spawn(move || {
        if let Ok(status) = child.wait() {
            tracing::warn!(pid, %status, "userspace WireGuard exited");
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if uapi::get(&s.wg_socket()).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(WgError::NoSocket {
        bin,
        socket: s.wg_socket().display().to_string(),
        timeout: START_TIMEOUT,
        log: s.wg_log_file().display().to_string(),
    })
}

/// How often [`watch_userspace`] checks the userspace device.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// Watch the userspace WireGuard, whoever started it (this process, an agent
/// before a restart, or a sidecar): every [`WATCH_EVERY`] connect to its
/// UAPI socket (refused once the process is gone, even if the socket file
/// is left behind). When it goes from answering to not answering, count it
/// set `full` and notify `trigger`, so the mesh loop recreates it with a full
/// pass at once instead of at the next resync. Runs until the process ends.
pub fn watch_userspace(
    s: &Settings,
    trigger: std::sync::Arc<tokio::sync::Notify>,
    full: std::sync::Arc<std::sync::atomic::AtomicBool>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) {
    if s.wg_backend == BackendChoice::Kernel {
        return;
    }
    let socket = s.wg_socket();
    tokio::spawn(async move {
        let mut alive = false;
        loop {
            let now = matches!(
                tokio::time::timeout(Duration::from_secs(1), tokio::net::UnixStream::connect(&socket)).await,
                Ok(Ok(_))
            );
            if alive && !now {
                metrics.repaired("wireguard_process");
                tracing::warn!(socket = %socket.display(), "userspace WireGuard stopped answering; recreating the device now");
                full.store(true, std::sync::atomic::Ordering::SeqCst);
                trigger.notify_one();
            }
            alive = now;
            tokio::time::sleep(WATCH_EVERY).await;
        }
    });
}

/// Stop the userspace process this node started (by its pid file, after
/// checking the pid still runs that binary for this interface).
pub fn stop_userspace(s: &Settings) -> std::io::Result<bool> {
    let Ok(text) = fs::read_to_string(s.wg_pid_file()) else {
        return Ok(false);
    };
    let pid: i32 = text.trim().parse().unwrap_or(0);
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let ours = pid > 0 && cmdline.contains(&s.wg_iface);
    if ours {
        // SIGTERM: wireguard-go removes its TUN link and socket and exits.
        let target = nix::unistd::Pid::from_raw(pid);
        if nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM).is_err() {
            return Ok(false);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = fs::remove_file(s.wg_pid_file());
    Ok(ours)
}

// --- kernel backend, through wireguard-control's generic netlink ----------

fn iface_name(name: &str) -> Result<wireguard_control::InterfaceName, WgError> {
    name.parse().map_err(|_| WgError::Kernel {
        op: "parse interface name",
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, name.to_string()),
    })
}

async fn kernel_get(name: String) -> Result<DeviceState, WgError> {
    let join = tokio::task::spawn_blocking(move || {
        let n = iface_name(&name)?;
        wireguard_control::Device::get(&n, wireguard_control::Backend::Kernel)
            .map_err(|source| WgError::Kernel { op: "get", source })
    })
    .await;
    let dev = join.map_err(|e| WgError::Kernel {
        op: "get",
        source: std::io::Error::other(e),
    })??;
    Ok(DeviceState {
        private_key: dev.private_key.map(|k| PrivateKey::from_bytes(k.0)),
        listen_port: dev.listen_port.unwrap_or(0),
        peers: dev
            .peers
            .iter()
            .map(|p| PeerState {
                key: Some(PublicKey(p.config.public_key.0)),
                endpoint: p.config.endpoint,
                allowed_ips: p
                    .config
                    .allowed_ips
                    .iter()
                    .filter_map(|a| IpNetwork::new(a.address, a.cidr).ok())
                    .collect(),
                last_handshake: p.stats.last_handshake_time,
                rx_bytes: p.stats.rx_bytes,
                tx_bytes: p.stats.tx_bytes,
            })
            .collect(),
    })
}

fn kernel_update(u: &Update) -> wireguard_control::DeviceUpdate {
    use wireguard_control::{DeviceUpdate, Key, PeerConfigBuilder};
    let mut d = DeviceUpdate::new();
    if let Some(k) = &u.private_key {
        d = d.set_private_key(Key(*k.as_bytes()));
    }
    if let Some(p) = u.listen_port {
        d = d.set_listen_port(p);
    }
    for c in &u.peers {
        d = match c {
            PeerChange::Remove(k) => d.remove_peer_by_key(&Key(k.0)),
            PeerChange::Add(p) | PeerChange::Update(p) => {
                let mut b = PeerConfigBuilder::new(&Key(p.key.0))
                    .set_endpoint(p.endpoint)
                    .replace_allowed_ips();
                for ip in &p.allowed_ips {
                    b = b.add_allowed_ip(ip.ip(), ip.prefix());
                }
                d.add_peer(b)
            }
        };
    }
    d
}

async fn kernel_apply(name: String, u: Update) -> Result<(), WgError> {
    let join = tokio::task::spawn_blocking(move || {
        let n = iface_name(&name)?;
        kernel_update(&u)
            .apply(&n, wireguard_control::Backend::Kernel)
            .map_err(|source| WgError::Kernel { op: "set", source })
    })
    .await;
    join.map_err(|e| WgError::Kernel {
        op: "set",
        source: std::io::Error::other(e),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::PeerSpec;

    fn spec(n: u32) -> PeerSpec {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&n.to_be_bytes());
        PeerSpec {
            node: format!("node-{n}"),
            key: PublicKey(k),
            endpoint: std::net::SocketAddr::from(([172, 30, (n >> 8) as u8, n as u8], 51820)),
            allowed_ips: [
                format!("10.{}.{}.0/24", (n >> 8) as u8, n as u8).parse().unwrap(),
                format!("fd00:10:244:{n:x}::/64").parse().unwrap(),
            ]
            .into(),
        }
    }

    /// The kernel backend's message, read through its Debug form (the
    /// crate's fields are private): every change maps to one peer entry with
    /// the right flags, without root or a kernel module.
    #[test]
    fn kernel_update_carries_every_change() {
        let removed = PublicKey([9; 32]);
        let u = Update {
            private_key: Some(PrivateKey::from_bytes([7; 32])),
            listen_port: Some(51820),
            peers: vec![
                PeerChange::Remove(removed),
                PeerChange::Add(spec(1)),
                PeerChange::Update(spec(2)),
            ],
        };
        let d = kernel_update(&u);
        let text = format!("{d:?}");
        assert!(text.contains("listen_port: Some(51820)"), "{text}");
        assert!(
            text.contains("replace_peers: false"),
            "never replace the whole peer list: {text}"
        );
        assert_eq!(text.matches("PeerConfigBuilder").count(), 3, "{text}");
        assert_eq!(text.matches("remove_me: true").count(), 1, "{text}");
        // Added and updated peers replace their allowed IPs and carry the endpoint.
        assert_eq!(text.matches("replace_allowed_ips: true").count(), 2, "{text}");
        assert!(text.contains("endpoint: Some(172.30.0.1:51820)"), "{text}");
        assert!(text.contains("endpoint: Some(172.30.0.2:51820)"), "{text}");
        assert!(
            text.contains("allowed_ips: [10.0.2.0/24, fd00:10:244:2::/64]"),
            "{text}"
        );
        assert!(text.contains("private_key: Some(Key(\"BwcHBwcH"), "{text}");
        // An empty update is an empty message.
        assert_eq!(
            kernel_update(&Update::default()),
            wireguard_control::DeviceUpdate::new()
        );
    }

    #[test]
    fn ten_thousand_added_peers_are_one_update() {
        let u = Update {
            peers: (0..10_000).map(|n| PeerChange::Add(spec(n))).collect(),
            ..Default::default()
        };
        let text = format!("{:?}", kernel_update(&u));
        assert_eq!(text.matches("PeerConfigBuilder").count(), 10_000);
        assert_eq!(text.matches("remove_me: true").count(), 0);
    }

    fn args(c: &Command) -> Vec<String> {
        std::iter::once(c.get_program())
            .chain(c.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn userspace_is_started_detached_and_in_a_private_mount_ns_when_the_socket_dir_is_not_standard() {
        let mut s = Settings::for_test(Path::new("/lab/n1"), "n1");
        let a = args(&userspace_command(&s));
        assert_eq!(a[..3], ["setsid", "unshare", "--mount"]);
        assert!(a.contains(&"/lab/n1/run/wireguard".to_string()));
        assert_eq!(a[a.len() - 2..], ["wireguard-go", "weft-wg"]);
        s.wg_socket_dir = STANDARD_SOCKET_DIR.into();
        s.wg_userspace_bin = "/usr/local/bin/fast-wg".into();
        assert_eq!(
            args(&userspace_command(&s)),
            ["setsid", "/usr/local/bin/fast-wg", "-f", "weft-wg"]
        );
    }
}
