//! The CNI Result, held in its newest form and rendered to the version the
//! runtime asked for.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{code, CniError, Version};

/// A CNI Result (the 1.1.0 shape; older shapes are rendered by [`CniResult::to_json`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// 1.1.0 and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container; absent on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// 1.1.0 and later.
    #[serde(default, rename = "socketPath", skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// 1.1.0 and later.
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length, e.g. `10.244.1.5/24`.
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// 1.1.0 and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// 1.1.0 and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// 1.1.0 and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// 1.1.0 and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// 1.1.0 and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Self {
        Self {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl CniResult {
    /// Parse a result of any supported version (a `prevResult`, or what a
    /// delegated IPAM plugin printed). The pre-1.0 `ips[].version` field is
    /// implied by the address and ignored.
    pub fn from_json(v: &Value) -> Result<Self, CniError> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            CniError::new(code::DECODE, "cannot decode CNI result").with_details(format!(
                "field `{}`: {}",
                e.path(),
                e.inner()
            ))
        })
    }

    /// Render for `version`: adds `ips[].version` before 1.0.0 and drops the
    /// fields 1.1.0 introduced for older versions.
    pub fn to_json(&self, version: Version) -> Value {
        let mut copy = self.clone();
        if !version.has_1_1_fields() {
            for i in &mut copy.interfaces {
                i.mtu = None;
                i.socket_path = None;
                i.pci_id = None;
            }
            for r in &mut copy.routes {
                *r = Route::new(r.dst, r.gw);
            }
        }
        let mut v = serde_json::to_value(&copy).expect("result serializes");
        if version.has_ip_version_field() {
            if let Some(ips) = v.get_mut("ips").and_then(Value::as_array_mut) {
                for (ip, cfg) in ips.iter_mut().zip(&copy.ips) {
                    let fam = if cfg.address.is_ipv4() { "4" } else { "6" };
                    ip["version"] = fam.into();
                }
            }
        }
        let obj = v.as_object_mut().expect("result is an object");
        obj.insert("cniVersion".into(), version.to_string().into());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "weftabc".into(),
                    mac: "aa:bb:cc:dd:ee:ff".into(),
                    mtu: Some(1420),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: "aa:bb:cc:dd:ee:00".into(),
                    mtu: Some(1420),
                    sandbox: Some("/var/run/netns/p".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.1.5/24".parse().unwrap(),
                    gateway: Some("10.244.1.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::5/64".parse().unwrap(),
                    gateway: Some("fd00::1".parse().unwrap()),
                    interface: Some(1),
                },
            ],
            routes: vec![Route {
                mtu: Some(1400),
                ..Route::new("0.0.0.0/0".parse().unwrap(), Some("10.244.1.1".parse().unwrap()))
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn renders_1_1_with_new_fields() {
        let v = sample().to_json(Version::V1_1_0);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["interfaces"][0]["mtu"], 1420);
        assert_eq!(v["routes"][0]["mtu"], 1400);
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["ips"][0]["address"], "10.244.1.5/24");
        assert_eq!(v["ips"][1]["interface"], 1);
        assert!(v["dns"].is_object());
    }

    #[test]
    fn renders_1_0_without_1_1_fields() {
        let v = sample().to_json(Version::V1_0_0);
        assert!(v["interfaces"][0].get("mtu").is_none());
        assert!(v["routes"][0].get("mtu").is_none());
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["interfaces"][1]["sandbox"], "/var/run/netns/p");
    }

    #[test]
    fn renders_pre_1_0_with_ip_version() {
        for ver in [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0] {
            let v = sample().to_json(ver);
            assert_eq!(v["cniVersion"], ver.to_string());
            assert_eq!(v["ips"][0]["version"], "4");
            assert_eq!(v["ips"][1]["version"], "6");
        }
    }

    #[test]
    fn round_trips_every_version() {
        for ver in Version::SUPPORTED {
            let v = sample().to_json(ver);
            let back = CniResult::from_json(&v).unwrap();
            assert_eq!(back.ips, sample().ips);
            assert_eq!(back.interfaces.len(), 2);
        }
    }

    #[test]
    fn bad_result_names_the_field() {
        let v = serde_json::json!({"ips":[{"address":"nope"}]});
        let e = CniResult::from_json(&v).unwrap_err();
        assert_eq!(e.code, 6);
        assert!(e.details.contains("ips[0].address"), "{}", e.details);
    }
}
