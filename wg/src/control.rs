//! The UAPI socket `/var/run/wireguard/IFACE.sock` (what `wg` and weft-agent
//! connect to): one thread, one client at a time, any number of requests per
//! connection, each ended by an empty line.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::device::Device;
use crate::uapi::{self, Request};

/// Where userspace WireGuard implementations put their sockets.
pub const SOCKET_DIR: &str = "/var/run/wireguard";
/// A client that stops talking mid-request does not block the others for long.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("UAPI socket {path}: {source}")]
pub struct ControlError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

pub fn socket_path(iface: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{iface}.sock"))
}

/// Create the directory (0755) and listen on `path`, replacing a stale socket.
pub fn listen(path: &Path) -> Result<UnixListener, ControlError> {
    let err = |source| ControlError {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(err)?;
    }
    if UnixStream::connect(path).is_ok() {
        return Err(err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process serves it",
        )));
    }
    let _ = fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(err)?;
    Ok(l)
}

/// Serve clients forever.
pub fn serve(listener: UnixListener, dev: &Device) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if let Err(e) = handle(conn, dev) {
            eprintln!("weft-wg: UAPI client: {e}");
        }
    }
}

fn handle(conn: UnixStream, dev: &Device) -> io::Result<()> {
    conn.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    conn.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    loop {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(()); // client closed
            }
            let line = line.trim_end_matches('\n').to_string();
            if line.is_empty() {
                break;
            }
            lines.push(line);
        }
        let answer = answer(dev, &lines);
        writer.write_all(answer.as_bytes())?;
    }
}

fn answer(dev: &Device, lines: &[String]) -> String {
    match uapi::parse_request(lines.iter().map(String::as_str)) {
        Ok(Request::Get) => uapi::render_get(&dev.view()),
        Ok(Request::Set(req)) => match dev.apply(&req) {
            Ok(()) => uapi::render_errno(0),
            Err(e) => {
                eprintln!("weft-wg: set: {e}");
                uapi::render_errno(e.errno())
            }
        },
        Err(e) => {
            eprintln!("weft-wg: {e}");
            uapi::render_errno(e.errno())
        }
    }
}
