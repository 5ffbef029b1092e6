//! The emulator's objects on disk (`--state DIR`), so that a restarted
//! emulator keeps its objects and its resourceVersion counter, as a real
//! API server restarted on the same etcd does.
//!
//! `DIR/objects.json` is a snapshot of the store, written by atomic rename
//! at start; `DIR/changes.jsonl` has one line per change since, appended
//! before the change is acknowledged. Opening replays both and writes a new
//! snapshot. A last line cut short by a crash was never acknowledged and is
//! ignored; any other bad line is an error.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::store::{Change, Store};

pub const SNAPSHOT_FILE: &str = "objects.json";
pub const JOURNAL_FILE: &str = "changes.jsonl";

/// Why the saved state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {msg}", path.display())]
    Corrupt { path: PathBuf, msg: String },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PersistError + 'a {
    move |source| PersistError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The open journal the emulator appends every change to.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Append one change (one line, one write).
    pub fn append(&mut self, store: &Store, change: &Change) -> Result<(), PersistError> {
        let mut line = store.journal_record(change).to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(io("append to", &self.path))
    }
}

/// Load the store saved in `dir` (a new one from `seed` when there is none),
/// write it as a fresh snapshot, and open an empty journal.
pub fn open(dir: &Path, history_limit: usize, seed: impl FnOnce() -> Store) -> Result<(Store, Journal), PersistError> {
    let snap_path = dir.join(SNAPSHOT_FILE);
    let journal_path = dir.join(JOURNAL_FILE);
    let mut store = match std::fs::read(&snap_path) {
        Ok(bytes) => {
            let corrupt = |msg: String| PersistError::Corrupt {
                path: snap_path.clone(),
                msg,
            };
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
            Store::restore(history_limit, &v).map_err(corrupt)?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => seed(),
        Err(e) => return Err(io("read", &snap_path)(e)),
    };
    match std::fs::read_to_string(&journal_path) {
        Ok(text) => replay(&mut store, &text).map_err(|msg| PersistError::Corrupt {
            path: journal_path.clone(),
            msg,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read", &journal_path)(e)),
    }
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    std::fs::write(&tmp, store.snapshot().to_string()).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, &snap_path).map_err(io("rename to", &snap_path))?;
    let file = File::create(&journal_path).map_err(io("create", &journal_path))?;
    Ok((
        store,
        Journal {
            path: journal_path,
            file,
        },
    ))
}

fn replay(store: &mut Store, text: &str) -> Result<(), String> {
    let lines: Vec<&str> = text.lines().collect();
    let complete = text.ends_with('\n');
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        match serde_json::from_str::<Value>(line) {
            Ok(rec) => store.replay(&rec).map_err(|e| format!("line {}: {e}", i + 1))?,
            // Cut short by a crash while being written: never acknowledged.
            Err(_) if last && !complete => {}
            Err(e) => return Err(format!("line {}: {e}", i + 1)),
        }
    }
    Ok(())
}

/// Delete the saved state in `dir` (the next start begins empty).
pub fn remove(dir: &Path) -> Result<(), PersistError> {
    for f in [SNAPSHOT_FILE, JOURNAL_FILE] {
        let p = dir.join(f);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &p)(e)),
        }
    }
    Ok(())
}
