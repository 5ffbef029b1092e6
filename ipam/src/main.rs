//! `weft-ipam`: weft's allocator as a standalone CNI IPAM plugin, with
//! host-local compatible configuration, so any plugin (the reference
//! `bridge`, for one) can delegate to it.
#![forbid(unsafe_code)]

use serde::Deserialize;
use serde_json::Value;
use weft_cni_types::skel::{self, Request};
use weft_cni_types::{code, parse_config, CniError, Command};
use weft_ipam::{requested_ips, valid_attachments, Ipam, IpamConf};

#[derive(Deserialize)]
struct NetConf {
    name: String,
    ipam: IpamConf,
}

fn main() {
    skel::run(handle)
}

fn handle(req: &Request) -> Result<Option<Value>, CniError> {
    let conf: NetConf = parse_config(&req.stdin)?;
    let plan = conf.ipam.plan()?;
    let ipam = Ipam::new(plan, &conf.name)?;
    let inv = &req.invocation;
    match inv.command {
        Command::Add => {
            let key = inv.attachment()?;
            let requested = requested_ips(&req.config, inv.arg("IP"))?;
            let allocated = ipam.allocate(key, &requested)?;
            Ok(Some(ipam.result(&allocated).to_json(req.version)))
        }
        Command::Del => {
            ipam.release(inv.attachment()?)?;
            Ok(None)
        }
        Command::Check => {
            let key = inv.attachment()?;
            if ipam.held(key)?.is_empty() {
                return Err(CniError::new(
                    code::UNKNOWN_CONTAINER,
                    format!("check: {key} holds no address in network {}", conf.name),
                ));
            }
            Ok(None)
        }
        Command::Status => {
            let full = ipam.full_sets()?;
            if !full.is_empty() {
                return Err(CniError::new(
                    code::NOT_AVAILABLE,
                    format!("no address left in range(s) {}", full.join("; ")),
                ));
            }
            Ok(None)
        }
        Command::Gc => {
            ipam.gc(&valid_attachments(&req.config)?)?;
            Ok(None)
        }
        Command::Version => Ok(Some(weft_cni_types::Version::version_answer(req.version))),
    }
}
