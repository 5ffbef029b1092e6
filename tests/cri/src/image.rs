//! A container image built on the spot from busybox-static, as a
//! docker-archive tarball (what `docker save` writes and
//! `ctr images import` reads): no registry and no network needed.
//!
//! ```text
//! manifest.json            [{"Config":"<cfg>.json","RepoTags":[ref],"Layers":["<diff>/layer.tar"]}]
//! <cfg>.json               image config; rootfs.diff_ids = [sha256 of layer.tar]
//! <diff>/layer.tar         bin/busybox, bin/sh -> busybox, empty mount points
//! ```
//! One image serves as the sandbox ("pause") image, whose entrypoint sleeps
//! forever, and as the app image, whose command the CRI request overrides.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};
use tar::{Builder, EntryType, Header};

/// Write the image to `out`, tagged `reference`.
pub fn write_busybox_archive(busybox: &Path, reference: &str, out: &Path) -> Result<()> {
    let binary = fs::read(busybox).with_context(|| format!("read {}", busybox.display()))?;
    let layer = layer_tar(&binary).context("build image layer")?;
    let diff_id = hex_sha256(&layer);
    let config = serde_json::to_vec(&image_config(&diff_id))?;
    let config_name = format!("{}.json", hex_sha256(&config));
    let layer_name = format!("{diff_id}/layer.tar");
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": [reference],
        "Layers": [layer_name],
    }]))?;

    let mut archive = Builder::new(Vec::new());
    add_file(&mut archive, &config_name, &config, 0o644)?;
    add_dir(&mut archive, &format!("{diff_id}/"))?;
    add_file(&mut archive, &layer_name, &layer, 0o644)?;
    add_file(&mut archive, "manifest.json", &manifest, 0o644)?;
    let bytes = archive.into_inner().context("finish image archive")?;
    fs::write(out, bytes).with_context(|| format!("write {}", out.display()))
}

/// The root filesystem: busybox, a `sh` link for convenience, and the
/// directories runc mounts over (it would create them, but an image that
/// has them is the usual shape).
fn layer_tar(busybox: &[u8]) -> Result<Vec<u8>> {
    let mut layer = Builder::new(Vec::new());
    for dir in ["bin/", "dev/", "etc/", "proc/", "sys/", "tmp/", "www/"] {
        add_dir(&mut layer, dir)?;
    }
    add_file(&mut layer, "bin/busybox", busybox, 0o755)?;
    let mut link = header(EntryType::Symlink, 0o777, 0);
    layer.append_link(&mut link, "bin/sh", "busybox")?;
    layer.into_inner().context("finish layer tar")
}

/// The image config: entrypoint = the "pause" role (sleep forever).
fn image_config(diff_id: &str) -> serde_json::Value {
    json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/busybox", "sleep", "inf"],
            "Env": ["PATH=/bin"],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
    })
}

/// The OCI name of the architecture we run on (the image must match it for
/// `ctr images import` to pick it).
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// A header with fixed owner and time, so the same busybox always gives the
/// same layer digest.
fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn add_dir(tar: &mut Builder<Vec<u8>>, path: &str) -> Result<()> {
    let mut h = header(EntryType::Directory, 0o755, 0);
    tar.append_data(&mut h, path, std::io::empty())
        .with_context(|| format!("add directory {path}"))
}

fn add_file(tar: &mut Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) -> Result<()> {
    let mut h = header(EntryType::Regular, mode, data.len() as u64);
    tar.append_data(&mut h, path, data)
        .with_context(|| format!("add file {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn archive_manifest_points_at_a_layer_matching_its_diff_id() {
        let dir = std::env::temp_dir().join(format!("weft-image-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let fake_busybox = dir.join("busybox");
        fs::write(&fake_busybox, b"#!/not/really\n").unwrap();
        let out = dir.join("image.tar");
        write_busybox_archive(&fake_busybox, "localhost/x:1", &out).unwrap();

        let mut files = std::collections::HashMap::new();
        let bytes = fs::read(&out).unwrap();
        for entry in tar::Archive::new(&bytes[..]).entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            files.insert(name, data);
        }
        let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        let config_name = manifest[0]["Config"].as_str().unwrap();
        let layer_name = manifest[0]["Layers"][0].as_str().unwrap();
        assert_eq!(manifest[0]["RepoTags"][0], "localhost/x:1");
        let config: serde_json::Value = serde_json::from_slice(&files[config_name]).unwrap();
        let diff_id = format!("sha256:{}", hex_sha256(&files[layer_name]));
        assert_eq!(config["rootfs"]["diff_ids"][0], diff_id.as_str());
        fs::remove_dir_all(&dir).unwrap();
    }
}
