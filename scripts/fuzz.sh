#!/usr/bin/env bash
# Long fuzzing (`make fuzz`):
#  1. the filter's native property tests (`prop_*` in filter/) with LLM_ROUTER_FUZZ_ITERS
#     iterations each and overflow checks on (own target dir, so the normal release builds
#     are not invalidated);
#  2. the real dist/llm_router.wasm in host-sim for FUZZ_SECONDS seconds from a random seed
#     (printed; FUZZ_SEED=N runs that seed only). Failures are minimised and written to
#     host-sim/fuzz-corpus/, which `make test` replays;
#  3. the same with prefix affinity on (host-sim/examples/plugin-prefix.json, whose small
#     index the generator also fills with corrupted values) for a quarter of FUZZ_SECONDS;
#     its failures go to host-sim/fuzz-corpus/prefix/, replayed with that configuration.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-600}
export LLM_ROUTER_FUZZ_ITERS=${LLM_ROUTER_FUZZ_ITERS:-200000}

echo "== filter property tests: LLM_ROUTER_FUZZ_ITERS=$LLM_ROUTER_FUZZ_ITERS, overflow checks on"
CARGO_TARGET_DIR=target/fuzz-overflow CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true \
  cargo test -p llm-router-filter --release prop_

echo "== host-sim fuzz of dist/llm_router.wasm: ${FUZZ_SECONDS}s"
cargo build --release -p host-sim
args=(--seconds "$FUZZ_SECONDS" --corpus host-sim/fuzz-corpus)
if [[ -n "${FUZZ_SEED:-}" ]]; then
  args=(--seed "$FUZZ_SEED" --cases "${FUZZ_CASES:-500}" --corpus host-sim/fuzz-corpus)
fi
target/release/host-sim fuzz "${args[@]}"

if [[ -z "${FUZZ_SEED:-}" ]]; then
  echo "== host-sim fuzz with endpoints.prefix (examples/plugin-prefix.json): $((FUZZ_SECONDS / 4))s"
  target/release/host-sim fuzz --config host-sim/examples/plugin-prefix.json \
    --seconds "$((FUZZ_SECONDS / 4 + 1))" --corpus host-sim/fuzz-corpus/prefix
fi
