//! DEL and GC: best-effort and idempotent. Every step runs even when an
//! earlier one failed; "already gone" is success; all failures are reported.

use std::collections::HashSet;

use weft_cni_types::skel::Request;
use weft_netlink::Handle;

use crate::config::Plan;
use crate::log::Log;
use crate::{addrs, names, netns, Error};

/// DEL. Works with the netns, the links or the allocation already gone, and
/// without CNI_NETNS at all (runtimes call DEL after a pod's netns is gone,
/// and containerd calls it twice).
///
/// It removes only what it can prove is this attachment's: the host veth
/// by its name (derived from the container ID and ifname), the pod
/// interface only when it is that veth's peer, and the addresses held
/// under the attachment's key. A DEL naming another pod's netns, or the
/// node's own, leaves their interfaces alone.
pub async fn del(plan: &Plan, req: &Request, log: &Log) -> Result<(), Error> {
    let inv = &req.invocation;
    let key = inv.attachment()?;
    let veth = names::host_veth(key);
    let mut errors = Vec::new();

    match Handle::here() {
        Ok(host) => {
            if let Some(path) = inv.netns.as_deref() {
                if let Err(e) = del_pod_end(&host, &veth, key.ifname.as_str(), path, log).await {
                    errors.push(e);
                }
            }
            match host.del_link(&veth).await {
                Ok(true) => log.info(format!("deleted {veth}")),
                Ok(false) => {}
                Err(e) => errors.push(Error::netlink(format!("delete {veth}"))(e)),
            }
        }
        Err(e) => errors.push(Error::netlink("open netlink socket")(e)),
    }
    if let Err(e) = addrs::release(plan, req) {
        errors.push(e);
    }
    finish(errors)
}

/// Delete `ifname` in the netns at `path` if it is the peer of our host veth
/// `veth` (which takes `veth` with it). Anything else of that name is left.
async fn del_pod_end(host: &Handle, veth: &str, ifname: &str, path: &std::path::Path, log: &Log) -> Result<(), Error> {
    let ns = match netns::open(path) {
        Ok(ns) => ns,
        // No netns: nothing of ours can be left in it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            log.info(format!("DEL: cannot open netns {}: {e}; continuing", path.display()));
            return Ok(());
        }
    };
    let step = |s: &str| Error::netlink(format!("{s} (netns {})", path.display()));
    match netns::is_own(&ns) {
        // The node's own netns never holds a pod end (ADD refuses it).
        Ok(true) => {
            log.info(format!(
                "DEL: CNI_NETNS {} is the plugin's own netns: {ifname} there is not a pod's, left alone",
                path.display()
            ));
            return Ok(());
        }
        Ok(false) => {}
        Err(e) => {
            log.info(format!("DEL: cannot stat netns {}: {e}; continuing", path.display()));
            return Ok(());
        }
    }
    let pod = Handle::in_netns(&ns).map_err(step("open netlink socket in container netns"))?;
    let Some(pod_if) = pod.link(ifname).await.map_err(step(&format!("look up {ifname}")))? else {
        return Ok(());
    };
    let host_if = host.link(veth).await.map_err(step(&format!("look up {veth}")))?;
    let own = netns::open(std::path::Path::new(netns::OWN)).map_err(|source| Error::Netns {
        path: netns::OWN.into(),
        source,
    })?;
    // Each end names the other's index and the other's netns (by the id
    // its own netns gives it): only then are they one pair.
    let paired = match &host_if {
        Some(h) => {
            let pod_ns_id = host
                .netnsid_of(&ns)
                .await
                .map_err(step("get the id of the container netns"))?;
            let host_ns_id = pod
                .netnsid_of(&own)
                .await
                .map_err(step("get the id of the node netns"))?;
            pod_if.peer_index == Some(h.index)
                && h.peer_index == Some(pod_if.index)
                && pod_ns_id.is_some()
                && h.peer_netnsid == pod_ns_id
                && host_ns_id.is_some()
                && pod_if.peer_netnsid == host_ns_id
        }
        None => false,
    };
    if !paired {
        log.info(format!(
            "DEL: {ifname} in {} is not the peer of {veth}: not this attachment's, left alone",
            path.display()
        ));
        return Ok(());
    }
    if pod
        .del_link_index(pod_if.index)
        .await
        .map_err(step(&format!("delete {ifname} in container netns")))?
    {
        log.info(format!("deleted {ifname} in {} with its peer {veth}", path.display()));
    }
    Ok(())
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
    let host = Handle::here().map_err(Error::netlink("open netlink socket"))?;
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
