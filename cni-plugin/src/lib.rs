//! `weft`, the CNI plugin: puts a pod on the node bridge with a veth pair
//! and addresses from weft-ipam (or any IPAM plugin), and answers every CNI
//! verb of spec 1.1.0 (ADD, DEL, CHECK, VERSION, STATUS, GC).
//!
//! Pure parts ([`config`], [`names`]) are tested without root; the effects
//! are netlink (the `weft_netlink` crate), [`netns`], [`sysctl`] and the
//! IPAM glue in [`addrs`]. [`nl`] only forwards to `weft_netlink` for
//! weft-agent until it uses that crate itself.
#![forbid(unsafe_code)]

pub mod add;
pub mod addrs;
pub mod check;
pub mod config;
pub mod error;
pub mod log;
pub mod names;
pub mod netns;
pub mod sysctl;
pub mod teardown;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;
use weft_cni_types::skel::Request;
use weft_cni_types::{code, CniError, Command, Version};

pub use config::{Plan, WeftConf};
pub use error::Error;

/// Handle one CNI request (what `weft` does between reading stdin and
/// printing its answer).
pub fn handle(req: &Request) -> Result<Option<Value>, CniError> {
    let inv = &req.invocation;
    let who = inv.attachment.as_ref().map(ToString::to_string).unwrap_or_default();
    let prefix = format!("{} {who}", inv.command.as_str());
    let plan = match WeftConf::parse(&req.stdin).and_then(|c| Plan::new(&c, req.version)) {
        Ok(plan) => plan,
        Err(e) => {
            // Logged where the config says, if that much of it is readable.
            let file = req
                .config
                .get("logFile")
                .and_then(Value::as_str)
                .filter(|p| Path::new(p).is_absolute())
                .map_or_else(|| PathBuf::from(config::DEFAULT_LOG_FILE), PathBuf::from);
            log::Log::open(&file, prefix).error(format!("refused: code {}: {}", e.code, e.msg));
            return Err(e);
        }
    };
    let log = log::Log::open(&plan.log_file, prefix);
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| CniError::io(format!("start runtime: {e}")))?;
    let out: Result<Option<Value>, Error> = rt.block_on(async {
        match inv.command {
            Command::Add => add::add(&plan, req, &log).await.map(|r| Some(r.to_json(req.version))),
            Command::Del => teardown::del(&plan, req, &log).await.map(|_| None),
            Command::Check => check::check(&plan, req).await.map(|_| None),
            Command::Gc => teardown::gc(&plan, req, &log).await.map(|_| None),
            Command::Status => status(&plan, req).map(|_| None),
            Command::Version => Ok(Some(Version::version_answer(req.version))),
        }
    });
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match out {
        Ok(v) => {
            log.info(format!("ok in {ms:.1} ms"));
            Ok(v)
        }
        Err(e) => {
            let e = CniError::from(e);
            log.error(format!("failed in {ms:.1} ms: code {}: {}", e.code, e.msg));
            Err(e)
        }
    }
}

/// STATUS: ready once the agent wrote the readiness file, and while the
/// IPAM ranges have addresses left.
fn status(plan: &Plan, req: &Request) -> Result<(), Error> {
    if !plan.readiness_file.exists() {
        return Err(CniError::new(
            code::NOT_AVAILABLE,
            format!(
                "node network not ready: {} does not exist (weft-agent writes it once the node's network is up)",
                plan.readiness_file.display()
            ),
        )
        .into());
    }
    addrs::status(plan, req)
}
