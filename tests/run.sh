#!/usr/bin/env bash
# weft's whole test suite, as root on Debian 12: installs what is missing,
# checks formatting and lints, builds, and runs every test (unit, privileged
# in throwaway network namespaces, interop with the CNI reference plugins,
# containerd's CRI path, the lab).
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/setup.sh

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
