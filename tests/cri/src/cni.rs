//! The CNI side of the node: which network containerd is given (weft, or
//! Debian's reference plugins for comparison), the bin dir it executes
//! plugins from, and what the IPAM leaves on disk.

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

/// The pod range every network in this test allocates from.
pub const SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 88, 7, 0), 24);
/// The node bridge, for both networks.
pub const BRIDGE: &str = "weft0";

/// Which CNI network containerd drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// `weft` with its IPAM, then `portmap`: what the weft agent installs.
    Weft,
    /// Debian's `bridge` + `host-local`, then `portmap`: the same topology
    /// from the reference plugins, to tell harness bugs from weft bugs.
    Reference,
}

impl Network {
    /// The conflist's `name`: also the IPAM's subdirectory of `dataDir`.
    pub fn name(self) -> &'static str {
        match self {
            Network::Weft => "weft",
            Network::Reference => "reference-bridge",
        }
    }

    /// The conflist, with logs and IPAM state under the node's temp dir.
    pub fn conflist(self, log_file: &Path, ipam_dir: &Path) -> Value {
        let ipam = |kind: &str| {
            json!({
                "type": kind,
                "ranges": [[{ "subnet": subnet_string() }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": ipam_dir,
            })
        };
        let main = match self {
            Network::Weft => json!({
                "type": "weft",
                "bridge": BRIDGE,
                "mtu": 1420,
                "hairpinMode": true,
                "logFile": log_file,
                "ipam": ipam("weft-ipam"),
            }),
            Network::Reference => json!({
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "mtu": 1420,
                "hairpinMode": true,
                "ipam": ipam("host-local"),
            }),
        };
        // 1.0.0: the newest version containerd 1.6's libcni and Debian's
        // reference plugins both speak.
        json!({
            "cniVersion": "1.0.0",
            "name": self.name(),
            "plugins": [main, { "type": "portmap", "capabilities": { "portMappings": true } }],
        })
    }

    /// The plugin binaries this network adds to the system ones.
    fn own_plugins(self) -> Result<Vec<PathBuf>> {
        match self {
            Network::Weft => weft_binaries(),
            Network::Reference => Ok(Vec::new()),
        }
    }
}

/// `10.88.7.0/24`.
pub fn subnet_string() -> String {
    format!("{}/{}", SUBNET.0, SUBNET.1)
}

/// Whether `ip` lies in [`SUBNET`].
pub fn in_subnet(ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - u32::from(SUBNET.1));
    u32::from(ip) & mask == u32::from(SUBNET.0)
}

/// `weft` and `weft-ipam` from this workspace's target dir. The test runs
/// as target/<profile>/deps/<test>-<hash>, the binaries sit in
/// target/<profile>/.
pub fn weft_binaries() -> Result<Vec<PathBuf>> {
    let exe = std::env::current_exe().context("locate the test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("{} has no grandparent directory", exe.display()))?;
    ["weft", "weft-ipam"]
        .iter()
        .map(|name| {
            let path = profile_dir.join(name);
            ensure!(
                path.is_file(),
                "{} is missing: build the plugins into this target dir first \
                 (cargo build -p weft-cni -p weft-ipam, with the same CARGO_TARGET_DIR)",
                path.display()
            );
            Ok(path)
        })
        .collect()
}

/// Fill containerd's CNI `bin_dir` with symlinks: every system plugin (the
/// CRI needs `loopback`, the chain needs `portmap`), then this network's own.
pub fn populate_bin_dir(bin_dir: &Path, system_dir: &Path, network: Network) -> Result<()> {
    let entries = fs::read_dir(system_dir).with_context(|| format!("list {}", system_dir.display()))?;
    let mut plugins = Vec::new();
    for entry in entries {
        plugins.push(entry?.path());
    }
    plugins.extend(network.own_plugins()?);
    for plugin in plugins {
        let name = plugin.file_name().context("plugin path without a name")?;
        let link = bin_dir.join(name);
        symlink(&plugin, &link).with_context(|| format!("symlink {} -> {}", link.display(), plugin.display()))?;
    }
    Ok(())
}

/// Write the conflist into containerd's CNI `conf_dir`.
pub fn write_conflist(conf_dir: &Path, conflist: &Value) -> Result<PathBuf> {
    let name = conflist["name"].as_str().context("conflist without a name")?;
    let path = conf_dir.join(format!("10-{name}.conflist"));
    fs::write(&path, serde_json::to_vec_pretty(conflist)?).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// The files under the network's IPAM state directory (`dataDir/<name>/`,
/// searched recursively) that mention `needle` in their path or content.
/// Works for both layouts: weft-ipam's state file listing `containerId`s,
/// and host-local's file per address holding the container ID.
pub fn ipam_files_mentioning(ipam_dir: &Path, network: Network, needle: &str) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    collect_files_mentioning(&ipam_dir.join(network.name()), needle, &mut found)?;
    Ok(found)
}

fn collect_files_mentioning(dir: &Path, needle: &str, found: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files_mentioning(&path, needle, found)?;
            continue;
        }
        let content = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        if path.to_string_lossy().contains(needle) || String::from_utf8_lossy(&content).contains(needle) {
            found.push(path);
        }
    }
    Ok(())
}

/// Where containerd's libcni caches attachment results: on the host's
/// /var/lib/cni (containerd 1.6 offers no setting for it), one file per
/// network and interface, named `<network>-<container ID>-<ifname>`.
pub const LIBCNI_RESULTS_DIR: &str = "/var/lib/cni/results";

/// libcni's cached results for `container_id` (the pod's network and the
/// CRI's own `cni-loopback`). DEL must have removed them.
pub fn libcni_cache_files(container_id: &str) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(LIBCNI_RESULTS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context(format!("list {LIBCNI_RESULTS_DIR}")),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains(container_id))
        {
            found.push(path);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_membership() {
        assert!(in_subnet(Ipv4Addr::new(10, 88, 7, 2)));
        assert!(in_subnet(Ipv4Addr::new(10, 88, 7, 255)));
        assert!(!in_subnet(Ipv4Addr::new(10, 88, 8, 2)));
        assert!(!in_subnet(Ipv4Addr::new(10, 88, 6, 255)));
    }

    #[test]
    fn conflists_share_shape() {
        for network in [Network::Weft, Network::Reference] {
            let c = network.conflist(Path::new("/l"), Path::new("/i"));
            assert_eq!(c["cniVersion"], "1.0.0");
            assert_eq!(c["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], "10.88.7.0/24");
            assert_eq!(c["plugins"][0]["ipam"]["dataDir"], "/i");
            assert_eq!(c["plugins"][1]["type"], "portmap");
        }
        let weft = Network::Weft.conflist(Path::new("/l"), Path::new("/i"));
        assert_eq!(weft["plugins"][0]["logFile"], "/l");
        assert_eq!(weft["plugins"][0]["ipam"]["type"], "weft-ipam");
    }
}
