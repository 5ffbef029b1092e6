//! WireGuard keys: the node's private key, created once and kept on disk
//! (mode 0600), and public keys as they appear in Node annotations.
//!
//! The private key is never logged: its `Debug` is redacted and it has no
//! `Display`.

use std::fmt;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key is not base64: {0}")]
    NotBase64(#[source] base64::DecodeError),
    #[error("key is {0} bytes, a WireGuard key is 32")]
    WrongLength(usize),
    #[error("read private key {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("private key file {path}: {source}")]
    BadFile {
        path: PathBuf,
        #[source]
        source: Box<KeyError>,
    },
    #[error("write private key {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn decode32(s: &str) -> Result<[u8; 32], KeyError> {
    let bytes = STANDARD.decode(s.trim()).map_err(KeyError::NotBase64)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::WrongLength(bytes.len()))
}

/// A Curve25519 public key (what peers are known by).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parse the standard base64 form (`wg pubkey` output).
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(Self)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// The node's private key.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PrivateKey {
    pub fn generate() -> Self {
        Self(wireguard_control::Key::generate_private().0)
    }

    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(wireguard_control::Key(self.0).get_public().0)
    }

    /// Load the key at `path`, or create it (mode 0600, by write to a temp
    /// file and rename, so a crash never leaves half a key) when there is none.
    /// Returns the key and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyError> {
        match fs::read_to_string(path) {
            Ok(text) => {
                let key = decode32(&text).map_err(|e| KeyError::BadFile {
                    path: path.into(),
                    source: Box::new(e),
                })?;
                tighten_mode(path).map_err(|source| KeyError::Write {
                    path: path.into(),
                    source,
                })?;
                Ok((Self(key), false))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = Self::generate();
                key.store(path).map_err(|source| KeyError::Write {
                    path: path.into(),
                    source,
                })?;
                Ok((key, true))
            }
            Err(source) => Err(KeyError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    fn store(&self, path: &Path) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(STANDARD.encode(self.0).as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    }
}

/// A key file readable by others is made 0600 (it may have been copied in).
fn tighten_mode(path: &Path) -> io::Result<()> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "private key readable by others; setting 0600");
        fs::set_permissions(path, Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_round_trip_and_bad_values_are_rejected() {
        let k = PrivateKey::generate().public();
        assert_eq!(PublicKey::from_base64(&k.to_base64()).unwrap(), k);
        assert!(matches!(
            PublicKey::from_base64("not base64!"),
            Err(KeyError::NotBase64(_))
        ));
        assert!(matches!(
            PublicKey::from_base64(&STANDARD.encode([1u8; 16])),
            Err(KeyError::WrongLength(16))
        ));
        assert!(matches!(PublicKey::from_base64(""), Err(KeyError::WrongLength(0))));
    }

    #[test]
    fn private_key_is_redacted() {
        let k = PrivateKey::generate();
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&STANDARD.encode(k.0)));
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn key_is_created_once_with_mode_0600_then_reloaded() {
        let dir = std::env::temp_dir().join(format!("weft-agent-key-{}", std::process::id()));
        let path = dir.join("sub/wireguard.key");
        let (k1, created) = PrivateKey::load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (k2, created) = PrivateKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1, k2);
        fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            PrivateKey::load_or_create(&path),
            Err(KeyError::BadFile { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
