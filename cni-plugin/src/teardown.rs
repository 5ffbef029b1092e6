//! DEL and GC: best-effort and idempotent. Every step runs even when an
//! earlier one failed; "already gone" is success; all failures are reported.

use std::collections::HashSet;

use weft_cni_types::skel::Request;

use crate::config::Plan;
use crate::log::Log;
use crate::nl::Nl;
use crate::{addrs, names, netns, Error};

/// DEL. Works with the netns, the links or the allocation already gone, and
/// without CNI_NETNS at all (runtimes call DEL after a pod's netns is gone,
/// and containerd calls it twice).
pub async fn del(plan: &Plan, req: &Request, log: &Log) -> Result<(), Error> {
    let inv = &req.invocation;
    let key = inv.attachment()?;
    let mut errors = Vec::new();

    match Nl::here() {
        Ok(host) => {
            let veth = names::host_veth(key);
            match host.del_link(&veth).await {
                Ok(true) => log.info(format!("deleted {veth}")),
                Ok(false) => {}
                Err(e) => errors.push(Error::netlink(format!("delete {veth}"))(e)),
            }
        }
        Err(e) => errors.push(Error::netlink("open netlink socket")(e)),
    }
    // Deleting the host end deletes the pod end too; this catches a pod
    // interface whose host end is gone some other way.
    if let Some(path) = inv.netns.as_deref() {
        match netns::open(path) {
            Ok(ns) => match Nl::in_netns(&ns) {
                Ok(pod) => {
                    if let Err(e) = pod.del_link(key.ifname.as_str()).await {
                        errors.push(Error::netlink(format!("delete {} in container netns", key.ifname))(e));
                    }
                }
                Err(e) => errors.push(Error::netlink("open netlink socket in container netns")(e)),
            },
            // No netns: nothing of ours can be left in it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log.info(format!("DEL: cannot open netns {}: {e}; continuing", path.display())),
        }
    }
    if let Err(e) = addrs::release(plan, req) {
        errors.push(e);
    }
    finish(errors)
}

/// GC: release every allocation, and delete every host-side veth of weft's
/// on the bridge, whose attachment is not in `cni.dev/valid-attachments`.
pub async fn gc(plan: &Plan, req: &Request, log: &Log) -> Result<(), Error> {
    let mut errors = Vec::new();
    let valid = addrs::valid_keys(req)?;
    match addrs::gc(plan, req) {
        Ok(n) if n > 0 => log.info(format!("GC released {n} address(es)")),
        Ok(_) => {}
        Err(e) => errors.push(e),
    }
    if let Err(e) = gc_links(plan, &valid, log).await {
        errors.push(e);
    }
    finish(errors)
}

async fn gc_links(plan: &Plan, valid: &HashSet<(String, String)>, log: &Log) -> Result<(), Error> {
    let host = Nl::here().map_err(Error::netlink("open netlink socket"))?;
    let Some(bridge) = host
        .link(plan.bridge.as_str())
        .await
        .map_err(Error::netlink(format!("look up {}", plan.bridge)))?
    else {
        return Ok(());
    };
    let keep: HashSet<String> = valid
        .iter()
        .filter_map(|(id, ifname)| {
            let key = weft_cni_types::AttachmentKey {
                container_id: weft_cni_types::ContainerId::new(id).ok()?,
                ifname: weft_cni_types::IfName::new(ifname).ok()?,
            };
            Some(names::host_veth(&key))
        })
        .collect();
    let links = host.links().await.map_err(Error::netlink("list links"))?;
    let mut errors = Vec::new();
    for l in links {
        if l.controller == Some(bridge.index) && names::is_host_veth(&l.name) && !keep.contains(&l.name) {
            match host.del_link(&l.name).await {
                Ok(_) => log.info(format!("GC deleted stale {}", l.name)),
                Err(e) => errors.push(Error::netlink(format!("delete stale {}", l.name))(e)),
            }
        }
    }
    finish(errors)
}

fn finish(mut errors: Vec<Error>) -> Result<(), Error> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(Error::Many(errors)),
    }
}
