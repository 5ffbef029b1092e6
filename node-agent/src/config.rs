//! The agent's settings: every path, name and port, with the defaults of
//! `shared/design.md`. `main` fills this from flags and env; the lab runs
//! several agents on one filesystem, so nothing here may be assumed per-node
//! unless it comes from a setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnetwork::IpNetwork;

/// How the WireGuard device is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// The kernel module when it can create a link, else userspace.
    Auto,
    Kernel,
    Userspace,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "kernel" => Ok(Self::Kernel),
            "userspace" => Ok(Self::Userspace),
            other => Err(format!("{other:?} is not auto, kernel or userspace")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub node_name: String,
    /// The WireGuard device (`weft-wg`).
    pub wg_iface: String,
    pub wg_port: u16,
    pub wg_backend: BackendChoice,
    /// The userspace WireGuard binary (`wireguard-go` or a compatible one:
    /// takes `-f IFACE`, serves the UAPI socket `<socket dir>/IFACE.sock`).
    pub wg_userspace_bin: PathBuf,
    /// Where the userspace implementation's UAPI socket lives.
    pub wg_socket_dir: PathBuf,
    /// Overlay MTU; computed from the underlay when `None`.
    pub mtu: Option<u32>,
    /// Destinations pods reach without masquerade; all nodes' pod CIDRs when empty.
    pub cluster_cidrs: Vec<IpNetwork>,
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    /// Where `weft` and `weft-ipam` are copied from.
    pub cni_source_dir: PathBuf,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub readiness_file: PathBuf,
    pub cni_log_file: PathBuf,
    pub bridge: String,
    /// Chain the `portmap` plugin after weft in the conflist.
    pub chain_portmap: bool,
    /// `/healthz` and `/livez` (kube-proxy's `0.0.0.0:10256`); `None`: off.
    pub healthz_addr: Option<SocketAddr>,
    /// `/metrics` (kube-proxy's `127.0.0.1:10249`); `None`: off.
    pub metrics_addr: Option<SocketAddr>,
    /// Move every other CNI config in the conf dir aside (into
    /// [`MOVED_DIR`]) so weft's is the one the runtime uses; `cleanup` puts
    /// them back.
    pub cni_exclusive: bool,
    /// Full reconcile at least this often (drift repair, metrics refresh).
    pub resync: Duration,
    /// Strict mode: drop traffic to other nodes' pod CIDRs that would leave
    /// this node through anything but the WireGuard device.
    pub strict: bool,
    /// Program Services (the Services loop, table `inet weft-svc`).
    pub services: bool,
}

pub const CONFLIST_NAME: &str = "10-weft.conflist";
pub const NETWORK_NAME: &str = "weft";
pub const CNI_BINARIES: [&str; 2] = ["weft", "weft-ipam"];
/// Subdirectory of the CNI conf dir that holds the configs `cni_exclusive`
/// moved aside (runtimes read only the conf dir itself, not subdirectories).
pub const MOVED_DIR: &str = "weft-moved";

impl Settings {
    pub fn key_file(&self) -> PathBuf {
        self.state_dir.join("wireguard.key")
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.state_dir.join("ipam")
    }

    pub fn conflist_path(&self) -> PathBuf {
        self.cni_conf_dir.join(CONFLIST_NAME)
    }

    pub fn moved_dir(&self) -> PathBuf {
        self.cni_conf_dir.join(MOVED_DIR)
    }

    pub fn wg_socket(&self) -> PathBuf {
        self.wg_socket_dir.join(format!("{}.sock", self.wg_iface))
    }

    /// The pid of the userspace WireGuard process this node started.
    pub fn wg_pid_file(&self) -> PathBuf {
        self.run_dir.join(format!("{}.pid", self.wg_iface))
    }

    pub fn wg_log_file(&self) -> PathBuf {
        self.run_dir.join(format!("{}.log", self.wg_iface))
    }

    /// Settings for tests: everything under `root`.
    pub fn for_test(root: &std::path::Path, node: &str) -> Self {
        Settings {
            node_name: node.into(),
            wg_iface: "weft-wg".into(),
            wg_port: 51820,
            wg_backend: BackendChoice::Auto,
            wg_userspace_bin: "wireguard-go".into(),
            wg_socket_dir: root.join("run/wireguard"),
            mtu: None,
            cluster_cidrs: vec![],
            cni_bin_dir: root.join("bin"),
            cni_conf_dir: root.join("net.d"),
            cni_source_dir: root.join("src"),
            state_dir: root.join("state"),
            run_dir: root.join("run"),
            readiness_file: root.join("run/ready"),
            cni_log_file: root.join("log/cni.log"),
            bridge: "weft0".into(),
            chain_portmap: true,
            healthz_addr: Some(([127, 0, 0, 1], 0).into()),
            metrics_addr: Some(([127, 0, 0, 1], 0).into()),
            cni_exclusive: true,
            resync: Duration::from_secs(30),
            strict: true,
            services: true,
        }
    }
}
