#!/usr/bin/env bash
# `make bench`: prints figures, never pass/fail on wall-clock (machines are shared).
#
#   part 1  token estimator accuracy against tiktoken (bench/ crate, estimator-accuracy binary),
#           then native throughput of the estimator and body inspection (filter-throughput)
#   part 2  load test: Envoy without the filter (A), with the filter doing routing only (B), with
#           the shipped plugin configuration (C: + tenant buckets + endpoint picking), in one run,
#           against a fast upstream (a second Envoy answering a canned chat completion with
#           `direct_response`). How to read it: bench/load/README.md.
#           Variant X: C's plugin configuration run by llm-router-extproc behind Envoy's ext_proc
#           filter (envoy-config/envoy-extproc.yaml), the server pinned with the gateway.
#
# Environment (all optional):
#   BENCH_SECONDS=10          measured seconds per run (each variant runs a 1 KB and a 32 KB prompt)
#   BENCH_WARMUP_SECONDS=2    warm-up before each measured run (not counted)
#   BENCH_CONNECTIONS=32      wrk connections
#   BENCH_PROMPT_BYTES="1024 32768"   prompt sizes (bytes of prompt text per request)
#   BENCH_VARIANTS="A B C X"  which gateway variants
#   BENCH_PORT_BASE=13000     gateway :BASE, admin :BASE+1, upstream admin :BASE+2,
#                             upstream servers :BASE+101..103 and :BASE+201..202
#   BENCH_PIN=1               pin the gateway to one CPU and wrk + upstream to the others (taskset)
#   BENCH_PARTS="estimator load"      which parts to run
#   BENCH_FLOOR=1             in variant B, also a run on a path the filter does not inspect (B0)
#   BENCH_LOCK_WAIT=900       seconds to wait for /tmp/llm-router-e2e.lock (held during the load test)
#   BENCH_KEEP=1              keep the temp dir (configs, Envoy logs, raw wrk output)
#   BENCH_ACCESS_LOG=1        keep the shipped access log in the gateway (to a file)
#   ENVOY_BIN                 Envoy binary (else scripts/envoy-bin.sh decides)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

RUN_SECONDS=${BENCH_SECONDS:-10}
WARMUP=${BENCH_WARMUP_SECONDS:-2}
CONNS=${BENCH_CONNECTIONS:-32}
PROMPTS=${BENCH_PROMPT_BYTES:-"1024 32768"}
VARIANTS=${BENCH_VARIANTS:-"A B C X"}
BASE=${BENCH_PORT_BASE:-13000}
PIN=${BENCH_PIN:-1}
PARTS=${BENCH_PARTS:-"estimator load"}
FLOOR=${BENCH_FLOOR:-1}
LOCK=/tmp/llm-router-e2e.lock
LOCK_WAIT=${BENCH_LOCK_WAIT:-900}

GW_PORT=$BASE
GW_ADMIN=$((BASE + 1))
UP_ADMIN=$((BASE + 2))
X_PORTS=($((BASE + 3)) $((BASE + 4)) $((BASE + 5)))   # variant X: server gRPC, health, metrics
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
has_part load || exit $status

# ============================================================================================
# Part 2: load test
# ============================================================================================
echo "== Part 2: load test, Envoy with vs without the filter ==========================="

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
PUSH_PATH=$("$PY" bench/load/gen-configs.py envoy-config/envoy.yaml "$TMP" dist/llm_router.wasm "$BASE") \
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
echo "setup      gateway --concurrency 1, $placement"
echo "           wrk $WRK_THREADS thread(s), $CONNS connections, ${WARMUP}s warm-up + ${RUN_SECONDS}s per run"
echo "           prompts: $PROMPTS bytes; variants: $VARIANTS"

# --- lock -----------------------------------------------------------------------------------
# The e2e tests are timing-sensitive and so are these numbers: run one at a time.
exec 9>"$LOCK"
if ! flock -n 9; then
  echo "waiting for $LOCK (an e2e run or another bench holds it; up to ${LOCK_WAIT}s)..."
  flock -w "$LOCK_WAIT" 9 || die "could not take $LOCK within ${LOCK_WAIT}s"
fi

busy=()
for p in "$GW_PORT" "$GW_ADMIN" "$UP_ADMIN" "${X_PORTS[@]}" "${UP_PORTS[@]}"; do
  if port_busy "$p"; then h=$(holder "$p"); busy+=("127.0.0.1:$p${h:+ (held by $h)}"); fi
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

run_wrk() {  # seconds prompt_bytes outfile [path]
  "${LOAD_PIN[@]}" wrk -t "$WRK_THREADS" -c "$CONNS" -d "${1}s" --timeout 5s \
    -s bench/load/chat.lua "http://127.0.0.1:$GW_PORT" -- "$2" 8 "${4:-/v1/chat/completions}" >"$3" 2>&1 \
    || die "wrk failed:
$(tail -5 "$3")"
}

RESULTS=()   # "variant prompt rps p50 p99 non2xx errors cpu_us_per_req cpu_pct rss_idle rss_after"
NOTES=()
export LLM_ROUTER_PUSH_TOKEN
LLM_ROUTER_PUSH_TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

PUSH_PORT=$GW_PORT
push_snapshot() {
  curl -s --max-time 1 -o /dev/null -w '%{http_code}' -X POST \
    -H "authorization: Bearer $LLM_ROUTER_PUSH_TOKEN" -H 'content-type: application/json' \
    --data-binary @"$TMP/snapshot.json" "http://127.0.0.1:$PUSH_PORT$PUSH_PATH" || true
}

# --- variant X: the ext_proc server -----------------------------------------------------------
SRV_PID=""
start_extproc() {  # on the gateway's CPU: its cost is part of the gateway's
  [ -f "$TMP/gateway-X.yaml" ] || die "variant X: no gateway-X.yaml (envoy-config/envoy-extproc.yaml missing?)"
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
  PUSH_PORT=${X_PORTS[2]}
}

for v in $VARIANTS; do
  case $v in
    A) vname="no filter" ;;
    B) vname="filter: routing only" ;;
    C) vname="filter: shipped config (+tenants +endpoints)" ;;
    X) vname="ext_proc: C's config in llm-router-extproc (FULL_DUPLEX_STREAMED)" ;;
    *) die "unknown variant $v (A, B, C or X)" ;;
  esac
  echo
  echo "-- variant $v: $vname"
  log="$TMP/gateway-$v.log"
  PUSH_PORT=$GW_PORT
  [ "$v" = X ] && start_extproc
  "${GW_PIN[@]}" "$ENVOY" -c "$TMP/gateway-$v.yaml" --concurrency 1 --disable-hot-restart \
    --log-level warn >"$log" 2>&1 </dev/null &
  GW_PID=$!; PIDS+=("$GW_PID")
  wait_ready "$GW_ADMIN" "$GW_PID" "gateway $v" "$log"

  PUSH_PID=""
  if [ "$v" = C ] || [ "$v" = X ]; then
    code=$(push_snapshot)
    [ "$code" = 204 ] || die "snapshot push answered $code (expected 204); log: $log"
    # Like the sidecar: push again well within stale_after_ms, for the whole run.
    ( while sleep 0.5; do push_snapshot >/dev/null; done ) </dev/null >/dev/null 2>&1 &
    PUSH_PID=$!; PIDS+=("$PUSH_PID")
  fi

  # One request first: it must succeed, or the figures would measure an error path.
  probe=$(curl -s --max-time 5 -D "$TMP/probe-$v.h" -o "$TMP/probe-$v.b" -w '%{http_code}' \
    -H 'content-type: application/json' -H 'x-tenant-id: team-1' \
    "http://127.0.0.1:$GW_PORT/v1/chat/completions" \
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}],"max_tokens":16}' || true)
  [ "$probe" = 200 ] || die "variant $v: probe request answered ${probe:-nothing} (expected 200):
$(cat "$TMP/probe-$v.b" 2>/dev/null | head -c 400)
$(grep -E '\]\[(error|critical)\]' "$log" | tail -5)"

  rss_idle=$(rss_kb "$GW_PID")
  runs=()
  for pb in $PROMPTS; do runs+=("$v:$pb:/v1/chat/completions"); done
  # The filter's floor: loaded, called for every request, but the path is not in `apis`, so it
  # neither holds nor reads the body (row B0).
  if [ "$v" = B ] && [ "$FLOOR" = 1 ]; then runs+=("B0:${PROMPTS%% *}:/bench/not-inspected"); fi
  for run in "${runs[@]}"; do
    IFS=: read -r rv pb path <<<"$run"
    run_wrk "$WARMUP" "$pb" "$TMP/warmup-$rv-$pb.txt" "$path"
    t0=$(cpu_ticks "$GW_PID"); [ -n "$SRV_PID" ] && t0=$((t0 + $(cpu_ticks "$SRV_PID")))
    run_wrk "$RUN_SECONDS" "$pb" "$TMP/wrk-$rv-$pb.txt" "$path"
    t1=$(cpu_ticks "$GW_PID"); [ -n "$SRV_PID" ] && t1=$((t1 + $(cpu_ticks "$SRV_PID")))
    rss_after=$(rss_kb "$GW_PID")
    line=$(grep '^WRK ' "$TMP/wrk-$rv-$pb.txt" || true)
    [ -n "$line" ] || die "no result line from wrk:
$(tail -5 "$TMP/wrk-$rv-$pb.txt")"
    eval "$(echo "$line" | sed -E 's/^WRK //')"   # requests= duration_us= non2xx= errors= p50_us= ...
    # shellcheck disable=SC2154
    r=$(awk -v n="$requests" -v d="$duration_us" -v t0="$t0" -v t1="$t1" -v tck="$TCK" -v p50="$p50_us" -v p99="$p99_us" \
      'BEGIN { cpu = (t1 - t0) / tck; printf "%.0f %.2f %.2f %.1f %.0f", n / (d / 1e6), p50 / 1000, p99 / 1000, (n ? cpu * 1e6 / n : 0), 100 * cpu / (d / 1e6) }')
    read -r rps p50 p99 cpu_us cpu_pct <<<"$r"
    RESULTS+=("$rv $pb $rps $p50 $p99 $non2xx $errors $cpu_us $cpu_pct $rss_idle $rss_after")
    printf '   %-3s prompt %6s B: %7s req/s  p50 %6s ms  p99 %6s ms  gateway CPU %5s us/req (%s%% of a core)  non-2xx %s  socket errors %s\n' \
      "$rv" "$pb" "$rps" "$p50" "$p99" "$cpu_us" "$cpu_pct" "$non2xx" "$errors"
  done

  if [ "$v" = X ]; then
    m=$(curl -s --max-time 2 "http://127.0.0.1:${X_PORTS[2]}/metrics")
    msum() { echo "$m" | awk -v n="$1" '$1 == n || index($1, n "{") == 1 {s += $NF} END {print s + 0}'; }
    note="variant X: server counted requests_total=$(msum llm_router_requests_total), endpoint_picked=$(msum llm_router_endpoint_picked_total), streams=$(msum llm_router_extproc_streams_total), traps=$(msum llm_router_extproc_traps_total)"
    echo "   $note"; NOTES+=("$note")
  elif [ "$v" != A ]; then
    n_req=$(stat_sum "$GW_ADMIN" llm_router_requests_total)
    n_pick=$(stat_sum "$GW_ADMIN" llm_router_endpoint_picked_total)
    n_rl=$(stat_sum "$GW_ADMIN" llm_router_rate_limited_total)
    n_inv=$(stat_sum "$GW_ADMIN" llm_router_invalid_body_total)
    sent=$(cat "$TMP"/warmup-"$v"-*.txt "$TMP"/wrk-"$v"-*.txt | sed -nE 's/^WRK requests=([0-9]+).*/\1/p' | paste -sd+ | bc)
    note="variant $v: wrk completed $((sent + 1)) inspected requests (incl. warm-up and probe; up to $CONNS more per run were in flight at the cut); filter counted requests_total=$n_req, endpoint_picked=$n_pick, rate_limited=$n_rl, invalid_body=$n_inv"
    echo "   $note"
    NOTES+=("$note")
    curl -s --max-time 2 "http://127.0.0.1:$GW_ADMIN/stats?filter=^wasm\\.|wasm_filter" >"$TMP/wasm-stats-$v.txt" || true
  fi
  curl -s --max-time 2 "http://127.0.0.1:$GW_ADMIN/memory" >"$TMP/memory-$v.json" || true
  [ -n "$PUSH_PID" ] && stop_pid "$PUSH_PID"
  stop_pid "$GW_PID"
  if [ -n "$SRV_PID" ]; then stop_pid "$SRV_PID"; SRV_PID=""; fi
  if grep -qE '\]\[(error|critical)\]' "$log"; then
    echo "   gateway log has errors:"
    grep -E '\]\[(error|critical)\]' "$log" | sort | uniq -c | sort -rn | head -5 | sed 's/^/     /'
  fi
done

# --- table ----------------------------------------------------------------------------------
echo
echo "== Results (gateway: Envoy --concurrency 1; ${RUN_SECONDS}s per run; $CONNS connections) =="
printf '%-3s %-6s %7s %5s %7s %7s %7s %8s %7s %7s %8s %13s\n' \
  var prompt "req/s" "vs A" "p50 ms" "p99 ms" "non-2xx" "CPU us" "filter" "cap." "gw CPU" "RSS MiB"
printf '%-3s %-6s %7s %5s %7s %7s %7s %8s %7s %7s %8s %13s\n' \
  "" "" "" "" "" "" "" "/req" "us/req" "vs A" "%" "idle/run"
for row in "${RESULTS[@]}"; do
  read -r v pb rps p50 p99 non2xx errors cpu_us cpu_pct rss_idle rss_after <<<"$row"
  base_rps=""; base_cpu=""
  for b in "${RESULTS[@]}"; do
    read -r bv bpb brps _ _ _ _ bcpu _ _ _ <<<"$b"
    if [ "$bv" = A ] && [ "$bpb" = "$pb" ]; then base_rps=$brps; base_cpu=$bcpu; fi
  done
  ratio="-"; fcost="-"; cap="-"
  if [ -n "$base_rps" ] && [ "$base_rps" != 0 ]; then
    ratio=$(awk -v a="$rps" -v b="$base_rps" 'BEGIN { printf "%.2f", a / b }')
    cap=$(awk -v a="$cpu_us" -v b="$base_cpu" 'BEGIN { printf "%.2f", (a > 0 ? b / a : 0) }')
    [ "$v" != A ] && fcost=$(awk -v a="$cpu_us" -v b="$base_cpu" 'BEGIN { printf "%+.0f", a - b }')
  fi
  pbh=$(awk -v b="$pb" 'BEGIN { if (b >= 1024) printf "%gKB", b / 1024; else printf "%dB", b }')
  nerr=$non2xx; [ "$errors" != 0 ] && nerr="$non2xx/e$errors"
  printf '%-3s %-6s %7s %5s %7s %7s %7s %8s %7s %7s %8s %13s\n' \
    "$v" "$pbh" "$rps" "$ratio" "$p50" "$p99" "$nerr" "$cpu_us" "$fcost" "$cap" "$cpu_pct" \
    "$(awk -v i="$rss_idle" -v r="$rss_after" 'BEGIN { printf "%.1f/%.1f", i / 1024, r / 1024 }')"
done
cat <<'EOF'

  A  = no filter; B = filter, routing only; B0 = filter loaded (B's config) but the path is not
  in `apis`, so the body is not held or read: the filter's fixed floor per request; C = filter with
  the shipped config (tenants + endpoints; tenant limits raised so every request is admitted; a
  load snapshot pushed every 0.5 s so every request picks an endpoint); X = C's plugin
  configuration in llm-router-extproc (--workers 1, pinned with the gateway) behind the ext_proc
  filter of envoy-extproc.yaml: X's p50 minus C's is the latency the ext_proc path adds, and
  its CPU us/req counts the gateway and the server together.
  vs A           requests/s relative to A with the same prompt size (all rows: same wrk, same
                 upstream, same CPU placement).
  CPU us/req     gateway Envoy's CPU time (user+sys, all threads) / requests in the measured run.
  filter us/req  CPU us/req minus A's: the filter's own cost per request, host side included
                 (VM calls, holding and copying the body, JSON parse, token estimate, body
                 rewrite, route re-match, shared-data CAS, metrics).
  cap. vs A      A's CPU us/req / this row's: the throughput ratio to expect where the gateway
                 is the bottleneck (it may not be here: see gw CPU %).
  gw CPU %       gateway CPU use during the run; well under 100 means the gateway was not the
                 bottleneck (wrk and the upstream share the other CPU), so req/s understates
                 the difference between variants; CPU us/req does not.
  RSS            gateway VmRSS after startup / after the runs so far; B and C minus A is the
                 memory of the Wasm VMs (main thread's + one per worker).
EOF
for n in "${NOTES[@]}"; do echo "  $n"; done
exit $status
