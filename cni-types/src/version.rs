//! CNI specification versions.

use std::fmt;

use crate::{code, CniError};

/// A CNI spec version weft can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(u16, u16, u16);

impl Version {
    pub const V0_3_0: Version = Version(0, 3, 0);
    pub const V0_3_1: Version = Version(0, 3, 1);
    pub const V0_4_0: Version = Version(0, 4, 0);
    pub const V1_0_0: Version = Version(1, 0, 0);
    pub const V1_1_0: Version = Version(1, 1, 0);

    /// Every version weft accepts, oldest first (the VERSION answer).
    pub const SUPPORTED: [Version; 5] = [Self::V0_3_0, Self::V0_3_1, Self::V0_4_0, Self::V1_0_0, Self::V1_1_0];

    /// The newest version: used for answers when the config named none.
    pub const LATEST: Version = Self::V1_1_0;

    /// Parse a `cniVersion` string; versions outside [`Self::SUPPORTED`]
    /// (including 0.1.0/0.2.0, whose result format weft does not produce)
    /// are error code 1.
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Self::SUPPORTED
            .iter()
            .copied()
            .find(|v| v.to_string() == s)
            .ok_or_else(|| {
                CniError::new(code::INCOMPATIBLE_VERSION, format!("incompatible CNI version {s:?}"))
                    .with_details(format!("weft supports {}", Self::supported_list()))
            })
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Self::V0_4_0
    }

    /// Result `ips[].version` exists before 1.0.0.
    pub fn has_ip_version_field(self) -> bool {
        self < Self::V1_0_0
    }

    /// Route mtu/advmss/priority/table/scope and interface mtu/socketPath/pciID
    /// exist from 1.1.0 on.
    pub fn has_1_1_fields(self) -> bool {
        self >= Self::V1_1_0
    }

    pub fn supported_list() -> String {
        Self::SUPPORTED
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The VERSION command's answer.
    pub fn version_answer(asked: Version) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": asked.to_string(),
            "supportedVersions": Self::SUPPORTED.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version() {
        for s in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            assert_eq!(Version::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn rejects_unknown_versions_with_code_1() {
        for s in ["0.1.0", "0.2.0", "1.2.0", "", "one"] {
            let e = Version::parse(s).unwrap_err();
            assert_eq!(e.code, 1, "{s}");
            assert!(e.details.contains("1.1.0"));
        }
    }

    #[test]
    fn feature_gates() {
        assert!(!Version::V0_3_1.has_check());
        assert!(Version::V0_4_0.has_check());
        assert!(Version::V0_4_0.has_ip_version_field());
        assert!(!Version::V1_0_0.has_ip_version_field());
        assert!(!Version::V1_0_0.has_1_1_fields());
        assert!(Version::V1_1_0.has_1_1_fields());
    }

    #[test]
    fn version_answer_lists_all() {
        let v = Version::version_answer(Version::V0_4_0);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
    }
}
