#!/usr/bin/env bash
# `make oci`: OCI image of dist/llm_router.wasm for Istio's WasmPlugin / EnvoyFilter, no Docker
# daemon needed. Writes dist/oci/ (OCI image layout) and dist/llm_router-oci.tar (oci-archive),
# then prints the image digest and the wasm sha256. Details: istio/README.md ("The OCI image").
#
#   OCI_TAG=0.1.0 scripts/oci.sh        tag written into index.json (default: the crate version)
set -euo pipefail
cd "$(dirname "$0")/.."
wasm=${WASM:-dist/llm_router.wasm}
[ -f "$wasm" ] || { echo "oci: $wasm is missing: run \`make build\` first" >&2; exit 1; }
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' filter/Cargo.toml | head -1)
tag=${OCI_TAG:-${version:-latest}}
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
"$py" scripts/oci_image.py --wasm "$wasm" --out dist/oci --archive dist/llm_router-oci.tar \
  --tag "$tag" --version "${version:-$tag}"
cat <<EOT

Push it (any of these; none needs a Docker daemon):
  skopeo copy --preserve-digests oci-archive:dist/llm_router-oci.tar docker://REGISTRY/llm-router:$tag
  oras cp --from-oci-layout dist/oci:$tag REGISTRY/llm-router:$tag
  crane push dist/oci REGISTRY/llm-router:$tag
then use url: oci://REGISTRY/llm-router:$tag with the image digest as sha256 (istio/README.md).
EOT
