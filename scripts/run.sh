#!/usr/bin/env bash
# Local playground (what `make run` starts after building the wasm and the sidecar):
#   mock model servers  small-1..3 on 127.0.0.1:8101-8103, large-1..2 on 8201-8202 (tests/mock_server.py)
#   Redis               Debian's redis-server (scripts/redis-bin.sh) on :6399, no persistence
#   quota service       target/release/llm-router-extproc quota, gRPC :9004 (health :9005,
#                       metrics :9091), keeps the tenants' buckets in that Redis
#   Envoy x 2           envoy-config/envoy-global.yaml (envoy.yaml + `tenants.global`) with
#                       dist/llm_router.wasm: gateway 1 on :10000 (admin :9901), gateway 2 on
#                       :10001 (admin :9902), two replicas sharing one global limit per tenant
#   sidecar             target/release/llm-router-sidecar --config sidecar/examples/sidecar.json
# Logs go to run/ in the repository (gitignored). Ctrl-C or SIGTERM stops everything.
# LLM_ROUTER_PUSH_TOKEN (the sidecar's push token) is generated unless already set.
# TRACING=1 (`make run TRACING=1`): also an OTLP receiver on 127.0.0.1:4317 that prints every span
# (scripts/otlp_receiver.py, run/otlp.log), Envoy on envoy-config/envoy-otel.yaml (on Envoy 1.36:
# envoy-otel-1.36.yaml) for both gateways (those configs keep per-proxy limits), and one traced
# request whose span is printed (docs/tracing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN_DIR=$ROOT/run
LISTENER=10000
ADMIN=9901
LISTENER2=10001
ADMIN2=9902
REDIS_PORT=6399
QUOTA_PORTS=(9004 9005 9091)
EXTPROC_BIN=target/release/llm-router-extproc
ENVOY_CONFIG=envoy-config/envoy-global.yaml
MOCK_PORTS=(8101 8102 8103 8201 8202)
TRACING=${TRACING:-0}
OTLP_PORT=4317
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
ports=("$LISTENER" "$ADMIN" "$LISTENER2" "$ADMIN2" "$REDIS_PORT" "${QUOTA_PORTS[@]}" "${MOCK_PORTS[@]}")
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
REDIS=$(scripts/redis-bin.sh) || die "no redis-server (scripts/redis-bin.sh failed)"
[ -x "$EXTPROC_BIN" ] || die "$EXTPROC_BIN is missing: cargo build --release -p llm-router-extproc (or \`make run\`)"
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
# The quota service reads the tenants' limits (for its rate-limit service endpoint) from the
# filter's own configuration, taken out of the Envoy config.
"$PY" - "$ENVOY_CONFIG" >"$RUN_DIR/plugin.json" <<'PYEOF' || die "cannot read the plugin configuration of $ENVOY_CONFIG"
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r"value: \|\n((?: {20}.*\n|\n)+)", text)
print("\n".join(line[20:] for line in m.group(1).splitlines()))
PYEOF

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

# --- Redis and the quota service (global limits) --------------------------------------------
# No persistence (--save '' --appendonly no): a restart starts with full buckets.
mkdir -p "$RUN_DIR/redis"
start redis "$REDIS" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$RUN_DIR/redis"
wait_port "$REDIS_PORT" 10 "${PIDS[-1]}" redis
start quota "$EXTPROC_BIN" quota --redis "redis://127.0.0.1:$REDIS_PORT" \
  --grpc-addr "127.0.0.1:${QUOTA_PORTS[0]}" --health-addr "127.0.0.1:${QUOTA_PORTS[1]}" \
  --metrics-addr "127.0.0.1:${QUOTA_PORTS[2]}" --plaintext \
  --plugin-config "$RUN_DIR/plugin.json"
quota_pid=${PIDS[-1]}
wait_port "${QUOTA_PORTS[0]}" 15 "$quota_pid" quota

# --- OTLP receiver (TRACING=1) --------------------------------------------------------------
if [ "$TRACING" = 1 ]; then
  start otlp "$PY" -u scripts/otlp_receiver.py --port "$OTLP_PORT"
  wait_port "$OTLP_PORT" 10 "${PIDS[-1]}" otlp
fi

# --- Envoy x 2 ------------------------------------------------------------------------------
# Two replicas of the same gateway; the second is the same file on other ports.
sed -e "s/port_value: $LISTENER }/port_value: $LISTENER2 }/" \
    -e "s/port_value: $ADMIN }/port_value: $ADMIN2 }/" "$ENVOY_CONFIG" >"$RUN_DIR/envoy-2.yaml"
start_envoy() {  # name config admin listener
  # --disable-hot-restart: no shared-memory base id, so it does not clash with other Envoys.
  start "$1" "$ENVOY" -c "$2" --concurrency 2 --disable-hot-restart --log-level info
  local pid=${PIDS[-1]}
  wait_port "$3" 30 "$pid" "$1"
  local deadline=$((SECONDS + 30))
  until [ "$(curl -s --max-time 1 "http://127.0.0.1:$3/ready" 2>/dev/null)" = "LIVE" ]; do
    kill -0 "$pid" 2>/dev/null || die "$1 exited during startup; see run/$1.log:
$(grep -E '\]\[(error|critical)\]' "$RUN_DIR/$1.log" | tail -10)"
    [ $SECONDS -lt $deadline ] || die "$1 not LIVE within 30 s; see run/$1.log"
    sleep 0.1
  done
  wait_port "$4" 10 "$pid" "$1"
}
start_envoy envoy "$ENVOY_CONFIG" "$ADMIN" "$LISTENER"
envoy_pid=${PIDS[-1]}
start_envoy envoy-2 "$RUN_DIR/envoy-2.yaml" "$ADMIN2" "$LISTENER2"
envoy2_pid=${PIDS[-1]}

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
  gateway 2 http://127.0.0.1:$LISTENER2   (Envoy pid $envoy2_pid, the same config, admin :$ADMIN2):
            a second replica; the tenants' limits are global, shared by both through Redis
  quota     127.0.0.1:${QUOTA_PORTS[0]} (pid $quota_pid, llm-router-extproc quota; metrics :${QUOTA_PORTS[2]})
  redis     127.0.0.1:$REDIS_PORT (no persistence; redis-cli -p $REDIS_PORT)
  mocks     small-1..3 http://127.0.0.1:8101-8103, large-1..2 http://127.0.0.1:8201-8202
            (GET /metrics, GET /admin/stats, POST /admin/load)
  sidecar   $sidecar_note
  token     LLM_ROUTER_PUSH_TOKEN $token_note (in Envoy's and the sidecar's environment)
  logs      run/envoy.log  run/envoy-2.log  run/quota.log  run/redis.log  run/mocks.log  run/sidecar.log

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

  # global limit: tenant acme has 60 requests a minute across BOTH gateways; 90 requests
  # alternating between them -> about 60 (+ what refills meanwhile) get 200, the rest 429
  for i in \$(seq 90); do curl -s -o /dev/null -w '%{http_code}\\n' \\
    http://127.0.0.1:\$((10000 + i % 2))/v1/chat/completions -H 'x-tenant-id: acme' \\
    -H 'content-type: application/json' -d '{"model":"m","messages":[{"role":"user","content":"hi"}]}'; \\
  done | sort | uniq -c

  # the tenant's bucket in Redis (lvl in 1/60000 of a request; ts = Redis TIME in ms)
  redis-cli -p $REDIS_PORT HGETALL 'llm_router:q:{acme}:requests'

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
