//! What the test needs on the machine. Anything missing is an error naming
//! the Debian package to install: this test fails, it never skips.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

/// The Debian packages this test needs (besides a Rust toolchain and
/// `protobuf-compiler` for building the CRI client).
pub const APT_PACKAGES: &str =
    "containerd runc busybox-static containernetworking-plugins iproute2 iptables util-linux mount";

/// Where Debian's containernetworking-plugins puts the reference plugins.
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";

/// Reference plugins the test uses: `loopback` (containerd sets up `lo` in
/// every pod with it), `portmap` (chained after weft), `bridge` and
/// `host-local` (the comparison network).
const SYSTEM_CNI_PLUGINS: [&str; 4] = ["loopback", "portmap", "bridge", "host-local"];

/// Absolute paths of the programs the test runs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub containerd: PathBuf,
    pub ctr: PathBuf,
    pub runc: PathBuf,
    /// A statically linked busybox: the whole userland of the test image.
    pub busybox: PathBuf,
    pub ip: PathBuf,
    pub unshare: PathBuf,
    pub nsenter: PathBuf,
    pub cni_dir: PathBuf,
}

/// Check that we are root and that every tool is installed.
pub fn check() -> Result<Tools> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the containerd CRI test must run as root (it creates network namespaces and runs containerd)"
    );
    let tools = Tools {
        containerd: find_program("containerd")?,
        ctr: find_program("ctr")?,
        runc: find_program("runc")?,
        busybox: static_busybox()?,
        ip: find_program("ip")?,
        unshare: find_program("unshare")?,
        nsenter: find_program("nsenter")?,
        cni_dir: PathBuf::from(SYSTEM_CNI_DIR),
    };
    // Found through PATH by containerd and by the portmap plugin, not by us.
    find_program("containerd-shim-runc-v2")?;
    find_program("iptables")?;
    find_program("mount")?;
    for plugin in SYSTEM_CNI_PLUGINS {
        let path = tools.cni_dir.join(plugin);
        ensure!(
            is_executable(&path),
            "CNI reference plugin {} is missing (apt-get install containernetworking-plugins)",
            path.display()
        );
    }
    Ok(tools)
}

/// Look `name` up in PATH and the sbin directories (which a non-login root
/// shell may lack in PATH).
pub fn find_program(name: &str) -> Result<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path.split(':').filter(|d| !d.is_empty()).chain([
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]);
    for dir in dirs {
        let candidate = Path::new(dir).join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    bail!("required program {name:?} not found; install the Debian packages: apt-get install -y --no-install-recommends {APT_PACKAGES}")
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `/bin/busybox` from busybox-static. The dynamically linked `busybox`
/// package installs the same path, but it could not run in an image that
/// has no libc, so check that the ELF file asks for no program interpreter.
fn static_busybox() -> Result<PathBuf> {
    let path = PathBuf::from("/bin/busybox");
    let elf = fs::read(&path).with_context(|| format!("read {} (apt-get install busybox-static)", path.display()))?;
    ensure!(
        !elf_has_interpreter(&elf)?,
        "{} is dynamically linked; the test image needs busybox-static",
        path.display()
    );
    Ok(path)
}

/// Whether a 64-bit little-endian ELF file has a PT_INTERP program header,
/// i.e. is dynamically linked.
fn elf_has_interpreter(elf: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    ensure!(
        elf.len() >= 64 && elf.starts_with(b"\x7fELF\x02\x01"),
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let start = phoff + i * phentsize;
        let p_type = elf.get(start..start + 4).context("truncated ELF program header")?;
        if u32::from_le_bytes(p_type.try_into()?) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_dynamic_and_static_binaries() {
        // The running test binary is a dynamically linked Rust program.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(elf_has_interpreter(&me).unwrap());
        assert!(elf_has_interpreter(b"not an elf").is_err());
    }
}
