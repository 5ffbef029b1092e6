//! Logging for the CNI binary: stdout is the protocol, so log lines go to a
//! file (the config's `logFile`); errors also go to stderr, which runtimes
//! show in their own logs (info lines stay out of them: one per pod would
//! flood a runtime's log).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Log {
    file: Option<File>,
    prefix: String,
}

impl Log {
    /// Open (append) `path`, creating its directory. A log file that cannot
    /// be opened is reported on stderr and does not fail the request.
    pub fn open(path: &Path, prefix: String) -> Self {
        let file = path
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|_| OpenOptions::new().create(true).append(true).open(path));
        let file = match file {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("weft: cannot open log file {}: {e}", path.display());
                None
            }
        };
        Self { file, prefix }
    }

    pub fn info(&self, msg: impl AsRef<str>) {
        self.line("info", msg.as_ref(), false);
    }

    pub fn error(&self, msg: impl AsRef<str>) {
        self.line("error", msg.as_ref(), true);
    }

    fn line(&self, level: &str, msg: &str, stderr: bool) {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let line = format!(
            "{}.{:03} {level} {} {msg}\n",
            t.as_secs(),
            t.subsec_millis(),
            self.prefix
        );
        if let Some(mut f) = self.file.as_ref() {
            let _ = f.write_all(line.as_bytes());
        }
        if stderr {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}
