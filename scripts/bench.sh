#!/usr/bin/env bash
# `make bench`: prints figures, never pass/fail on wall-clock (machines are shared).
#
#   part 1  token estimator accuracy against tiktoken (bench/ crate, estimator-accuracy binary),
#           then native throughput of the estimator and body inspection (filter-throughput)
#   part 2  deterministic cost: wasm instructions and host calls per request and per callback
#           (`host-sim cost`, checked against bench/cost-budget.json)
#   fleet   the fleet simulator (`host-sim fleet`, docs/fleet-sim.md): a simulated GPU fleet
#           routed by round robin, least-queue, the filter's load scoring and the filter with
#           prefix affinity, on chat / RAG / no-reuse workloads over a QPS sweep, in simulated
#           time; prints the table and issue 12's goals, writes CSV, JSON and a TTFT PNG
#   part 3  load test, one interleaved run: passthrough (A), Envoy's `buffer` filter (F), the Lua
#           anchor (L: bench/load/anchor.lua), the Proxy-Wasm floor (W: bench/load/floor.wat, a
#           Wasm module that only holds the headers, reads the body, sets the tier header and
#           re-matches the route: what any Wasm filter costs at least), the filter with routing only (B) and with the
#           shipped configuration (C: + tenants + metrics + endpoint picking), each at every
#           prompt size, rounds interleaved so that a noisy minute hits every variant alike;
#           against a fast upstream (a second Envoy answering a canned chat completion with
#           `direct_response`). Then the resident memory of a worker VM (--concurrency 1 vs 4).
#           Variant X is the ext_proc path: C's plugin configuration in llm-router-extproc
#           (--workers 1, pinned with the gateways; CPU counted with its gateway's) behind
#           envoy-config/envoy-extproc.yaml.
#           How to read it: bench/load/README.md.
#
# Environment (all optional):
#   BENCH_SECONDS=5           measured seconds per run (one variant, one prompt size, one round)
#   BENCH_WARMUP_SECONDS=1    warm-up before each measured run (not counted)
#   BENCH_ROUNDS=2            interleaved rounds (figures are summed over rounds)
#   BENCH_CONNECTIONS=16      wrk connections
#   BENCH_PROMPT_BYTES="2048 32768 262144"   prompt sizes (bytes of prompt text per request)
#   BENCH_VARIANTS="A F W L B C X"           which gateway variants
#   BENCH_PORT_BASE=13000     upstream admin :BASE+2, upstream servers :BASE+101..103 and
#                             :BASE+201..202, gateway k (A F L B C W X) :BASE+10+2k, admin :BASE+11+2k,
#                             X's llm-router-extproc :BASE+3 (gRPC), +4 (health), +5 (metrics)
#   BENCH_PIN=1               pin the gateways to one CPU and wrk + upstream to the others (taskset)
#   BENCH_PARTS="estimator cost fleet load memory sse"   which parts to run
#   BENCH_FLEET_ARGS=""       extra `host-sim fleet` options (e.g. "--qps 8,16 --seeds 1,2")
#   BENCH_FLEET_OUT=DIR       where the fleet part writes (target/fleet-sim/<UTC time>)
#   BENCH_SSE_EVENTS=40 BENCH_SSE_GAP_MS=20 BENCH_SSE_REQUESTS=10
#                             part sse: events per streamed response, gap between them at the
#                             upstream, responses per variant
#   BENCH_LOCK_WAIT=900       seconds to wait for /tmp/llm-router-e2e.lock (held during the load test)
#   BENCH_KEEP=1              keep the temp dir (configs, Envoy logs, raw wrk output)
#   BENCH_ACCESS_LOG=1        keep the shipped access log in the gateway (to a file)
#   ENVOY_BIN                 Envoy binary (else scripts/envoy-bin.sh decides)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

RUN_SECONDS=${BENCH_SECONDS:-5}
WARMUP=${BENCH_WARMUP_SECONDS:-1}
ROUNDS=${BENCH_ROUNDS:-2}
CONNS=${BENCH_CONNECTIONS:-16}
PROMPTS=${BENCH_PROMPT_BYTES:-"2048 32768 262144"}
VARIANTS=${BENCH_VARIANTS:-"A F W L B C X"}
BASE=${BENCH_PORT_BASE:-13000}
PIN=${BENCH_PIN:-1}
PARTS=${BENCH_PARTS:-"estimator cost fleet load memory sse"}
SSE_EVENTS=${BENCH_SSE_EVENTS:-40}
SSE_GAP_MS=${BENCH_SSE_GAP_MS:-20}
SSE_REQUESTS=${BENCH_SSE_REQUESTS:-10}
LOCK=/tmp/llm-router-e2e.lock
LOCK_WAIT=${BENCH_LOCK_WAIT:-900}

ALL_VARIANTS=(A F L B C W X)   # the order of gen-configs.py's VARIANTS (ports)
X_PORTS=($((BASE + 3)) $((BASE + 4)) $((BASE + 5)))   # variant X's server: gRPC, health, metrics
UP_ADMIN=$((BASE + 2))
UP_PORTS=($((BASE + 101)) $((BASE + 102)) $((BASE + 103)) $((BASE + 201)) $((BASE + 202)))

die() { echo "bench.sh: $*" >&2; exit 1; }
has_part() { [[ " $PARTS " == *" $1 "* ]]; }

status=0

# ============================================================================================
# Part 1: estimator accuracy
# ============================================================================================
if has_part estimator; then
  echo "== Part 1: token estimator accuracy vs tiktoken =================================="
  if [ -f bench/src/bin/estimator-accuracy.rs ] || [ -d bench/src/bin/estimator-accuracy ]; then
    if ! cargo run -q --release -p llm-router-bench --bin estimator-accuracy; then
      echo "bench.sh: estimator-accuracy failed (continuing with the load test)" >&2
      status=1
    fi
    cargo run -q --release -p llm-router-bench --bin filter-throughput || status=1
  else
    echo "(skipped: bench/src/bin/estimator-accuracy is not there)"
  fi
  echo
fi

# ============================================================================================
# Part 2: deterministic cost (no clock involved)
# ============================================================================================
if has_part cost; then
  echo "== Part 2: wasm instructions and host calls per request (host-sim cost) ========"
  [ -f dist/llm_router.wasm ] || die "dist/llm_router.wasm is missing: run \`make build\`"
  cargo run -q --release -p host-sim -- cost --check bench/cost-budget.json || status=1
  echo
fi

# =====================================================================================
# ============================================================================================
# Part 3: load test
# ============================================================================================
echo "== Part 3: load test, one interleaved run =========================================="

# --- tools ----------------------------------------------------------------------------------
[ -f dist/llm_router.wasm ] || die "dist/llm_router.wasm is missing: run \`make build\`"
if ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk (Debian package)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
  command -v wrk >/dev/null 2>&1 || die "could not install wrk"
fi
ENVOY=$(scripts/envoy-bin.sh) || die "no Envoy binary (scripts/envoy-bin.sh failed)"
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
"$PY" -c 'import yaml' 2>/dev/null || die "$PY lacks PyYAML (run \`make setup\`)"
command -v curl >/dev/null 2>&1 || die "curl is needed"

TMP=$(mktemp -d /tmp/llm-router-bench.XXXXXX)

# --- process management ---------------------------------------------------------------------
PIDS=()
cleanup() {
  local i
  trap '' INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[$i]}" 2>/dev/null || true; done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    for _ in $(seq 50); do kill -0 "${PIDS[$i]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${PIDS[$i]}" 2>/dev/null || true
    wait "${PIDS[$i]}" 2>/dev/null || true
  done
  PIDS=()
  if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "bench.sh: kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stop_pid() {  # pid: stop one process we started and forget it
  local p=$1 i
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  for i in "${!PIDS[@]}"; do [ "${PIDS[$i]}" = "$p" ] && unset 'PIDS[i]'; done
  PIDS=("${PIDS[@]}")
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
holder() {
  command -v ss >/dev/null 2>&1 || return 0
  ss -ltnpH "sport = :$1" 2>/dev/null | sed -nE 's/.*users:\(\((.*)\)\).*/\1/p' | head -1
}

wait_ready() {  # admin_port pid name log
  local deadline=$((SECONDS + 30))
  until [ "$(curl -s --max-time 1 "http://127.0.0.1:$1/ready" 2>/dev/null)" = "LIVE" ]; do
    kill -0 "$2" 2>/dev/null || die "$3 exited during startup:
$(grep -E '\]\[(error|critical)\]' "$4" | tail -10)"
    [ $SECONDS -lt $deadline ] || die "$3 not LIVE within 30 s; log: $4"
    sleep 0.1
  done
}

# --- CPU placement --------------------------------------------------------------------------
# The gateway under test runs with --concurrency 1 on a CPU of its own; wrk, the upstream Envoy
# and the snapshot pusher share the other CPU(s). With 2 cores this keeps the load generator
# from stealing the gateway's CPU, so the gateway's CPU time per request is a clean figure.
NCPU=$(nproc)
GW_PIN=(); LOAD_PIN=()
if [ "$PIN" = 1 ] && [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null 2>&1; then
  GW_CPU=$((NCPU - 1))
  GW_PIN=(taskset -c "$GW_CPU")
  LOAD_PIN=(taskset -c "0-$((NCPU - 2))")
  placement="gateway on CPU $GW_CPU; wrk + upstream + pusher on CPU 0-$((NCPU - 2))"
else
  placement="not pinned (BENCH_PIN=$PIN, $NCPU CPUs)"
fi
WRK_THREADS=$(( NCPU > 2 ? NCPU - 1 : 1 ))

# --- configs --------------------------------------------------------------------------------
cargo run -q --release -p llm-router-bench --bin floor-wasm -- "$TMP/floor.wasm" \
  || die "compiling bench/load/floor.wat failed"
PUSH_PATH=$("$PY" bench/load/gen-configs.py envoy-config/envoy.yaml "$TMP" dist/llm_router.wasm "$BASE" "$TMP/floor.wasm") \
  || die "generating the Envoy configs failed"
for f in "$TMP"/upstream.yaml "$TMP"/gateway-*.yaml; do
  "$ENVOY" --mode validate -c "$f" --log-level warn >"$TMP/validate.log" 2>&1 \
    || die "generated config $(basename "$f") does not validate:
$(tail -15 "$TMP/validate.log")"
done

# --- versions -------------------------------------------------------------------------------
envoy_version=$("$ENVOY" --version 2>/dev/null | sed -nE 's/.*version: *//p' | head -1)
wasm_sha=$(sha256sum dist/llm_router.wasm | cut -c1-12)
wasm_size=$(stat -c %s dist/llm_router.wasm)
git_rev=$(git rev-parse --short HEAD 2>/dev/null || echo "?")
git_dirty=""; [ -n "$(git status --porcelain -- filter 2>/dev/null)" ] && git_dirty=" (filter/ has uncommitted changes)"
cpu_model=$(sed -nE 's/^model name\s*: //p' /proc/cpuinfo | head -1)
echo "envoy      $ENVOY"
echo "           $envoy_version"
echo "wrk        $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
echo "filter     dist/llm_router.wasm ($wasm_size bytes, sha256 $wasm_sha…), git $git_rev$git_dirty"
echo "machine    $NCPU CPUs ($cpu_model), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "setup      every gateway --concurrency 1, $placement"
echo "           wrk $WRK_THREADS thread(s), $CONNS connections, ${WARMUP}s warm-up + ${RUN_SECONDS}s per run, $ROUNDS interleaved rounds"
echo "           prompts: $PROMPTS bytes; variants: $VARIANTS"

# --- lock -----------------------------------------------------------------------------------
# The e2e tests are timing-sensitive and so are these numbers: run one at a time.
exec 9>"$LOCK"
if ! flock -n 9; then
  echo "waiting for $LOCK (an e2e run or another bench holds it; up to ${LOCK_WAIT}s)..."
  flock -w "$LOCK_WAIT" 9 || die "could not take $LOCK within ${LOCK_WAIT}s"
fi

gw_port() {  # variant: its gateway's listener port (gen-configs.py's `ports`)
  local k
  for k in "${!ALL_VARIANTS[@]}"; do
    if [ "${ALL_VARIANTS[$k]}" = "$1" ]; then echo $((BASE + 10 + 2 * k)); fi
  done
}
gw_admin() { echo $(($(gw_port "$1") + 1)); }
for v in $VARIANTS; do
  [ -n "$(gw_port "$v")" ] || die "unknown variant $v (A F W L B C X)"
done

busy=()
for p in "$UP_ADMIN" "${UP_PORTS[@]}" "${X_PORTS[@]}"; do
  if port_busy "$p"; then h=$(holder "$p"); busy+=("127.0.0.1:$p${h:+ (held by $h)}"); fi
done
for v in $VARIANTS; do
  for p in "$(gw_port "$v")" "$(gw_admin "$v")"; do
    if port_busy "$p"; then h=$(holder "$p"); busy+=("127.0.0.1:$p${h:+ (held by $h)}"); fi
  done
done
if [ ${#busy[@]} -gt 0 ]; then
  printf 'bench.sh: port(s) already in use:\n' >&2
  printf '  %s\n' "${busy[@]}" >&2
  die "is another bench still running? Stop it, or pick other ports with BENCH_PORT_BASE."
fi

# --- upstream -------------------------------------------------------------------------------
"${LOAD_PIN[@]}" "$ENVOY" -c "$TMP/upstream.yaml" --concurrency 1 --disable-hot-restart \
  --log-level warn >"$TMP/upstream.log" 2>&1 </dev/null &
UP_PID=$!; PIDS+=("$UP_PID")
wait_ready "$UP_ADMIN" "$UP_PID" "upstream Envoy" "$TMP/upstream.log"
curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:${UP_PORTS[0]}/v1/chat/completions" -d '{}' \
  || die "the upstream does not answer"

# --- measuring helpers ----------------------------------------------------------------------
TCK=$(getconf CLK_TCK)
cpu_ticks() { sed -E 's/^.*\) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }   # utime+stime
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
stat_sum() {  # admin_port name-substring: sum of the counters whose name contains it
  curl -s --max-time 2 "http://127.0.0.1:$1/stats?usedonly&filter=$2" \
    | awk -F': ' '$2 ~ /^[0-9]+$/ {s += $2} END {print s + 0}'
}

run_wrk() {  # port seconds prompt_bytes outfile
  "${LOAD_PIN[@]}" wrk -t "$WRK_THREADS" -c "$CONNS" -d "${2}s" --timeout 5s \
    -s bench/load/chat.lua "http://127.0.0.1:$1" -- "$3" 8 /v1/chat/completions >"$4" 2>&1 \
    || die "wrk failed:
$(tail -5 "$4")"
}

export LLM_ROUTER_PUSH_TOKEN
LLM_ROUTER_PUSH_TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

push_snapshot() {  # port
  curl -s --max-time 1 -o /dev/null -w '%{http_code}' -X POST \
    -H "authorization: Bearer $LLM_ROUTER_PUSH_TOKEN" -H 'content-type: application/json' \
    --data-binary @"$TMP/snapshot.json" "http://127.0.0.1:$1$PUSH_PATH" || true
}

# --- variant X: the ext_proc server ---------------------------------------------------------
SRV_PID=""
start_extproc() {  # on the gateways' CPU: its cost belongs to its gateway's
  [ -x target/release/llm-router-extproc ] || cargo build -q --release -p llm-router-extproc \
    || die "variant X: building llm-router-extproc failed"
  "${GW_PIN[@]}" target/release/llm-router-extproc --wasm dist/llm_router.wasm \
    --plugin-config "$TMP/plugin-X.json" --plaintext --workers 1 --env LLM_ROUTER_PUSH_TOKEN \
    --grpc-addr "127.0.0.1:${X_PORTS[0]}" --health-addr "127.0.0.1:${X_PORTS[1]}" \
    --metrics-addr "127.0.0.1:${X_PORTS[2]}" >"$TMP/extproc.log" 2>&1 </dev/null &
  SRV_PID=$!; PIDS+=("$SRV_PID")
  local deadline=$((SECONDS + 30))
  until grep -q "serving ext_proc on" "$TMP/extproc.log"; do
    kill -0 "$SRV_PID" 2>/dev/null || die "llm-router-extproc exited: $(tail -5 "$TMP/extproc.log")"
    [ $SECONDS -lt $deadline ] || die "llm-router-extproc not serving within 30 s"
    sleep 0.1
  done
}
push_port() { if [ "$1" = X ]; then echo "${X_PORTS[2]}"; else gw_port "$1"; fi; }
ticks() {  # variant: CPU ticks of its gateway (and of X's server)
  local t; t=$(cpu_ticks "${GW[$1]}")
  if [ "$1" = X ] && [ -n "$SRV_PID" ]; then t=$((t + $(cpu_ticks "$SRV_PID"))); fi
  echo "$t"
}

start_gateway() {  # variant concurrency -> sets GW_PID
  local v=$1 log="$TMP/gateway-$1-c$2.log" probe code
  [ "$v" = X ] && start_extproc
  "${GW_PIN[@]}" "$ENVOY" -c "$TMP/gateway-$v.yaml" --concurrency "$2" --disable-hot-restart \
    --log-level warn >"$log" 2>&1 </dev/null &
  GW_PID=$!; PIDS+=("$GW_PID")
  wait_ready "$(gw_admin "$v")" "$GW_PID" "gateway $v" "$log"
  if [ "$v" = C ] || [ "$v" = X ]; then
    code=$(push_snapshot "$(push_port "$v")")
    [ "$code" = 204 ] || die "snapshot push answered $code (expected 204); log: $log"
  fi
  # One request first: it must succeed, or the figures would measure an error path.
  probe=$(curl -s --max-time 5 -o "$TMP/probe-$v.b" -w '%{http_code}' \
    -H 'content-type: application/json' -H 'x-tenant-id: team-1' \
    "http://127.0.0.1:$(gw_port "$v")/v1/chat/completions" \
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}],"max_tokens":16}' || true)
  [ "$probe" = 200 ] || die "variant $v: probe request answered ${probe:-nothing} (expected 200):
$(head -c 400 "$TMP/probe-$v.b" 2>/dev/null)
$(grep -E '\]\[(error|critical)\]' "$log" | tail -5)"
}

vname() {
  case $1 in
    A) echo "passthrough" ;; F) echo "buffer filter" ;; L) echo "Lua anchor" ;;
    W) echo "Proxy-Wasm floor" ;;
    B) echo "llm-router, routing only" ;; C) echo "llm-router, shipped" ;;
    X) echo "ext_proc server, shipped" ;;
  esac
}

cpu_us() { awk -v t="${TICKS[$1,$2]:-0}" -v n="${REQ[$1,$2]:-0}" -v tck="$TCK" 'BEGIN { printf "%.1f", n ? t / tck * 1e6 / n : 0 }'; }
rps() { awk -v n="${REQ[$1,$2]:-0}" -v d="${DUR[$1,$2]:-1}" 'BEGIN { printf "%.0f", n / (d / 1e6) }'; }

measure() {  # variant prompt_bytes round: one warm-up and one measured wrk run, summed per cell
  local v=$1 pb=$2 round=$3 port pid t0 t1 line out
  port=$(gw_port "$v"); pid=${GW[$v]}; out="$TMP/wrk-$v-$pb-$round.txt"
  run_wrk "$port" "$WARMUP" "$pb" "$TMP/warmup-$v-$pb-$round.txt"
  t0=$(ticks "$v")
  run_wrk "$port" "$RUN_SECONDS" "$pb" "$out"
  t1=$(ticks "$v")
  line=$(grep '^WRK ' "$out" || true)
  [ -n "$line" ] || die "no result line from wrk:
$(tail -5 "$out")"
  local requests=0 duration_us=0 non2xx=0 errors=0
  eval "$(echo "$line" | sed -E 's/^WRK //; s/(p50_us|p90_us|p99_us|mean_us|bytes)=[0-9]*//g')"
  REQ[$v,$pb]=$(( ${REQ[$v,$pb]:-0} + requests ))
  DUR[$v,$pb]=$(( ${DUR[$v,$pb]:-0} + duration_us ))
  TICKS[$v,$pb]=$(( ${TICKS[$v,$pb]:-0} + t1 - t0 ))
  NON2XX[$v,$pb]=$(( ${NON2XX[$v,$pb]:-0} + non2xx ))
  ERRS[$v,$pb]=$(( ${ERRS[$v,$pb]:-0} + errors ))
  printf '   %-2s %7s B: %6s req/s, %s CPU ticks\n' "$v" "$pb" \
    "$(awk -v n="$requests" -v d="$duration_us" 'BEGIN { printf "%.0f", n / (d / 1e6) }')" "$((t1 - t0))"
}

table() {
  local v pb r c ratio over nerr pbh rss_end
  echo
  echo "== Results (each gateway Envoy --concurrency 1; $ROUNDS x ${RUN_SECONDS}s per cell; $CONNS connections) =="
  printf '%-30s %6s %8s %7s %8s %8s %8s %9s\n' \
    variant body "req/s" "vs buf" "CPU us" "us over" "non-2xx" "RSS MiB"
  printf '%-30s %6s %8s %7s %8s %8s %8s %9s\n' "" "" "" "" "/req" "buffer" "" "idle/end"
  for v in $VARIANTS; do
    rss_end=$(rss_kb "${GW[$v]}")
    for pb in $PROMPTS; do
      r=$(rps "$v" "$pb"); c=$(cpu_us "$v" "$pb")
      ratio="-"; over="-"
      if [[ " $VARIANTS " == *" F "* ]]; then
        ratio=$(awk -v a="$r" -v b="$(rps F "$pb")" 'BEGIN { printf "%.2f", b ? a / b : 0 }')
        over=$(awk -v a="$c" -v b="$(cpu_us F "$pb")" 'BEGIN { printf "%+.1f", a - b }')
      fi
      nerr=${NON2XX[$v,$pb]:-0}; [ "${ERRS[$v,$pb]:-0}" != 0 ] && nerr="$nerr/e${ERRS[$v,$pb]}"
      pbh=$(awk -v b="$pb" 'BEGIN { printf "%gKB", b / 1024 }')
      printf '%-30s %6s %8s %7s %8s %8s %8s %9s\n' "$v $(vname "$v")" "$pbh" "$r" "$ratio" "$c" \
        "$over" "$nerr" "$(awk -v i="${RSS_IDLE[$v]}" -v e="$rss_end" 'BEGIN { printf "%.0f/%.0f", i / 1024, e / 1024 }')"
    done
  done
}

upstream_reuse() {
  # Upstream connections opened per upstream request, per gateway: near 0 when connections are
  # kept alive (a new connection per request would add its cost to every variant alike).
  local v line
  echo
  echo "upstream connections opened per upstream request (keep-alive check; ~0 expected):"
  for v in $VARIANTS; do
    line=$(curl -sG --max-time 5 --data-urlencode 'filter=^cluster\.[a-z_-]+\.upstream_(cx|rq)_total$' \
      "http://127.0.0.1:$(gw_admin "$v")/stats" |
      awk -F': ' '/upstream_cx_total/ { cx += $2 } /upstream_rq_total/ { rq += $2 }
        END { printf "%d connections / %d requests = %.3f", cx, rq, rq ? cx / rq : 0 }')
    printf '  %-30s %s\n' "$v $(vname "$v")" "$line"
  done
}

slopes() {
  # The cost per body byte: the slope of CPU us/req between the two largest prompts, minus the
  # buffer filter's slope (what holding the body costs Envoy itself).
  local sizes lo hi v
  read -r -a sizes <<<"$PROMPTS"
  [ ${#sizes[@]} -ge 2 ] && [[ " $VARIANTS " == *" F "* ]] || return 0
  lo=${sizes[${#sizes[@]}-2]}; hi=${sizes[${#sizes[@]}-1]}
  echo
  echo "ns per body byte over buffer (slope of CPU us/req from the $lo B to the $hi B prompt):"
  for v in $VARIANTS; do
    awk -v v="$v $(vname "$v")" -v a1="$(cpu_us "$v" "$hi")" -v a0="$(cpu_us "$v" "$lo")" \
      -v b1="$(cpu_us F "$hi")" -v b0="$(cpu_us F "$lo")" -v d="$((hi - lo))" \
      'BEGIN { s = ((a1 - a0) - (b1 - b0)) * 1000 / d; printf "  %-30s %6.2f ns/byte  (a 1 MB prompt: %.1f ms)\n", v, s, s }'
  done
}

# --- the interleaved run --------------------------------------------------------------------
declare -A GW REQ DUR TICKS NON2XX ERRS RSS_IDLE
if has_part load; then
  PUSH_PIDS=()
  for v in $VARIANTS; do
    start_gateway "$v" 1
    GW[$v]=$GW_PID
    RSS_IDLE[$v]=$(rss_kb "$GW_PID")
    if [ "$v" = C ] || [ "$v" = X ]; then
      # Like the sidecar: push again well within stale_after_ms, for the whole run.
      pp=$(push_port "$v")
      ( while sleep 0.5; do push_snapshot "$pp" >/dev/null; done ) </dev/null >/dev/null 2>&1 &
      PUSH_PIDS+=($!); PIDS+=($!)
    fi
  done
  read -r -a order <<<"$VARIANTS"
  for ((round = 1; round <= ROUNDS; round++)); do
    echo "-- round $round/$ROUNDS (order: ${order[*]})"
    for pb in $PROMPTS; do
      for v in "${order[@]}"; do measure "$v" "$pb" "$round"; done
    done
    order=("${order[@]:1}" "${order[0]}")   # the next round starts with another variant
  done
  for p in "${PUSH_PIDS[@]}"; do stop_pid "$p"; done
  table
  slopes
  upstream_reuse
  cat <<'EOF'

  req/s          closed loop; same wrk, upstream and CPU placement for every variant.
  vs buf         requests/s relative to Envoy's buffer filter (F) at the same prompt size: the
                 floor of any filter that reads the body.
  CPU us/req     the gateway's CPU time (user+sys, all threads) / requests, over all rounds:
                 the robust figure (it does not depend on who else was the bottleneck).
  us over buffer CPU us/req minus F's: what the variant adds to holding the body.
  RSS            gateway VmRSS after startup / at the end.
  X              C's plugin configuration in llm-router-extproc (--workers 1) behind Envoy's
                 ext_proc filter (envoy-extproc.yaml, FULL_DUPLEX_STREAMED): CPU us/req is the
                 gateway's and the server's together; RSS is the gateway's only.
EOF
  for v in $VARIANTS; do
    if [ "$v" = B ] || [ "$v" = C ]; then
      a=$(gw_admin "$v")
      echo "  variant $v: filter counted requests_total=$(stat_sum "$a" llm_router_requests_total), endpoint_picked=$(stat_sum "$a" llm_router_endpoint_picked_total), rate_limited=$(stat_sum "$a" llm_router_rate_limited_total), invalid_body=$(stat_sum "$a" llm_router_invalid_body_total)"
    fi
    if [ "$v" = X ]; then
      m=$(curl -s --max-time 2 "http://127.0.0.1:${X_PORTS[2]}/metrics")
      msum() { echo "$m" | awk -v n="$1" '$1 == n || index($1, n "{") == 1 {s += $NF} END {print s + 0}'; }
      echo "  variant X: server counted requests_total=$(msum llm_router_requests_total), endpoint_picked=$(msum llm_router_endpoint_picked_total), streams=$(msum llm_router_extproc_streams_total), traps=$(msum llm_router_extproc_traps_total)"
      stop_pid "$SRV_PID"; SRV_PID=""
    fi
    log="$TMP/gateway-$v-c1.log"
    if grep -qE '\]\[(error|critical)\]' "$log"; then
      echo "  variant $v: gateway log has errors:"
      grep -E '\]\[(error|critical)\]' "$log" | sort | uniq -c | sort -rn | head -3 | sed 's/^/     /'
    fi
    stop_pid "${GW[$v]}"
  done
fi

# --- memory per worker VM -------------------------------------------------------------------
if has_part memory; then
  echo
  echo "== Resident memory per added worker (--concurrency 1 vs 4, after 3 s of 256 KB prompts) ="
  for v in A C; do
    for c in 1 4; do
      start_gateway "$v" "$c"
      # Load on every worker (16 connections spread over them), so each VM has done its work.
      run_wrk "$(gw_port "$v")" 3 262144 "$TMP/memory-$v-$c.txt"
      if [ "$c" = 1 ]; then one=$(rss_kb "$GW_PID"); else four=$(rss_kb "$GW_PID"); fi
      stop_pid "$GW_PID"
    done
    awk -v v="$v $(vname "$v")" -v a="$one" -v b="$four" \
      'BEGIN { printf "  %-30s 1 worker %.1f MiB, 4 workers %.1f MiB: %.1f MiB per added worker\n", v, a / 1024, b / 1024, (b - a) / 3 / 1024 }'
  done
  echo "  (C minus A per added worker is what one more Wasm VM costs; goal <= 8 MiB)"
fi
# --- SSE: time between events at the client --------------------------------------------------
if has_part sse; then
  echo
  echo "== SSE: time between streamed events at the client, passthrough (A) vs the filter (C) ====="
  # The canned upstream cannot stream with gaps: tests/mock_server.py takes its ports.
  [ -n "${UP_PID:-}" ] && stop_pid "$UP_PID"
  mock_args=()
  for i in "${!UP_PORTS[@]}"; do mock_args+=(--instance "server-$i=127.0.0.1:${UP_PORTS[$i]}"); done
  "${LOAD_PIN[@]}" "$PY" tests/mock_server.py --quiet --tokens "$SSE_EVENTS" "${mock_args[@]}" \
    >"$TMP/sse-mocks.log" 2>&1 </dev/null &
  MOCK_PID=$!; PIDS+=("$MOCK_PID")
  for p in "${UP_PORTS[@]}"; do
    for _ in $(seq 100); do curl -s --max-time 1 -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.1; done
  done
  sse_args=()
  for v in A C; do
    start_gateway "$v" 1
    GW[$v]=$GW_PID
    sse_args+=("$v $(vname "$v")=$(gw_port "$v")")
  done
  "$PY" bench/load/sse.py "$SSE_EVENTS" "$SSE_GAP_MS" "$SSE_REQUESTS" "${sse_args[@]}" \
    || { echo "bench.sh: the SSE measurement failed" >&2; status=1; }
  for v in A C; do stop_pid "${GW[$v]}"; done
  stop_pid "$MOCK_PID"
fi
exit $status
