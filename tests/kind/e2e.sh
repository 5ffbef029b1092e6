#!/usr/bin/env bash
# weft on a real cluster: a dual-stack kind cluster without a default CNI
# and without kube-proxy, the image built from this checkout, then the
# upstream network conformance tests.
#
#   tests/kind/e2e.sh            create, install, smoke, e2e.test, delete
#   KEEP=1 tests/kind/e2e.sh     leave the cluster up afterwards
#
# Needs Docker (or podman as kind's provider), kind, kubectl, podman (image
# build, image/build.sh), curl. NOT RUN on weft's development machines (no
# Docker there): it runs in .github/workflows/kind-e2e.yaml.
# Env: CLUSTER (weft), K8S_VERSION (v1.35.0: the kindest/node image and the
# e2e.test binary), E2E_FOCUS, E2E_SKIP (extra), E2E_PARALLEL (4).
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${CLUSTER:-weft}
K8S_VERSION=${K8S_VERSION:-v1.35.0}
E2E_PARALLEL=${E2E_PARALLEL:-4}
WORK=${WORK:-$(mktemp -d /tmp/weft-kind.XXXXXX)}
FOCUS=${E2E_FOCUS:-'\[sig-network\].*(Services|Conntrack|Networking)'}

# Skipped, each for a reason; keep a reason on every line.
SKIPS=(
  # Needs cloud load balancers (kind has none).
  'LoadBalancer'
  # Needs nodes with public addresses / the internet; the runner's kind network has neither.
  'should be able to reach external'
  # Runs IPv4/IPv6 single-stack variants as separate clusters; this cluster is dual-stack.
  'single-stack'
  # Destructive to the control plane (restarts the API server / nodes); kind cannot recover.
  '\[Disruptive\]'
  # Feature-gated or alpha behaviour not enabled in kind's default API server.
  '\[Feature:'
  # Slow serial tests exceed the workflow's time budget; run them on demand (E2E_SKIP='').
  '\[Serial\]'
  # Needs SCTP, which kind's node image kernel modules may not offer.
  'SCTP'
  # Needs externalTrafficPolicy: Local on LoadBalancer Services (see first entry).
  'ESIPP'
)
SKIP=$(IFS='|'; echo "${SKIPS[*]}")
if [ -n "${E2E_SKIP:-}" ]; then SKIP="$SKIP|$E2E_SKIP"; fi

log() { printf '\n== %s\n' "$*"; }
need() { command -v "$1" >/dev/null || { echo "e2e.sh: $1 not found" >&2; exit 1; }; }
for t in kind kubectl podman curl; do need "$t"; done

cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    log "failed (rc $rc): collecting logs into $WORK/logs"
    kind export logs "$WORK/logs" --name "$CLUSTER" >/dev/null 2>&1 || true
    kubectl -n kube-system get pods -o wide || true
    kubectl -n kube-system logs -l app.kubernetes.io/name=weft --all-containers --tail=100 --prefix || true
  fi
  if [ "${KEEP:-0}" != 1 ]; then kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
  exit "$rc"
}
trap cleanup EXIT

log "image"
bash image/build.sh --out "$WORK/weft.oci.tar"
image=$(sed -n 's/^ *image: \(ghcr.io\/weft-cni\/weft:v[^ ]*\)$/\1/p' manifests/weft.yaml | head -1)
[ -n "$image" ] || { echo "e2e.sh: no weft image in manifests/weft.yaml" >&2; exit 1; }

log "cluster $CLUSTER (kindest/node:$K8S_VERSION)"
kind create cluster --name "$CLUSTER" --config manifests/kind-config.yaml \
  --image "kindest/node:$K8S_VERSION" --wait 0s
kind load image-archive "$WORK/weft.oci.tar" --name "$CLUSTER"
for n in $(kind get nodes --name "$CLUSTER"); do
  docker exec "$n" crictl images | grep -q "^${image%:*} *${image##*:} " \
    || { echo "e2e.sh: $image not on node $n after kind load" >&2; exit 1; }
done

log "install"
# The API server's own address, for the agent (there is no kube-proxy to
# program the kubernetes Service's ClusterIP): docs/INSTALL.md.
api_host=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$CLUSTER-control-plane")
[ -n "$api_host" ] || { echo "e2e.sh: no address for $CLUSTER-control-plane" >&2; exit 1; }
kubectl -n kube-system create configmap weft-config \
  --from-literal=KUBERNETES_SERVICE_HOST="$api_host" \
  --from-literal=KUBERNETES_SERVICE_PORT=6443
kubectl apply -f manifests/weft.yaml
kubectl -n kube-system rollout status daemonset/weft-agent --timeout=300s
kubectl wait --for=condition=Ready nodes --all --timeout=300s
kubectl -n kube-system rollout status deployment/coredns --timeout=300s

log "smoke: pod to pod across nodes, ClusterIP, NodePort, DNS"
kubectl create namespace weft-smoke
kubectl -n weft-smoke create deployment echo --image=registry.k8s.io/e2e-test-images/agnhost:2.53 \
  --replicas=3 -- /agnhost netexec --http-port=8080
kubectl -n weft-smoke rollout status deployment/echo --timeout=180s
kubectl -n weft-smoke expose deployment echo --port=80 --target-port=8080 --type=NodePort
kubectl -n weft-smoke run client --image=registry.k8s.io/e2e-test-images/agnhost:2.53 \
  --restart=Never --command -- sleep 3600
kubectl -n weft-smoke wait --for=condition=Ready pod/client --timeout=120s
for ip in $(kubectl -n weft-smoke get pods -l app=echo -o jsonpath='{range .items[*]}{.status.podIPs[*].ip}{" "}{end}'); do
  case "$ip" in *:*) url="http://[$ip]:8080/hostname" ;; *) url="http://$ip:8080/hostname" ;; esac
  kubectl -n weft-smoke exec client -- curl -fsS --max-time 5 "$url" >/dev/null
  echo "pod $ip: ok"
done
kubectl -n weft-smoke exec client -- curl -fsS --max-time 5 http://echo.weft-smoke.svc.cluster.local/hostname
echo " <- ClusterIP by name: ok"
nodeport=$(kubectl -n weft-smoke get svc echo -o jsonpath='{.spec.ports[0].nodePort}')
node_ip=$(kubectl get node "$CLUSTER-worker" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}' | cut -d' ' -f1)
kubectl -n weft-smoke exec client -- curl -fsS --max-time 5 "http://$node_ip:$nodeport/hostname"
echo " <- NodePort: ok"
kubectl delete namespace weft-smoke --wait=false

log "upstream e2e.test $K8S_VERSION: focus $FOCUS"
curl -fsSL "https://dl.k8s.io/$K8S_VERSION/kubernetes-test-linux-amd64.tar.gz" -o "$WORK/test.tgz"
tar -C "$WORK" -xzf "$WORK/test.tgz" kubernetes/test/bin/e2e.test kubernetes/test/bin/ginkgo
"$WORK/kubernetes/test/bin/ginkgo" --nodes="$E2E_PARALLEL" --timeout=75m \
  --focus="$FOCUS" --skip="$SKIP" \
  "$WORK/kubernetes/test/bin/e2e.test" -- \
  --kubeconfig="${KUBECONFIG:-$HOME/.kube/config}" --provider=local \
  --dump-logs-on-failure=false --report-dir="$WORK/report"
log "e2e passed; report in $WORK/report"
