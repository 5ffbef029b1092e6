#!/usr/bin/env bash
# The mesh at 100, 1,000 and 5,000 Nodes (node-agent/tests/bench_scale.rs),
# release builds, as root:
#
#   sudo node-agent/bench/scale.sh            # this checkout only
#   sudo node-agent/bench/scale.sh 3cde183    # and the agent at that commit, same job
#
# The anchor is built from a git worktree of that commit. Its agent predates
# the split health/metrics flags the lab passes today, so it runs behind a
# small wrapper that maps them onto its one `--metrics-addr`. Results:
# node-agent/bench/results/scale.json and a Markdown table on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/setup.sh
source tests/setup.sh
bins=(-p weft-agent -p weft-wg -p weft-cni -p weft-ipam)
cargo build --release "${bins[@]}"
cargo build -p weft-tests --bins
sides="weft=$PWD/target/release"
if [ $# -gt 0 ]; then
  anchor="$1"
  tree="/tmp/weft-anchor-$anchor"
  [ -d "$tree" ] || git worktree add --detach "$tree" "$anchor"
  (cd "$tree" && cargo build --release "${bins[@]}")
  wrap="$tree/wrapped"
  mkdir -p "$wrap"
  for b in weft weft-ipam weft-wg; do ln -sf "$tree/target/release/$b" "$wrap/$b"; done
  cat > "$wrap/weft-agent" <<WRAP
#!/usr/bin/env bash
args=(); metrics=""
while [ \$# -gt 0 ]; do
  case "\$1" in
    --healthz-bind-address) shift ;;
    --metrics-bind-address) metrics="\$2"; shift ;;
    --strict*) ;;
    *) args+=("\$1") ;;
  esac
  shift
done
exec "$tree/target/release/weft-agent" "\${args[@]}" --metrics-addr "\$metrics"
WRAP
  chmod +x "$wrap/weft-agent"
  sides="$sides,before=$wrap"
fi
WEFT_SCALE_SIDES="$sides" WEFT_SCALE_OUT="$PWD/node-agent/bench/results/scale.json" \
  cargo test -p weft-agent --test bench_scale -- --ignored --nocapture --test-threads 1
