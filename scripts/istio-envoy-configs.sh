#!/usr/bin/env bash
# Writes the Envoy bootstraps that istio/*.yaml give an ingress gateway (istio/tools/
# apply_envoyfilter.py: VirtualService + EnvoyFilter patches on an Istio-like gateway base) into
# OUTDIR, for scripts/validate-envoy.sh:
#   OUTDIR/istio-envoyfilter.json   filter loaded by istio/envoyfilter-filter.yaml
#   OUTDIR/istio-wasmplugin.json    filter as istiod renders istio/wasmplugin.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/istio-envoy-configs.sh OUTDIR}
mkdir -p "$out"
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
for v in envoyfilter wasmplugin; do
  "$py" istio/tools/apply_envoyfilter.py --variant "$v" --out "$out/istio-$v.json" \
    --wasm "$PWD/dist/llm_router.wasm"
done
