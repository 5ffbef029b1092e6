//! The network configuration every plugin receives on stdin, and strict
//! parsing that names the offending field.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::{code, CniError, Version};

/// Fields the spec defines for every plugin's network configuration.
/// Plugin-specific fields are parsed by the plugin into its own type.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConfBase {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: Option<Value>,
}

impl NetConfBase {
    pub fn version(&self) -> Result<Version, CniError> {
        Version::parse(&self.cni_version)
    }
}

/// Parse stdin into `T`. Not JSON at all is code 6 (decode); JSON with a
/// field of the wrong type or value is code 7 with the field's path, e.g.
/// `invalid network config: field ipam.ranges[0][0].subnet: invalid IP address syntax`.
/// Unknown fields are ignored: conflists carry other plugins' fields.
pub fn parse_config<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CniError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() {
            CniError::new(
                code::INVALID_CONFIG,
                format!("invalid network config: field {path}: {inner}"),
            )
        } else {
            CniError::new(code::DECODE, format!("cannot decode network config: {inner}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)] // reason: only parsed to test error paths
    struct Demo {
        mtu: Option<u32>,
        ipam: DemoIpam,
    }
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)] // reason: only parsed to test error paths
    struct DemoIpam {
        ranges: Vec<Vec<std::net::IpAddr>>,
    }

    #[test]
    fn wrong_type_is_code_7_with_path() {
        let e = parse_config::<Demo>(br#"{"mtu":"big","ipam":{"ranges":[]}}"#).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("field mtu"), "{}", e.msg);
        let e = parse_config::<Demo>(br#"{"ipam":{"ranges":[["10.0.0.1","x"]]}}"#).unwrap_err();
        assert!(e.msg.contains("ipam.ranges[0][1]"), "{}", e.msg);
    }

    #[test]
    fn not_json_is_code_6() {
        let e = parse_config::<Demo>(b"{not json").unwrap_err();
        assert_eq!(e.code, 6);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let d: Demo = parse_config(br#"{"x":1,"ipam":{"ranges":[],"other":true}}"#).unwrap();
        assert!(d.mtu.is_none());
    }

    #[test]
    fn base_fields() {
        let b: NetConfBase =
            parse_config(br#"{"cniVersion":"1.0.0","name":"n","type":"weft","prevResult":{}}"#).unwrap();
        assert_eq!(b.version().unwrap(), Version::V1_0_0);
        assert!(b.prev_result.is_some());
    }
}
