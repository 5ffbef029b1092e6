#!/usr/bin/env bash
# Builds weft's container image offline, from this checkout, with no base
# image: release binaries + nft + busybox-static + exactly the shared
# libraries ldd lists for them, as an OCI archive that `podman load`,
# `ctr images import` and `kind load image-archive` accept.
#
#   image/build.sh [--no-cargo] [--out FILE]
#
# Prints the archive's path and size last. Needs podman (Debian's 4.3 is
# enough), busybox-static, nftables; run as root (rootful podman).
# Env: WEFT_IMAGE (default ghcr.io/weft-cni/weft), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

build_cargo=1
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-cargo) build_cargo=0 ;;
    --out) out="$2"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "image/build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

for tool in podman ldd ldconfig busybox nft python3; do
  command -v "$tool" >/dev/null || { echo "image/build.sh: $tool not found (tests/setup.sh installs it)" >&2; exit 1; }
done

version=$(cargo metadata --no-deps --format-version 1 --offline 2>/dev/null \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="weft-agent"))') \
  || version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || { echo "image/build.sh: no workspace version in Cargo.toml" >&2; exit 1; }
image="${WEFT_IMAGE:-ghcr.io/weft-cni/weft}:v${version}"
target="${CARGO_TARGET_DIR:-target}"
work="$target/image"
out="${out:-$work/weft-v${version}.oci.tar}"
binaries=(weft weft-ipam weft-agent weft-wg)

if [ "$build_cargo" = 1 ]; then
  cargo build --release -p weft-cni -p weft-ipam -p weft-agent -p weft-wg --bins
fi
for b in "${binaries[@]}"; do
  [ -x "$target/release/$b" ] || { echo "image/build.sh: $target/release/$b missing" >&2; exit 1; }
done

rm -rf "$work/rootfs"
root="$work/rootfs"
mkdir -p "$root/usr/local/bin" "$root/usr/sbin" "$root/bin" "$root/etc" "$root/tmp" \
  "$root/var/run" "$root/run" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"

# Copy FILE to the same path under the root, following symlinks.
place() {
  mkdir -p "$root$(dirname "$1")"
  cp -L --preserve=mode "$1" "$root$1"
}
# Every shared library ldd resolves for an ELF file, and the loader.
libs_of() {
  ldd "$1" 2>/dev/null | awk '
    $2 == "=>" && $3 ~ /^\// { print $3 }
    $1 ~ /^\// { print $1 }' || true
}

elfs=()
for b in "${binaries[@]}"; do
  install -m 0755 "$target/release/$b" "$root/usr/local/bin/$b"
  elfs+=("$target/release/$b")
done
nft_bin=$(command -v nft)
install -m 0755 "$nft_bin" "$root/usr/sbin/nft"
elfs+=("$nft_bin")
# busybox-static: one static binary, so no libraries.
install -m 0755 "$(command -v busybox)" "$root/bin/busybox"
for applet in sh ip sleep setsid kill unshare mount mkdir cat ls; do
  ln -s busybox "$root/bin/$applet"
done

declare -A seen=()
for e in "${elfs[@]}"; do
  while read -r lib; do
    if [ -z "$lib" ] || [ -n "${seen[$lib]:-}" ]; then continue; fi
    seen[$lib]=1
    place "$lib"
  done < <(libs_of "$e")
done
# The loader also finds the libraries through a cache built for this root.
printf '%s\n' /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib /usr/lib >"$root/etc/ld.so.conf"
ldconfig -r "$root"
# nft prints protocol and service names from these when listing.
for f in /etc/protocols /etc/services; do [ -f "$f" ] && cp "$f" "$root$f"; done
# The system trust store: in-cluster config brings its own CA, but a
# kubeconfig without certificate-authority (and the kube client's platform
# verifier) needs one, or the client does not even start.
ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] || { echo "image/build.sh: $ca missing (Debian package ca-certificates)" >&2; exit 1; }
mkdir -p "$root/etc/ssl/certs"
cp "$ca" "$root$ca"
echo "root:x:0:0:root:/:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"

# Every staged ELF must resolve all its libraries inside the root.
# (LD_TRACE_LOADED_OBJECTS: the loader lists them instead of running it.)
for e in "$root"/usr/local/bin/* "$root/usr/sbin/nft"; do
  trace=$(LD_TRACE_LOADED_OBJECTS=1 chroot "$root" "${e#"$root"}" 2>&1) \
    || { echo "image/build.sh: ${e#"$root"} does not load in the image root: $trace" >&2; exit 1; }
  if grep -q 'not found' <<<"$trace"; then
    echo "image/build.sh: ${e#"$root"} misses libraries: $trace" >&2; exit 1
  fi
done
chroot "$root" /usr/sbin/nft --version >/dev/null
chroot "$root" /usr/local/bin/weft-agent --version >/dev/null

cp image/Containerfile "$work/Containerfile"
# No network (nothing to pull: FROM scratch); rootful podman as root. No RUN
# step, so no container runs during the build (and no ulimit matters).
podman build --network none --pull=never \
  --build-arg "VERSION=v${version}" -t "$image" -f "$work/Containerfile" "$work"
rm -f "$out"
podman save --format oci-archive -o "$out" "$image"
size=$(stat -c %s "$out")
echo "image $image"
echo "archive $out ($size bytes, $(( (size + 1048575) / 1048576 )) MiB)"
