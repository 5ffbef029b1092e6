//! Harness for the "real runtime" end-to-end test: a private containerd, run
//! as if it were a node of its own, drives a CNI network (weft, or Debian's
//! reference `bridge` + `host-local` for comparison) through the CRI, the way
//! kubelet does.
//!
//! The "node" is a fresh network namespace plus a private mount namespace
//! (see `scripts/enter-node.sh`): the bridge, the veths and every mount
//! containerd makes stay there, and a temp dir holds all of containerd's,
//! runc's and the IPAM's state. [`node::Node`] tears it all down on drop,
//! also when the test panics.

pub mod cleanup;
pub mod cmd;
pub mod cni;
pub mod cri;
pub mod image;
pub mod netns;
pub mod node;
pub mod require;
