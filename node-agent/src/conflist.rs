//! The node's CNI conflist, rendered from weft's own config type
//! ([`weft_cni_types::weftconf::WeftConf`]) so the plugin and the agent cannot drift.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use weft_cni_types::weftconf::WeftConf;
use weft_cni_types::Version;

use crate::config::{Settings, NETWORK_NAME};

/// The conflist's `cniVersion` when weft runs alone.
pub const CNI_VERSION: &str = "1.1.0";

/// How long a chained plugin may take to answer VERSION.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// The plugins chained after weft, as found on the node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chain {
    /// `portmap`'s supported versions (its VERSION answer), when it is
    /// installed and chaining it is on.
    pub portmap: Option<Vec<String>>,
}

/// The newest version both weft and every chained plugin speak. A runtime
/// refuses the whole list when one plugin does not support the list's
/// `cniVersion` (Debian 12's portmap stops at 1.0.0); `None` when there is
/// no common version.
pub fn common_version(chained: &[&[String]]) -> Option<Version> {
    Version::SUPPORTED
        .iter()
        .rev()
        .copied()
        .find(|v| chained.iter().all(|s| s.iter().any(|x| *x == v.to_string())))
}

/// `CNI_COMMAND=VERSION <bin>`: the versions a CNI plugin supports; `None`
/// when it is not installed. Bounded by [`VERSION_TIMEOUT`].
pub async fn plugin_versions(bin: &Path) -> Result<Option<Vec<String>>, String> {
    if !bin.is_file() {
        return Ok(None);
    }
    let what = bin.display().to_string();
    let mut child = tokio::process::Command::new(bin)
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("run {what} VERSION: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(br#"{"cniVersion":"0.3.0"}"#).await;
    }
    let out = tokio::time::timeout(VERSION_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("{what} VERSION did not answer within {VERSION_TIMEOUT:?}"))?
        .map_err(|e| format!("run {what} VERSION: {e}"))?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{what} VERSION: not a JSON answer ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let list = v["supportedVersions"]
        .as_array()
        .ok_or_else(|| format!("{what} VERSION: no supportedVersions in {v}"))?;
    Ok(Some(
        list.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
    ))
}

/// Render the conflist with the plugins found on the node: each chained
/// plugin is listed only when installed, and `cniVersion` is the newest one
/// every plugin in the list speaks (a plugin sharing none is left out).
pub fn render_chain(settings: &Settings, pod_cidrs: &[IpNetwork], mtu: u32, chain: &Chain) -> Value {
    let ranges: Vec<Value> = pod_cidrs.iter().map(|c| json!([{ "subnet": c.to_string() }])).collect();
    let mut routes = Vec::new();
    if pod_cidrs.iter().any(IpNetwork::is_ipv4) {
        routes.push(json!({"dst": "0.0.0.0/0"}));
    }
    if pod_cidrs.iter().any(IpNetwork::is_ipv6) {
        routes.push(json!({"dst": "::/0"}));
    }
    let weft = WeftConf {
        plugin_type: "weft".into(),
        bridge: Some(settings.bridge.clone()),
        mtu: Some(mtu),
        hairpin_mode: Some(true),
        log_file: Some(settings.cni_log_file.clone()),
        readiness_file: Some(settings.readiness_file.clone()),
        ipam: json!({
            "type": weft_cni_types::weftconf::IN_PROCESS_IPAM,
            "ranges": ranges,
            "routes": routes,
            "dataDir": settings.ipam_dir(),
        }),
        ..Default::default()
    };
    let mut plugins = vec![serde_json::to_value(&weft).expect("WeftConf serializes")];
    let mut version = CNI_VERSION.to_string();
    if let Some(portmap) = chain.portmap.as_deref().filter(|_| settings.chain_portmap) {
        if let Some(v) = common_version(&[portmap]) {
            version = v.to_string();
            plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
        }
    }
    json!({"cniVersion": version, "name": NETWORK_NAME, "plugins": plugins})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn settings() -> Settings {
        Settings::for_test(Path::new("/n1"), "n1")
    }

    #[test]
    fn golden_dual_stack() {
        let cidrs = ["10.244.1.0/24".parse().unwrap(), "fd00:10:244:1::/64".parse().unwrap()];
        let chain = Chain {
            portmap: Some(versions(&["1.0.0", "1.1.0"])),
        };
        let got = render_chain(&settings(), &cidrs, 1440, &chain);
        let want = json!({
            "cniVersion": "1.1.0", "name": "weft",
            "plugins": [
                {"type": "weft", "bridge": "weft0", "mtu": 1440, "hairpinMode": true,
                 "logFile": "/n1/log/cni.log", "readinessFile": "/n1/run/ready",
                 "ipam": {"type": "weft-ipam",
                          "ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]],
                          "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                          "dataDir": "/n1/state/ipam"}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        assert_eq!(got, want, "{}", serde_json::to_string_pretty(&got).unwrap());
    }

    fn versions(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_list_speaks_the_newest_version_every_plugin_knows() {
        let cidrs = ["10.244.1.0/24".parse().unwrap()];
        // Debian 12's portmap (containernetworking-plugins 1.1.1).
        let old = Chain {
            portmap: Some(versions(&["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"])),
        };
        let list = render_chain(&settings(), &cidrs, 1440, &old);
        assert_eq!(list["cniVersion"], "1.0.0");
        assert_eq!(list["plugins"][1]["type"], "portmap");
        // A current portmap: 1.1.0.
        let new = Chain {
            portmap: Some(versions(&["0.3.1", "0.4.0", "1.0.0", "1.1.0"])),
        };
        assert_eq!(render_chain(&settings(), &cidrs, 1440, &new)["cniVersion"], "1.1.0");
        // Not installed, or nothing in common: weft alone at 1.1.0.
        for chain in [
            Chain { portmap: None },
            Chain {
                portmap: Some(versions(&["0.2.0"])),
            },
        ] {
            let list = render_chain(&settings(), &cidrs, 1440, &chain);
            assert_eq!(list["cniVersion"], "1.1.0");
            assert_eq!(list["plugins"].as_array().unwrap().len(), 1, "{chain:?}");
        }
    }

    /// Debian's reference portmap, asked as a runtime asks it.
    #[tokio::test]
    async fn the_installed_portmap_is_asked_for_its_versions() {
        let bin = Path::new("/usr/lib/cni/portmap");
        assert!(
            bin.is_file(),
            "{} is missing: install containernetworking-plugins (tests/setup.sh)",
            bin.display()
        );
        let got = plugin_versions(bin).await.unwrap().expect("installed");
        assert!(got.contains(&"1.0.0".to_string()), "{got:?}");
        let v = common_version(&[&got]).unwrap();
        assert!(v >= Version::V1_0_0, "{v}");
        assert_eq!(plugin_versions(Path::new("/nonexistent/portmap")).await.unwrap(), None);
        // A binary that is not a CNI plugin is an error, not a guess.
        assert!(plugin_versions(Path::new("/bin/true")).await.is_err());
    }

    /// The plugin's own parser must accept what the agent writes.
    #[test]
    fn the_plugin_accepts_what_the_agent_writes() {
        let mut s = settings();
        s.chain_portmap = false;
        let cidrs = ["10.244.7.0/24".parse().unwrap()];
        let list = render_chain(&s, &cidrs, 1420, &Chain::default());
        assert_eq!(list["plugins"].as_array().unwrap().len(), 1);
        // What a runtime sends the plugin: its object plus the list's version and name.
        let mut net = list["plugins"][0].clone();
        net["cniVersion"] = list["cniVersion"].clone();
        net["name"] = list["name"].clone();
        let conf = WeftConf::parse(net.to_string().as_bytes()).unwrap();
        assert_eq!(conf.mtu, Some(1420));
        assert_eq!(conf.ipam["routes"], json!([{"dst": "0.0.0.0/0"}]));
    }
}
