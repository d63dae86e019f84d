#!/usr/bin/env bash
# Lint gate: rustfmt, and clippy with -D warnings for the native crates and for the filter as it
# ships (wasm32-wasip1; usize is 32-bit there, so some lints differ).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== clippy (native workspace)"
cargo clippy --workspace --all-targets -- -D warnings

# As shipped (simd128) and as `WASM_SIMD=0 scripts/build-wasm.sh` builds it (the scalar paths),
# each in the target directory build-wasm.sh uses for it.
for simd in 1 0; do
  if [ "$simd" = 1 ]; then
    features="-C target-feature=+simd128" scalar= rustup_dir=target
  else
    features="" scalar=-scalar rustup_dir=target/wasm-scalar
  fi
  echo "== clippy (filter, wasm32-wasip1, ${features:-no simd128})"
  if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
    RUSTFLAGS="${RUSTFLAGS:-} $features" CARGO_TARGET_DIR=$rustup_dir \
      cargo clippy -p llm-router-filter --target wasm32-wasip1 -- -D warnings
  else
    scripts/setup-debian-wasm.sh clippy
    PATH=/usr/bin:$PATH RUSTC_BOOTSTRAP=1 \
    RUSTFLAGS="-L /usr/lib/wasm32-wasi $features" \
    CARGO_TARGET_DIR=target/debian-wasm$scalar \
      /usr/bin/cargo clippy -p llm-router-filter --target wasm32-wasip1 \
        -Zbuild-std=std,panic_abort -- -D warnings
  fi
done
