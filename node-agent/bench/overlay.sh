#!/bin/sh
# Pod-to-pod throughput across two nodes: weft's overlay vs a hand-configured
# wireguard-go tunnel vs the plain underlay, in the same run (iperf3, 1 and 2
# streams, 10 s each). Needs root, iperf3, wireguard-go, wireguard-tools.
# Release builds: the agent picks weft-wg beside itself as its userspace
# WireGuard; WEFT_WG_USERSPACE=wireguard-go makes the agent use Debian's.
# Results go to node-agent/BENCHMARKS.md by hand, with this exact command.
set -eu
cd "$(dirname "$0")/../.."
: "${CARGO_TARGET_DIR:=target}"
export CARGO_TARGET_DIR
cargo build --release -p weft-cni -p weft-ipam -p weft-tests -p weft-wg --bins
cargo test --release -p weft-agent --test bench_overlay -- --ignored --nocapture --test-threads 1
