//! weft's Services model: Kubernetes Services and EndpointSlices plus the node's own facts →
//! every frontend (ClusterIP, externalIP, LoadBalancer IP, NodePort; per port and protocol)
//! with its backends and the flags kube-proxy's nftables proxier derives. Pure: no sockets,
//! files or clocks; the agent feeds objects in and renders the result into nftables.
//!
//! ```text
//! watch events ──▶ ChangeTracker (store + changed Services) ──take_changes()──▶
//!     Model::recompute(&tracker, &changes) ──▶ ModelDiff (per-Service added/removed/changed)
//! ```
//!
//! Semantics follow kube-proxy (pkg/proxy: servicechangetracker, endpointslicecache,
//! topology.go's CategorizeEndpoints, nftables/proxier.go); each is noted where it is done.
#![forbid(unsafe_code)]

mod compute;
pub mod maglev;
mod model;
mod options;
mod problem;
pub mod render;
mod topology;
mod tracker;
mod types;

#[cfg(test)]
mod tests;

pub use compute::{
    ignored_by_labels, HealthCheck, DEFAULT_AFFINITY_TIMEOUT, HEADLESS_LABEL, LB_ALGORITHM_ANNOTATION,
    SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL,
};
pub use maglev::MaglevTable;
pub use model::{ConntrackCleanup, Model, ModelDiff, ServiceDiff};
pub use options::{LocalDetect, NodeFacts, NodePortAddresses, Options};
pub use problem::{ObjectRef, Problem, ProblemKind};
pub use tracker::{ChangeTracker, Changes, InputError};
pub use types::{
    Backend, Frontend, FrontendAddr, FrontendKey, FrontendKind, IpFamily, LbAlgorithm, Masquerade, NoBackends, Pool,
    Protocol, ServiceKey, ShortCircuit, SliceKey,
};
