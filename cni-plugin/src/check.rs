//! CHECK: the attachment still is what ADD made (per `prevResult`).

use std::net::IpAddr;

use weft_cni_types::skel::Request;
use weft_cni_types::{CniError, CniResult};
use weft_netlink::Handle;

use crate::config::Plan;
use crate::{addrs, names, netns, Error};

pub async fn check(plan: &Plan, req: &Request) -> Result<(), Error> {
    let inv = &req.invocation;
    let key = inv.attachment()?;
    let prev = req
        .config
        .get("prevResult")
        .ok_or_else(|| CniError::invalid_config("invalid network config: CHECK needs prevResult"))?;
    let prev = CniResult::from_json(prev)?;
    let ns_path = inv
        .netns
        .as_deref()
        .expect("CHECK has a netns (checked when parsing the environment)");
    let ns = netns::open(ns_path).map_err(|source| Error::Netns {
        path: ns_path.to_path_buf(),
        source,
    })?;
    let ifname = key.ifname.as_str();
    let fail = |m: String| Err(Error::Check(m));

    // The pod side.
    let pod = Handle::in_netns(&ns).map_err(Error::netlink("open netlink socket in container netns"))?;
    let Some(link) = pod
        .link(ifname)
        .await
        .map_err(Error::netlink(format!("look up {ifname}")))?
    else {
        return fail(format!(
            "interface {ifname} is missing from container netns {}",
            ns_path.display()
        ));
    };
    let pos = prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.is_some());
    if let Some(want) = pos.map(|i| &prev.interfaces[i]) {
        if !want.mac.is_empty() && !want.mac.eq_ignore_ascii_case(&link.mac) {
            return fail(format!("{ifname} has MAC {}, prevResult says {}", link.mac, want.mac));
        }
    } else {
        return fail(format!("prevResult has no interface {ifname} with a sandbox"));
    }
    if link.mtu != plan.mtu {
        return fail(format!("{ifname} has MTU {}, config says {}", link.mtu, plan.mtu));
    }
    if !link.up {
        return fail(format!("{ifname} is down"));
    }
    let have = pod
        .addresses(link.index)
        .await
        .map_err(Error::netlink(format!("list addresses of {ifname}")))?;
    let mine: Vec<_> = prev
        .ips
        .iter()
        .filter(|i| i.interface.is_none() || i.interface == pos)
        .collect();
    for ip in &mine {
        if !have.contains(&ip.address) {
            return fail(format!("address {} is missing from {ifname}", ip.address));
        }
    }
    let routes = pod
        .routes()
        .await
        .map_err(Error::netlink("list routes in container netns"))?;
    for r in &prev.routes {
        if !routes
            .iter()
            .any(|x| x.dst == r.dst && (r.gw.is_none() || x.gw == r.gw) && x.oif == Some(link.index))
        {
            let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
            return fail(format!("route {}{via} dev {ifname} is missing", r.dst));
        }
    }

    // The host side.
    let host = Handle::here().map_err(Error::netlink("open netlink socket"))?;
    let veth = names::host_veth(key);
    let Some(bridge) = host
        .link(plan.bridge.as_str())
        .await
        .map_err(Error::netlink(format!("look up {}", plan.bridge)))?
    else {
        return fail(format!("bridge {} is missing", plan.bridge));
    };
    let Some(hl) = host
        .link(&veth)
        .await
        .map_err(Error::netlink(format!("look up {veth}")))?
    else {
        return fail(format!("host veth {veth} is missing"));
    };
    if hl.controller != Some(bridge.index) {
        return fail(format!("host veth {veth} is not attached to {}", plan.bridge));
    }
    if plan.hairpin && hl.hairpin != Some(true) {
        return fail(format!("hairpin mode is off on {veth}"));
    }
    if hl.mtu != plan.mtu {
        return fail(format!("{veth} has MTU {}, config says {}", hl.mtu, plan.mtu));
    }

    // The addresses are still held.
    let expected: Vec<IpAddr> = mine.iter().map(|i| i.address.ip()).collect();
    addrs::check(plan, req, &expected)
}
