//! weft's test harness: a Kubernetes API emulator ([`apiserver`]), a
//! multi-node lab in network namespaces ([`lab`]), traffic probes and the
//! in-pod server ([`traffic`]), and the demo's connectivity matrix
//! ([`demo`]). The `weft-lab` binary is the CLI over all of them.
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod demo;
pub mod lab;
pub mod traffic;
