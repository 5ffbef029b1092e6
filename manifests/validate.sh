#!/usr/bin/env bash
# Offline validation of weft's manifests, for tests/run.sh and CI:
#  1. manifests/weft.yaml and weft-cleanup.yaml are what generate.sh makes
#     from the parts (nobody edited the output by hand, nobody forgot to
#     regenerate);
#  2. every object passes `kubernetes-validate --strict` (the OpenAPI schema
#     of that release, unknown fields rejected) for the oldest and the newest
#     Kubernetes release weft supports;
#  3. the kind cluster config passes check-kind-config.py (kind publishes no
#     JSON schema, and kubernetes-validate only knows Kubernetes' own kinds).
# Installs kubernetes-validate (PyPI) into the /opt/weft-tools venv when
# missing; needs python3-venv (tests/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# Kubernetes releases weft supports: k8s-openapi's `earliest` and `latest`
# (node-agent builds against them) and the ValidatingAdmissionPolicy with
# the token's node claim (1.32+).
OLDEST=1.33.0
NEWEST=1.37.0
VENV=${WEFT_TOOLS_VENV:-/opt/weft-tools}
KV_VERSION=1.37.0

if ! "$VENV/bin/kubernetes-validate" --version >/dev/null 2>&1; then
  echo "validate.sh: installing kubernetes-validate $KV_VERSION into $VENV"
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "kubernetes-validate==$KV_VERSION"
fi

bash manifests/generate.sh --check
echo "validate.sh: weft.yaml and weft-cleanup.yaml are up to date with their parts"

files=(manifests/weft.yaml manifests/weft-cleanup.yaml)
for v in "$OLDEST" "$NEWEST"; do
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "${files[@]}"
  echo "validate.sh: ${files[*]} pass kubernetes-validate --strict for Kubernetes $v"
done

"$VENV/bin/python" manifests/check-kind-config.py manifests/kind-config.yaml
