#!/usr/bin/env bash
# weft-lab, built and run with everything it needs, as root on Debian 12:
#   sudo ./tests/lab.sh demo            # 3 nodes, pods, a connectivity matrix, then down
#   sudo ./tests/lab.sh up --nodes 2    # keep a lab running; see tests/README-lab.md
#   sudo ./tests/lab.sh down
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/setup.sh
cargo build --workspace --bins --quiet
exec target/debug/weft-lab "$@"
