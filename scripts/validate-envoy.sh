#!/usr/bin/env bash
# `envoy --mode validate` on every Envoy config of the repository; one line per file, fails if
# any fails. Run from the repo root (relative paths such as dist/llm_router.wasm resolve there).
# Validate mode loads the Wasm module and runs the filter's on_configure, so a bad plugin
# configuration (unknown field, unknown tier, ...) fails here with the filter's error line.
#
#   envoy-config/*.yaml, *.yaml.tmpl excluded             always
#   istio/generated/*.{yaml,json}                         if present (pre-generated bootstraps)
#   scripts/istio-envoy-configs.sh OUTDIR                 if present and executable: it writes
#                                                         Envoy bootstrap files into OUTDIR,
#                                                         each is validated
# A config whose header says `# min-envoy: X.Y` (fields older Envoys reject, e.g. the tracing
# configs' formatter custom tags, 1.37) is checked only on Envoy >= X.Y; older ones print N/A
# with the reason (their version has its own file, e.g. envoy-otel-1.36.yaml).
# Needs dist/llm_router.wasm (make build).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ ! -f dist/llm_router.wasm ]; then
  echo "validate-envoy: dist/llm_router.wasm is missing: run \`make build\` first" >&2
  exit 1
fi
envoy=$(scripts/envoy-bin.sh) || { echo "validate-envoy: no Envoy binary (scripts/envoy-bin.sh failed)" >&2; exit 1; }

version=$("$envoy" --version 2>/dev/null | sed -nE 's@.*/([0-9]+)\.([0-9]+)\.[0-9]+/.*@\1 \2@p' | head -1)
read -r major minor <<<"${version:-0 0}"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

files=()
shopt -s nullglob
for f in envoy-config/*.yaml envoy-config/*.yml envoy-config/*.json; do files+=("$f"); done
for f in istio/generated/*.yaml istio/generated/*.yml istio/generated/*.json; do files+=("$f"); done
if [ -x scripts/istio-envoy-configs.sh ]; then
  mkdir -p "$tmp/istio"
  if scripts/istio-envoy-configs.sh "$tmp/istio" >"$tmp/istio.log" 2>&1; then
    for f in "$tmp"/istio/*.yaml "$tmp"/istio/*.yml "$tmp"/istio/*.json; do files+=("$f"); done
  else
    echo "FAIL  scripts/istio-envoy-configs.sh (generator failed)"
    sed 's/^/      /' "$tmp/istio.log" | tail -20
    failed=1
  fi
fi
shopt -u nullglob

if [ ${#files[@]} -eq 0 ]; then
  echo "validate-envoy: no Envoy configs found in envoy-config/" >&2
  exit 1
fi

failed=${failed:-0}
for f in "${files[@]}"; do
  need=$(sed -nE '1,10s/^# min-envoy: ([0-9]+)\.([0-9]+).*/\1 \2/p' "$f" | head -1)
  if [ -n "$need" ]; then
    read -r nmaj nmin <<<"$need"
    if [ "$major" -lt "$nmaj" ] || { [ "$major" -eq "$nmaj" ] && [ "$minor" -lt "$nmin" ]; }; then
      printf 'N/A   %s (needs Envoy >= %s.%s; this is %s.%s)\n' "${f#"$tmp"/}" "$nmaj" "$nmin" "$major" "$minor"
      continue
    fi
  fi
  log="$tmp/out.log"
  start=$(date +%s%N)
  if "$envoy" --mode validate -c "$f" --log-level warn >"$log" 2>&1; then
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    printf 'OK    %s (%d ms)\n' "${f#"$tmp"/}" "$ms"
  else
    failed=1
    printf 'FAIL  %s\n' "${f#"$tmp"/}"
    # The lines that say why: errors and criticals, else the tail of the output.
    if grep -qE '\]\[(error|critical)\]' "$log"; then
      grep -E '\]\[(error|critical)\]' "$log" | sed -E 's/^\[[^]]*\]\[[0-9]+\]/     /' | head -20
    else
      tail -20 "$log" | sed 's/^/      /'
    fi
  fi
done
exit $failed
