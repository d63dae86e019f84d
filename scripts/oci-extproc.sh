#!/usr/bin/env bash
# `make oci-extproc`: OCI image of llm-router-extproc (with llm-router-sidecar, the filter and a
# default plugin configuration), no Docker daemon needed. Writes dist/oci-extproc/ (OCI image
# layout) and dist/llm-router-extproc-oci.tar (oci-archive) and prints the image digest.
# Needs the release binaries and dist/llm_router.wasm (`make oci-extproc` builds them).
#
#   OCI_TAG=0.1.0 scripts/oci-extproc.sh     tag written into index.json (default: the crate version)
set -euo pipefail
cd "$(dirname "$0")/.."
extproc=${EXTPROC_BIN:-target/release/llm-router-extproc}
sidecar=${SIDECAR_BIN:-target/release/llm-router-sidecar}
wasm=${WASM:-dist/llm_router.wasm}
[ -f "$extproc" ] || { echo "oci-extproc: $extproc is missing: run \`cargo build --release -p llm-router-extproc\` (or \`make oci-extproc\`)" >&2; exit 1; }
[ -f "$sidecar" ] || { echo "oci-extproc: $sidecar is missing: run \`cargo build --release -p llm-router-sidecar\`" >&2; exit 1; }
[ -f "$wasm" ] || { echo "oci-extproc: $wasm is missing: run \`make build\` first" >&2; exit 1; }
manifest=extproc/Cargo.toml
[ -f "$manifest" ] || manifest=filter/Cargo.toml
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$manifest" | head -1)
tag=${OCI_TAG:-${version:-latest}}
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
"$py" scripts/oci_extproc_image.py --extproc "$extproc" --sidecar "$sidecar" --wasm "$wasm" \
  --plugin-config deploy/extproc/config/plugin.json --out dist/oci-extproc \
  --archive dist/llm-router-extproc-oci.tar --tag "$tag" --version "${version:-$tag}"
cat <<EOT

Push it (none of these needs a Docker daemon):
  skopeo copy --preserve-digests oci-archive:dist/llm-router-extproc-oci.tar docker://REGISTRY/llm-router-extproc:$tag
  crane push dist/oci-extproc REGISTRY/llm-router-extproc:$tag
then set that image in deploy/extproc/deployment.yaml (both containers).
EOT
