//! The CNI environment: which verb, for which container and interface.
//!
//! Parsed once at the boundary into validated types, so the rest of the plugin
//! never looks at a raw environment variable.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use crate::CniError;

/// The CNI verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            other => {
                return Err(CniError::invalid_env(format!(
                    "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Status => "STATUS",
            Self::Gc => "GC",
        }
    }
}

/// A container ID as the spec constrains it: not empty, starts with an
/// alphanumeric character, then alphanumerics, `_`, `.` or `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

impl ContainerId {
    pub fn new(s: &str) -> Result<Self, CniError> {
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if first_ok && rest_ok {
            Ok(Self(s.to_string()))
        } else {
            Err(CniError::invalid_env(format!(
                "CNI_CONTAINERID {s:?} is invalid: it must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Linux interface name: 1 to 15 bytes (IFNAMSIZ - 1), not `.` or `..`,
/// and no `/`, `:`, white space or NUL (the kernel's `dev_valid_name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

impl IfName {
    pub const MAX_LEN: usize = 15;

    pub fn new(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("interface name is empty".into());
        }
        if s.len() > Self::MAX_LEN {
            return Err(format!(
                "interface name {s:?} is {} bytes, longer than {}",
                s.len(),
                Self::MAX_LEN
            ));
        }
        if s == "." || s == ".." {
            return Err(format!("interface name {s:?} is reserved"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || *c == '\0')
        {
            return Err(format!("interface name {s:?} contains {c:?}"));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an allocation or a host-side leftover belongs to: one attachment of
/// one container. This is the key the spec gives GC (`cni.dev/valid-attachments`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttachmentKey {
    pub container_id: ContainerId,
    pub ifname: IfName,
}

impl fmt::Display for AttachmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// A parsed CNI invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub command: Command,
    /// Present for ADD, DEL and CHECK.
    pub attachment: Option<AttachmentKey>,
    /// Required for ADD and CHECK; DEL may come without one.
    pub netns: Option<PathBuf>,
    /// `CNI_ARGS`: `K1=V1;K2=V2`.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`: where delegated plugins are looked up.
    pub path: Vec<PathBuf>,
}

impl Invocation {
    /// Parse from the process environment.
    pub fn from_env() -> Result<Self, CniError> {
        Self::from_vars(std::env::vars())
    }

    /// Parse from explicit variables (tests, and plugins that delegate).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, CniError> {
        let vars: HashMap<String, String> = vars.into_iter().filter(|(k, _)| k.starts_with("CNI_")).collect();
        let get = |k: &str| vars.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let command =
            Command::parse(get("CNI_COMMAND").ok_or_else(|| CniError::invalid_env("CNI_COMMAND is not set"))?)?;
        let path = get("CNI_PATH")
            .map(|p| p.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect())
            .unwrap_or_default();
        let args = get("CNI_ARGS").map(parse_args).transpose()?.unwrap_or_default();
        let netns = get("CNI_NETNS").map(PathBuf::from);

        let attachment = match command {
            Command::Add | Command::Del | Command::Check => {
                let id = get("CNI_CONTAINERID").ok_or_else(|| {
                    CniError::invalid_env(format!("CNI_CONTAINERID is required for {}", command.as_str()))
                })?;
                let ifname = get("CNI_IFNAME")
                    .ok_or_else(|| CniError::invalid_env(format!("CNI_IFNAME is required for {}", command.as_str())))?;
                Some(AttachmentKey {
                    container_id: ContainerId::new(id)?,
                    ifname: IfName::new(ifname).map_err(|e| CniError::invalid_env(format!("CNI_IFNAME: {e}")))?,
                })
            }
            _ => None,
        };
        if matches!(command, Command::Add | Command::Check) && netns.is_none() {
            return Err(CniError::invalid_env(format!(
                "CNI_NETNS is required for {}",
                command.as_str()
            )));
        }
        Ok(Self {
            command,
            attachment,
            netns,
            args,
            path,
        })
    }

    /// The attachment of an ADD/DEL/CHECK (validated present by parsing).
    pub fn attachment(&self) -> Result<&AttachmentKey, CniError> {
        self.attachment.as_ref().ok_or_else(|| {
            CniError::invalid_env(format!(
                "{} needs CNI_CONTAINERID and CNI_IFNAME",
                self.command.as_str()
            ))
        })
    }

    /// The value of `CNI_ARGS` key `k` (e.g. `IP`), if given.
    pub fn arg(&self, k: &str) -> Option<&str> {
        self.args.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }
}

fn parse_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    s.split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| CniError::invalid_env(format!("CNI_ARGS: {kv:?} is not of the form KEY=VALUE")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn add_needs_id_ifname_netns() {
        let base = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
            ("CNI_ARGS", "IgnoreUnknown=1;IP=10.0.0.5"),
        ];
        let inv = Invocation::from_vars(vars(&base)).unwrap();
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.attachment().unwrap().to_string(), "abc-1/eth0");
        assert_eq!(inv.path.len(), 2);
        assert_eq!(inv.arg("IP"), Some("10.0.0.5"));
        for missing in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"] {
            let v: Vec<_> = base.iter().filter(|(k, _)| *k != missing).copied().collect();
            let e = Invocation::from_vars(vars(&v)).unwrap_err();
            assert_eq!(e.code, 4, "{missing}");
            assert!(e.msg.contains(missing), "{}", e.msg);
        }
    }

    #[test]
    fn del_without_netns_is_fine() {
        let inv = Invocation::from_vars(vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert!(inv.netns.is_none());
    }

    #[test]
    fn version_status_gc_need_nothing_else() {
        for c in ["VERSION", "STATUS", "GC"] {
            let inv = Invocation::from_vars(vars(&[("CNI_COMMAND", c)])).unwrap();
            assert!(inv.attachment.is_none());
        }
    }

    #[test]
    fn bad_env_is_code_4() {
        for bad in [
            vec![("CNI_COMMAND", "PUT")],
            vec![],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "-x"),
                ("CNI_IFNAME", "eth0"),
            ],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "a/b"),
                ("CNI_IFNAME", "eth0"),
            ],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "a-very-long-name0"),
            ],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "novalue"),
            ],
        ] {
            let e = Invocation::from_vars(vars(&bad)).unwrap_err();
            assert_eq!(e.code, 4, "{bad:?}: {e}");
        }
    }

    #[test]
    fn ifname_rules() {
        assert!(IfName::new("eth0").is_ok());
        assert!(IfName::new("123456789012345").is_ok());
        for bad in ["", "1234567890123456", ".", "..", "a/b", "a:b", "a b"] {
            assert!(IfName::new(bad).is_err(), "{bad:?}");
        }
    }
}
