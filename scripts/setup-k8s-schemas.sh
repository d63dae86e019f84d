#!/usr/bin/env bash
# Installs the published Kubernetes / Gateway API / Istio / GKE schemas that tests/e2e/test_deploy.py
# validates the manifests with (npm packages pinned in tests/e2e/k8s_schema/package-lock.json).
# Idempotent: re-runs only when the lock file changed.
set -euo pipefail
cd "$(dirname "$0")/../tests/e2e/k8s_schema"
command -v npm >/dev/null || { echo "setup-k8s-schemas: npm (node >= 20) is required" >&2; exit 1; }
stamp=node_modules/.lock.sha
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ -d node_modules ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then exit 0; fi
npm ci --no-audit --no-fund --loglevel=error >/dev/null
echo "$want" > "$stamp"
