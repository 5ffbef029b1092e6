//! The allocation state of one network on disk: one JSON file, read and
//! rewritten under an exclusive `flock`, replaced by atomic rename.
//!
//! Why one file and not a file per address (host-local's layout): a release
//! or a GC needs "everything held by container X", which with a file per
//! address is a scan of the directory on every DEL. Here it is one small read.
//! A process killed at any point leaves either the old or the new file (the
//! rename is atomic), never a mix, and the lock dies with the process.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::IpamError;

/// One allocation: an address held by one attachment, made in one boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub ip: IpAddr,
    #[serde(rename = "containerId")]
    pub container_id: String,
    pub ifname: String,
    #[serde(rename = "bootId")]
    pub boot_id: String,
}

/// The whole state of a network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Per range set, the address handed out last (round robin cursor).
    #[serde(default)]
    pub last: Vec<Option<IpAddr>>,
    #[serde(default)]
    pub allocations: Vec<Allocation>,
}

/// An open, exclusively locked state directory. Dropping it unlocks.
pub struct Locked {
    _lock: Flock<File>,
    file: PathBuf,
    tmp: PathBuf,
    pub state: State,
    original: State,
}

/// Lock `dir` (creating it) and read its state.
pub fn lock(dir: &Path) -> Result<Locked, IpamError> {
    fs::create_dir_all(dir).map_err(|e| IpamError::io("create data dir", dir, e))?;
    let lock_path = dir.join("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| IpamError::io("open lock file", &lock_path, e))?;
    let lock = Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, errno)| IpamError::io("lock", &lock_path, errno.into()))?;
    let file = dir.join("state.json");
    let state = match fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| IpamError::Corrupt {
            path: file.clone(),
            reason: e.to_string(),
        })?,
        Err(e) if e.kind() == ErrorKind::NotFound => State::default(),
        Err(e) => return Err(IpamError::io("read state", &file, e)),
    };
    Ok(Locked {
        _lock: lock,
        tmp: dir.join("state.json.tmp"),
        file,
        original: state.clone(),
        state,
    })
}

impl Locked {
    /// Write the state back if it changed: write a temporary file, flush it
    /// to disk, rename it over the old one. Only one writer holds the lock,
    /// so the temporary name can be fixed (a leftover from a killed writer
    /// is simply overwritten).
    pub fn commit(self) -> Result<(), IpamError> {
        if self.state == self.original {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&self.state).expect("state serializes");
        let mut f = File::create(&self.tmp).map_err(|e| IpamError::io("create temporary state", &self.tmp, e))?;
        f.write_all(&bytes)
            .and_then(|_| f.sync_data())
            .map_err(|e| IpamError::io("write temporary state", &self.tmp, e))?;
        fs::rename(&self.tmp, &self.file).map_err(|e| IpamError::io("replace state", &self.file, e))
    }
}

/// Read the boot id (one line) from `path`.
pub fn boot_id(path: &Path) -> Result<String, IpamError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| IpamError::io("read boot id", path, e))
}
