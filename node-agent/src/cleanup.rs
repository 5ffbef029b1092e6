//! `weft-agent cleanup`: remove everything weft made on this node and put
//! back the CNI configs it moved aside. Best
//! effort and idempotent: every step runs, "already gone" is success, and
//! all failures are reported together.

use std::fs;
use std::io;
use std::path::Path;

use crate::config::{Settings, CNI_BINARIES};
use crate::net::Net;
use crate::{bootstrap, nft, wg};

fn remove_file(path: &Path, done: &mut Vec<String>, errors: &mut Vec<String>) {
    match fs::remove_file(path) {
        Ok(()) => done.push(format!("removed {}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => errors.push(format!("remove {}: {e}", path.display())),
    }
}

fn remove_dir(path: &Path, done: &mut Vec<String>, errors: &mut Vec<String>) {
    match fs::remove_dir_all(path) {
        Ok(()) => done.push(format!("removed {}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => errors.push(format!("remove {}: {e}", path.display())),
    }
}

/// Returns what was removed, or every error met on the way.
pub async fn cleanup(s: &Settings) -> Result<Vec<String>, Vec<String>> {
    let mut done = Vec::new();
    let mut errors = Vec::new();
    // Not ready first, so runtimes stop using the network before it goes.
    remove_file(&s.readiness_file, &mut done, &mut errors);
    remove_file(&s.conflist_path(), &mut done, &mut errors);
    // The configs `--cni-exclusive` moved aside go back, so the plugin that
    // was there before weft (or the next one) finds its config again.
    let (restored, failed) = bootstrap::restore_moved_configs(s);
    done.extend(restored);
    errors.extend(failed);
    for b in CNI_BINARIES {
        remove_file(&s.cni_bin_dir.join(b), &mut done, &mut errors);
    }
    // The mesh's table and the Services'.
    for table in [nft::TABLE, weft_proxy::render::TABLE] {
        match nft::delete_table(table).await {
            Ok(true) => done.push(format!("deleted nft table inet {table}")),
            Ok(false) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    match wg::stop_userspace(s) {
        Ok(true) => done.push("stopped userspace WireGuard".into()),
        Ok(false) => {}
        Err(e) => errors.push(format!("stop userspace WireGuard: {e}")),
    }
    // Deleting the links takes their addresses and routes with them.
    match Net::here() {
        Ok(net) => {
            for link in [&s.wg_iface, &s.bridge] {
                match net.del_link(link).await {
                    Ok(true) => done.push(format!("deleted link {link}")),
                    Ok(false) => {}
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    remove_file(&s.wg_socket(), &mut done, &mut errors);
    remove_file(&s.wg_log_file(), &mut done, &mut errors);
    remove_file(&s.key_file(), &mut done, &mut errors);
    remove_dir(&s.ipam_dir(), &mut done, &mut errors);
    // The directories themselves, when nothing else is left in them.
    for d in [&s.wg_socket_dir, &s.run_dir, &s.state_dir] {
        if fs::remove_dir(d).is_ok() {
            done.push(format!("removed {}", d.display()));
        }
    }
    if errors.is_empty() {
        Ok(done)
    } else {
        Err(errors)
    }
}
