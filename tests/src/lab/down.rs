//! `weft-lab down`: remove everything a lab made. Idempotent, and works from
//! whatever is left: a missing or unreadable state file, processes already
//! killed, namespaces already gone.

use std::path::Path;

use anyhow::{bail, Result};

use super::netns::NsId;
use super::process::stop_pid;
use super::supervisor::SUPERVISOR_ROLE;
use super::{netns, netns_prefix, state};

/// Stop the lab's processes, delete its namespaces, remove its directory,
/// then check that none of its namespaces remain. Keeps going past errors and
/// reports all of them.
pub fn down(root: &Path, name: &str) -> Result<()> {
    let dir = root.join(name);
    let _lock = if dir.exists() { state::lock(&dir).ok() } else { None };
    let recorded = state::load(&dir).unwrap_or_default();
    let mut errors: Vec<String> = Vec::new();

    // The supervisor first, or it would start the agents stopped next again.
    let mut procs = recorded.procs.clone();
    procs.sort_by_key(|p| p.role != SUPERVISOR_ROLE);
    for p in &procs {
        if let Err(e) = p.stop() {
            errors.push(format!("stop {} (pid {}): {e:#}", p.role, p.pid));
        }
    }
    let prefix = netns_prefix(name);
    let mut namespaces = recorded.netns.clone();
    match netns::list() {
        Ok(all) => namespaces.extend(all.into_iter().filter(|n| n.starts_with(&prefix))),
        Err(e) => errors.push(format!("list namespaces: {e:#}")),
    }
    namespaces.sort();
    namespaces.dedup();
    // Processes the lab did not start but that run in its namespaces (an
    // agent's userspace WireGuard, anything a test ran there), also in a
    // namespace whose name was already deleted: found by identity.
    let ids: Vec<NsId> = recorded.netns_ids.values().copied().collect();
    for pid in netns::pids_in(&ids) {
        if let Err(e) = stop_pid(pid, None) {
            errors.push(format!("stop pid {pid} in a lab namespace: {e:#}"));
        }
    }
    for ns in &namespaces {
        if let Err(e) = delete_netns(ns) {
            errors.push(format!("delete netns {ns}: {e:#}"));
        }
    }
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            errors.push(format!("remove {}: {e}", dir.display()));
        }
    }
    if let Ok(all) = netns::list() {
        let left: Vec<String> = all.into_iter().filter(|n| n.starts_with(&prefix)).collect();
        if !left.is_empty() {
            errors.push(format!("namespaces still present: {}", left.join(", ")));
        }
    }
    if !errors.is_empty() {
        bail!("weft-lab down {name}: {}", errors.join("; "));
    }
    Ok(())
}

/// Stop every process inside a namespace, then delete it: a namespace with
/// processes in it outlives `ip netns del`, and so would its interfaces.
pub(super) fn delete_netns(ns: &str) -> Result<()> {
    for pid in netns::pids(ns)? {
        stop_pid(pid, None)?;
    }
    netns::delete(ns)
}
