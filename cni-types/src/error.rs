//! The CNI error object and the spec's well-known error codes.

use serde::{Deserialize, Serialize};

use crate::Version;

/// Error codes reserved by the CNI specification (section "Error").
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (CNI_COMMAND, CNI_IFNAME, ...).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (reading stdin, netlink, state files).
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (stdin is not JSON).
    pub const DECODE: u32 = 6;
    /// Invalid network config (a field with a wrong type or value).
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later (a transient condition such as an exhausted range).
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin is not available (node not ready, no addresses left).
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: the plugin is not available and existing containers may be damaged.
    pub const NOT_AVAILABLE_DAMAGED: u32 = 51;
}

/// A CNI error: printed on stdout as JSON, with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg)
    }

    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENV, msg)
    }

    pub fn io(msg: impl Into<String>) -> Self {
        Self::new(code::IO_FAILURE, msg)
    }

    /// Prefix the message with the step that failed, keeping the code:
    /// `create veth pair: File exists`.
    pub fn context(mut self, step: impl std::fmt::Display) -> Self {
        self.msg = format!("{step}: {}", self.msg);
        self
    }

    /// The JSON object a plugin prints on stdout.
    pub fn to_json(&self, version: Version) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": version.to_string(),
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = self.details.clone().into();
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_spec_shape() {
        let e = CniError::invalid_config("bad field")
            .with_details("ipam.ranges")
            .context("parse config");
        let v = e.to_json(Version::V1_0_0);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["code"], 7);
        assert_eq!(v["msg"], "parse config: bad field");
        assert_eq!(v["details"], "ipam.ranges");
        let plain = CniError::io("x").to_json(Version::V1_1_0);
        assert!(plain.get("details").is_none());
    }
}
