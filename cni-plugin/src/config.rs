//! weft's network configuration: the plugin object of the conflist (what the
//! agent writes), parsed strictly and validated into a [`Plan`] before the
//! first side effect.

use std::path::PathBuf;

use serde_json::Value;
use weft_cni_types::{parse_config, CniError, Dns, IfName, Version};
use weft_ipam::{Ipam, IpamConf};

pub use weft_cni_types::weftconf::{
    Bandwidth, PortMapping, RuntimeConfig, WeftConf, DEFAULT_BRIDGE, DEFAULT_LOG_FILE, DEFAULT_MTU,
    DEFAULT_READINESS_FILE, IN_PROCESS_IPAM,
};

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

impl Plan {
    /// Validate every field of `conf`; the errors are code 7 and name the field.
    pub fn new(conf: &WeftConf, version: Version) -> Result<Self, CniError> {
        let bad = |field: &str, msg: String| {
            CniError::invalid_config(format!("invalid network config: field {field}: {msg}"))
        };
        let bridge = IfName::new(conf.bridge.as_deref().unwrap_or(DEFAULT_BRIDGE)).map_err(|e| bad("bridge", e))?;
        let mtu = conf.mtu.unwrap_or(DEFAULT_MTU);
        if !(68..=65535).contains(&mtu) {
            return Err(bad("mtu", format!("{mtu} is outside 68..65535")));
        }
        let ipam_type = conf.ipam.get("type").and_then(Value::as_str).unwrap_or_default();
        let ipam = match ipam_type {
            "" => return Err(bad("ipam.type", "is required".into())),
            IN_PROCESS_IPAM => {
                let ipam_conf: IpamConf = parse_config(conf.ipam.to_string().as_bytes()).map_err(|e| {
                    // Re-root the path the parser names under `ipam.`.
                    CniError::new(e.code, e.msg.replacen("field ", "field ipam.", 1))
                })?;
                let plan = ipam_conf.plan()?;
                if plan.sets.iter().any(|s| !s.is_ipv4()) {
                    check_ipv6_mtu(mtu)?;
                }
                IpamMode::InProcess(Ipam::new(plan, &conf.name)?)
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
        let port_mappings = conf
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
            network: conf.name.clone(),
            version,
            bridge,
            mtu,
            hairpin: conf.hairpin_mode.unwrap_or(true),
            log_file: conf.log_file.clone().unwrap_or_else(|| DEFAULT_LOG_FILE.into()),
            readiness_file: conf
                .readiness_file
                .clone()
                .unwrap_or_else(|| DEFAULT_READINESS_FILE.into()),
            ipam,
            dns: conf.dns.clone().unwrap_or_default(),
            port_mappings,
        })
    }
}

/// IPv6 needs links of at least 1280 bytes: below that the kernel turns
/// IPv6 off on the link and removes its addresses, and a bridge follows its
/// smallest port, so one such pod would strip the shared bridge of its IPv6
/// gateway. Checked before the first change (for a delegated IPAM plugin,
/// once its addresses are known).
pub fn check_ipv6_mtu(mtu: u32) -> Result<(), CniError> {
    if mtu < MIN_IPV6_MTU {
        return Err(CniError::invalid_config(format!(
            "invalid network config: field mtu: {mtu} is below {MIN_IPV6_MTU}, the minimum for IPv6, and the network has IPv6 addresses"
        )));
    }
    Ok(())
}

/// The smallest MTU IPv6 works with (RFC 8200).
pub const MIN_IPV6_MTU: u32 = 1280;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Plan, CniError> {
        Plan::new(&WeftConf::parse(v.to_string().as_bytes())?, Version::V1_1_0)
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
    fn mtu_below_1280_is_refused_only_with_ipv6() {
        let mut v = base();
        v["mtu"] = json!(1279);
        assert_eq!(parse(v.clone()).unwrap().mtu, 1279, "IPv4 only: fine");
        v["ipam"]["ranges"] = json!([[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00::/64"}]]);
        let e = parse(v.clone()).err().expect("1279 with IPv6 accepted");
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("field mtu") && e.msg.contains("1280"), "{}", e.msg);
        v["mtu"] = json!(1280);
        assert_eq!(parse(v).unwrap().mtu, 1280);
    }

    #[test]
    fn a_relative_data_dir_and_a_zero_prefix_name_their_field() {
        let mut v = base();
        v["ipam"]["dataDir"] = json!("relative/dir");
        let e = parse(v).err().unwrap();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("ipam.dataDir"), "{}", e.msg);
        let mut v = base();
        v["ipam"]["ranges"] = json!([[{"subnet":"0.0.0.0/0"}]]);
        let e = parse(v).err().unwrap();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("ipam.ranges[0][0]"), "{}", e.msg);
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
