#!/bin/sh
# Final step of entering a test "node"; run as
#   unshare --mount --propagation private -- \
#     nsenter --net=/run/netns/NODE -- sh enter-node.sh SCRATCH_DIR COMMAND ARGS...
# so it already is in the node's network namespace and in a mount namespace
# of its own, where the mounts below (and every mount COMMAND makes) stay.
set -eu
scratch=$1
shift

# sysfs shows the network devices of the netns that mounted it: mount a new
# one so /sys/class/net is the node's, as on a real node. Carry the cgroup
# hierarchies over to it (runc's cgroupfs driver needs them).
mkdir -p "$scratch/cgroup"
mount --rbind /sys/fs/cgroup "$scratch/cgroup"
mount -t sysfs sysfs /sys
mount --rbind "$scratch/cgroup" /sys/fs/cgroup
umount --lazy "$scratch/cgroup"

# A /run of the node's own: containerd 1.6 puts its shims' sockets in
# /run/containerd/s whatever its state dir, and pod netns handles default
# to /run/netns. None of that then shows on the host.
mount -t tmpfs -o mode=0755 weft-cri-run /run

exec "$@"
