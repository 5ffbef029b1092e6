"""Structural check of a kind cluster config (kind.x-k8s.io/v1alpha4).

kind publishes no JSON schema for its config, and kubernetes-validate only
knows Kubernetes' own kinds, so this checks the fields against the ones
kind's v1alpha4 types define (sigs.k8s.io/kind/pkg/apis/config/v1alpha4)
— kind itself rejects unknown fields — and then what weft needs of the
cluster: no default CNI, no kube-proxy, dual-stack, the pod and Service
CIDRs weft's docs and tests use, at least two nodes (a mesh).

    python3 check-kind-config.py manifests/kind-config.yaml
"""

import ipaddress
import sys

import yaml

CLUSTER = {
    "kind", "apiVersion", "name", "featureGates", "runtimeConfig", "nodes",
    "networking", "kubeadmConfigPatches", "kubeadmConfigPatchesJSON6902",
    "containerdConfigPatches", "containerdConfigPatchesJSON6902",
}
NETWORKING = {
    "ipFamily", "apiServerPort", "apiServerAddress", "podSubnet",
    "serviceSubnet", "disableDefaultCNI", "kubeProxyMode", "dnsSearch",
}
NODE = {
    "role", "image", "labels", "extraMounts", "extraPortMappings",
    "kubeadmConfigPatches", "kubeadmConfigPatchesJSON6902",
}
ROLES = {"control-plane", "worker"}
PROXY_MODES = {"iptables", "ipvs", "nftables", "none"}
IP_FAMILIES = {"ipv4", "ipv6", "dual"}
WANT_PODS = ["10.244.0.0/16", "fd00:10:244::/56"]
WANT_SERVICES = ["10.96.0.0/16", "fd00:10:96::/112"]


def unknown(where, obj, allowed, errors):
    if not isinstance(obj, dict):
        errors.append(f"{where}: expected a mapping, got {type(obj).__name__}")
        return
    for key in obj:
        if key not in allowed:
            errors.append(f"{where}: unknown field {key!r} (kind v1alpha4 has {sorted(allowed)})")


def cidrs(where, text, errors):
    out = []
    for part in str(text).split(","):
        try:
            out.append(ipaddress.ip_network(part.strip()))
        except ValueError as e:
            errors.append(f"{where}: {part!r} is not a CIDR: {e}")
    return out


def check(doc):
    errors = []
    unknown("cluster", doc, CLUSTER, errors)
    if doc.get("kind") != "Cluster" or doc.get("apiVersion") != "kind.x-k8s.io/v1alpha4":
        errors.append("cluster: want kind Cluster, apiVersion kind.x-k8s.io/v1alpha4")
    net = doc.get("networking") or {}
    unknown("networking", net, NETWORKING, errors)
    if net.get("ipFamily", "ipv4") not in IP_FAMILIES:
        errors.append(f"networking.ipFamily: {net.get('ipFamily')!r} not in {sorted(IP_FAMILIES)}")
    if net.get("kubeProxyMode", "iptables") not in PROXY_MODES:
        errors.append(f"networking.kubeProxyMode: {net.get('kubeProxyMode')!r} not in {sorted(PROXY_MODES)}")
    if net.get("disableDefaultCNI") is not True:
        errors.append("networking.disableDefaultCNI: weft is the CNI, want true")
    if net.get("kubeProxyMode") != "none":
        errors.append("networking.kubeProxyMode: weft replaces kube-proxy, want none")
    if net.get("ipFamily") != "dual":
        errors.append("networking.ipFamily: weft's e2e runs dual-stack, want dual")
    for field, want in (("podSubnet", WANT_PODS), ("serviceSubnet", WANT_SERVICES)):
        got = cidrs(f"networking.{field}", net.get(field, ""), errors)
        if [str(n) for n in got] != want:
            errors.append(f"networking.{field}: {[str(n) for n in got]}, want {want}")
    nodes = doc.get("nodes") or []
    if not isinstance(nodes, list):
        errors.append("nodes: expected a list")
        nodes = []
    for i, node in enumerate(nodes):
        unknown(f"nodes[{i}]", node, NODE, errors)
        if isinstance(node, dict) and node.get("role") not in ROLES:
            errors.append(f"nodes[{i}].role: {node.get('role')!r} not in {sorted(ROLES)}")
    roles = [n.get("role") for n in nodes if isinstance(n, dict)]
    if roles.count("control-plane") < 1 or len(roles) < 2:
        errors.append(f"nodes: want a control-plane and at least one worker, got {roles}")
    return errors


def main(paths):
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    failed = False
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        errors = check(docs[0]) if len(docs) == 1 else [f"want one document, got {len(docs)}"]
        for e in errors:
            print(f"check-kind-config: {path}: {e}", file=sys.stderr)
        if errors:
            failed = True
        else:
            print(f"check-kind-config: {path}: ok (kind v1alpha4 fields, no CNI, no kube-proxy, dual-stack)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
