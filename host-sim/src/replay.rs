//! `host-sim replay`: runs a JSONL traffic file through the filter and prints each decision.

use std::fmt::Write as _;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::request::split_chunks;
use crate::Host;

/// Options of `host-sim replay`.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub wasm: String,
    pub config: String,
    pub requests: String,
    pub workers: usize,
    pub seed: u64,
    pub env: Vec<(String, String)>,
    pub allow_on_headers_stop_iteration: bool,
    /// `--grpc-cluster NAME=URL`: the module's gRPC calls are made for real (none: every
    /// upstream name is accepted and no call is answered).
    pub grpc_clusters: grpc_call::Clusters,
}

/// Header names the filter writes, from the plugin config's `headers` (SPEC defaults).
struct HeaderNames {
    tier: String,
    model: String,
    endpoint: String,
    prompt_tokens: String,
}

impl HeaderNames {
    fn from_config(cfg: &Value) -> HeaderNames {
        let get = |k: &str, d: &str| {
            cfg.pointer(&format!("/headers/{k}"))
                .and_then(|v| v.as_str())
                .unwrap_or(d)
                .to_string()
        };
        HeaderNames {
            tier: get("tier", "x-llm-model-type"),
            model: get("model", "x-model-id"),
            endpoint: get("endpoint", "x-gateway-destination-endpoint"),
            prompt_tokens: get("prompt_tokens", "x-llm-prompt-tokens"),
        }
    }
}

/// Runs the replay and returns the report text.
pub fn run(opts: &ReplayOptions) -> Result<String> {
    let config = std::fs::read_to_string(&opts.config)
        .with_context(|| format!("reading {}", opts.config))?;
    let cfg_json: Value = serde_json::from_str(&config).unwrap_or(Value::Null);
    let names = HeaderNames::from_config(&cfg_json);
    let traffic = std::fs::read_to_string(&opts.requests)
        .with_context(|| format!("reading {}", opts.requests))?;
    let mut b = Host::builder()
        .wasm_file(&opts.wasm)
        .workers(opts.workers)
        .seed(opts.seed)
        .plugin_config(config.as_bytes())
        .allow_on_headers_stop_iteration(opts.allow_on_headers_stop_iteration);
    for (k, v) in &opts.env {
        b = b.env(k, v);
    }
    if !opts.grpc_clusters.is_empty() {
        b = b.grpc_clusters(opts.grpc_clusters.clone());
    }
    let mut host = b.build()?;
    let mut out = String::new();
    if let Err(e) = host.start() {
        bail!("the filter rejected {}: {e:#}", opts.config);
    }
    let mut n = 0usize;
    for (lineno, line) in traffic.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("//") {
            continue;
        }
        let req: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", opts.requests, lineno + 1))?;
        n += 1;
        let worker = req
            .get("worker")
            .and_then(Value::as_u64)
            .map(|w| w as usize % opts.workers.max(1))
            .unwrap_or((n - 1) % opts.workers.max(1));
        let report = replay_one(&mut host, &req, worker, n, &names)
            .with_context(|| format!("{}:{}", opts.requests, lineno + 1))?;
        out.push_str(&report);
    }
    let _ = writeln!(out, "== metrics ==");
    out.push_str(&host.render_stats(true));
    let traps = host.traps();
    if !traps.is_empty() {
        let _ = writeln!(out, "== traps ==");
        for t in traps {
            let _ = writeln!(out, "worker {} in {}: {}", t.worker, t.function, t.message);
        }
    }
    Ok(out)
}

fn replay_one(
    host: &mut Host,
    req: &Value,
    worker: usize,
    n: usize,
    names: &HeaderNames,
) -> Result<String> {
    let mut out = String::new();
    if let Some(at) = req.get("at_ms").and_then(Value::as_u64) {
        host.advance_to(at).ok();
    }
    let body: Option<Vec<u8>> = match (req.get("body_raw"), req.get("body")) {
        (Some(Value::String(s)), _) => Some(s.as_bytes().to_vec()),
        (_, Some(v)) if !v.is_null() => Some(v.to_string().into_bytes()),
        _ => None,
    };
    let method = req
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or(if body.is_some() { "POST" } else { "GET" })
        .to_string();
    let path = req
        .get("path")
        .and_then(Value::as_str)
        .unwrap_or("/")
        .to_string();
    let _ = writeln!(out, "#{n} {method} {path} (worker {worker})");
    let mut rb = host.worker(worker).request().method(&method).path(&path);
    if let Some(Value::Object(h)) = req.get("headers") {
        for (k, v) in h {
            let v = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            rb = rb.header(k, &v);
        }
    }
    if let Some(a) = req.get("source_address").and_then(Value::as_str) {
        rb = rb.source_address(a);
    }
    if let Some(claims) = req.get("jwt_payload") {
        rb = rb.jwt_payload("jwt_payload", claims.clone());
    }
    if let Some(b) = &body {
        let chunks = req.get("chunks").and_then(Value::as_u64).unwrap_or(1) as usize;
        rb = rb.body_chunks(&split_chunks(b, chunks));
    }
    let mut ex = rb.send();
    if let Some(t) = ex.trap() {
        let _ = writeln!(out, "  TRAP: {t}");
    }
    if let Some(lr) = ex.local_reply() {
        let _ = writeln!(
            out,
            "  local reply: {} {}",
            lr.status,
            String::from_utf8_lossy(&lr.body)
        );
        let extra: Vec<String> = lr
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        if !extra.is_empty() {
            let _ = writeln!(out, "  reply headers: {}", extra.join(", "));
        }
    } else if let Some(up) = ex.upstream() {
        let h = |name: &str| up.header(name).unwrap_or("-").to_string();
        let body_model = up
            .body_json()
            .and_then(|v| v.get("model").and_then(Value::as_str).map(str::to_string));
        let model = up
            .header(&names.model)
            .map(str::to_string)
            .or(body_model.clone())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "  tier={} model={} endpoint={} prompt_tokens={}{}",
            h(&names.tier),
            model,
            h(&names.endpoint),
            h(&names.prompt_tokens),
            if up.complete { "" } else { " (incomplete)" }
        );
        if ex.route_cache_cleared() {
            let _ = writeln!(out, "  route cache cleared");
        }
        let (set, removed) = ex.header_changes();
        if set.is_empty() && removed.is_empty() {
            let _ = writeln!(out, "  headers: unchanged");
        } else {
            for (k, v) in set {
                let _ = writeln!(out, "  set {k}: {v}");
            }
            for k in removed {
                let _ = writeln!(out, "  removed {k}");
            }
        }
        let original_model = body.as_ref().and_then(|b| {
            serde_json::from_slice::<Value>(b)
                .ok()
                .and_then(|v| v.get("model").and_then(Value::as_str).map(str::to_string))
        });
        if original_model != body_model {
            let _ = writeln!(
                out,
                "  body model: {} -> {}",
                original_model.unwrap_or_else(|| "-".into()),
                body_model.unwrap_or_else(|| "-".into())
            );
        } else if Some(up.body.as_slice()) != body.as_deref()
            && !(up.body.is_empty() && body.is_none())
        {
            let _ = writeln!(out, "  body rewritten ({} bytes)", up.body.len());
        }
        // Response side.
        let resp = if let Some(events) = req.get("sse").and_then(Value::as_array) {
            let status = req
                .pointer("/response/status")
                .and_then(Value::as_u64)
                .unwrap_or(200) as u32;
            Some(ex.response(status).sse(events, 10).send())
        } else if let Some(r) = req.get("response") {
            let status = r.get("status").and_then(Value::as_u64).unwrap_or(200) as u32;
            let mut rb = ex.response(status);
            if let Some(Value::Object(h)) = r.get("headers") {
                for (k, v) in h {
                    let v = v
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string());
                    rb = rb.header(k, &v);
                }
            }
            rb = match r.get("body") {
                Some(Value::String(s)) => rb.chunk(s.as_bytes()),
                Some(v) if !v.is_null() => rb.json(v),
                _ => rb,
            };
            Some(rb.send())
        } else if req.get("response") == Some(&Value::Bool(false)) {
            None
        } else {
            // No response given: a plain 200 with an empty JSON object, so the stream ends
            // the usual way.
            Some(ex.response(200).json(&serde_json::json!({})).send())
        };
        match resp {
            Some(Ok(c)) => {
                let _ = writeln!(
                    out,
                    "  client got: {} ({} body bytes)",
                    c.status,
                    c.body.len()
                );
            }
            Some(Err(e)) => {
                let _ = writeln!(out, "  response: {e:#}");
            }
            None => {}
        }
    } else {
        let _ = writeln!(out, "  stalled: the request is held in the filter");
    }
    ex.finish().ok();
    Ok(out)
}
