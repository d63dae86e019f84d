//! The deterministic cost report: wasm instructions (wasmtime fuel) and host calls per request
//! and per callback, for chat requests of 2 KB, 32 KB and 256 KB, under the routing-only
//! configuration and the shipped one (tenants, metrics, endpoint picking). The figures do not
//! depend on the machine: a slowdown shows here in review, and `bench/cost-budget.json` holds
//! them to a budget (`host-sim cost --check`, the `cost_budget` test).

pub mod budget;
pub mod cli;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};

use crate::Host;

/// The shipped plugin configuration (`envoy-config/envoy.yaml` holds the same; a test checks).
const SHIPPED: &str = include_str!("../../../tests/scenarios/routing.json");
/// Request body sizes measured, in bytes.
pub const SIZES: [usize; 3] = [2 * 1024, 32 * 1024, 256 * 1024];
/// Envoy hands a held body to the filter as it arrives; 16 KiB per callback here.
pub const CHUNK: usize = 16 * 1024;
/// Issue 12's goal: prefix affinity adds at most 10% to the filter's instructions per
/// request at 32 KB.
pub const AFFINITY_GOAL: f64 = 0.10;
pub const AFFINITY_GOAL_SIZE: usize = 32 * 1024;
/// Requests run before the measured one on the same host (first-use costs stay out).
const WARMUP: usize = 2;
const PUSH_TOKEN: &str = "cost-token";

/// One configuration measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// The shipped tiers, rules and models; no tenants, no endpoints.
    Routing,
    /// The shipped configuration: tenants (limits raised so every request is admitted),
    /// metrics, endpoint picking from a pushed load snapshot.
    Shipped,
    /// The shipped configuration with prefix affinity on (`endpoints.prefix: {}`); every
    /// measured request starts a new conversation (its system prompt differs), so it looks up
    /// and writes all its indexed blocks: the costlier case.
    Prefix,
}

impl Setup {
    pub const ALL: [Setup; 3] = [Setup::Routing, Setup::Shipped, Setup::Prefix];

    pub fn name(self) -> &'static str {
        match self {
            Setup::Routing => "routing",
            Setup::Shipped => "shipped",
            Setup::Prefix => "prefix",
        }
    }

    fn plugin_config(self) -> Result<Value> {
        let scenarios: Value = serde_json::from_str(SHIPPED).context("routing.json")?;
        let mut pc = scenarios
            .get("plugin_config")
            .cloned()
            .ok_or_else(|| anyhow!("routing.json has no plugin_config"))?;
        let obj = pc
            .as_object_mut()
            .ok_or_else(|| anyhow!("plugin_config is not an object"))?;
        match self {
            Setup::Routing => {
                obj.remove("tenants");
                obj.remove("endpoints");
            }
            Setup::Shipped => raise_limits(obj),
            Setup::Prefix => {
                raise_limits(obj);
                if let Some(e) = obj.get_mut("endpoints").and_then(Value::as_object_mut) {
                    e.insert("prefix".to_string(), json!({}));
                }
            }
        }
        Ok(pc)
    }
}

/// Like the load benchmark: tenant limits far above what the measurement sends.
fn raise_limits(pc: &mut serde_json::Map<String, Value>) {
    let Some(t) = pc.get_mut("tenants").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(d) = t.get_mut("default") {
        raise(d);
    }
    if let Some(l) = t.get_mut("limits").and_then(Value::as_object_mut) {
        l.values_mut().for_each(raise);
    }
}

fn raise(limits: &mut Value) {
    if let Some(m) = limits.as_object_mut() {
        for k in ["requests_per_minute", "tokens_per_minute"] {
            if m.contains_key(k) {
                m.insert(k.to_string(), json!(1_000_000_000u64));
            }
        }
        m.remove("burst_requests");
        m.remove("burst_tokens");
    }
}

/// What one callback (an export) cost over a whole request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallbackCost {
    pub calls: u64,
    pub instructions: u64,
    pub host_calls: BTreeMap<String, u64>,
}

impl CallbackCost {
    pub fn host_call_count(&self) -> u64 {
        self.host_calls.values().sum()
    }
}

/// One measured request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestCost {
    pub setup: Setup,
    /// The size measured (one of [`SIZES`]).
    pub size: usize,
    /// Request body bytes (about `size`).
    pub body_bytes: usize,
    /// By export name (`proxy_on_request_body`, ...).
    pub callbacks: BTreeMap<String, CallbackCost>,
}

impl RequestCost {
    pub fn instructions(&self) -> u64 {
        self.callbacks.values().map(|c| c.instructions).sum()
    }

    pub fn host_calls(&self) -> u64 {
        self.callbacks
            .values()
            .map(CallbackCost::host_call_count)
            .sum()
    }
}

/// The whole report: every setup at every size.
#[derive(Debug, Clone)]
pub struct Report {
    pub requests: Vec<RequestCost>,
}

impl Report {
    pub fn get(&self, setup: Setup, size: usize) -> Option<&RequestCost> {
        self.requests
            .iter()
            .find(|r| r.setup == setup && r.size == size)
    }

    /// What prefix affinity adds to the shipped configuration's instructions at `size`, as a
    /// fraction (0.08 = 8%).
    pub fn affinity_added(&self, size: usize) -> Option<f64> {
        let with = self.get(Setup::Prefix, size)?.instructions() as f64;
        let without = self.get(Setup::Shipped, size)?.instructions() as f64;
        (without > 0.0).then(|| with / without - 1.0)
    }

    /// Instructions per KiB of body: the slope between the two largest sizes.
    pub fn per_kib(&self, setup: Setup) -> Option<f64> {
        let (a, b) = (SIZES[SIZES.len() - 2], SIZES[SIZES.len() - 1]);
        let (ia, ib) = (
            self.get(setup, a)?.instructions(),
            self.get(setup, b)?.instructions(),
        );
        let (ba, bb) = (
            self.get(setup, a)?.body_bytes,
            self.get(setup, b)?.body_bytes,
        );
        Some((ib as f64 - ia as f64) / (bb.saturating_sub(ba) as f64 / 1024.0))
    }
}

/// Measures every setup at every size on the module at `wasm`.
pub fn measure(wasm: &Path) -> Result<Report> {
    if !wasm.exists() {
        bail!("{} does not exist; run `make build`", wasm.display());
    }
    let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let mut requests = Vec::new();
    for setup in Setup::ALL {
        for size in SIZES {
            requests.push(measure_one(&bytes, setup, size)?);
        }
    }
    Ok(Report { requests })
}

fn measure_one(wasm: &[u8], setup: Setup, size: usize) -> Result<RequestCost> {
    let mut host = Host::builder()
        .wasm_bytes(wasm.to_vec())
        .metered(true)
        .plugin_config(setup.plugin_config()?.to_string())
        .env("LLM_ROUTER_PUSH_TOKEN", PUSH_TOKEN)
        .seed(11)
        .build()?;
    host.start()?;
    if setup != Setup::Routing {
        push_snapshot(&mut host)?;
    }
    for i in 0..=WARMUP {
        let mut body = chat_body(size);
        if setup == Setup::Prefix {
            // A new conversation each time: the system prompt's first byte differs.
            let at = CHAT_HEAD_SYSTEM_AT;
            if let Some(b) = body.get_mut(at) {
                *b = b'A' + i as u8;
            }
        }
        let body = body;
        host.take_costs(0);
        let (context, routed) = one_request(&mut host, &body)?;
        if !routed {
            bail!("{} {size} B: the request was not forwarded", setup.name());
        }
        if i == WARMUP {
            let mut callbacks: BTreeMap<String, CallbackCost> = BTreeMap::new();
            for c in host
                .take_costs(0)
                .into_iter()
                .filter(|c| c.context == context)
            {
                let e = callbacks.entry(c.export.clone()).or_default();
                e.calls += 1;
                e.instructions += c.fuel;
                for (name, n) in c.host_calls {
                    *e.host_calls.entry(name).or_default() += n;
                }
            }
            return Ok(RequestCost {
                setup,
                size,
                body_bytes: body.len(),
                callbacks,
            });
        }
    }
    bail!("no measured request")
}

/// One chat request, answered by a canned completion; (its context id, forwarded upstream).
fn one_request(host: &mut Host, body: &[u8]) -> Result<(u32, bool)> {
    let chunks: Vec<&[u8]> = body.chunks(CHUNK).collect();
    let mut ex = host
        .worker(0)
        .request()
        .method("POST")
        .path("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench")
        // One tenant: the measured request's is known already, as in steady traffic (a
        // tenant's first request also claims its slot in shared data).
        .header("x-tenant-id", "team-1")
        .body_chunks(&chunks)
        .send();
    let context = ex.context_id();
    let routed = ex.upstream().is_some_and(|u| u.complete);
    if routed {
        ex.respond(
            200,
            &[("content-type", "application/json")],
            &[(0, CANNED.as_bytes())],
        )?;
    }
    ex.finish()?;
    Ok((context, routed))
}

fn push_snapshot(host: &mut Host) -> Result<()> {
    let snapshot = json!({"pools": {
        "small": [
            {"address": "10.1.0.1:8000", "waiting": 0, "running": 1, "kv_cache": 0.10},
            {"address": "10.1.0.2:8000", "waiting": 1, "running": 3, "kv_cache": 0.30},
            {"address": "10.1.0.3:8000", "waiting": 2, "running": 2, "kv_cache": 0.45}],
        "large": [
            {"address": "10.2.0.1:8000", "waiting": 0, "running": 1, "kv_cache": 0.10},
            {"address": "10.2.0.2:8000", "waiting": 1, "running": 3, "kv_cache": 0.30}]
    }});
    let ex = host
        .worker(0)
        .request()
        .method("POST")
        .path("/.well-known/llm-router/load")
        .header("authorization", &format!("Bearer {PUSH_TOKEN}"))
        .source_address("127.0.0.1:40000")
        .json(&snapshot)
        .send();
    let status = ex.local_reply().map(|l| l.status);
    ex.finish()?;
    if status != Some(204) {
        bail!("load snapshot push answered {status:?}, expected 204");
    }
    Ok(())
}

/// ~300 bytes, like a short answer of an OpenAI-compatible server.
const CANNED: &str = r#"{"id":"chatcmpl-bench-0001","object":"chat.completion","created":1735689600,"model":"llama-3.1-8b-instruct","choices":[{"index":0,"message":{"role":"assistant","content":"The ticket is about a failed payment; refund issued, no further action needed."},"finish_reason":"stop"}],"usage":{"prompt_tokens":262,"completion_tokens":18,"total_tokens":280}}"#;

/// The sentences of `bench/load/chat.lua`: the same prose as the load test.
const SENTENCES: [&str; 8] = [
    "Customer reports that the monthly invoice was charged twice on the same card.",
    "The first charge went through at the start of the billing cycle and the second one three days later.",
    "Support already confirmed with the payment provider that both transactions settled.",
    "The account is on the team plan with twelve seats, two of which were removed last week.",
    "Please check whether the seat change could have triggered a second, prorated invoice.",
    "If it did, explain the prorated amount in plain words and say whether a refund is due.",
    "The customer asked for a short answer they can forward to their finance department.",
    "Keep the tone polite, avoid internal jargon, and mention the ticket number at the end.",
];

/// Offset in `chat_body` of the system prompt's first byte.
const CHAT_HEAD_SYSTEM_AT: usize = 63;

/// A chat request body of about `size` bytes, shaped like the load test's (`chat.lua`).
pub fn chat_body(size: usize) -> Vec<u8> {
    let head = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a concise assistant for a billing support team."},{"role":"user","content":""#;
    let tail = r#""}],"max_tokens":256,"temperature":0.2,"stream":false}"#;
    let want = size.saturating_sub(head.len() + tail.len());
    let mut prompt = String::with_capacity(want + 128);
    let mut i = 0usize;
    while prompt.len() < want {
        if i > 0 {
            prompt.push(' ');
        }
        prompt.push_str(SENTENCES[i % SENTENCES.len()]);
        if i % 5 == 4 {
            prompt.push_str("\\n");
        }
        i += 1;
    }
    let mut body = Vec::with_capacity(size + 256);
    body.extend_from_slice(head.as_bytes());
    body.extend_from_slice(prompt.as_bytes());
    body.extend_from_slice(tail.as_bytes());
    body
}

/// `2KB`, `32KB`, `256KB`.
pub fn size_label(size: usize) -> String {
    format!("{}KB", size / 1024)
}

/// The report as a table: per request, per KiB, and per callback.
pub fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "wasm instructions (wasmtime fuel) and host calls per request; body in {} KiB callbacks",
        CHUNK / 1024
    );
    let _ = writeln!(
        out,
        "{:<8} {:>6} {:>12} {:>10} {:>10}",
        "setup", "body", "instr/req", "instr/B", "host calls"
    );
    for r in &report.requests {
        let _ = writeln!(
            out,
            "{:<8} {:>6} {:>12} {:>10.1} {:>10}",
            r.setup.name(),
            size_label(r.size),
            r.instructions(),
            r.instructions() as f64 / r.body_bytes.max(1) as f64,
            r.host_calls()
        );
    }
    for setup in Setup::ALL {
        if let Some(k) = report.per_kib(setup) {
            let _ = writeln!(
                out,
                "{:<8} slope 32KB->256KB: {:.0} instructions per KiB ({:.1} per byte)",
                setup.name(),
                k,
                k / 1024.0
            );
        }
    }
    for size in SIZES {
        if let Some(added) = report.affinity_added(size) {
            let _ = writeln!(
                out,
                "prefix affinity adds {:+.1}% to the shipped configuration at {}{}",
                added * 100.0,
                size_label(size),
                if size == AFFINITY_GOAL_SIZE {
                    format!(
                        " (issue 12's goal: <= {:.0}%: {})",
                        AFFINITY_GOAL * 100.0,
                        if added <= AFFINITY_GOAL {
                            "met"
                        } else {
                            "NOT met"
                        }
                    )
                } else {
                    String::new()
                }
            );
        }
    }
    let _ = writeln!(
        out,
        "\nper callback (calls, instructions, host calls by name):"
    );
    for r in &report.requests {
        let _ = writeln!(out, "  {} {}:", r.setup.name(), size_label(r.size));
        for (name, c) in &r.callbacks {
            let calls: Vec<String> = c
                .host_calls
                .iter()
                .map(|(n, k)| format!("{n} {k}"))
                .collect();
            let _ = writeln!(
                out,
                "    {:<32} x{:<2} {:>10}  {}",
                name,
                c.calls,
                c.instructions,
                calls.join(", ")
            );
        }
    }
    out
}
