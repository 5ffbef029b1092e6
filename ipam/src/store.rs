//! The allocation state of one network on disk: one JSON file per boot,
//! read and rewritten under an exclusive `flock`, replaced by atomic rename.
//!
//! Why one file and not a file per address (host-local's layout): a release
//! or a GC needs "everything held by container X", which with a file per
//! address is a scan of the directory on every DEL. Here it is one small read.
//! A process killed at any point leaves either the old or the new file (the
//! rename is atomic), never a mix, and the lock dies with the process.
//!
//! Why one file per boot (`state.<boot id>.json`): allocations of an earlier
//! boot are void (their pods died with the node), so after a reboot the new
//! boot starts from an empty set by reading only its own file; the older file
//! is read just for the round-robin cursor and then removed. That is also why
//! no `fsync` is needed while reclaim is on: a power loss is a reboot, after
//! which whatever the old file holds, even a torn write, no longer matters.
//! With reclaim off, allocations must outlive a reboot and every write is
//! flushed to disk before the rename.

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
    durable: bool,
    /// State files of earlier boots, removed at the first commit.
    stale: Vec<PathBuf>,
    pub state: State,
    original: State,
}

/// Lock `dir` (creating it) and read the state of boot `boot`. `carry`:
/// allocations of earlier boots are kept (reclaim off) rather than dropped.
pub fn lock(dir: &Path, boot: &str, carry: bool) -> Result<Locked, IpamError> {
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
    let tag: String = boot
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let file = dir.join(format!("state.{tag}.json"));
    let mut stale = Vec::new();
    let state = match read(&file)? {
        Some(state) => state,
        None => {
            // First use in this boot: older boots' files are read, then removed.
            stale = state_files(dir)?;
            stale.retain(|p| p != &file);
            stale.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
            match stale.last() {
                Some(newest) if carry => read(newest)?.unwrap_or_default(),
                // Only the cursor survives a reboot, and only if readable.
                Some(newest) => State {
                    last: read(newest).ok().flatten().map(|s| s.last).unwrap_or_default(),
                    allocations: Vec::new(),
                },
                None => State::default(),
            }
        }
    };
    Ok(Locked {
        _lock: lock,
        tmp: dir.join("state.tmp"),
        file,
        durable: carry,
        stale,
        original: state.clone(),
        state,
    })
}

fn read(path: &Path) -> Result<Option<State>, IpamError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| IpamError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IpamError::io("read state", path, e)),
    }
}

/// Every state file in `dir` (this boot's and older ones).
pub fn state_files(dir: &Path) -> Result<Vec<PathBuf>, IpamError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(IpamError::io("list data dir", dir, e)),
    };
    Ok(rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("state.") && n.ends_with(".json"))
        })
        .collect())
}

impl Locked {
    /// Write the state back if it changed: write a temporary file (flushed
    /// to disk when durable), rename it over the old one, then remove older
    /// boots' files. Only one writer holds the lock, so the temporary name
    /// can be fixed (a leftover from a killed writer is overwritten).
    pub fn commit(self) -> Result<(), IpamError> {
        if self.state == self.original && self.stale.is_empty() {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&self.state).expect("state serializes");
        let mut f = File::create(&self.tmp).map_err(|e| IpamError::io("create temporary state", &self.tmp, e))?;
        f.write_all(&bytes)
            .and_then(|_| if self.durable { f.sync_data() } else { Ok(()) })
            .map_err(|e| IpamError::io("write temporary state", &self.tmp, e))?;
        fs::rename(&self.tmp, &self.file).map_err(|e| IpamError::io("replace state", &self.file, e))?;
        for old in &self.stale {
            fs::remove_file(old).map_err(|e| IpamError::io("remove state of an earlier boot", old, e))?;
        }
        Ok(())
    }
}

/// Read the boot id (one line) from `path`.
pub fn boot_id(path: &Path) -> Result<String, IpamError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| IpamError::io("read boot id", path, e))
}
