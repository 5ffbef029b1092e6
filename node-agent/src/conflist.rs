//! The node's CNI conflist, rendered from weft's own config type
//! ([`weft_cni_types::weftconf::WeftConf`]) so the plugin and the agent cannot drift.

use ipnetwork::IpNetwork;
use serde_json::{json, Value};
use weft_cni_types::weftconf::WeftConf;

use crate::config::{Settings, NETWORK_NAME};

/// The conflist's `cniVersion`.
pub const CNI_VERSION: &str = "1.1.0";

/// Render the conflist for a node with these pod CIDRs and MTU.
pub fn render(settings: &Settings, pod_cidrs: &[IpNetwork], mtu: u32) -> Value {
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
    if settings.chain_portmap {
        plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
    }
    json!({"cniVersion": CNI_VERSION, "name": NETWORK_NAME, "plugins": plugins})
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
        let got = render(&settings(), &cidrs, 1440);
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

    /// The plugin's own parser must accept what the agent writes.
    #[test]
    fn the_plugin_accepts_what_the_agent_writes() {
        let mut s = settings();
        s.chain_portmap = false;
        let cidrs = ["10.244.7.0/24".parse().unwrap()];
        let list = render(&s, &cidrs, 1420);
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
