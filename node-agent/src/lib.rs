//! `weft-agent`: the per-node DaemonSet process.
//!
//! It keeps a WireGuard mesh between nodes so pods reach pods (and nodes reach
//! pods) on every node with their own addresses, and bootstraps the node's CNI
//! (binaries, conflist, readiness) once that mesh is up.
//!
//! Shape: a watcher on Nodes feeds a reflector store; [`plan::desired`] turns
//! (own node, all nodes, settings) into the wanted state — peers, routes,
//! addresses, nftables rules, conflist — without side effects; the appliers
//! ([`wg`], [`net`], [`nft`], [`bootstrap`]) diff that against what the kernel
//! and the filesystem have and make the smallest change.
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod cleanup;
pub mod config;
pub mod conflist;
pub mod http;
pub mod key;
pub mod kube;
pub mod metrics;
pub mod mtu;
pub mod net;
pub mod nft;
pub mod node;
pub mod peers;
pub mod plan;
pub mod reconcile;
pub mod runloop;
pub mod services;
pub mod uapi;
pub mod wg;
