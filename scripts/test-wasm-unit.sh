#!/usr/bin/env bash
# Runs the filter's unit tests (`cargo test -p llm-router-filter --lib`) compiled to
# wasm32-wasip1 (32-bit usize, the shipping target) under Node's WASI (scripts/wasi-run.mjs
# as cargo's runner). Toolchain detection follows scripts/build-wasm.sh:
#  1. a rustup toolchain with the wasm32-wasip1 target installed (plain cargo test), or
#  2. Debian's rustc-web + rust-web-src + wasm-ld, building std and libtest from source
#     (-Zbuild-std=std,panic_abort,test), installed on demand.
# wasm32-wasip1 has no unwinding: a failing test aborts the binary (a trap), which still
# exits non-zero. #[should_panic] tests are reported as ignored by libtest on wasm.
# The tests are built with simd128, as the shipped module (scripts/build-wasm.sh), so the SIMD
# paths run here; the native tests (cargo test) cover the scalar ones.
# Extra arguments go to the test binary (e.g. a name filter, --nocapture).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null 2>&1; then
  echo "test-wasm-unit: node (>= 20, for node:wasi) is needed to run the wasm tests" >&2
  exit 1
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "test-wasm-unit: node >= 20 is needed (found $(node --version))" >&2
  exit 1
fi

export CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings $PWD/scripts/wasi-run.mjs"
# The linker may leave symbols undefined: they become `env` imports that wasi-run.mjs stubs with
# trapping functions. Debian's (2022) wasi-libc lacks pthread_join/pthread_detach, which libtest's
# std references but never calls on wasm (libtest runs tests on the main thread there).
WASM_LINK_FLAGS="-C link-arg=--allow-undefined -C target-feature=+simd128"

run_tests() {
  if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
    RUSTFLAGS="${RUSTFLAGS:-} $WASM_LINK_FLAGS" \
      cargo test -p llm-router-filter --lib --target wasm32-wasip1 -- "$@"
  else
    scripts/setup-debian-wasm.sh
    # Same environment and target dir as build-wasm.sh (the test profile builds into its own
    # subdirectory there, so the two do not rebuild each other).
    PATH=/usr/bin:$PATH RUSTC_BOOTSTRAP=1 \
    CARGO_TARGET_WASM32_WASIP1_LINKER=/usr/lib/llvm-16/bin/wasm-ld \
    RUSTFLAGS="-L /usr/lib/wasm32-wasi $WASM_LINK_FLAGS" \
    CARGO_TARGET_DIR=target/debian-wasm \
      /usr/bin/cargo test -p llm-router-filter --lib --target wasm32-wasip1 \
        -Zbuild-std=std,panic_abort,test -- "$@"
  fi
}

if ! run_tests "$@"; then
  # A failing test aborts the binary before libtest prints the captured panic message; run
  # again without capture (and sequentially) so the message of the failing test is shown.
  echo "test-wasm-unit: FAILED; re-running with --nocapture to show the panic message" >&2
  run_tests --nocapture --test-threads=1 "$@" 2>&1 | grep -v '^test .* \.\.\. ok$' >&2 || true
  exit 1
fi
