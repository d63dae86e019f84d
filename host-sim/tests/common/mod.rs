//! Helpers shared by the real-filter test files (`filter_ratelimit.rs`, `filter_metrics.rs`,
//! `filter_endpoints.rs`). A missing or stub `dist/llm_router.wasm` fails every test that uses
//! them (run `make build` first); `LLM_ROUTER_WASM=path` tests another build.
#![allow(dead_code)]

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use host_sim::{Exchange, Host};
use serde_json::{json, Value};

pub const PUSH_TOKEN: &str = "test-token";
pub const PUSH_PATH: &str = "/.well-known/llm-router/load";
/// Units per whole token or request in the filter's bucket levels (1/60000).
pub const UNIT: i64 = 60_000;

pub fn wasm_path() -> PathBuf {
    match std::env::var_os("LLM_ROUTER_WASM") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist/llm_router.wasm"),
    }
}

/// A started host on the real filter with `workers` VMs. A missing or stub `.wasm` fails the
/// test (run `make build` first).
pub fn started(config: &Value, workers: usize) -> Result<Host> {
    started_seeded(config, workers, 7)
}

pub fn started_seeded(config: &Value, workers: usize, seed: u64) -> Result<Host> {
    let path = wasm_path();
    if !path.exists() {
        bail!("{} does not exist; run `make build`", path.display());
    }
    let mut host = Host::builder()
        .wasm_file(&path)
        .workers(workers)
        .plugin_config(config.to_string())
        .env("LLM_ROUTER_PUSH_TOKEN", PUSH_TOKEN)
        .seed(seed)
        .build()
        .with_context(|| format!("loading {} (run `make build`)", path.display()))?;
    host.start()?;
    Ok(host)
}

/// A chat request body.
pub fn chat_body(model: &str, content: &str, max_tokens: Option<u64>, stream: bool) -> Value {
    let mut b = json!({"model": model, "messages": [{"role": "user", "content": content}]});
    if let Some(m) = max_tokens {
        b["max_tokens"] = json!(m);
    }
    if stream {
        b["stream"] = json!(true);
    }
    b
}

/// POST /v1/chat/completions with an optional `x-tenant-id`.
pub fn chat<'h>(
    host: &'h mut Host,
    worker: usize,
    tenant: Option<&str>,
    body: &Value,
) -> Exchange<'h> {
    let mut rb = host
        .worker(worker)
        .request()
        .method("POST")
        .path("/v1/chat/completions")
        .header("content-type", "application/json");
    if let Some(t) = tenant {
        rb = rb.header("x-tenant-id", t);
    }
    rb.json(body).send()
}

/// Both bucket levels of a tenant key in shared data: (requests units, tokens units, at_ms).
pub fn bucket(host: &Host, key: &str) -> Option<(i64, i64, u64)> {
    let (b, _) = host.shared_data_get(key)?;
    if b.len() != 24 {
        return None;
    }
    let f = |i: usize| <[u8; 8]>::try_from(&b[i..i + 8]).ok();
    Some((
        i64::from_le_bytes(f(0)?),
        i64::from_le_bytes(f(8)?),
        u64::from_le_bytes(f(16)?),
    ))
}

/// The prompt-token estimate the filter wrote upstream.
pub fn prompt_estimate(ex: &Exchange<'_>) -> u64 {
    ex.upstream()
        .and_then(|u| u.header("x-llm-prompt-tokens").and_then(|v| v.parse().ok()))
        .expect("x-llm-prompt-tokens upstream")
}

/// The OpenAI error `code` of a local reply.
pub fn reply_code(ex: &Exchange<'_>) -> Option<String> {
    ex.local_reply()?
        .body_json()?
        .pointer("/error/code")?
        .as_str()
        .map(str::to_string)
}

/// Pushes a load snapshot as the sidecar does; returns (reached upstream, local status).
pub fn push(host: &mut Host, worker: usize, snapshot: &Value) -> (bool, Option<u32>) {
    let ex = host
        .worker(worker)
        .request()
        .method("POST")
        .path(PUSH_PATH)
        .header("authorization", &format!("Bearer {PUSH_TOKEN}"))
        .source_address("127.0.0.1:40000")
        .json(snapshot)
        .send();
    let r = (ex.upstream().is_some(), ex.local_reply().map(|l| l.status));
    drop(ex);
    r
}
