#!/bin/sh
# Pod-to-pod throughput across two nodes: weft's overlay vs a hand-configured
# wireguard-go tunnel vs the plain underlay, in the same run (iperf3, 1 and 2
# streams, 10 s each). Needs root, iperf3, wireguard-go, wireguard-tools.
# Results go to node-agent/BENCHMARKS.md by hand, with this exact command.
set -eu
cd "$(dirname "$0")/../.."
: "${CARGO_TARGET_DIR:=target}"
export CARGO_TARGET_DIR
cargo build -p weft-cni -p weft-ipam -p weft-tests --bins
cargo test -p weft-agent --test bench_overlay -- --ignored --nocapture --test-threads 1
