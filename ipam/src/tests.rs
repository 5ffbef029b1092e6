use std::collections::HashSet;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use weft_cni_types::{AttachmentKey, ContainerId, IfName};

use super::*;

static N: AtomicU32 = AtomicU32::new(0);

/// A fresh data dir and boot-id file under the system temp dir.
struct Env {
    dir: PathBuf,
}

impl Env {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "weft-ipam-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("boot_id"), "boot-a\n").unwrap();
        Self { dir }
    }

    fn ipam(&self, ranges: serde_json::Value) -> Ipam {
        let conf: IpamConf = serde_json::from_value(serde_json::json!({
            "type": "weft-ipam",
            "ranges": ranges,
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": self.dir.join("data"),
            "bootIdFile": self.dir.join("boot_id"),
        }))
        .unwrap();
        Ipam::new(conf.plan().unwrap(), "net1").unwrap()
    }

    fn boot(&self, id: &str) {
        fs::write(self.dir.join("boot_id"), id).unwrap();
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn key(id: &str) -> AttachmentKey {
    AttachmentKey {
        container_id: ContainerId::new(id).unwrap(),
        ifname: IfName::new("eth0").unwrap(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn small() -> serde_json::Value {
    serde_json::json!([[{"subnet": "10.9.0.0/29"}]])
}

#[test]
fn repeated_add_returns_same_address_and_del_releases() {
    let env = Env::new();
    let ipam = env.ipam(small());
    let a = ipam.allocate(&key("c1"), &[]).unwrap();
    assert_eq!(a[0].address.to_string(), "10.9.0.2/29");
    assert_eq!(a[0].gateway, ip("10.9.0.1"));
    assert_eq!(ipam.allocate(&key("c1"), &[]).unwrap(), a);
    assert_eq!(ipam.held(&key("c1")).unwrap(), vec![ip("10.9.0.2")]);
    assert_eq!(ipam.release(&key("c1")).unwrap(), vec![ip("10.9.0.2")]);
    assert!(
        ipam.release(&key("c1")).unwrap().is_empty(),
        "second release is a no-op"
    );
    assert!(ipam.held(&key("c1")).unwrap().is_empty());
}

#[test]
fn round_robin_does_not_reuse_at_once() {
    let env = Env::new();
    let ipam = env.ipam(small());
    let a = ipam.allocate(&key("c1"), &[]).unwrap()[0].address.ip();
    ipam.release(&key("c1")).unwrap();
    let b = ipam.allocate(&key("c2"), &[]).unwrap()[0].address.ip();
    assert_ne!(a, b, "a released address is not handed out again at once");
    assert_eq!(b, ip("10.9.0.3"));
}

#[test]
fn exhaustion_is_code_11_naming_the_range() {
    let env = Env::new();
    let ipam = env.ipam(small());
    let mut got = HashSet::new();
    for i in 0..5 {
        let a = ipam.allocate(&key(&format!("c{i}")), &[]).unwrap();
        assert!(got.insert(a[0].address.ip()), "duplicate");
    }
    // .2 to .6: never network (.0), gateway (.1) or broadcast (.7).
    for bad in ["10.9.0.0", "10.9.0.1", "10.9.0.7"] {
        assert!(!got.contains(&ip(bad)));
    }
    assert_eq!(ipam.full_sets().unwrap().len(), 1);
    let e = ipam.allocate(&key("c9"), &[]).unwrap_err();
    assert_eq!(e.cni_code(), 11);
    assert!(e.to_string().contains("10.9.0.2-10.9.0.6"), "{e}");
    // Nothing half-made: the failed ADD holds nothing.
    assert!(ipam.held(&key("c9")).unwrap().is_empty());
}

#[test]
fn dual_stack_one_address_per_set() {
    let env = Env::new();
    let ipam = env.ipam(serde_json::json!([[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd00:9::/64"}]]));
    let a = ipam.allocate(&key("c1"), &[]).unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].address.to_string(), "10.9.0.2/24");
    assert_eq!(a[1].address.to_string(), "fd00:9::2/64");
    assert_eq!(a[1].gateway, ip("fd00:9::1"));
    let r = ipam.result(&a);
    assert_eq!(r.ips.len(), 2);
    assert_eq!(r.routes.len(), 1);
}

#[test]
fn requested_address_honoured_or_refused() {
    let env = Env::new();
    // rangeStart on the gateway: the gateway is inside the range but still never handed out.
    let ipam = env.ipam(serde_json::json!([[{"subnet": "10.9.0.0/24", "rangeStart": "10.9.0.1"}]]));
    let a = ipam.allocate(&key("c1"), &[ip("10.9.0.50")]).unwrap();
    assert_eq!(a[0].address.ip(), ip("10.9.0.50"));
    let e = ipam.allocate(&key("c2"), &[ip("10.9.0.50")]).unwrap_err();
    assert!(matches!(e, IpamError::RequestedInUse { .. }), "{e}");
    assert!(e.to_string().contains("c1/eth0"), "{e}");
    let e = ipam.allocate(&key("c2"), &[ip("10.99.0.5")]).unwrap_err();
    assert_eq!(e.cni_code(), 7);
    let e = ipam.allocate(&key("c2"), &[ip("10.9.0.1")]).unwrap_err();
    assert!(matches!(e, IpamError::RequestedGateway { .. }), "{e}");
    let e = ipam.allocate(&key("c1"), &[ip("10.9.0.51")]).unwrap_err();
    assert!(matches!(e, IpamError::RequestedDiffers { .. }), "{e}");
    assert!(ipam.held(&key("c2")).unwrap().is_empty());
}

#[test]
fn requested_ips_from_every_source() {
    let cfg = serde_json::json!({
        "runtimeConfig": {"ips": ["10.9.0.5/24"]},
        "args": {"cni": {"ips": ["fd00::5"]}}
    });
    let ips = requested_ips(&cfg, Some("10.9.0.5,10.9.0.6")).unwrap();
    assert_eq!(ips, vec![ip("10.9.0.5"), ip("fd00::5"), ip("10.9.0.6")]);
    let bad = serde_json::json!({"runtimeConfig": {"ips": ["nope"]}});
    let e = requested_ips(&bad, None).unwrap_err();
    assert!(e.to_string().starts_with("runtimeConfig.ips"), "{e}");
}

#[test]
fn reboot_reclaims_allocations_of_earlier_boots() {
    let env = Env::new();
    let ipam = env.ipam(small());
    ipam.allocate(&key("old"), &[]).unwrap();
    env.boot("boot-b");
    assert!(
        ipam.allocations().unwrap().is_empty(),
        "old boot's allocation reclaimed"
    );
    let a = ipam.allocate(&key("new"), &[]).unwrap();
    assert_eq!(a[0].address.ip(), ip("10.9.0.3"), "round robin cursor survives");
    let files = store::state_files(ipam.state_dir()).unwrap();
    assert_eq!(files.len(), 1, "the earlier boot's file is removed: {files:?}");
    assert!(files[0].to_string_lossy().contains("boot-b"));
}

#[test]
fn reclaim_can_be_turned_off() {
    let env = Env::new();
    let conf: IpamConf = serde_json::from_value(serde_json::json!({
        "ranges": small(), "dataDir": env.dir.join("data"),
        "bootIdFile": env.dir.join("boot_id"), "reclaimOnReboot": false,
    }))
    .unwrap();
    let ipam = Ipam::new(conf.plan().unwrap(), "net1").unwrap();
    ipam.allocate(&key("old"), &[]).unwrap();
    env.boot("boot-b");
    assert_eq!(ipam.allocations().unwrap().len(), 1);
    ipam.allocate(&key("new"), &[]).unwrap();
    let owners: Vec<_> = ipam
        .allocations()
        .unwrap()
        .into_iter()
        .map(|a| a.container_id)
        .collect();
    assert_eq!(owners, ["old", "new"], "carried into the new boot's file");
}

#[test]
fn torn_state_of_an_earlier_boot_is_harmless() {
    // A power loss can leave the last write of the old boot torn; with
    // reclaim on, the new boot never needs its contents.
    let env = Env::new();
    let ipam = env.ipam(small());
    ipam.allocate(&key("c1"), &[]).unwrap();
    let files = store::state_files(ipam.state_dir()).unwrap();
    fs::write(&files[0], b"").unwrap();
    env.boot("boot-b");
    let a = ipam.allocate(&key("c2"), &[]).unwrap();
    assert_eq!(
        a[0].address.ip(),
        ip("10.9.0.2"),
        "fresh start: the cursor was unreadable"
    );
}

#[test]
fn gc_releases_what_is_not_valid() {
    let env = Env::new();
    let ipam = env.ipam(small());
    ipam.allocate(&key("keep"), &[]).unwrap();
    ipam.allocate(&key("stale"), &[]).unwrap();
    let valid: HashSet<_> = [("keep".to_string(), "eth0".to_string())].into();
    let released = ipam.gc(&valid).unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].0, "stale");
    assert_eq!(ipam.allocations().unwrap().len(), 1);
}

#[test]
fn parallel_allocations_never_duplicate() {
    let env = Env::new();
    let ranges = serde_json::json!([[{"subnet": "10.9.0.0/24"}]]);
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let ipam = env.ipam(ranges.clone());
            std::thread::spawn(move || {
                (0..8)
                    .map(|i| ipam.allocate(&key(&format!("t{t}-{i}")), &[]).unwrap()[0].address.ip())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<IpAddr> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let uniq: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 128);
    assert_eq!(uniq.len(), 128, "no duplicates across concurrent allocators");
}

#[test]
fn corrupt_state_is_an_error_not_a_reset() {
    let env = Env::new();
    let ipam = env.ipam(small());
    ipam.allocate(&key("c1"), &[]).unwrap();
    let files = store::state_files(ipam.state_dir()).unwrap();
    assert_eq!(files.len(), 1);
    fs::write(&files[0], b"{garbage").unwrap();
    let e = ipam.allocate(&key("c2"), &[]).unwrap_err();
    assert_eq!(e.cni_code(), 5);
    assert!(e.to_string().contains("state.boot-a.json"), "{e}");
}

#[test]
fn bad_network_name_is_refused() {
    let env = Env::new();
    let conf: IpamConf = serde_json::from_value(serde_json::json!({"ranges": small(), "dataDir": env.dir})).unwrap();
    for bad in ["", "..", "a/b"] {
        assert!(Ipam::new(conf.plan().unwrap(), bad).is_err(), "{bad}");
    }
    assert!(Path::new(&env.dir).exists());
}

#[test]
fn valid_attachments_parsing() {
    let cfg = serde_json::json!({"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]});
    let v = valid_attachments(&cfg).unwrap();
    assert!(v.contains(&("a".to_string(), "eth0".to_string())));
    let bad = serde_json::json!({"cni.dev/valid-attachments": [{"containerID": 1}]});
    assert_eq!(valid_attachments(&bad).unwrap_err().code, 7);
}

#[test]
fn gc_without_valid_attachments_is_invalid_config() {
    // The spec makes the list required; its absence is never "none valid".
    let e = valid_attachments(&serde_json::json!({"cniVersion": "1.1.0"})).unwrap_err();
    assert_eq!(e.code, 7);
    assert!(e.msg.contains("cni.dev/valid-attachments"), "{}", e.msg);
    let empty = valid_attachments(&serde_json::json!({"cni.dev/valid-attachments": []})).unwrap();
    assert!(empty.is_empty(), "an empty list is valid: nothing is kept");
}

#[test]
fn read_only_calls_never_write_the_state() {
    let env = Env::new();
    let ipam = env.ipam(small());
    let dir = ipam.state_dir().to_path_buf();
    // Nothing allocated yet: no state file appears.
    assert!(ipam.full_sets().unwrap().is_empty());
    assert!(ipam.held(&key("x")).unwrap().is_empty());
    assert!(ipam.allocations().unwrap().is_empty());
    assert!(store::state_files(&dir).unwrap().is_empty());
    ipam.allocate(&key("a"), &[]).unwrap();
    let files = store::state_files(&dir).unwrap();
    let before = fs::metadata(&files[0]).unwrap();
    // A new boot: the reads see nothing held, and leave the old file alone.
    env.boot("boot-b\n");
    assert!(ipam.full_sets().unwrap().is_empty());
    assert!(ipam.held(&key("a")).unwrap().is_empty());
    assert!(ipam.allocations().unwrap().is_empty());
    assert_eq!(store::state_files(&dir).unwrap(), files);
    use std::os::unix::fs::MetadataExt;
    let after = fs::metadata(&files[0]).unwrap();
    assert_eq!((after.ino(), after.mtime_nsec()), (before.ino(), before.mtime_nsec()));
}
