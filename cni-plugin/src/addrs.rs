//! Addresses for an attachment: from weft-ipam linked in, or from any other
//! IPAM plugin executed from CNI_PATH exactly as the spec describes (same
//! environment, same network config on stdin, result on stdout).

use std::collections::HashSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command as Proc, Stdio};

use serde_json::Value;
use weft_cni_types::skel::Request;
use weft_cni_types::{code, CniError, CniResult, Command};
use weft_ipam::{requested_ips, valid_attachments};

use crate::config::{IpamMode, Plan};
use crate::Error;

/// ADD: the IPAM part of the result (ips with gateways, routes, dns).
pub fn allocate(plan: &Plan, req: &Request) -> Result<CniResult, Error> {
    let inv = &req.invocation;
    match &plan.ipam {
        IpamMode::InProcess(ipam) => {
            let requested = requested_ips(&req.config, inv.arg("IP"))?;
            let allocated = ipam.allocate(inv.attachment()?, &requested)?;
            Ok(ipam.result(&allocated))
        }
        IpamMode::Delegated { plugin } => {
            let out = exec(plugin, &inv.path, Command::Add, &req.stdin)?;
            let v = out.ok_or_else(|| Error::Delegate {
                plugin: plugin.clone(),
                err: CniError::new(code::DECODE, "ADD printed no result"),
            })?;
            CniResult::from_json(&v).map_err(|err| Error::Delegate {
                plugin: plugin.clone(),
                err,
            })
        }
    }
}

/// DEL: release what the attachment holds; nothing held is success.
pub fn release(plan: &Plan, req: &Request) -> Result<(), Error> {
    match &plan.ipam {
        IpamMode::InProcess(ipam) => {
            ipam.release(req.invocation.attachment()?)?;
        }
        IpamMode::Delegated { plugin } => {
            exec(plugin, &req.invocation.path, Command::Del, &req.stdin)?;
        }
    }
    Ok(())
}

/// CHECK: every address of the previous result is still held.
pub fn check(plan: &Plan, req: &Request, expected: &[IpAddr]) -> Result<(), Error> {
    match &plan.ipam {
        IpamMode::InProcess(ipam) => {
            let key = req.invocation.attachment()?;
            let held = ipam.held(key)?;
            for ip in expected {
                if !held.contains(ip) {
                    return Err(Error::Check(format!("ipam: {key} no longer holds {ip}")));
                }
            }
        }
        IpamMode::Delegated { plugin } => {
            exec(plugin, &req.invocation.path, Command::Check, &req.stdin)?;
        }
    }
    Ok(())
}

/// GC: release allocations of attachments the runtime no longer knows.
pub fn gc(plan: &Plan, req: &Request) -> Result<usize, Error> {
    match &plan.ipam {
        IpamMode::InProcess(ipam) => Ok(ipam.gc(&valid_attachments(&req.config)?)?.len()),
        IpamMode::Delegated { plugin } => {
            exec(plugin, &req.invocation.path, Command::Gc, &req.stdin)?;
            Ok(0)
        }
    }
}

/// STATUS: `Err` with code 50 when no address is left.
pub fn status(plan: &Plan, req: &Request) -> Result<(), Error> {
    match &plan.ipam {
        IpamMode::InProcess(ipam) => {
            let full = ipam.full_sets()?;
            if !full.is_empty() {
                return Err(CniError::new(
                    code::NOT_AVAILABLE,
                    format!("no address left in range(s) {}", full.join("; ")),
                )
                .into());
            }
            Ok(())
        }
        IpamMode::Delegated { plugin } => {
            exec(plugin, &req.invocation.path, Command::Status, &req.stdin)?;
            Ok(())
        }
    }
}

/// The attachment keys GC must keep (for host-side leftovers).
pub fn valid_keys(req: &Request) -> Result<HashSet<(String, String)>, Error> {
    Ok(valid_attachments(&req.config)?)
}

/// Find `plugin` in CNI_PATH.
fn find(plugin: &str, path: &[PathBuf]) -> Result<PathBuf, Error> {
    path.iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Delegate {
            plugin: plugin.to_string(),
            err: CniError::invalid_config(format!(
                "plugin {plugin:?} not found in CNI_PATH ({})",
                path.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            )),
        })
}

/// Run a delegated plugin with our environment, `CNI_COMMAND` set to
/// `command`, and `stdin`; its error object is passed on with its code.
fn exec(plugin: &str, path: &[PathBuf], command: Command, stdin: &[u8]) -> Result<Option<Value>, Error> {
    let bin = find(plugin, path)?;
    let fail = |err: CniError| Error::Delegate {
        plugin: plugin.to_string(),
        err,
    };
    let mut child = Proc::new(&bin)
        .env("CNI_COMMAND", command.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| fail(CniError::io(format!("exec {}: {e}", bin.display()))))?;
    if let Some(mut si) = child.stdin.take() {
        si.write_all(stdin)
            .map_err(|e| fail(CniError::io(format!("write stdin: {e}"))))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(CniError::io(format!("wait: {e}"))))?;
    let parsed: Option<Value> = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(
            serde_json::from_slice(&out.stdout)
                .map_err(|e| fail(CniError::new(code::DECODE, format!("cannot decode its output: {e}"))))?,
        )
    };
    if out.status.success() {
        return Ok(parsed);
    }
    let err = parsed
        .and_then(|v| serde_json::from_value::<CniError>(v).ok())
        .unwrap_or_else(|| CniError::io(format!("exited with {}", out.status)));
    Err(fail(err))
}
