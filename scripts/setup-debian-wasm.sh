#!/usr/bin/env bash
# Installs Debian's wasm32-wasip1-capable Rust toolchain when it is missing (idempotent).
# `setup-debian-wasm.sh clippy` also installs Debian's clippy for that toolchain (lint only).
set -euo pipefail
need=()
if [ "${1:-}" = clippy ] && [ ! -x /usr/bin/clippy-driver ]; then need+=(rust-web-clippy); fi
[ -x /usr/bin/cargo ] || need+=(cargo-web)
[ -x /usr/bin/rustc ] || need+=(rustc-web)
[ -d /usr/lib/rustlib/src/rust/library ] || need+=(rust-web-src)
[ -x /usr/lib/llvm-16/bin/wasm-ld ] || need+=(lld-16)
[ -d /usr/lib/wasm32-wasi ] || need+=(wasi-libc)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian wasm toolchain: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
