//! The IPAM configuration (host-local compatible) and its validated plan.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::range::{Range, RangeSet};
use crate::IpamError;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/weft/ipam";
pub const DEFAULT_BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

/// The `ipam` object of a network config, as written.
///
/// ```json
/// {"type":"weft-ipam",
///  "ranges":[[{"subnet":"10.244.1.0/24","rangeStart":"10.244.1.10","gateway":"10.244.1.1"}],
///            [{"subnet":"fd00:10:244:1::/64"}]],
///  "routes":[{"dst":"0.0.0.0/0"}],
///  "dataDir":"/var/lib/weft/ipam"}
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "type", default)]
    pub ipam_type: String,
    /// One address is handed out from each inner list ("range set").
    #[serde(default)]
    pub ranges: Vec<Vec<RangeConf>>,
    /// host-local's older single-range form: `subnet` at the top level.
    #[serde(flatten)]
    pub legacy: LegacyRange,
    #[serde(default)]
    pub routes: Vec<RouteConf>,
    #[serde(rename = "dataDir", default)]
    pub data_dir: Option<PathBuf>,
    /// Release allocations made in an earlier boot (default true).
    #[serde(rename = "reclaimOnReboot", default)]
    pub reclaim_on_reboot: Option<bool>,
    /// Where the boot id is read (tests point it at a file of their own).
    #[serde(rename = "bootIdFile", default)]
    pub boot_id_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct LegacyRange {
    pub subnet: Option<IpNetwork>,
    #[serde(rename = "rangeStart")]
    pub range_start: Option<IpAddr>,
    #[serde(rename = "rangeEnd")]
    pub range_end: Option<IpAddr>,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RangeConf {
    pub subnet: IpNetwork,
    #[serde(rename = "rangeStart", default)]
    pub range_start: Option<IpAddr>,
    #[serde(rename = "rangeEnd", default)]
    pub range_end: Option<IpAddr>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RouteConf {
    pub dst: IpNetwork,
    #[serde(default)]
    pub gw: Option<IpAddr>,
}

/// A validated IPAM configuration: what [`crate::Ipam`] works from.
#[derive(Debug, Clone)]
pub struct IpamPlan {
    pub sets: Vec<RangeSet>,
    pub routes: Vec<RouteConf>,
    pub data_dir: PathBuf,
    pub reclaim_on_reboot: bool,
    pub boot_id_file: PathBuf,
}

impl IpamConf {
    /// Validate into a plan. Errors name the field, e.g.
    /// `ipam.ranges[0][0].rangeStart: 10.9.0.1 is outside subnet 10.244.1.0/24`.
    pub fn plan(&self) -> Result<IpamPlan, IpamError> {
        let mut confs = self.ranges.clone();
        if let Some(subnet) = self.legacy.subnet {
            if !confs.is_empty() {
                return Err(IpamError::config(
                    "ipam.subnet",
                    "give either subnet or ranges, not both",
                ));
            }
            confs.push(vec![RangeConf {
                subnet,
                range_start: self.legacy.range_start,
                range_end: self.legacy.range_end,
                gateway: self.legacy.gateway,
            }]);
        }
        if confs.is_empty() {
            return Err(IpamError::config("ipam.ranges", "at least one range is required"));
        }
        let mut sets = Vec::with_capacity(confs.len());
        for (i, set) in confs.iter().enumerate() {
            if set.is_empty() {
                return Err(IpamError::config(format!("ipam.ranges[{i}]"), "range set is empty"));
            }
            let ranges = set
                .iter()
                .enumerate()
                .map(|(j, r)| Range::new(r).map_err(|m| IpamError::config(format!("ipam.ranges[{i}][{j}]"), m)))
                .collect::<Result<Vec<_>, _>>()?;
            let set = RangeSet::new(ranges).map_err(|m| IpamError::config(format!("ipam.ranges[{i}]"), m))?;
            sets.push(set);
        }
        for (i, a) in sets.iter().enumerate() {
            for (j, b) in sets.iter().enumerate().skip(i + 1) {
                if a.overlaps(b) {
                    return Err(IpamError::config(
                        format!("ipam.ranges[{j}]"),
                        format!("overlaps range set {i}"),
                    ));
                }
            }
        }
        let data_dir = self.data_dir.clone().unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        if !data_dir.is_absolute() {
            // A plugin's working directory is whatever the runtime's is.
            return Err(IpamError::config(
                "ipam.dataDir",
                format!("{:?} is not an absolute path", data_dir.display().to_string()),
            ));
        }
        Ok(IpamPlan {
            sets,
            routes: self.routes.clone(),
            data_dir,
            reclaim_on_reboot: self.reclaim_on_reboot.unwrap_or(true),
            boot_id_file: self.boot_id_file.clone().unwrap_or_else(|| DEFAULT_BOOT_ID_FILE.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(v: serde_json::Value) -> IpamConf {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults() {
        let p = conf(serde_json::json!({"type":"weft-ipam","ranges":[[{"subnet":"10.244.1.0/24"}]]}))
            .plan()
            .unwrap();
        assert_eq!(p.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(p.reclaim_on_reboot);
        let r = &p.sets[0].ranges[0];
        assert_eq!(r.gateway.to_string(), "10.244.1.1");
        assert_eq!(r.first().to_string(), "10.244.1.2");
        assert_eq!(r.last().to_string(), "10.244.1.254");
    }

    #[test]
    fn legacy_subnet_form() {
        let p = conf(serde_json::json!({"subnet":"10.1.0.0/16","rangeStart":"10.1.2.0","rangeEnd":"10.1.2.9"}))
            .plan()
            .unwrap();
        assert_eq!(p.sets.len(), 1);
        assert_eq!(p.sets[0].usable(), 10);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (serde_json::json!({"ranges":[]}), "ipam.ranges"),
            (serde_json::json!({"ranges":[[]]}), "ipam.ranges[0]"),
            (
                serde_json::json!({"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.1"}]]}),
                "ipam.ranges[0][0]",
            ),
            (
                serde_json::json!({"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.0.0/25"}]]}),
                "ipam.ranges[1]",
            ),
            (
                serde_json::json!({"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]}),
                "ipam.ranges[0]",
            ),
            (
                serde_json::json!({"ranges":[[{"subnet":"10.0.0.0/31"}]]}),
                "ipam.ranges[0][0]",
            ),
        ];
        for (v, field) in cases {
            let e = conf(v.clone()).plan().unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with(field), "{v}: {msg}");
        }
    }

    #[test]
    fn a_zero_prefix_subnet_is_refused_naming_the_field() {
        for subnet in ["0.0.0.0/0", "::/0"] {
            let e = conf(serde_json::json!({"ranges":[[{"subnet":subnet}]]}))
                .plan()
                .unwrap_err();
            assert_eq!(e.cni_code(), 7, "{subnet}");
            let msg = e.to_string();
            assert!(msg.starts_with("ipam.ranges[0][0]") && msg.contains(subnet), "{msg}");
        }
        let e = conf(serde_json::json!({"subnet":"0.0.0.0/0"})).plan().unwrap_err();
        assert!(e.to_string().starts_with("ipam.ranges[0][0]"), "{e}");
    }

    #[test]
    fn a_relative_data_dir_is_refused() {
        for dir in ["var/lib/weft", "./ipam", ""] {
            let e = conf(serde_json::json!({"ranges":[[{"subnet":"10.0.0.0/24"}]],"dataDir":dir}))
                .plan()
                .unwrap_err();
            assert_eq!(e.cni_code(), 7, "{dir:?}");
            assert!(e.to_string().starts_with("ipam.dataDir"), "{dir:?}: {e}");
        }
        let p = conf(serde_json::json!({"ranges":[[{"subnet":"10.0.0.0/24"}]],"dataDir":"/run/x"}))
            .plan()
            .unwrap();
        assert_eq!(p.data_dir, PathBuf::from("/run/x"));
    }
}
