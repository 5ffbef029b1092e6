//! Node bootstrap: the CNI binaries, the conflist and the readiness file.
//! Every write goes to a temporary file in the same directory and is renamed
//! into place, so a runtime never reads half a binary or half a config.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::{Settings, CNI_BINARIES, CONFLIST_NAME};

#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct BootstrapError {
    op: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

fn err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BootstrapError {
    let path = path.to_path_buf();
    move |source| BootstrapError { op, path, source }
}

/// Write `data` to `path` by temp file + rename, with `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), BootstrapError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err("create directory", dir))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.weft-tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err("create", &tmp))?;
    f.write_all(data).map_err(err("write", &tmp))?;
    f.sync_all().map_err(err("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(err("rename into", path))
}

/// Install `weft` and `weft-ipam` from the source directory unless the bin
/// directory already has identical files. Returns the change list.
pub fn install_binaries(s: &Settings) -> Result<Vec<String>, BootstrapError> {
    let mut changes = Vec::new();
    for bin in CNI_BINARIES {
        let src = s.cni_source_dir.join(bin);
        let dst = s.cni_bin_dir.join(bin);
        let data = fs::read(&src).map_err(err("read CNI binary", &src))?;
        if fs::read(&dst).is_ok_and(|have| have == data) {
            continue;
        }
        write_atomic(&dst, &data, 0o755)?;
        changes.push(format!("install {}", dst.display()));
    }
    Ok(changes)
}

/// Write the conflist unless the file already holds the same JSON; then,
/// with `cni_exclusive`, move every other CNI config aside. Returns the
/// change list.
pub fn write_conflist(s: &Settings, conflist: &Value) -> Result<Vec<String>, BootstrapError> {
    let path = s.conflist_path();
    let same = fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|have| &have == conflist);
    let mut changes = Vec::new();
    if !same {
        let mut text = serde_json::to_vec_pretty(conflist).expect("JSON value serializes");
        text.push(b'\n');
        write_atomic(&path, &text, 0o644)?;
        changes.push(format!("write {}", path.display()));
    }
    if s.cni_exclusive {
        changes.extend(move_other_configs(s)?);
    }
    Ok(changes)
}

/// What libcni (containerd, CRI-O) loads from the conf dir: files ending in
/// `.conf`, `.conflist` or `.json`, in name order, the first one wins.
fn is_cni_config(name: &str) -> bool {
    [".conf", ".conflist", ".json"].iter().any(|ext| name.ends_with(ext))
}

/// Other plugins' configs in the conf dir, by name (weft's own excluded).
fn other_configs(s: &Settings) -> Result<Vec<String>, BootstrapError> {
    let dir = &s.cni_conf_dir;
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(err("read directory", dir))? {
        let entry = entry.map_err(err("read directory", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // A directory named like a config is not one libcni would load.
        let is_dir = entry.file_type().map_err(err("stat", &entry.path()))?.is_dir();
        if !is_dir && name != CONFLIST_NAME && is_cni_config(&name) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// `mv <conf dir>/X <conf dir>/weft-moved/X` for every other CNI config, so
/// a leftover `10-calico.conflist` (which sorts before `10-weft.conflist`)
/// cannot win. A config that reappears (its plugin still running) is moved
/// again, replacing the older copy.
pub fn move_other_configs(s: &Settings) -> Result<Vec<String>, BootstrapError> {
    let names = other_configs(s)?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let moved = s.moved_dir();
    fs::create_dir_all(&moved).map_err(err("create directory", &moved))?;
    let mut changes = Vec::new();
    for name in names {
        let (from, to) = (s.cni_conf_dir.join(&name), moved.join(&name));
        fs::rename(&from, &to).map_err(err("move aside", &from))?;
        changes.push(format!("move aside {} to {}", from.display(), to.display()));
    }
    Ok(changes)
}

/// Put back what [`move_other_configs`] moved aside (for `cleanup`). A name
/// that exists again in the conf dir is not overwritten: it is reported and
/// its moved copy stays. Returns (done, errors).
pub fn restore_moved_configs(s: &Settings) -> (Vec<String>, Vec<String>) {
    let moved = s.moved_dir();
    let (mut done, mut errors) = (Vec::new(), Vec::new());
    let entries = match fs::read_dir(&moved) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (done, errors),
        Err(e) => return (done, vec![format!("read directory {}: {e}", moved.display())]),
    };
    let mut names: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    names.sort();
    for name in names {
        let (from, to) = (moved.join(&name), s.cni_conf_dir.join(&name));
        if fs::symlink_metadata(&to).is_ok() {
            errors.push(format!(
                "restore {}: {} exists; left the moved copy in place",
                from.display(),
                to.display()
            ));
            continue;
        }
        match fs::rename(&from, &to) {
            Ok(()) => done.push(format!("restored {}", to.display())),
            Err(e) => errors.push(format!("restore {} to {}: {e}", from.display(), to.display())),
        }
    }
    if errors.is_empty() {
        match fs::remove_dir(&moved) {
            Ok(()) => done.push(format!("removed {}", moved.display())),
            Err(e) => errors.push(format!("remove {}: {e}", moved.display())),
        }
    }
    (done, errors)
}

/// Create the readiness file `weft` STATUS looks for.
pub fn mark_ready(s: &Settings) -> Result<Option<String>, BootstrapError> {
    if s.readiness_file.exists() {
        return Ok(None);
    }
    write_atomic(&s.readiness_file, b"weft-agent\n", 0o644)?;
    Ok(Some(format!("write {}", s.readiness_file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn install_and_write_are_idempotent() {
        let root = std::env::temp_dir().join(format!("weft-agent-boot-{}", std::process::id()));
        let s = Settings::for_test(&root, "n1");
        fs::create_dir_all(&s.cni_source_dir).unwrap();
        for b in CNI_BINARIES {
            fs::write(s.cni_source_dir.join(b), b.as_bytes()).unwrap();
        }
        assert_eq!(install_binaries(&s).unwrap().len(), 2);
        assert!(install_binaries(&s).unwrap().is_empty());
        fs::write(s.cni_source_dir.join("weft"), b"new").unwrap();
        assert_eq!(
            install_binaries(&s).unwrap(),
            [format!("install {}", s.cni_bin_dir.join("weft").display())]
        );
        let c = json!({"a": 1});
        assert_eq!(write_conflist(&s, &c).unwrap().len(), 1);
        assert!(write_conflist(&s, &c).unwrap().is_empty());
        assert!(mark_ready(&s).unwrap().is_some());
        assert!(mark_ready(&s).unwrap().is_none());
        let leftovers: Vec<_> = fs::read_dir(&s.cni_bin_dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("weft-tmp"))
            .collect();
        assert!(leftovers.is_empty());
        fs::remove_dir_all(&root).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn exclusive_moves_other_configs_aside_and_restore_puts_them_back() {
        let root = std::env::temp_dir().join(format!("weft-agent-excl-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let s = Settings::for_test(&root, "n1");
        let conf = &s.cni_conf_dir;
        fs::create_dir_all(conf.join("not-a-config.conf")).unwrap();
        for (name, body) in [
            ("10-calico.conflist", "calico"),
            ("05-cilium.conf", "cilium"),
            ("99-loopback.json", "lo"),
            ("README", "keep"),
            ("10-flannel.conflist.bak", "keep"),
        ] {
            fs::write(conf.join(name), body).unwrap();
        }
        let c = json!({"name": "weft"});
        let changes = write_conflist(&s, &c).unwrap();
        assert_eq!(changes.len(), 4, "{changes:?}");
        assert!(changes[1].starts_with("move aside ") && changes[1].contains("05-cilium.conf"));
        assert_eq!(
            names(conf),
            [
                "10-flannel.conflist.bak",
                "10-weft.conflist",
                "README",
                "not-a-config.conf",
                "weft-moved"
            ]
        );
        assert_eq!(
            names(&s.moved_dir()),
            ["05-cilium.conf", "10-calico.conflist", "99-loopback.json"]
        );
        // Nothing left to move: up to date.
        assert!(write_conflist(&s, &c).unwrap().is_empty());
        // Calico's agent writes its config again: moved again, the newer copy kept.
        fs::write(conf.join("10-calico.conflist"), "calico v2").unwrap();
        assert_eq!(write_conflist(&s, &c).unwrap().len(), 1);
        assert_eq!(
            fs::read_to_string(s.moved_dir().join("10-calico.conflist")).unwrap(),
            "calico v2"
        );

        // Restore refuses to overwrite a config that exists again, and keeps the moved copy.
        fs::write(conf.join("99-loopback.json"), "new lo").unwrap();
        let (done, errors) = restore_moved_configs(&s);
        assert_eq!(done.len(), 2, "{done:?}");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("99-loopback.json exists"), "{errors:?}");
        assert_eq!(fs::read_to_string(conf.join("99-loopback.json")).unwrap(), "new lo");
        assert_eq!(
            fs::read_to_string(conf.join("10-calico.conflist")).unwrap(),
            "calico v2"
        );
        assert_eq!(names(&s.moved_dir()), ["99-loopback.json"]);
        // Once the clash is gone, a second restore finishes and removes the folder.
        fs::remove_file(conf.join("99-loopback.json")).unwrap();
        let (done, errors) = restore_moved_configs(&s);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(done.len(), 2, "{done:?}");
        assert!(!s.moved_dir().exists());
        assert_eq!(fs::read_to_string(conf.join("99-loopback.json")).unwrap(), "lo");
        // Idempotent: nothing moved, nothing to do.
        assert_eq!(restore_moved_configs(&s), (vec![], vec![]));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn not_exclusive_leaves_other_configs_alone() {
        let root = std::env::temp_dir().join(format!("weft-agent-nonexcl-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let mut s = Settings::for_test(&root, "n1");
        s.cni_exclusive = false;
        fs::create_dir_all(&s.cni_conf_dir).unwrap();
        fs::write(s.cni_conf_dir.join("10-calico.conflist"), "calico").unwrap();
        assert_eq!(write_conflist(&s, &json!({"name": "weft"})).unwrap().len(), 1);
        assert_eq!(names(&s.cni_conf_dir), ["10-calico.conflist", "10-weft.conflist"]);
        fs::remove_dir_all(&root).unwrap();
    }
}
