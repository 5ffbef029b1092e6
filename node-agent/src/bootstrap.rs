//! Node bootstrap: the CNI binaries, the conflist and the readiness file.
//! Every write goes to a temporary file in the same directory and is renamed
//! into place, so a runtime never reads half a binary or half a config.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::{Settings, CNI_BINARIES};

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

/// Write the conflist unless the file already holds the same JSON.
pub fn write_conflist(s: &Settings, conflist: &Value) -> Result<Option<String>, BootstrapError> {
    let path = s.conflist_path();
    let same = fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|have| &have == conflist);
    if same {
        return Ok(None);
    }
    let mut text = serde_json::to_vec_pretty(conflist).expect("JSON value serializes");
    text.push(b'\n');
    write_atomic(&path, &text, 0o644)?;
    Ok(Some(format!("write {}", path.display())))
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
        assert!(write_conflist(&s, &c).unwrap().is_some());
        assert!(write_conflist(&s, &c).unwrap().is_none());
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
}
