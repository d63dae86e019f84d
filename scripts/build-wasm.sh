#!/usr/bin/env bash
# Builds dist/llm_router.wasm for wasm32-wasip1 with whichever toolchain this machine has:
#  1. a rustup toolchain with the wasm32-wasip1 target installed (plain cargo build), or
#  2. Debian's rustc-web + rust-web-src + wasm-ld, building std from source (-Zbuild-std).
# Path 2 is installed on demand (apt) when path 1 is not available.
#
# The module uses WebAssembly SIMD (simd128: the body's byte scans and the token estimator's
# prose path, 16 bytes per instruction; Envoy's V8 and wasmtime run it).
# WASM_SIMD=0 builds a scalar module (same results, more instructions per body byte) for
# Proxy-Wasm runtimes without SIMD; it builds in its own target directory.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=wasm-release
if [ "${WASM_SIMD:-1}" = 0 ]; then
  WASM_FEATURES="" scalar=-scalar rustup_dir=target/wasm-scalar
else
  WASM_FEATURES="-C target-feature=+simd128" scalar= rustup_dir=target
fi
if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  # With --target, RUSTFLAGS reach the wasm crates only (not build scripts nor proc macros).
  RUSTFLAGS="${RUSTFLAGS:-} $WASM_FEATURES" CARGO_TARGET_DIR=$rustup_dir \
    cargo build -p llm-router-filter --target wasm32-wasip1 --profile "$PROFILE"
  out=$rustup_dir/wasm32-wasip1/$PROFILE/llm_router.wasm
else
  scripts/setup-debian-wasm.sh
  # Debian's cargo must come first on PATH (rustup's proxies shadow it otherwise); its build
  # tree is kept apart from the rustup-built native crates so neither rebuilds the other.
  PATH=/usr/bin:$PATH RUSTC_BOOTSTRAP=1 \
  CARGO_TARGET_WASM32_WASIP1_LINKER=/usr/lib/llvm-16/bin/wasm-ld \
  RUSTFLAGS="-L /usr/lib/wasm32-wasi $WASM_FEATURES" \
  CARGO_TARGET_DIR=target/debian-wasm$scalar \
    /usr/bin/cargo build -p llm-router-filter --target wasm32-wasip1 --profile "$PROFILE" \
      -Zbuild-std=std,panic_abort
  out=target/debian-wasm$scalar/wasm32-wasip1/$PROFILE/llm_router.wasm
fi
mkdir -p dist
cp "$out" dist/llm_router.wasm
echo "built dist/llm_router.wasm ($(wc -c < dist/llm_router.wasm) bytes, ${WASM_FEATURES:-no simd128})"
