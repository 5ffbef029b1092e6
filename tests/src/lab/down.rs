//! `weft-lab down`: remove everything a lab made. Idempotent, and works from
//! whatever is left: a missing or unreadable state file, processes already
//! killed, namespaces already gone.

use std::path::Path;

use anyhow::{bail, Result};

use super::process::stop_pid;
use super::{netns, netns_prefix, state};

/// Stop the lab's processes, delete its namespaces, remove its directory,
/// then check that none of its namespaces remain. Keeps going past errors and
/// reports all of them.
pub fn down(root: &Path, name: &str) -> Result<()> {
    let dir = root.join(name);
    let _lock = if dir.exists() { state::lock(&dir).ok() } else { None };
    let recorded = state::load(&dir).unwrap_or_default();
    let mut errors: Vec<String> = Vec::new();

    for p in &recorded.procs {
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
fn delete_netns(ns: &str) -> Result<()> {
    for pid in netns::pids(ns)? {
        stop_pid(pid, None)?;
    }
    netns::delete(ns)
}
