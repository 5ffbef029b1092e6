//! ADD: address, bridge, veth, routes; undone step by step if any step fails.

use std::fs::File;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ipnetwork::IpNetwork;
use weft_cni_types::skel::Request;
use weft_cni_types::{AttachmentKey, CniError, CniResult, Interface, IpConfig, Route};
use weft_netlink::{parse_mac, Handle, Link, Veth};

use crate::config::{check_ipv6_mtu, Plan};
use crate::log::Log;
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
    if netns::is_own(&ns).map_err(|source| Error::Netns {
        path: ns_path.to_path_buf(),
        source,
    })? {
        return Err(Error::Cni(CniError::invalid_env(format!(
            "CNI_NETNS {} is the plugin's own network namespace (the node's), not a pod's: refusing to put pod addresses and routes into it",
            ns_path.display()
        ))));
    }
    let host = Handle::here().map_err(Error::netlink("open netlink socket"))?;
    let pod = Handle::in_netns(&ns).map_err(Error::netlink("open netlink socket in container netns"))?;
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
        log,
    };
    let mut made = Made::default();
    match wiring.build(&ipam, &mut made).await {
        Ok(result) => Ok(result),
        Err(e) => {
            log.error(format!("ADD failed, rolling back: {e}"));
            wiring.undo(&made).await;
            if let Err(u) = addrs::release(plan, req) {
                log.error(format!("rollback: release addresses: {u}"));
            }
            Err(e)
        }
    }
}

/// What this ADD changed on the node, so a rollback undoes exactly that
/// and never what was there before (the bridge and gateway addresses that
/// other pods use).
#[derive(Default)]
struct Made {
    /// The bridge's index, once it is known.
    bridge: Option<u32>,
    created_bridge: bool,
    /// Gateway addresses this ADD put on the bridge (not ones already there).
    gateways: Vec<IpNetwork>,
    veth: bool,
}

/// What wiring one attachment needs.
struct Wiring<'a> {
    plan: &'a Plan,
    key: &'a AttachmentKey,
    ns: &'a File,
    ns_path: &'a Path,
    host: &'a Handle,
    pod: &'a Handle,
    log: &'a Log,
}

impl Wiring<'_> {
    async fn build(&self, ipam: &CniResult, made: &mut Made) -> Result<CniResult, Error> {
        let plan = self.plan;
        let v4 = ipam.ips.iter().any(|i| i.address.is_ipv4());
        let v6 = ipam.ips.iter().any(|i| i.address.is_ipv6());
        // Known only now for a delegated IPAM plugin; before any change.
        if v6 {
            check_ipv6_mtu(plan.mtu)?;
        }
        let (bridge, created) = self
            .host
            .ensure_bridge(plan.bridge.as_str(), plan.mtu, names::bridge_mac(plan.bridge.as_str()))
            .await
            .map_err(Error::netlink(format!("create bridge {}", plan.bridge)))?;
        made.bridge = Some(bridge.index);
        made.created_bridge = created;
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
                let added = self
                    .host
                    .ensure_address(bridge.index, net)
                    .await
                    .map_err(Error::netlink(format!("add gateway {net} to {}", plan.bridge)))?;
                if added {
                    made.gateways.push(net);
                }
            }
        }
        sysctl::enable_forwarding(v4, v6).map_err(|source| Error::Sysctl {
            step: "enable IP forwarding",
            source,
        })?;

        let veth = names::host_veth(self.key);
        let ifname = self.key.ifname.as_str();
        let spec = Veth {
            host: &veth,
            peer: ifname,
            mtu: plan.mtu,
            peer_ns: self.ns,
            bridge: bridge.index,
        };
        let create = || self.host.add_veth(&spec);
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
        made.veth = true;
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
        // The kernel announces the pod's addresses once told to (see
        // [`Self::announce`]); addresses go on before the link comes up so
        // it is usable the moment it is up.
        netns::run_in(self.ns, || sysctl::announce(ifname, v6)).map_err(|source| Error::Sysctl {
            step: "turn on address announcements in the container netns",
            source,
        })?;
        for ip in &ipam.ips {
            self.pod
                .add_address(pod_link.index, ip.address)
                .await
                .map_err(Error::netlink(format!("add address {} to {ifname}", ip.address)))?;
        }
        self.pod
            .set_up(pod_link.index)
            .await
            .map_err(Error::netlink(format!("set {ifname} up")))?;
        let routes = self.routes(ipam);
        for r in &routes {
            self.pod
                .add_route(&weft_netlink::Route::to(r.dst).via(r.gw).dev(pod_link.index))
                .await
                .map_err(Error::netlink(format!("add route {} to {ifname}", r.dst)))?;
        }

        self.announce(&veth, &pod_link).await?;

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

    /// Tell the neighbours (the node, other pods) this interface's MAC for
    /// its addresses: a gratuitous ARP per IPv4 address and an unsolicited
    /// neighbour advertisement per IPv6 address, sent by the kernel (see
    /// [`sysctl::announce`]) when the link's address is set.
    ///
    /// The ones it sent as the link came up were lost: the host end became
    /// a forwarding bridge port only after that (the bridge learns of the
    /// carrier asynchronously), and a bridge drops frames from a port that
    /// does not forward yet. So: wait (bounded) for the port to forward,
    /// then set the pod end's MAC to the one it has, which announces again.
    async fn announce(&self, veth: &str, pod_link: &Link) -> Result<(), Error> {
        const TRIES: u32 = 500;
        const EVERY: Duration = Duration::from_millis(2);
        for _ in 0..TRIES {
            let port = self
                .host
                .link(veth)
                .await
                .map_err(Error::netlink(format!("look up {veth}")))?;
            if port.and_then(|p| p.forwarding) == Some(true) {
                let mac = parse_mac(&pod_link.mac).ok_or_else(|| {
                    Error::Cni(CniError::io(format!(
                        "{} has no MAC address ({:?})",
                        pod_link.name, pod_link.mac
                    )))
                })?;
                return self
                    .pod
                    .set_mac(pod_link.index, mac)
                    .await
                    .map_err(Error::netlink(format!("announce the addresses of {}", pod_link.name)));
            }
            tokio::time::sleep(EVERY).await;
        }
        // STP on the bridge, say: the pod works once the port forwards, and
        // neighbours learn its MAC by asking.
        self.log.info(format!(
            "{veth} does not forward on {} after {} ms: addresses not announced",
            self.plan.bridge,
            (EVERY * TRIES).as_millis()
        ));
        Ok(())
    }

    /// Undo what [`Self::build`] made, newest first; log what cannot be
    /// undone. Deleting the host veth deletes the pod end too. The bridge and
    /// gateway addresses are removed only if this ADD made them and no pod
    /// is on the bridge (another ADD may have come since).
    async fn undo(&self, made: &Made) {
        let log = self.log;
        if made.veth {
            let veth = names::host_veth(self.key);
            if let Err(u) = self.host.del_link(&veth).await {
                log.error(format!("rollback: delete {veth}: {u}"));
            }
        }
        let Some(bridge) = made.bridge else { return };
        if !made.created_bridge && made.gateways.is_empty() {
            return;
        }
        let name = &self.plan.bridge;
        match self.host.has_ports(bridge).await {
            Ok(true) => log.info(format!("rollback: {name} has pods: kept as it is")),
            Ok(false) if made.created_bridge => {
                if let Err(u) = self.host.del_link_index(bridge).await {
                    log.error(format!("rollback: delete bridge {name}: {u}"));
                }
            }
            Ok(false) => {
                for gw in made.gateways.iter().rev() {
                    if let Err(u) = self.host.del_address(bridge, *gw).await {
                        log.error(format!("rollback: delete gateway {gw} from {name}: {u}"));
                    }
                }
            }
            Err(u) => log.error(format!("rollback: list ports of {name}: {u}")),
        }
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
