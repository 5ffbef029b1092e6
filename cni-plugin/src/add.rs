//! ADD: address, bridge, veth, routes; undone step by step if any step fails.

use std::fs::File;
use std::net::IpAddr;
use std::path::Path;

use ipnetwork::IpNetwork;
use weft_cni_types::skel::Request;
use weft_cni_types::{AttachmentKey, CniError, CniResult, Interface, IpConfig, Route};

use crate::config::Plan;
use crate::log::Log;
use crate::nl::Nl;
use crate::{addrs, names, netns, sysctl, Error};

pub async fn add(plan: &Plan, req: &Request, log: &Log) -> Result<CniResult, Error> {
    let inv = &req.invocation;
    let key = inv.attachment()?;
    let ns_path = inv
        .netns
        .as_deref()
        .expect("ADD has a netns (checked when parsing the environment)");
    // Everything that can be checked is checked before the first change.
    let ns = netns::open(ns_path).map_err(|source| Error::Netns {
        path: ns_path.to_path_buf(),
        source,
    })?;
    let host = Nl::here().map_err(Error::netlink("open netlink socket"))?;
    let pod = Nl::in_netns(&ns).map_err(Error::netlink("open netlink socket in container netns"))?;
    if pod
        .link(key.ifname.as_str())
        .await
        .map_err(Error::netlink("look up container interface"))?
        .is_some()
    {
        return Err(Error::Cni(CniError::io(format!(
            "create veth pair: interface {} already exists in container netns {}",
            key.ifname,
            ns_path.display()
        ))));
    }

    let ipam = addrs::allocate(plan, req)?;
    let wiring = Wiring {
        plan,
        key,
        ns: &ns,
        ns_path,
        host: &host,
        pod: &pod,
    };
    match wiring.build(&ipam).await {
        Ok(result) => Ok(result),
        Err(e) => {
            // Undo in reverse: the veth pair (deleting one end deletes both),
            // then the addresses. The bridge and its gateway addresses are
            // shared by every pod and stay.
            log.error(format!("ADD failed, rolling back: {e}"));
            let veth = names::host_veth(key);
            if let Err(u) = host.del_link(&veth).await {
                log.error(format!("rollback: delete {veth}: {u}"));
            }
            if let Err(u) = addrs::release(plan, req) {
                log.error(format!("rollback: release addresses: {u}"));
            }
            Err(e)
        }
    }
}

/// What wiring one attachment needs.
struct Wiring<'a> {
    plan: &'a Plan,
    key: &'a AttachmentKey,
    ns: &'a File,
    ns_path: &'a Path,
    host: &'a Nl,
    pod: &'a Nl,
}

impl Wiring<'_> {
    async fn build(&self, ipam: &CniResult) -> Result<CniResult, Error> {
        let plan = self.plan;
        let bridge = self
            .host
            .ensure_bridge(plan.bridge.as_str(), plan.mtu, names::bridge_mac(plan.bridge.as_str()))
            .await
            .map_err(Error::netlink(format!("create bridge {}", plan.bridge)))?;
        if !bridge.up {
            sysctl::no_dad(plan.bridge.as_str()).map_err(|source| Error::Sysctl {
                step: "turn off duplicate address detection on the bridge",
                source,
            })?;
            self.host
                .set_up(bridge.index)
                .await
                .map_err(Error::netlink(format!("set {} up", plan.bridge)))?;
        }
        // The gateway of each address lives on the bridge, with the
        // address's prefix length, so the subnet is routed to the bridge.
        for ip in &ipam.ips {
            if let Some(gw) = ip.gateway {
                let net = IpNetwork::new(gw, ip.address.prefix())
                    .map_err(|e| Error::Cni(CniError::invalid_config(format!("gateway {gw}: {e}"))))?;
                self.host
                    .add_address(bridge.index, net)
                    .await
                    .map_err(Error::netlink(format!("add gateway {net} to {}", plan.bridge)))?;
            }
        }
        let v4 = ipam.ips.iter().any(|i| i.address.is_ipv4());
        let v6 = ipam.ips.iter().any(|i| i.address.is_ipv6());
        sysctl::enable_forwarding(v4, v6).map_err(|source| Error::Sysctl {
            step: "enable IP forwarding",
            source,
        })?;

        let veth = names::host_veth(self.key);
        let ifname = self.key.ifname.as_str();
        let create = || self.host.add_veth(&veth, ifname, plan.mtu, self.ns, bridge.index);
        match create().await {
            Ok(()) => {}
            // A leftover of an ADD that was killed half-way has our
            // deterministic name: it is ours to replace.
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                self.host
                    .del_link(&veth)
                    .await
                    .map_err(Error::netlink(format!("delete leftover {veth}")))?;
                create()
                    .await
                    .map_err(Error::netlink(format!("create veth pair {veth}/{ifname}")))?;
            }
            Err(e) => return Err(Error::netlink(format!("create veth pair {veth}/{ifname}"))(e)),
        }
        let host_link = self
            .host
            .link(&veth)
            .await
            .map_err(Error::netlink(format!("look up {veth}")))?
            .ok_or_else(|| {
                Error::Cni(CniError::io(format!(
                    "create veth pair: {veth} vanished after creation"
                )))
            })?;
        if plan.hairpin {
            self.host
                .set_hairpin(host_link.index, true)
                .await
                .map_err(Error::netlink(format!("set hairpin on {veth}")))?;
        }
        let pod_link = self
            .pod
            .link(ifname)
            .await
            .map_err(Error::netlink(format!("look up {ifname} in container netns")))?
            .ok_or_else(|| {
                Error::Cni(CniError::io(format!(
                    "create veth pair: {ifname} not found in container netns after creation"
                )))
            })?;
        self.pod
            .set_up(pod_link.index)
            .await
            .map_err(Error::netlink(format!("set {ifname} up")))?;
        for ip in &ipam.ips {
            self.pod
                .add_address(pod_link.index, ip.address)
                .await
                .map_err(Error::netlink(format!("add address {} to {ifname}", ip.address)))?;
        }
        let routes = self.routes(ipam);
        for r in &routes {
            self.pod
                .add_route(r.dst, r.gw, pod_link.index)
                .await
                .map_err(Error::netlink(format!("add route {} to {ifname}", r.dst)))?;
        }

        let mut dns = plan.dns.clone();
        if dns == Default::default() {
            dns = ipam.dns.clone();
        }
        Ok(CniResult {
            interfaces: vec![
                Interface {
                    name: veth,
                    mac: host_link.mac,
                    mtu: Some(plan.mtu),
                    ..Default::default()
                },
                Interface {
                    name: ifname.to_string(),
                    mac: pod_link.mac,
                    mtu: Some(plan.mtu),
                    sandbox: Some(self.ns_path.display().to_string()),
                    ..Default::default()
                },
            ],
            ips: ipam
                .ips
                .iter()
                .map(|i| IpConfig {
                    interface: Some(1),
                    ..i.clone()
                })
                .collect(),
            routes,
            dns,
        })
    }

    /// IPAM routes, each via the gateway of its family unless it names one.
    fn routes(&self, ipam: &CniResult) -> Vec<Route> {
        let gw_for = |dst: &IpNetwork| -> Option<IpAddr> {
            ipam.ips
                .iter()
                .find(|i| i.address.is_ipv4() == dst.is_ipv4())
                .and_then(|i| i.gateway)
        };
        ipam.routes
            .iter()
            .map(|r| Route {
                gw: r.gw.or_else(|| gw_for(&r.dst)),
                ..r.clone()
            })
            .collect()
    }
}
