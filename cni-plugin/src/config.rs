//! weft's network configuration: the plugin object of the conflist (what the
//! agent writes), parsed strictly and validated into a [`Plan`] before the
//! first side effect.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use weft_cni_types::{parse_config, CniError, Dns, IfName, Version};
use weft_ipam::{Ipam, IpamConf};

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

/// How addresses are obtained.
pub enum IpamMode {
    /// `weft-ipam`, linked in.
    InProcess(Ipam),
    /// Any other type: the plugin binary of that name in CNI_PATH.
    Delegated { plugin: String },
}

/// A validated configuration: everything ADD/DEL/CHECK/GC/STATUS work from.
pub struct Plan {
    pub network: String,
    pub version: Version,
    pub bridge: IfName,
    pub mtu: u32,
    pub hairpin: bool,
    pub log_file: PathBuf,
    pub readiness_file: PathBuf,
    pub ipam: IpamMode,
    pub dns: Dns,
    pub port_mappings: Vec<PortMapping>,
}

impl WeftConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        parse_config(stdin)
    }

    /// Validate every field; the errors are code 7 and name the field.
    pub fn plan(&self, version: Version) -> Result<Plan, CniError> {
        let bad = |field: &str, msg: String| {
            CniError::invalid_config(format!("invalid network config: field {field}: {msg}"))
        };
        let bridge = IfName::new(self.bridge.as_deref().unwrap_or(DEFAULT_BRIDGE)).map_err(|e| bad("bridge", e))?;
        let mtu = self.mtu.unwrap_or(DEFAULT_MTU);
        if !(68..=65535).contains(&mtu) {
            return Err(bad("mtu", format!("{mtu} is outside 68..65535")));
        }
        let ipam_type = self.ipam.get("type").and_then(Value::as_str).unwrap_or_default();
        let ipam = match ipam_type {
            "" => return Err(bad("ipam.type", "is required".into())),
            IN_PROCESS_IPAM => {
                let conf: IpamConf = parse_config(self.ipam.to_string().as_bytes()).map_err(|e| {
                    // Re-root the path the parser names under `ipam.`.
                    CniError::new(e.code, e.msg.replacen("field ", "field ipam.", 1))
                })?;
                let plan = conf.plan()?;
                IpamMode::InProcess(Ipam::new(plan, &self.name)?)
            }
            other => {
                if other.contains('/') {
                    return Err(bad("ipam.type", format!("{other:?} must be a plugin name, not a path")));
                }
                IpamMode::Delegated {
                    plugin: other.to_string(),
                }
            }
        };
        let port_mappings = self
            .runtime_config
            .as_ref()
            .map(|r| r.port_mappings.clone())
            .unwrap_or_default();
        for (i, p) in port_mappings.iter().enumerate() {
            if p.host_port == 0 || p.container_port == 0 {
                return Err(bad(
                    &format!("runtimeConfig.portMappings[{i}]"),
                    "ports must be 1..65535".into(),
                ));
            }
            if let Some(proto) = &p.protocol {
                if !matches!(proto.to_ascii_lowercase().as_str(), "tcp" | "udp" | "sctp") {
                    return Err(bad(
                        &format!("runtimeConfig.portMappings[{i}].protocol"),
                        format!("{proto:?} is not tcp, udp or sctp"),
                    ));
                }
            }
        }
        Ok(Plan {
            network: self.name.clone(),
            version,
            bridge,
            mtu,
            hairpin: self.hairpin_mode.unwrap_or(true),
            log_file: self.log_file.clone().unwrap_or_else(|| DEFAULT_LOG_FILE.into()),
            readiness_file: self
                .readiness_file
                .clone()
                .unwrap_or_else(|| DEFAULT_READINESS_FILE.into()),
            ipam,
            dns: self.dns.clone().unwrap_or_default(),
            port_mappings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Plan, CniError> {
        WeftConf::parse(v.to_string().as_bytes())?.plan(Version::V1_1_0)
    }

    fn base() -> Value {
        json!({"cniVersion":"1.1.0","name":"weft","type":"weft",
               "ipam":{"type":"weft-ipam","ranges":[[{"subnet":"10.244.1.0/24"}]],"dataDir":"/nonexistent"}})
    }

    #[test]
    fn defaults_for_everything_but_ranges() {
        let p = parse(base()).unwrap();
        assert_eq!(p.bridge.as_str(), "weft0");
        assert_eq!(p.mtu, 1500);
        assert!(p.hairpin);
        assert_eq!(p.readiness_file, PathBuf::from(DEFAULT_READINESS_FILE));
        assert!(matches!(p.ipam, IpamMode::InProcess(_)));
    }

    #[test]
    fn the_issue_example_parses() {
        let v = json!({"cniVersion":"1.1.0","name":"weft","type":"weft","bridge":"weft0","mtu":1420,"hairpinMode":true,
            "ipam":{"type":"weft-ipam","ranges":[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]],
                    "routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}],"dataDir":"/var/lib/weft/ipam"},
            "someOtherPluginsField": {"x": 1}});
        let p = parse(v).unwrap();
        assert_eq!(p.mtu, 1420);
        let IpamMode::InProcess(ipam) = &p.ipam else { panic!() };
        assert_eq!(ipam.plan().sets.len(), 2);
    }

    #[test]
    fn wrong_types_and_values_are_code_7_naming_the_field() {
        let cases = [
            ("/mtu", json!("big"), "field mtu"),
            ("/mtu", json!(20), "field mtu"),
            ("/hairpinMode", json!("yes"), "field hairpinMode"),
            ("/bridge", json!("a-name-longer-than-15"), "field bridge"),
            ("/bridge", json!(7), "field bridge"),
            (
                "/ipam/ranges",
                json!([[{"subnet":"nope"}]]),
                "field ipam.ranges[0][0].subnet",
            ),
            (
                "/ipam/ranges",
                json!([[{"subnet":"10.0.0.0/24","rangeStart":"10.1.0.1"}]]),
                "ipam.ranges[0][0]",
            ),
            ("/ipam/type", json!(""), "field ipam.type"),
            ("/ipam/type", json!("../evil"), "field ipam.type"),
        ];
        for (ptr, val, want) in cases {
            let mut v = base();
            let (parent, field) = ptr.rsplit_once('/').unwrap();
            v.pointer_mut(parent).unwrap()[field] = val.clone();
            let e = parse(v).err().unwrap_or_else(|| panic!("{ptr}={val} accepted"));
            assert_eq!(e.code, 7, "{ptr}={val}: {e}");
            assert!(e.msg.contains(want), "{ptr}={val}: {}", e.msg);
        }
    }

    #[test]
    fn port_mappings_in_both_spellings() {
        let mut v = base();
        v["runtimeConfig"] = json!({"portMappings":[
            {"hostPort":8080,"containerPort":80,"protocol":"tcp"},
            {"HostPort":8443,"ContainerPort":443,"Protocol":"TCP","HostIP":"0.0.0.0"}],
            "bandwidth":{"ingressRate":1000000,"ingressBurst":10000,"egressRate":2000000,"egressBurst":10000}});
        let p = parse(v).unwrap();
        assert_eq!(p.port_mappings.len(), 2);
        assert_eq!(p.port_mappings[1].host_port, 8443);
        assert_eq!(p.port_mappings[1].host_ip.as_deref(), Some("0.0.0.0"));
        let mut bad = base();
        bad["runtimeConfig"] = json!({"portMappings":[{"hostPort":70000,"containerPort":80}]});
        let e = parse(bad).err().unwrap();
        assert!(e.msg.contains("runtimeConfig.portMappings[0].hostPort"), "{}", e.msg);
        let mut bad = base();
        bad["runtimeConfig"] = json!({"portMappings":[{"hostPort":80,"containerPort":80,"protocol":"icmp"}]});
        assert!(parse(bad).err().unwrap().msg.contains("protocol"));
    }

    #[test]
    fn other_ipam_types_are_delegated() {
        let mut v = base();
        v["ipam"] = json!({"type":"host-local","subnet":"10.1.0.0/24"});
        assert!(matches!(parse(v).unwrap().ipam, IpamMode::Delegated { ref plugin } if plugin == "host-local"));
    }
}
