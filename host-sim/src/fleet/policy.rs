//! Routing policies: sim-side baselines, and the real filter in host-sim (its endpoint header
//! names the server).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};

use super::server::{Load, Server};
use super::workload::Request;
use crate::{Host, StreamKey};

pub const PUSH_PATH: &str = "/.well-known/llm-router/load";
const PUSH_TOKEN: &str = "fleet-sim-token";
const ENDPOINT_HEADER: &str = "x-gateway-destination-endpoint";
/// The pool (and tier) the simulated servers form.
const POOL: &str = "fleet";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyKind {
    RoundRobin,
    LeastQueue,
    /// Sim-side: a conversation or document always goes to the same server (hash of its key).
    Sticky,
    /// The filter's load scoring (`endpoints`, no prefix).
    Router,
    /// The filter with `endpoints.prefix`.
    Affinity,
}

impl PolicyKind {
    pub const DEFAULT: [PolicyKind; 4] = [
        PolicyKind::RoundRobin,
        PolicyKind::LeastQueue,
        PolicyKind::Router,
        PolicyKind::Affinity,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "round-robin",
            PolicyKind::LeastQueue => "least-queue",
            PolicyKind::Sticky => "sticky",
            PolicyKind::Router => "llm-router",
            PolicyKind::Affinity => "llm-router+affinity",
        }
    }

    pub fn parse(s: &str) -> Result<PolicyKind> {
        Ok(match s {
            "round-robin" | "rr" => PolicyKind::RoundRobin,
            "least-queue" | "lq" => PolicyKind::LeastQueue,
            "sticky" => PolicyKind::Sticky,
            "llm-router" | "router" => PolicyKind::Router,
            "llm-router+affinity" | "affinity" => PolicyKind::Affinity,
            _ => bail!(
                "unknown policy {s:?} (round-robin, least-queue, sticky, llm-router, affinity)"
            ),
        })
    }

    pub fn uses_wasm(self) -> bool {
        matches!(self, PolicyKind::Router | PolicyKind::Affinity)
    }
}

/// Decides where each request goes.
pub trait Policy {
    /// The server index for `req`, arriving at `now_us`.
    fn pick(&mut self, now_us: u64, req: &Request, fleet: &[Server]) -> Result<usize>;
    /// `req` finished at `now_us` (its last token is out).
    fn done(&mut self, _now_us: u64, _req: &Request) -> Result<()> {
        Ok(())
    }
    /// A sidecar scrape of every server's load at `now_us`.
    fn push(&mut self, _now_us: u64, _loads: &[Load]) -> Result<()> {
        Ok(())
    }
    /// Requests the policy could not place itself (the gateway's balancing took them).
    fn fallbacks(&self) -> u64 {
        0
    }
    /// Streams still open in the filter (0 once every request ended).
    fn open_streams(&self) -> usize {
        0
    }
}

pub struct RoundRobin(usize);

impl Policy for RoundRobin {
    fn pick(&mut self, _: u64, _: &Request, fleet: &[Server]) -> Result<usize> {
        let i = self.0 % fleet.len().max(1);
        self.0 = self.0.wrapping_add(1);
        Ok(i)
    }
}

/// Fewest waiting + running right now (the proxy's own outstanding requests, as Kubernetes'
/// or Envoy's least-request sees them); ties rotate.
pub struct LeastQueue(usize);

impl Policy for LeastQueue {
    fn pick(&mut self, _: u64, _: &Request, fleet: &[Server]) -> Result<usize> {
        let n = fleet.len().max(1);
        self.0 = self.0.wrapping_add(1);
        let best = (0..n).map(|k| (self.0 + k) % n).min_by_key(|&i| {
            fleet
                .get(i)
                .map_or(usize::MAX, |s| s.load().waiting + s.load().running)
        });
        best.ok_or_else(|| anyhow!("no server"))
    }
}

pub struct Sticky;

impl Policy for Sticky {
    fn pick(&mut self, _: u64, req: &Request, fleet: &[Server]) -> Result<usize> {
        let h = req.group.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
        Ok((h % fleet.len().max(1) as u64) as usize)
    }
}

/// The server address the filter sees for index `i`.
pub fn address(i: usize) -> String {
    format!("10.{}.{}.{}:8000", 64 + i / 65536, (i / 256) % 256, i % 256)
}

/// The plugin configuration of a filter policy: one tier and pool, `endpoints` with the
/// fleet's push path, `extra` fields merged over the defaults, and `prefix` when given.
pub fn plugin_config(stale_after_ms: u64, extra: &Value, prefix: Option<&Value>) -> Result<Value> {
    let mut endpoints = json!({
        "push_path": PUSH_PATH,
        "push_token_env": "LLM_ROUTER_PUSH_TOKEN",
        "stale_after_ms": stale_after_ms,
        "max_queue": 5,
        "max_kv_cache": 0.8
    });
    let obj = endpoints
        .as_object_mut()
        .ok_or_else(|| anyhow!("endpoints"))?;
    if let Some(e) = extra.as_object() {
        for (k, v) in e {
            obj.insert(k.clone(), v.clone());
        }
    } else if !extra.is_null() {
        bail!("--endpoints must be a JSON object");
    }
    if let Some(p) = prefix {
        obj.insert("prefix".into(), p.clone());
    }
    Ok(json!({
        "tiers": {POOL: {}},
        "default_tier": POOL,
        "endpoints": endpoints
    }))
}

/// The real `llm_router.wasm` in host-sim, on simulated time.
pub struct Filter {
    host: Host,
    workers: usize,
    next_worker: usize,
    open: HashMap<usize, StreamKey>,
    index: HashMap<String, usize>,
    fallback_rr: usize,
    fallbacks: u64,
}

impl Filter {
    pub fn new(
        wasm: &Path,
        config: &Value,
        workers: usize,
        seed: u64,
        servers: usize,
    ) -> Result<Filter> {
        if !wasm.exists() {
            bail!("{} does not exist; run `make build`", wasm.display());
        }
        let mut host = Host::builder()
            .wasm_file(wasm)
            .workers(workers.max(1))
            .plugin_config(config.to_string())
            .env("LLM_ROUTER_PUSH_TOKEN", PUSH_TOKEN)
            .seed(seed)
            .build()
            .with_context(|| format!("loading {}", wasm.display()))?;
        host.start()
            .context("the filter refused the configuration")?;
        Ok(Filter {
            host,
            workers: workers.max(1),
            next_worker: 0,
            open: HashMap::new(),
            index: (0..servers).map(|i| (address(i), i)).collect(),
            fallback_rr: 0,
            fallbacks: 0,
        })
    }

    fn advance(&mut self, now_us: u64) -> Result<()> {
        self.host.advance_to(now_us / 1000)
    }
}

impl Policy for Filter {
    fn pick(&mut self, now_us: u64, req: &Request, fleet: &[Server]) -> Result<usize> {
        self.advance(now_us)?;
        let w = self.next_worker % self.workers;
        self.next_worker = self.next_worker.wrapping_add(1);
        let ex = self
            .host
            .worker(w)
            .request()
            .method("POST")
            .path("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(req.body())
            .send();
        if let Some(t) = ex.trap() {
            bail!("request {}: the filter trapped: {t}", req.id);
        }
        if let Some(lr) = ex.local_reply() {
            bail!(
                "request {}: the filter answered {} itself: {}",
                req.id,
                lr.status,
                lr.body_str()
            );
        }
        let picked = ex
            .upstream()
            .and_then(|u| u.header(ENDPOINT_HEADER).map(str::to_string));
        let key = ex.detach();
        self.open.insert(req.id, key);
        match picked {
            Some(a) => self.index.get(&a).copied().ok_or_else(|| {
                anyhow!("request {}: the filter picked unknown endpoint {a}", req.id)
            }),
            None => {
                // No fresh snapshot or no endpoint: the gateway's own balancing (round robin).
                self.fallbacks += 1;
                self.fallback_rr = self.fallback_rr.wrapping_add(1);
                Ok(self.fallback_rr % fleet.len().max(1))
            }
        }
    }

    fn done(&mut self, now_us: u64, req: &Request) -> Result<()> {
        self.advance(now_us)?;
        let key = self
            .open
            .remove(&req.id)
            .ok_or_else(|| anyhow!("request {} ended twice or was never sent", req.id))?;
        let usage = json!({
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": req.prompt_tokens,
                "completion_tokens": req.output_tokens,
                "total_tokens": req.prompt_tokens + req.output_tokens
            }
        });
        let mut ex = self.host.exchange(key);
        ex.response(200).json(&usage).send()?;
        if let Some(t) = ex.trap() {
            bail!(
                "request {}: the filter trapped on the response: {t}",
                req.id
            );
        }
        ex.finish()
    }

    fn push(&mut self, now_us: u64, loads: &[Load]) -> Result<()> {
        self.advance(now_us)?;
        let eps: Vec<Value> = loads
            .iter()
            .enumerate()
            .map(|(i, l)| {
                json!({"address": address(i), "waiting": l.waiting, "running": l.running,
                       "kv_cache": (l.kv_cache * 1e4).round() / 1e4})
            })
            .collect();
        let snapshot = json!({ "pools": { POOL: eps } });
        let w = self.next_worker % self.workers;
        let ex = self
            .host
            .worker(w)
            .request()
            .method("POST")
            .path(PUSH_PATH)
            .header("authorization", &format!("Bearer {PUSH_TOKEN}"))
            .header("content-type", "application/json")
            .source_address("127.0.0.1:40000")
            .json(&snapshot)
            .send();
        let status = ex.local_reply().map(|l| l.status);
        drop(ex);
        if status != Some(204) {
            bail!("the load push was answered {status:?} (expected 204)");
        }
        Ok(())
    }

    fn fallbacks(&self) -> u64 {
        self.fallbacks
    }

    fn open_streams(&self) -> usize {
        (0..self.workers)
            .map(|w| self.host.open_streams(w).len())
            .sum()
    }
}

/// Builds a policy. `config` is the filter's plugin configuration for the filter policies.
pub fn build(
    kind: PolicyKind,
    wasm: &Path,
    config: Option<&Value>,
    workers: usize,
    seed: u64,
    servers: usize,
) -> Result<Box<dyn Policy>> {
    Ok(match kind {
        PolicyKind::RoundRobin => Box::new(RoundRobin(0)),
        PolicyKind::LeastQueue => Box::new(LeastQueue(0)),
        PolicyKind::Sticky => Box::new(Sticky),
        PolicyKind::Router | PolicyKind::Affinity => {
            let c = config.ok_or_else(|| anyhow!("{}: no plugin configuration", kind.name()))?;
            Box::new(Filter::new(wasm, c, workers, seed, servers)?)
        }
    })
}
