#!/usr/bin/env bash
# Local playground (what `make run` starts after building the wasm and the sidecar):
#   mock model servers  small-1..3 on 127.0.0.1:8101-8103, large-1..2 on 8201-8202 (tests/mock_server.py)
#   Envoy               envoy-config/envoy.yaml with dist/llm_router.wasm, listener :10000, admin :9901
#   sidecar             target/release/llm-router-sidecar --config sidecar/examples/sidecar.json
# Logs go to run/ in the repository (gitignored). Ctrl-C or SIGTERM stops everything.
# LLM_ROUTER_PUSH_TOKEN (the sidecar's push token) is generated unless already set.
# TRACING=1 (`make run TRACING=1`): also an OTLP receiver on 127.0.0.1:4317 that prints every span
# (scripts/otlp_receiver.py, run/otlp.log), Envoy on envoy-config/envoy-otel.yaml (on Envoy 1.36:
# envoy-otel-1.36.yaml), and one traced request whose span is printed (docs/tracing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN_DIR=$ROOT/run
LISTENER=10000
ADMIN=9901
MOCK_PORTS=(8101 8102 8103 8201 8202)
TRACING=${TRACING:-0}
OTLP_PORT=4317
ENVOY_CONFIG=envoy-config/envoy.yaml
SIDECAR_BIN=target/release/llm-router-sidecar
SIDECAR_CONFIG=sidecar/examples/sidecar.json

die() { echo "run.sh: $*" >&2; exit 1; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

holder() {
  command -v ss >/dev/null 2>&1 || return 0
  ss -ltnpH "sport = :$1" 2>/dev/null | sed -nE 's/.*users:\(\((.*)\)\).*/\1/p' | head -1
}

wait_port() {  # port timeout_s pid name
  local deadline=$((SECONDS + $2))
  until port_busy "$1"; do
    kill -0 "$3" 2>/dev/null || die "$4 exited during startup; see ${RUN_DIR#"$ROOT"/}/$4.log:
$(tail -20 "$RUN_DIR/$4.log" 2>/dev/null)"
    [ $SECONDS -lt $deadline ] || die "$4 did not listen on 127.0.0.1:$1 within $2 s; see run/$4.log"
    sleep 0.1
  done
}

# --- preconditions --------------------------------------------------------------------------
[ -f dist/llm_router.wasm ] || die "dist/llm_router.wasm is missing: run \`make build\` (or \`make run\`)"
busy=()
ports=("$LISTENER" "$ADMIN" "${MOCK_PORTS[@]}")
[ "$TRACING" = 1 ] && ports+=("$OTLP_PORT")
for p in "${ports[@]}"; do
  if port_busy "$p"; then
    h=$(holder "$p")
    busy+=("127.0.0.1:$p${h:+ (held by $h)}")
  fi
done
if [ ${#busy[@]} -gt 0 ]; then
  printf 'run.sh: port(s) already in use:\n' >&2
  printf '  %s\n' "${busy[@]}" >&2
  die "is another \`make run\`, an e2e test run or a bench still running? Stop it and retry."
fi
ENVOY=$(scripts/envoy-bin.sh) || die "no Envoy binary (scripts/envoy-bin.sh failed)"
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
command -v "$PY" >/dev/null 2>&1 || die "python3 is needed for the mock servers"
if [ "$TRACING" = 1 ]; then
  "$PY" -c 'import grpc, opentelemetry.proto' 2>/dev/null \
    || die "TRACING=1 needs grpcio and opentelemetry-proto in .venv: run scripts/setup-python.sh"
  minor=$("$ENVOY" --version 2>/dev/null | sed -nE 's@.*/1\.([0-9]+)\.[0-9]+/.*@\1@p' | head -1)
  if [ "${minor:-0}" -ge 37 ]; then
    ENVOY_CONFIG=envoy-config/envoy-otel.yaml
  else
    ENVOY_CONFIG=envoy-config/envoy-otel-1.36.yaml
  fi
fi

if [ -z "${LLM_ROUTER_PUSH_TOKEN:-}" ]; then
  LLM_ROUTER_PUSH_TOKEN=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
  token_note="generated for this run"
else
  token_note="taken from your environment"
fi
export LLM_ROUTER_PUSH_TOKEN

mkdir -p "$RUN_DIR"

# --- process management ---------------------------------------------------------------------
PIDS=()
NAMES=()
stopping=0
cleanup() {
  [ $stopping -eq 1 ] && return
  stopping=1
  trap '' INT TERM
  echo
  echo "stopping..."
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill -TERM "${PIDS[$i]}" 2>/dev/null || true
  done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    # Give each up to 10 s, then SIGKILL.
    for _ in $(seq 100); do kill -0 "${PIDS[$i]}" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "${PIDS[$i]}" 2>/dev/null; then
      echo "  ${NAMES[$i]} (pid ${PIDS[$i]}) did not stop: SIGKILL"
      kill -KILL "${PIDS[$i]}" 2>/dev/null || true
    fi
    wait "${PIDS[$i]}" 2>/dev/null || true
  done
  echo "stopped: ${NAMES[*]}"
}
on_signal() { cleanup; exit 0; }
trap on_signal INT TERM
trap cleanup EXIT

start() {  # name cmd...
  local name=$1; shift
  "$@" >"$RUN_DIR/$name.log" 2>&1 </dev/null &
  PIDS+=($!)
  NAMES+=("$name")
}

# --- mock model servers ---------------------------------------------------------------------
start mocks "$PY" tests/mock_server.py --token-delay-ms 20 \
  --instance small-1=127.0.0.1:8101 --instance small-2=127.0.0.1:8102 \
  --instance small-3=127.0.0.1:8103 --instance large-1=127.0.0.1:8201 \
  --instance large-2=127.0.0.1:8202 \
  --load small-1=0,1,0.10 --load small-2=4,3,0.50 --load small-3=12,6,0.90 \
  --load large-1=1,2,0.30 --load large-2=2,2,0.40
for p in "${MOCK_PORTS[@]}"; do wait_port "$p" 10 "${PIDS[0]}" mocks; done

# --- OTLP receiver (TRACING=1) --------------------------------------------------------------
if [ "$TRACING" = 1 ]; then
  start otlp "$PY" -u scripts/otlp_receiver.py --port "$OTLP_PORT"
  wait_port "$OTLP_PORT" 10 "${PIDS[-1]}" otlp
fi

# --- Envoy ----------------------------------------------------------------------------------
# --disable-hot-restart: no shared-memory base id, so it does not clash with other Envoys here.
start envoy "$ENVOY" -c "$ENVOY_CONFIG" --concurrency 2 --disable-hot-restart \
  --log-level info
envoy_pid=${PIDS[-1]}
wait_port "$ADMIN" 30 "$envoy_pid" envoy
deadline=$((SECONDS + 30))
until [ "$(curl -s --max-time 1 "http://127.0.0.1:$ADMIN/ready" 2>/dev/null)" = "LIVE" ]; do
  kill -0 "$envoy_pid" 2>/dev/null || die "envoy exited during startup; see run/envoy.log:
$(grep -E '\]\[(error|critical)\]' "$RUN_DIR/envoy.log" | tail -10)"
  [ $SECONDS -lt $deadline ] || die "envoy not LIVE within 30 s; see run/envoy.log"
  sleep 0.1
done
wait_port "$LISTENER" 10 "$envoy_pid" envoy

# --- sidecar --------------------------------------------------------------------------------
sidecar_note=""
if [ ! -x "$SIDECAR_BIN" ]; then
  sidecar_note="not started: $SIDECAR_BIN is missing (cargo build --release -p llm-router-sidecar)"
elif [ ! -f "$SIDECAR_CONFIG" ]; then
  sidecar_note="not started: $SIDECAR_CONFIG is missing"
else
  start sidecar "$SIDECAR_BIN" --config "$SIDECAR_CONFIG"
  sleep 0.3
  if kill -0 "${PIDS[-1]}" 2>/dev/null; then
    sidecar_note="pid ${PIDS[-1]}, scrapes the mocks' /metrics and pushes load to the gateway"
  else
    sidecar_note="exited at startup (continuing without it); see run/sidecar.log:
$(tail -5 "$RUN_DIR/sidecar.log" | sed 's/^/      /')"
    unset 'PIDS[-1]' 'NAMES[-1]'
    PIDS=("${PIDS[@]}"); NAMES=("${NAMES[@]}")
  fi
fi

# --- banner ---------------------------------------------------------------------------------
URL=http://127.0.0.1:$LISTENER
cat <<EOF

llm-router is running
  gateway   $URL   (Envoy pid $envoy_pid, config $ENVOY_CONFIG, concurrency 2)
  admin     http://127.0.0.1:$ADMIN   (/stats/prometheus, /stats?filter=wasmcustom, /ready)
  mocks     small-1..3 http://127.0.0.1:8101-8103, large-1..2 http://127.0.0.1:8201-8202
            (GET /metrics, GET /admin/stats, POST /admin/load)
  sidecar   $sidecar_note
  token     LLM_ROUTER_PUSH_TOKEN $token_note (in Envoy's and the sidecar's environment)
  logs      run/envoy.log  run/mocks.log  run/sidecar.log

Try (the mock echoes what it received in "mock"; its answer header x-mock-instance names the server):

  # short prompt -> small tier (x-mock-instance: small-N, "model": "llama-3.1-8b-instruct")
  curl -si $URL/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model":"anything","messages":[{"role":"user","content":"Say hi"}]}'

  # long prompt (~1500 words) -> large tier (x-mock-instance: large-N, "model": "llama-3.1-70b-instruct")
  curl -si $URL/v1/chat/completions -H 'content-type: application/json' \\
    -d "{\\"model\\":\\"anything\\",\\"messages\\":[{\\"role\\":\\"user\\",\\"content\\":\\"\$(printf 'word %.0s' {1..1500})\\"}]}"

  # spoofed tier header -> removed by the filter, still the small tier
  curl -si $URL/v1/chat/completions -H 'content-type: application/json' -H 'x-llm-model-type: large' \\
    -d '{"model":"anything","messages":[{"role":"user","content":"Say hi"}]}'

Ctrl-C stops everything.
EOF

# --- one trace (TRACING=1) ------------------------------------------------------------------
if [ "$TRACING" = 1 ]; then
  trace_id=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  echo "Tracing: one request in trace $trace_id (Envoy exports every 5 s; waiting for its span)"
  curl -s -o /dev/null -w '  answered %{http_code}\n' "$URL/v1/chat/completions" \
    -H 'content-type: application/json' -H 'x-tenant-id: acme' \
    -H "traceparent: 00-$trace_id-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')-01" \
    -d '{"model":"anything","messages":[{"role":"user","content":"Say hi"}],"max_tokens":5}' || true
  deadline=$((SECONDS + 15))
  until grep -q "trace=$trace_id" "$RUN_DIR/otlp.log" 2>/dev/null || [ $SECONDS -ge $deadline ]; do
    sleep 0.2
  done
  sleep 0.3
  if grep -q "trace=$trace_id" "$RUN_DIR/otlp.log"; then
    awk -v t="trace=$trace_id" '/^span /{show = index($0, t) > 0} show' "$RUN_DIR/otlp.log"
  else
    echo "  no span for it within 15 s; see run/otlp.log and run/envoy.log"
  fi
  echo "Every span goes to run/otlp.log."
fi

# --- wait -----------------------------------------------------------------------------------
# Until a signal arrives or one of the processes exits on its own.
while true; do
  set +e
  wait -n "${PIDS[@]}"
  rc=$?
  set -e
  [ $stopping -eq 1 ] && break
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      echo "run.sh: ${NAMES[$i]} (pid ${PIDS[$i]}) exited (status $rc); see run/${NAMES[$i]}.log" >&2
      tail -5 "$RUN_DIR/${NAMES[$i]}.log" >&2 || true
      exit 1
    fi
  done
done
