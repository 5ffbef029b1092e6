//! Names weft derives, the same on every call for the same input.

use sha2::{Digest, Sha256};
use weft_cni_types::AttachmentKey;

/// Host-side veth names start with this and carry 11 hex digits after it
/// (15 bytes, the kernel's limit).
pub const VETH_PREFIX: &str = "weft";
const VETH_HASH_LEN: usize = 11;

/// The host-side veth of an attachment: `weft` + 11 hex digits of
/// SHA-256(container ID, NUL, ifname). Deterministic, so DEL, CHECK and GC
/// find it without any state, and a leftover of a killed ADD is recognised.
pub fn host_veth(key: &AttachmentKey) -> String {
    let mut h = Sha256::new();
    h.update(key.container_id.as_str().as_bytes());
    h.update([0]);
    h.update(key.ifname.as_str().as_bytes());
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("{VETH_PREFIX}{}", &hex[..VETH_HASH_LEN])
}

/// Whether `name` has the shape of a weft host-side veth.
pub fn is_host_veth(name: &str) -> bool {
    name.len() == VETH_PREFIX.len() + VETH_HASH_LEN
        && name.starts_with(VETH_PREFIX)
        && name[VETH_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A fixed, locally administered unicast MAC for the bridge, derived from
/// its name.
pub fn bridge_mac(bridge: &str) -> [u8; 6] {
    let h = Sha256::digest(format!("weft-bridge/{bridge}").as_bytes());
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_cni_types::{ContainerId, IfName};

    fn key(id: &str, ifname: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: ContainerId::new(id).unwrap(),
            ifname: IfName::new(ifname).unwrap(),
        }
    }

    #[test]
    fn host_veth_is_deterministic_and_fits() {
        let a = host_veth(&key("c1", "eth0"));
        assert_eq!(a, host_veth(&key("c1", "eth0")));
        assert_eq!(a.len(), 15);
        assert!(is_host_veth(&a));
        // Stable across releases: DEL of a pod made by an older weft must find it.
        assert_eq!(a, "weftec43057c07a");
    }

    #[test]
    fn host_veth_differs_per_container_and_ifname() {
        let names = [
            host_veth(&key("c1", "eth0")),
            host_veth(&key("c1", "eth1")),
            host_veth(&key("c2", "eth0")),
            // "c1" + "0eth" must not collide with "c10" + "eth": the NUL separates them.
            host_veth(&key("c10", "eth")),
            host_veth(&key("c1", "0eth")),
        ];
        let uniq: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(uniq.len(), names.len());
    }

    #[test]
    fn shape_check() {
        assert!(!is_host_veth("weft0"));
        assert!(!is_host_veth("eth0"));
        assert!(!is_host_veth("weftZZZZZZZZZZZ"));
    }

    #[test]
    fn bridge_mac_is_local_unicast() {
        let m = bridge_mac("weft0");
        assert_eq!(m[0] & 0x01, 0, "unicast");
        assert_eq!(m[0] & 0x02, 2, "locally administered");
        assert_eq!(m, bridge_mac("weft0"));
    }
}
