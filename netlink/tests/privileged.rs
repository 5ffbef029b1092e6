//! weft-netlink against the real kernel, each test in its own throwaway
//! network namespaces (`wnl-…`), checked with `ip`. Run as root.

use std::fs::File;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipnetwork::IpNetwork;
use weft_netlink::{Handle, InfoKind, Route, RouteProtocol, Veth};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "this test needs root (network namespaces): run the suite as root"
        );
        let name = format!(
            "wnl-{}-{}",
            std::process::id() % 100000,
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        Self { name }
    }

    fn file(&self) -> File {
        File::open(format!("/var/run/netns/{}", self.name)).expect("open netns")
    }

    /// `ip -n NS ARGS`, its stdout; panics on failure.
    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

#[test]
fn bridge_veth_pair_and_peer_ids() {
    let (node, pod) = (Netns::new(), Netns::new());
    rt().block_on(async {
        let nl = Handle::in_netns(&node.file()).unwrap();
        let mac = [0x02, 1, 2, 3, 4, 5];
        let (br, created) = nl.ensure_bridge("wnlbr0", 1400, mac).await.unwrap();
        assert!(created);
        assert_eq!(
            (br.kind, br.mtu, br.mac.as_str(), br.up),
            (Some(InfoKind::Bridge), 1400, "02:01:02:03:04:05", false)
        );
        let (again, created) = nl.ensure_bridge("wnlbr0", 1400, mac).await.unwrap();
        assert!(!created, "the second call finds the first one's bridge");
        assert_eq!(again.index, br.index);
        assert!(node.ip(&["-d", "link", "show", "wnlbr0"]).contains("bridge"));
        assert!(!nl.has_ports(br.index).await.unwrap());
        nl.set_up(br.index).await.unwrap();

        // Something else of that name is refused.
        node.ip(&["link", "add", "wnld0", "type", "veth", "peer", "name", "wnld0p"]);
        let e = nl.ensure_bridge("wnld0", 1400, mac).await.unwrap_err();
        assert_eq!(e.op(), "ip link add wnld0 type bridge");
        assert!(e.to_string().contains("not a bridge"), "{e}");

        let pod_ns = pod.file();
        let veth = Veth {
            host: "wnlh0",
            peer: "eth0",
            mtu: 1400,
            peer_ns: &pod_ns,
            bridge: br.index,
        };
        nl.add_veth(&veth).await.unwrap();
        let e = nl.add_veth(&veth).await.unwrap_err();
        assert!(e.is(libc::EEXIST), "{e}");
        assert!(e.op().starts_with("ip link add wnlh0"), "{}", e.op());
        assert!(nl.has_ports(br.index).await.unwrap());
        let host = nl.link("wnlh0").await.unwrap().expect("host end");
        assert_eq!((host.controller, host.up, host.mtu), (Some(br.index), true, 1400));
        assert!(
            nl.link("eth0").await.unwrap().is_none(),
            "the peer is born in the pod netns"
        );

        let pn = Handle::in_netns(&pod_ns).unwrap();
        let pe = pn.link("eth0").await.unwrap().expect("pod end");
        assert_eq!(pe.kind, Some(InfoKind::Veth));
        assert_eq!((pe.peer_index, host.peer_index), (Some(host.index), Some(pe.index)));
        let pod_id = nl.netnsid_of(&pod_ns).await.unwrap();
        let node_id = pn.netnsid_of(&node.file()).await.unwrap();
        assert!(pod_id.is_some() && node_id.is_some());
        assert_eq!((host.peer_netnsid, pe.peer_netnsid), (pod_id, node_id));
        // A netns no link here points into has no id.
        let stranger = Netns::new();
        assert_eq!(nl.netnsid_of(&stranger.file()).await.unwrap(), None);

        nl.set_hairpin(host.index, true).await.unwrap();
        assert_eq!(nl.link("wnlh0").await.unwrap().unwrap().hairpin, Some(true));
        assert!(node.ip(&["-d", "link", "show", "wnlh0"]).contains("hairpin on"));

        // Up on both ends: the port forwards (bounded wait, STP is off).
        pn.set_up(pe.index).await.unwrap();
        let mut forwarding = None;
        for _ in 0..500 {
            forwarding = nl.link("wnlh0").await.unwrap().unwrap().forwarding;
            if forwarding == Some(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(forwarding, Some(true));
        let mac = weft_netlink::parse_mac(&pe.mac).unwrap();
        pn.set_mac(pe.index, mac).await.unwrap();
        assert_eq!(pn.link("eth0").await.unwrap().unwrap().mac, pe.mac, "the same MAC");

        assert!(nl.del_link("wnlh0").await.unwrap());
        assert!(!nl.del_link("wnlh0").await.unwrap(), "already gone");
        assert!(pn.link("eth0").await.unwrap().is_none(), "the pod end went with it");
        assert!(nl.del_link_index(br.index).await.unwrap());
        assert!(!nl.del_link_index(br.index).await.unwrap());
        assert!(nl.link("wnlbr0").await.unwrap().is_none());
        assert!(!node.ip(&["link", "show"]).contains("wnlbr0"));
    });
}

#[test]
fn addresses_mtu_and_routes() {
    let node = Netns::new();
    // A veth pair (this kernel has no dummy module), the far end up so
    // this one has a carrier.
    node.ip(&["link", "add", "wnld1", "type", "veth", "peer", "name", "wnld1p"]);
    node.ip(&["link", "set", "wnld1p", "up"]);
    rt().block_on(async {
        let nl = Handle::in_netns(&node.file()).unwrap();
        let l = nl.link("wnld1").await.unwrap().unwrap();
        nl.set_mtu_up(l.index, 1300).await.unwrap();
        let l = nl.link("wnld1").await.unwrap().unwrap();
        assert_eq!((l.mtu, l.up), (1300, true));

        let (v4, v6) = (net("10.98.0.1/24"), net("fd00:98::1/64"));
        assert!(nl.ensure_address(l.index, v4).await.unwrap(), "added");
        assert!(!nl.ensure_address(l.index, v4).await.unwrap(), "already there");
        nl.add_address(l.index, v6).await.unwrap();
        nl.add_address(l.index, v6).await.unwrap();
        let have = nl.addresses(l.index).await.unwrap();
        assert!(have.contains(&v4) && have.contains(&v6), "{have:?}");
        let shown = node.ip(&["addr", "show", "wnld1"]);
        assert!(shown.contains("fd00:98::1/64") && shown.contains("nodad"), "{shown}");
        assert_eq!(nl.mtu_of_link_with(v4.ip()).await.unwrap(), Some(1300));
        assert_eq!(nl.mtu_of_link_with("10.98.0.9".parse().unwrap()).await.unwrap(), None);

        let r4 = Route::to(net("10.99.0.0/16")).dev(l.index).src(Some(v4.ip()));
        let r6 = Route::to(net("fd00:99::/64"))
            .via(Some("fd00:98::2".parse().unwrap()))
            .dev(l.index);
        for r in [&r4, &r6] {
            nl.add_route(r).await.unwrap();
            nl.add_route(r).await.unwrap();
        }
        let shown = node.ip(&["route", "show", "dev", "wnld1"]);
        assert!(shown.contains("10.99.0.0/16 proto static src 10.98.0.1"), "{shown}");
        let via = nl.routes_via(l.index).await.unwrap();
        assert_eq!(via.len(), 2, "{via:?}");
        assert!(via.contains(&r4) && via.contains(&r6), "{via:?}");
        // The kernel's subnet route is listed by routes(), not routes_via().
        let all = nl.routes().await.unwrap();
        assert!(all
            .iter()
            .any(|r| r.dst == net("10.98.0.0/24") && r.proto == RouteProtocol::Kernel));

        nl.del_route(&r4).await.unwrap();
        nl.del_route(&r4).await.unwrap();
        assert_eq!(nl.routes_via(l.index).await.unwrap(), vec![r6.clone()]);
        nl.del_address(l.index, v4).await.unwrap();
        nl.del_address(l.index, v4).await.unwrap();
        assert!(!nl.addresses(l.index).await.unwrap().contains(&v4));
        assert!(!node.ip(&["addr", "show", "wnld1"]).contains("10.98.0.1"));

        // Errors name the command and carry the errno.
        let e = nl.set_up(999_999).await.unwrap_err();
        assert_eq!((e.op(), e.errno()), ("ip link set dev 999999 up", Some(libc::ENODEV)));
        let bad = Route::to(net("10.97.0.0/16"))
            .via(Some("192.0.2.1".parse().unwrap()))
            .dev(l.index);
        let e = nl.add_route(&bad).await.unwrap_err();
        assert!(e.op().starts_with("ip route add 10.97.0.0/16 via 192.0.2.1"), "{e}");
        assert!(e.errno().is_some(), "{e}");
    });
}

#[test]
fn wireguard_link_or_the_kernels_refusal() {
    let node = Netns::new();
    rt().block_on(async {
        let nl = Handle::in_netns(&node.file()).unwrap();
        match nl.add_wireguard("wnlwg0").await {
            Ok(()) => {
                let l = nl.link("wnlwg0").await.unwrap().expect("created");
                assert_eq!(l.kind, Some(InfoKind::Wireguard));
                assert!(nl.del_link("wnlwg0").await.unwrap());
            }
            Err(e) => {
                // No module: the kernel knows no such link type.
                assert_eq!(e.op(), "ip link add wnlwg0 type wireguard");
                assert_eq!(e.errno(), Some(libc::EOPNOTSUPP), "{e}");
                assert!(nl.link("wnlwg0").await.unwrap().is_none());
            }
        }
    });
}
