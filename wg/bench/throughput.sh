#!/bin/bash
# iperf3 TCP throughput between two network namespaces ("nodes") joined by a
# veth underlay: plain underlay, wireguard-go <-> wireguard-go, and
# weft-wg <-> weft-wg, in the same run; 1 and 2 streams, 10 s each.
#
#   as root, from the repository root:
#   wg/bench/throughput.sh            (DURATION=10 STREAMS="1 2" to change)
#
# Each userspace process runs as weft-agent starts it: in its netns, in a
# private mount namespace where a per-node directory is bind-mounted on
# /var/run/wireguard. Everything lives in namespaces created here and is
# removed on exit.
set -euo pipefail

DURATION=${DURATION:-10}
STREAMS=${STREAMS:-1 2}
cd "$(dirname "$0")/../.."
TARGET=${CARGO_TARGET_DIR:-target}
WEFT_WG=${WEFT_WG:-$TARGET/release/weft-wg}
WG_GO=${WG_GO:-$(command -v wireguard-go)}
A=wgbench-a B=wgbench-b
TMP=$(mktemp -d /tmp/wgbench.XXXXXX)

[ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 1; }
for t in wg iperf3 python3 "$WG_GO"; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }; done
if [ -z "${WEFT_WG_NO_BUILD:-}" ]; then
    CARGO_TARGET_DIR=$TARGET cargo build --release -q -p weft-wg
fi

cleanup() {
    set +e
    for p in "$TMP"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done
    sleep 0.5
    ip netns del $A 2>/dev/null; ip netns del $B 2>/dev/null
    rm -rf "$TMP"
}
[ -n "${KEEP:-}" ] || trap cleanup EXIT

# In netns $1 with $2 mounted on /run/wireguard, run the rest.
in_node() {
    local ns=$1 dir=$2; shift 2
    ip netns exec "$ns" unshare --mount --propagation private -- \
        sh -c 'mount --bind "$0" /run/wireguard && exec "$@"' "$dir" "$@"
}

ip netns add $A; ip netns add $B
ip link add veth-a netns $A type veth peer name veth-b netns $B
ip -n $A addr add 192.168.77.1/24 dev veth-a; ip -n $A link set veth-a up; ip -n $A link set lo up
ip -n $B addr add 192.168.77.2/24 dev veth-b; ip -n $B link set veth-b up; ip -n $B link set lo up

# tunnel NAME BIN IFACE PORT SUBNET(x.y.z): one tunnel between the two nodes.
tunnel() {
    local name=$1 bin=$2 ifc=$3 port=$4 net=$5 i
    for i in 1 2; do
        local ns=$A; [ $i = 2 ] && ns=$B
        local dir=$TMP/$name-$i; mkdir -p "$dir"
        (umask 077; wg genkey > "$dir/key"); wg pubkey < "$dir/key" > "$dir/pub"
        WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 in_node $ns "$dir" "$bin" -f "$ifc" \
            > "$TMP/$name-$i.log" 2>&1 &
        echo $! > "$TMP/$name-$i.pid"
        for _ in $(seq 100); do [ -S "$dir/$ifc.sock" ] && break; sleep 0.1; done
        [ -S "$dir/$ifc.sock" ] || { echo "$name: no socket" >&2; cat "$TMP/$name-$i.log" >&2; exit 1; }
        ip -n $ns addr add $net.$i/24 dev "$ifc"
        ip -n $ns link set "$ifc" mtu 1420 up
    done
    for i in 1 2; do
        local ns=$A o=2; [ $i = 2 ] && { ns=$B; o=1; }
        in_node $ns "$TMP/$name-$i" wg set "$ifc" private-key "$TMP/$name-$i/key" listen-port $port \
            peer "$(cat "$TMP/$name-$o/pub")" endpoint 192.168.77.$o:$port allowed-ips $net.$o/32
    done
}

tunnel wggo "$WG_GO" wgg0 51820 10.77.1
tunnel weft "$WEFT_WG" wgw0 51821 10.77.2
ping_ok() { ip netns exec $A ping -c 1 -W 2 "$1" >/dev/null 2>&1; }
for ip in 10.77.1.2 10.77.2.2; do
    for _ in 1 2 3 4 5; do ping_ok $ip && break; done
    ping_ok $ip || { echo "no ping through the tunnel to $ip" >&2; exit 1; }
done

ip netns exec $B iperf3 -s -D -I "$TMP/iperf.pid" >/dev/null
sleep 0.5
gbps() {
    ip netns exec $A timeout $((DURATION + 20)) iperf3 -c "$1" -t "$DURATION" -P "$2" -J \
        | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}

echo "machine: $(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "wireguard-go: $(dpkg-query -W -f '${Version}' wireguard-go 2>/dev/null || echo '?'), iperf3 $(iperf3 -v | head -1 | awk '{print $2}')"
echo
echo "| streams | underlay Gbit/s | wireguard-go Gbit/s | weft-wg Gbit/s | weft-wg / wireguard-go |"
echo "|---|---|---|---|---|"
for n in $STREAMS; do
    u=$(gbps 192.168.77.2 "$n"); g=$(gbps 10.77.1.2 "$n"); w=$(gbps 10.77.2.2 "$n")
    r=$(python3 -c "print('%.1fx' % ($w / $g if $g > 0 else 0))")
    echo "| $n | $u | $g | $w | $r |"
done
