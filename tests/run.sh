#!/usr/bin/env bash
# weft's whole test suite, as root on Debian 12: installs what is missing,
# checks formatting and lints, builds, validates the manifests, builds the
# image, and runs every test (unit, privileged in throwaway network
# namespaces, interop with the CNI reference plugins, containerd's CRI path,
# the lab, the image run by podman with the DaemonSet's pod template).
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/setup.sh

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
# Manifests: generated file up to date, kubernetes-validate --strict for the
# oldest and newest supported Kubernetes, the kind config.
bash manifests/validate.sh
shellcheck -x tests/kind/e2e.sh image/build.sh manifests/generate.sh manifests/validate.sh node-agent/bench/scale.sh
# The image (release binaries, from scratch): the runtime test runs it.
bash image/build.sh
cargo test --workspace --no-fail-fast
