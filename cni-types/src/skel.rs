//! The frame every weft CNI binary runs in: read the environment and stdin,
//! answer VERSION, check the config's version, call the plugin, print its
//! Result or its Error. Stdout carries only the protocol.

use std::io::{Read, Write};

use serde_json::Value;

use crate::{CniError, Command, Invocation, Version};

/// One parsed request handed to a plugin.
#[derive(Debug)]
pub struct Request {
    pub invocation: Invocation,
    /// The raw network config (plugins parse their own typed view of it).
    pub stdin: Vec<u8>,
    /// The same config as JSON, for fields read by path (runtimeConfig, GC's list).
    pub config: Value,
    /// The `cniVersion` of the config: results and errors are rendered in it.
    pub version: Version,
}

/// What the process prints and how it exits.
#[derive(Debug, PartialEq)]
pub struct Output {
    pub exit_code: i32,
    pub stdout: String,
}

/// Run a request through `plugin`; pure apart from what `plugin` does.
/// `plugin` returns the JSON to print (an ADD result) or `None` (DEL, CHECK,
/// STATUS, GC print nothing on success).
pub fn dispatch(
    vars: impl IntoIterator<Item = (String, String)>,
    stdin: Vec<u8>,
    plugin: impl FnOnce(&Request) -> Result<Option<Value>, CniError>,
) -> Output {
    // The version to answer in is the config's, when it is one we speak.
    let config: Result<Value, CniError> = if stdin.iter().all(u8::is_ascii_whitespace) {
        Ok(Value::Null)
    } else {
        serde_json::from_slice(&stdin)
            .map_err(|e| CniError::new(crate::code::DECODE, format!("cannot decode network config: {e}")))
    };
    let asked = config
        .as_ref()
        .ok()
        .and_then(|c| c.get("cniVersion"))
        .and_then(Value::as_str)
        .map(Version::parse);
    let answer_version = match &asked {
        Some(Ok(v)) => *v,
        _ => Version::LATEST,
    };
    let fail = |e: CniError| Output {
        exit_code: 1,
        stdout: e.to_json(answer_version).to_string(),
    };
    let invocation = match Invocation::from_vars(vars) {
        Ok(i) => i,
        Err(e) => return fail(e),
    };
    if invocation.command == Command::Version {
        return Output {
            exit_code: 0,
            stdout: Version::version_answer(answer_version).to_string(),
        };
    }
    let config = match config {
        Ok(c @ Value::Object(_)) => c,
        Ok(Value::Null) if stdin.iter().all(u8::is_ascii_whitespace) => {
            return fail(CniError::new(crate::code::DECODE, "no network config on stdin"))
        }
        // JSON, but not a config at all: a decoding error (6), not an
        // invalid field (7).
        Ok(other) => {
            return fail(CniError::new(
                crate::code::DECODE,
                format!(
                    "cannot decode network config: it is a JSON {}, not an object",
                    json_kind(&other)
                ),
            ))
        }
        Err(e) => return fail(e),
    };
    let version = match asked {
        Some(Ok(v)) => v,
        Some(Err(e)) => return fail(e),
        None => {
            return fail(CniError::invalid_config(
                "invalid network config: field cniVersion is missing",
            ))
        }
    };
    if invocation.command == Command::Check && !version.has_check() {
        return fail(CniError::new(
            crate::code::INCOMPATIBLE_VERSION,
            format!("CHECK is not defined for cniVersion {version}; it exists from 0.4.0 on"),
        ));
    }
    let request = Request {
        invocation,
        stdin,
        config,
        version,
    };
    match plugin(&request) {
        Ok(out) => Output {
            exit_code: 0,
            stdout: out.map(|v| v.to_string()).unwrap_or_default(),
        },
        Err(e) => fail(e),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Read the real environment and stdin, dispatch, print, exit.
pub fn run(plugin: impl FnOnce(&Request) -> Result<Option<Value>, CniError>) -> ! {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let out = match read {
        Ok(_) => dispatch(std::env::vars(), stdin, plugin),
        Err(e) => Output {
            exit_code: 1,
            stdout: CniError::io(format!("read stdin: {e}"))
                .to_json(Version::LATEST)
                .to_string(),
        },
    };
    let mut so = std::io::stdout().lock();
    let _ = so.write_all(out.stdout.as_bytes());
    let _ = so.flush();
    std::process::exit(out.exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(cmd: &str) -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".into(), cmd.into()),
            ("CNI_CONTAINERID".into(), "c1".into()),
            ("CNI_IFNAME".into(), "eth0".into()),
            ("CNI_NETNS".into(), "/var/run/netns/x".into()),
        ]
    }

    #[test]
    fn version_answers_without_calling_plugin() {
        let out = dispatch(env("VERSION"), br#"{"cniVersion":"0.4.0"}"#.to_vec(), |_| {
            panic!("not called")
        });
        assert_eq!(out.exit_code, 0);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"][4], "1.1.0");
        let out = dispatch(env("VERSION"), vec![], |_| panic!("not called"));
        assert_eq!(out.exit_code, 0);
    }

    #[test]
    fn unsupported_version_is_code_1() {
        let out = dispatch(env("ADD"), br#"{"cniVersion":"9.9.9"}"#.to_vec(), |_| {
            panic!("not called")
        });
        assert_eq!(out.exit_code, 1);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["code"], 1);
        assert_eq!(v["cniVersion"], "1.1.0");
    }

    #[test]
    fn check_before_0_4_is_refused() {
        let out = dispatch(env("CHECK"), br#"{"cniVersion":"0.3.1"}"#.to_vec(), |_| {
            panic!("not called")
        });
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["code"], 1);
        assert_eq!(v["cniVersion"], "0.3.1");
    }

    #[test]
    fn garbage_stdin_is_code_6_and_missing_version_code_7() {
        let out = dispatch(env("ADD"), b"{".to_vec(), |_| panic!("not called"));
        assert_eq!(serde_json::from_str::<Value>(&out.stdout).unwrap()["code"], 6);
        let out = dispatch(env("ADD"), b"{}".to_vec(), |_| panic!("not called"));
        assert_eq!(serde_json::from_str::<Value>(&out.stdout).unwrap()["code"], 7);
    }

    #[test]
    fn a_json_value_that_is_not_an_object_is_code_6() {
        for stdin in [
            &b"[]"[..],
            b"[{\"cniVersion\":\"1.1.0\"}]",
            b"null",
            b"\"text\"",
            b"7",
            b"true",
        ] {
            let out = dispatch(env("ADD"), stdin.to_vec(), |_| panic!("not called"));
            let v: Value = serde_json::from_str(&out.stdout).unwrap();
            assert_eq!(v["code"], 6, "{}: {v}", String::from_utf8_lossy(stdin));
            assert_eq!(out.exit_code, 1);
        }
    }

    #[test]
    fn plugin_result_and_error_are_printed() {
        let cfg = br#"{"cniVersion":"1.0.0","name":"n"}"#.to_vec();
        let out = dispatch(env("ADD"), cfg.clone(), |r| {
            assert_eq!(r.version, Version::V1_0_0);
            Ok(Some(serde_json::json!({"ok": true})))
        });
        assert_eq!(
            out,
            Output {
                exit_code: 0,
                stdout: r#"{"ok":true}"#.into()
            }
        );
        let out = dispatch(env("DEL"), cfg.clone(), |_| Ok(None));
        assert_eq!(out.stdout, "");
        let out = dispatch(env("DEL"), cfg, |_| Err(CniError::io("boom")));
        assert_eq!(out.exit_code, 1);
        assert!(out.stdout.contains("boom"));
    }
}
