//! llm-router: a Proxy-Wasm HTTP filter for OpenAI-style inference traffic.
//!
//! Decision logic lives in pure modules (no proxy-wasm calls) that are unit-tested natively:
//! `config`, `body`, `tokens`, `routing`, `reply`. The `glue` module holds the proxy-wasm
//! contexts: they read host state, call the logic and apply the result.

pub mod tokens;
