//! Helpers of the engine tests: the real `dist/llm_router.wasm` (a missing module fails the
//! test: run `make build` first; `LLM_ROUTER_WASM=path` tests another build), request and
//! response shapes, and reading [`Step`]s.
#![allow(dead_code)]

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _, Result};
use host_engine::{Engine, EngineOptions, HeaderPairs, Step, Stream, StreamProps};
use serde_json::{json, Value};

pub const PUSH_TOKEN: &str = "test-token";
pub const PUSH_PATH: &str = "/.well-known/llm-router/load";
pub const EP: &str = "x-gateway-destination-endpoint";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The real filter's bytes; a missing file is an error naming `make build`.
pub fn filter_wasm() -> Result<Vec<u8>> {
    let path = match std::env::var_os("LLM_ROUTER_WASM") {
        Some(p) => PathBuf::from(p),
        None => repo().join("dist/llm_router.wasm"),
    };
    std::fs::read(&path).with_context(|| format!("reading {} (run `make build`)", path.display()))
}

/// An engine on the real filter with `workers` worker threads.
pub fn engine(config: &Value, workers: usize) -> Result<Engine> {
    Engine::start(EngineOptions {
        wasm: filter_wasm()?,
        plugin_config: config.to_string().into_bytes(),
        env: vec![("LLM_ROUTER_PUSH_TOKEN".into(), PUSH_TOKEN.into())],
        workers,
        ..EngineOptions::default()
    })
    .map_err(|e| anyhow!("{e}"))
}

pub fn pairs(list: &[(&str, &str)]) -> HeaderPairs {
    list.iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

pub fn header<'a>(h: &'a HeaderPairs, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.as_slice() == name.as_bytes())
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

pub fn chat_body(model: &str, content: &str) -> Vec<u8> {
    json!({"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 5})
        .to_string()
        .into_bytes()
}

/// Request headers of a POST with a JSON body of `len` bytes.
pub fn post_headers(path: &str, len: usize, extra: &[(&str, &str)]) -> HeaderPairs {
    let len = len.to_string();
    let mut h = vec![
        (":authority", "gateway.local"),
        (":path", path),
        (":method", "POST"),
        (":scheme", "http"),
        ("content-type", "application/json"),
        ("content-length", len.as_str()),
    ];
    h.extend_from_slice(extra);
    pairs(&h)
}

/// What one request did: the Step of its last request callback.
pub enum Outcome {
    Forwarded {
        headers: HeaderPairs,
        body: Vec<u8>,
        clear_route_cache: bool,
    },
    Replied {
        status: u32,
        body: Vec<u8>,
    },
}

/// Sends headers (held), then the body in `chunks` pieces; checks the filter holds the
/// headers until the body ends.
pub fn send(
    stream: &mut Stream,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    chunks: usize,
) -> Result<Outcome> {
    let step = stream.request_headers(post_headers(path, body.len(), extra), false);
    if let Step::Reply { status, body, .. } = step {
        return Ok(Outcome::Replied { status, body });
    }
    if step != Step::Hold {
        bail!("request headers: expected Hold, got {step:?}");
    }
    let size = body.len().div_ceil(chunks.max(1)).max(1);
    let pieces: Vec<&[u8]> = body.chunks(size).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        match stream.request_body(piece.to_vec(), last) {
            Step::Hold if !last => {}
            Step::Continue {
                headers: Some(headers),
                body: Some(body),
                end_of_stream: true,
                clear_route_cache,
            } if last => {
                return Ok(Outcome::Forwarded {
                    headers,
                    body,
                    clear_route_cache,
                })
            }
            Step::Reply { status, body, .. } => return Ok(Outcome::Replied { status, body }),
            other => bail!("request body chunk {i} (last: {last}): unexpected {other:?}"),
        }
    }
    bail!("empty body")
}

/// A whole chat request with a 200 response; returns the request's outcome.
pub fn chat(engine: &Engine, tenant: Option<&str>, model: &str) -> Result<Outcome> {
    let mut s = engine.open_stream(StreamProps::default());
    let extra: Vec<(&str, &str)> = tenant.map(|t| ("x-tenant-id", t)).into_iter().collect();
    let out = send(
        &mut s,
        "/v1/chat/completions",
        &extra,
        &chat_body(model, "hi"),
        2,
    )?;
    if let Outcome::Forwarded { .. } = out {
        let body = json!({"usage": {"prompt_tokens": 3, "completion_tokens": 2}}).to_string();
        let h = pairs(&[(":status", "200"), ("content-type", "application/json")]);
        s.response_headers(h, false);
        s.response_body(body.into_bytes(), true);
    }
    s.finish();
    Ok(out)
}

/// Pushes an endpoint-load snapshot from loopback, as the sidecar does; the filter's status.
pub fn push(engine: &Engine, snapshot: &Value) -> Result<u32> {
    let mut s = engine.open_stream(StreamProps {
        source_address: Some("127.0.0.1:40000".into()),
        ..StreamProps::default()
    });
    let bearer = format!("Bearer {PUSH_TOKEN}");
    let body = snapshot.to_string().into_bytes();
    let out = send(&mut s, PUSH_PATH, &[("authorization", &bearer)], &body, 1)?;
    s.finish();
    match out {
        Outcome::Replied { status, .. } => Ok(status),
        Outcome::Forwarded { .. } => bail!("the push went upstream instead of being answered"),
    }
}
