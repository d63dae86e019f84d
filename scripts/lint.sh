#!/usr/bin/env bash
# Lint gate: rustfmt, and clippy with -D warnings for the native crates and for the filter as it
# ships (wasm32-wasip1; usize is 32-bit there, so some lints differ).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== clippy (native workspace)"
cargo clippy --workspace --all-targets -- -D warnings

echo "== clippy (filter, wasm32-wasip1)"
if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  cargo clippy -p llm-router-filter --target wasm32-wasip1 -- -D warnings
else
  scripts/setup-debian-wasm.sh clippy
  PATH=/usr/bin:$PATH RUSTC_BOOTSTRAP=1 \
  RUSTFLAGS="-L /usr/lib/wasm32-wasi" \
  CARGO_TARGET_DIR=target/debian-wasm \
    /usr/bin/cargo clippy -p llm-router-filter --target wasm32-wasip1 \
      -Zbuild-std=std,panic_abort -- -D warnings
fi
