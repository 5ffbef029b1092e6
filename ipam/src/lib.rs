//! weft's address allocator.
//!
//! Used in-process by the `weft` CNI plugin, and as the standalone CNI IPAM
//! plugin `weft-ipam` (host-local compatible configuration) that any other
//! plugin, such as the reference `bridge`, can delegate to.
//!
//! Allocations are keyed by attachment (container ID, interface name), so a
//! repeated ADD gets the same address back; they survive process crashes
//! (locked, atomically replaced state file) and are released by themselves
//! after a reboot (each remembers the boot it was made in).
#![forbid(unsafe_code)]

pub mod config;
pub mod range;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde_json::Value;
use weft_cni_types::{code, AttachmentKey, CniError, CniResult, IpConfig, Route};

pub use config::{IpamConf, IpamPlan};
use store::Allocation;

/// What can go wrong, named after the step.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("{field}: {msg}")]
    Config { field: String, msg: String },
    #[error("range set {set} ({ranges}) is exhausted: all {usable} addresses are in use")]
    Exhausted { set: usize, ranges: String, usable: u128 },
    #[error("requested address {0} is not inside any configured range")]
    RequestedOutOfRange(IpAddr),
    #[error("requested address {ip} is the gateway of its range")]
    RequestedGateway { ip: IpAddr },
    #[error("requested address {ip} is already allocated to {holder}")]
    RequestedInUse { ip: IpAddr, holder: String },
    #[error("{key} already holds {held}, not the requested {requested}")]
    RequestedDiffers {
        key: String,
        held: IpAddr,
        requested: IpAddr,
    },
    #[error("invalid network name {0:?}: use letters, digits, '_', '.' and '-'")]
    BadNetworkName(String),
    #[error("state file {path} cannot be read: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl IpamError {
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }

    fn io(step: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            step,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The CNI error code for this error (the one place they are mapped).
    pub fn cni_code(&self) -> u32 {
        match self {
            Self::Config { .. }
            | Self::RequestedOutOfRange(_)
            | Self::RequestedGateway { .. }
            | Self::RequestedDiffers { .. }
            | Self::BadNetworkName(_) => code::INVALID_CONFIG,
            // Another pod holds it; it may be released soon (a StatefulSet
            // pod being replaced), so the runtime may retry.
            Self::RequestedInUse { .. } => code::TRY_AGAIN,
            Self::Exhausted { .. } => code::TRY_AGAIN,
            Self::Corrupt { .. } | Self::Io { .. } => code::IO_FAILURE,
        }
    }
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> Self {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            if !msg.ends_with(&s.to_string()) {
                msg = format!("{msg}: {s}");
            }
            src = s.source();
        }
        CniError::new(e.cni_code(), msg)
    }
}

/// One address handed out: the address with its subnet's prefix length,
/// and the gateway of its range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    pub address: IpNetwork,
    pub gateway: IpAddr,
}

/// The allocator for one network (one state directory under `dataDir`).
pub struct Ipam {
    plan: IpamPlan,
    dir: PathBuf,
}

impl Ipam {
    /// `network` is the CNI network name; its state lives in `dataDir/network`.
    pub fn new(plan: IpamPlan, network: &str) -> Result<Self, IpamError> {
        let ok = !network.is_empty()
            && network != "."
            && network != ".."
            && network
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(IpamError::BadNetworkName(network.to_string()));
        }
        let dir = plan.data_dir.join(network);
        Ok(Self { plan, dir })
    }

    pub fn plan(&self) -> &IpamPlan {
        &self.plan
    }

    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// Lock the state and drop allocations from earlier boots (when
    /// enabled). Returns the locked state and the current boot id.
    fn open(&self) -> Result<(store::Locked, String), IpamError> {
        let boot = store::boot_id(&self.plan.boot_id_file)?;
        let mut locked = store::lock(&self.dir, &boot, !self.plan.reclaim_on_reboot)?;
        if self.plan.reclaim_on_reboot {
            locked.state.allocations.retain(|a| a.boot_id == boot);
        }
        locked.state.last.resize(self.plan.sets.len(), None);
        Ok((locked, boot))
    }

    /// Look at the state under the lock without writing it back: reads
    /// (CHECK, STATUS) leave the file as it is, even when a reboot made it
    /// stale (the next change rewrites it).
    fn read<T>(&self, f: impl FnOnce(&store::State) -> T) -> Result<T, IpamError> {
        let (locked, _) = self.open()?;
        Ok(f(&locked.state))
    }

    fn allocated(&self, ip: IpAddr) -> Option<Allocated> {
        let range = self.plan.sets.iter().find_map(|s| s.range_of(ip))?;
        Some(Allocated {
            address: IpNetwork::new(ip, range.subnet.prefix()).expect("prefix from a valid subnet"),
            gateway: range.gateway,
        })
    }

    /// Hand out one address from each range set to `key`, or return what
    /// `key` already holds (a repeated ADD). `requested` addresses (the `ips`
    /// capability, `IP=` in CNI_ARGS) are honoured or refused. All or
    /// nothing: on error, nothing is written.
    pub fn allocate(&self, key: &AttachmentKey, requested: &[IpAddr]) -> Result<Vec<Allocated>, IpamError> {
        for ip in requested {
            if !self.plan.sets.iter().any(|s| s.contains(*ip)) {
                return Err(IpamError::RequestedOutOfRange(*ip));
            }
        }
        let (mut locked, boot) = self.open()?;
        let st = &mut locked.state;
        let holder: HashMap<IpAddr, usize> = st.allocations.iter().enumerate().map(|(i, a)| (a.ip, i)).collect();
        let mine = |a: &Allocation| a.container_id == key.container_id.as_str() && a.ifname == key.ifname.as_str();

        let mut out = Vec::with_capacity(self.plan.sets.len());
        let mut new = Vec::new();
        for (i, set) in self.plan.sets.iter().enumerate() {
            let held = st
                .allocations
                .iter()
                .find(|a| mine(a) && set.contains(a.ip))
                .map(|a| a.ip);
            let wanted = requested.iter().copied().find(|ip| set.contains(*ip));
            let ip = match (held, wanted) {
                (Some(h), Some(w)) if h != w => {
                    return Err(IpamError::RequestedDiffers {
                        key: key.to_string(),
                        held: h,
                        requested: w,
                    })
                }
                (Some(h), _) => h,
                (None, Some(w)) => {
                    if set.range_of(w).is_some_and(|r| r.gateway == w) {
                        return Err(IpamError::RequestedGateway { ip: w });
                    }
                    if let Some(&j) = holder.get(&w) {
                        let a = &st.allocations[j];
                        return Err(IpamError::RequestedInUse {
                            ip: w,
                            holder: format!("{}/{}", a.container_id, a.ifname),
                        });
                    }
                    new.push(w);
                    w
                }
                (None, None) => {
                    let usable = set.usable();
                    let in_set = st.allocations.iter().filter(|a| set.contains(a.ip)).count() as u128;
                    let free = if in_set >= usable {
                        None
                    } else {
                        set.next_free(st.last[i], |ip| holder.contains_key(&ip) || new.contains(&ip))
                    };
                    let ip = free.ok_or_else(|| IpamError::Exhausted {
                        set: i,
                        ranges: set.describe(),
                        usable,
                    })?;
                    st.last[i] = Some(ip);
                    new.push(ip);
                    ip
                }
            };
            out.push(self.allocated(ip).expect("address is inside its set"));
        }
        for ip in new {
            st.allocations.push(Allocation {
                ip,
                container_id: key.container_id.to_string(),
                ifname: key.ifname.to_string(),
                boot_id: boot.clone(),
            });
        }
        locked.commit()?;
        Ok(out)
    }

    /// Release everything `key` holds. Releasing nothing is success (DEL is
    /// idempotent). Returns the released addresses.
    pub fn release(&self, key: &AttachmentKey) -> Result<Vec<IpAddr>, IpamError> {
        let (mut locked, _) = self.open()?;
        let mut released = Vec::new();
        locked.state.allocations.retain(|a| {
            let m = a.container_id == key.container_id.as_str() && a.ifname == key.ifname.as_str();
            if m {
                released.push(a.ip);
            }
            !m
        });
        locked.commit()?;
        Ok(released)
    }

    /// The addresses `key` holds (CHECK).
    pub fn held(&self, key: &AttachmentKey) -> Result<Vec<IpAddr>, IpamError> {
        self.read(|st| {
            st.allocations
                .iter()
                .filter(|a| a.container_id == key.container_id.as_str() && a.ifname == key.ifname.as_str())
                .map(|a| a.ip)
                .collect()
        })
    }

    /// Release every allocation whose attachment is not in `valid` (GC).
    /// Returns what was released, as (container ID, ifname, address).
    pub fn gc(&self, valid: &HashSet<(String, String)>) -> Result<Vec<(String, String, IpAddr)>, IpamError> {
        let (mut locked, _) = self.open()?;
        let mut released = Vec::new();
        locked.state.allocations.retain(|a| {
            let keep = valid.contains(&(a.container_id.clone(), a.ifname.clone()));
            if !keep {
                released.push((a.container_id.clone(), a.ifname.clone(), a.ip));
            }
            keep
        });
        locked.commit()?;
        Ok(released)
    }

    /// Every current allocation (after boot reclaim), for GC of host-side
    /// leftovers and for tests.
    pub fn allocations(&self) -> Result<Vec<Allocation>, IpamError> {
        self.read(|st| st.allocations.clone())
    }

    /// The range sets that have no address left (STATUS).
    pub fn full_sets(&self) -> Result<Vec<String>, IpamError> {
        self.read(|st| {
            self.plan
                .sets
                .iter()
                .filter(|set| {
                    let used = st.allocations.iter().filter(|a| set.contains(a.ip)).count() as u128;
                    used >= set.usable()
                })
                .map(|s| s.describe())
                .collect()
        })
    }

    /// The IPAM part of a CNI result: ips with gateways, and the routes.
    pub fn result(&self, allocated: &[Allocated]) -> CniResult {
        let ips = allocated
            .iter()
            .map(|a| IpConfig {
                address: a.address,
                gateway: Some(a.gateway),
                interface: None,
            })
            .collect();
        let routes = self.plan.routes.iter().map(|r| Route::new(r.dst, r.gw)).collect();
        CniResult {
            ips,
            routes,
            ..Default::default()
        }
    }
}

/// Addresses a runtime asks for: `runtimeConfig.ips` (the `ips`
/// capability), `args.cni.ips` (conventions doc), and `IP=` in CNI_ARGS
/// (several separated by commas). Prefix lengths are accepted and ignored.
pub fn requested_ips(config: &Value, cni_args_ip: Option<&str>) -> Result<Vec<IpAddr>, IpamError> {
    let mut out = Vec::new();
    let mut add = |field: &str, s: &str| -> Result<(), IpamError> {
        let addr = s.split('/').next().unwrap_or(s);
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| IpamError::config(field, format!("{s:?} is not an IP address")))?;
        if !out.contains(&ip) {
            out.push(ip);
        }
        Ok(())
    };
    for (field, list) in [
        ("runtimeConfig.ips", config.pointer("/runtimeConfig/ips")),
        ("args.cni.ips", config.pointer("/args/cni/ips")),
    ] {
        if let Some(list) = list {
            let arr = list
                .as_array()
                .ok_or_else(|| IpamError::config(field, "must be a list of addresses"))?;
            for v in arr {
                let s = v
                    .as_str()
                    .ok_or_else(|| IpamError::config(field, "must be a list of addresses"))?;
                add(field, s)?;
            }
        }
    }
    if let Some(s) = cni_args_ip {
        for part in s.split(',').filter(|p| !p.is_empty()) {
            add("CNI_ARGS IP", part)?;
        }
    }
    Ok(out)
}

/// `cni.dev/valid-attachments` of a GC request, as (container ID, ifname).
pub fn valid_attachments(config: &Value) -> Result<HashSet<(String, String)>, CniError> {
    let field = "cni.dev/valid-attachments";
    // The spec makes the list required for GC: without it nothing is known
    // to be valid, which is not the same as "none is valid".
    let Some(list) = config.get(field) else {
        return Err(CniError::invalid_config(format!(
            "invalid network config: GC needs {field} (a list of the attachments to keep)"
        )));
    };
    let arr = list
        .as_array()
        .ok_or_else(|| CniError::invalid_config(format!("{field} must be a list")))?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            let get = |k: &str| {
                v.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| CniError::invalid_config(format!("{field}[{i}].{k} must be a string")))
            };
            Ok((get("containerID")?, get("ifname")?))
        })
        .collect()
}

#[cfg(test)]
mod tests;
