//! The weft plugin's object of a conflist: what `weft-agent` writes and the
//! `weft` plugin reads, one type so the two cannot drift. Validating it into
//! what the plugin works from needs the IPAM crate, so that is the plugin's
//! (`weft_cni::config::Plan::new`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{parse_config, CniError, Dns};

pub const DEFAULT_BRIDGE: &str = "weft0";
pub const DEFAULT_MTU: u32 = 1500;
pub const DEFAULT_LOG_FILE: &str = "/var/log/weft/cni.log";
pub const DEFAULT_READINESS_FILE: &str = "/run/weft/ready";
pub const IN_PROCESS_IPAM: &str = "weft-ipam";

/// The weft plugin's network configuration, as it appears in a conflist.
///
/// ```json
/// {"type":"weft","bridge":"weft0","mtu":1420,"hairpinMode":true,
///  "logFile":"/var/log/weft/cni.log","readinessFile":"/run/weft/ready",
///  "ipam":{"type":"weft-ipam","ranges":[[{"subnet":"10.244.1.0/24"}]],
///          "routes":[{"dst":"0.0.0.0/0"}],"dataDir":"/var/lib/weft/ipam"}}
/// ```
/// Every field but `ipam.ranges` has a default. Unknown fields are ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WeftConf {
    #[serde(rename = "cniVersion", default, skip_serializing_if = "String::is_empty")]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(rename = "hairpinMode", default, skip_serializing_if = "Option::is_none")]
    pub hairpin_mode: Option<bool>,
    #[serde(rename = "logFile", default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<PathBuf>,
    /// STATUS reports "not ready" (code 50) until this file exists.
    #[serde(rename = "readinessFile", default, skip_serializing_if = "Option::is_none")]
    pub readiness_file: Option<PathBuf>,
    #[serde(default)]
    pub ipam: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(rename = "runtimeConfig", default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<RuntimeConfig>,
    /// Capabilities weft declares in the conflist (portMappings, ips, bandwidth
    /// are passed through runtimeConfig to the chained plugins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Value>,
}

/// What the runtime passes for the capabilities weft accepts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RuntimeConfig {
    #[serde(rename = "portMappings", default)]
    pub port_mappings: Vec<PortMapping>,
    #[serde(default)]
    pub bandwidth: Option<Bandwidth>,
    #[serde(default)]
    pub ips: Vec<String>,
}

/// A hostPort mapping. podman sends `hostPort`, containerd's CRI `HostPort`:
/// both spellings are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort", alias = "HostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort", alias = "ContainerPort")]
    pub container_port: u16,
    #[serde(default, alias = "Protocol")]
    pub protocol: Option<String>,
    #[serde(rename = "hostIP", alias = "HostIP", alias = "HostIp", alias = "hostIp", default)]
    pub host_ip: Option<String>,
}

/// The `bandwidth` capability (bits per second, burst in bits); the chained
/// `bandwidth` plugin enforces it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bandwidth {
    #[serde(rename = "ingressRate", alias = "IngressRate", default)]
    pub ingress_rate: Option<u64>,
    #[serde(rename = "ingressBurst", alias = "IngressBurst", default)]
    pub ingress_burst: Option<u64>,
    #[serde(rename = "egressRate", alias = "EgressRate", default)]
    pub egress_rate: Option<u64>,
    #[serde(rename = "egressBurst", alias = "EgressBurst", default)]
    pub egress_burst: Option<u64>,
}

impl WeftConf {
    /// Parse the plugin's network config from stdin: not JSON is code 6, a
    /// field of the wrong type code 7 naming it.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        parse_config(stdin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_agent_writes_the_plugin_reads_back() {
        let c = WeftConf {
            plugin_type: "weft".into(),
            mtu: Some(1420),
            ipam: serde_json::json!({"type": IN_PROCESS_IPAM, "ranges": [[{"subnet": "10.244.1.0/24"}]]}),
            ..Default::default()
        };
        let v = serde_json::to_value(&c).unwrap();
        // Unset optional fields are left out, not written as null.
        assert_eq!(v.as_object().unwrap().len(), 3, "{v}");
        let back = WeftConf::parse(v.to_string().as_bytes()).unwrap();
        assert_eq!(
            (back.mtu, back.ipam["type"].as_str()),
            (Some(1420), Some(IN_PROCESS_IPAM))
        );
    }

    #[test]
    fn both_port_mapping_spellings_and_precise_errors() {
        let c = WeftConf::parse(
            br#"{"type":"weft","runtimeConfig":{"portMappings":[{"HostPort":80,"ContainerPort":8080}]}}"#,
        )
        .unwrap();
        assert_eq!(c.runtime_config.unwrap().port_mappings[0].host_port, 80);
        let e = WeftConf::parse(br#"{"mtu":"big"}"#).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("field mtu"), "{}", e.msg);
        assert_eq!(WeftConf::parse(b"{").unwrap_err().code, 6);
    }
}
