//! `host-sim fleet`: a simulated GPU fleet routed by the real `llm_router.wasm`, in simulated
//! time (discrete events, never the wall clock). Modules: `server` (the vLLM-like server
//! model), `workload` (seeded arrival sequences with real text), `policy` (baselines and the
//! filter), `driver` (the event loop), `report` (figures, table, goals), `plot` (the PNG).
//! docs/fleet-sim.md describes the model and how to read the output.

pub mod cli;
pub mod driver;
mod font;
pub mod plot;
pub mod policy;
pub mod report;
pub mod server;
pub mod workload;

use std::path::PathBuf;

use anyhow::Result;
use serde_json::{json, Value};

use driver::{simulate, Fleet, Run};
use policy::PolicyKind;
use report::{Acc, Summary};
use server::Speed;
use workload::{generate, Spec, Workload};

/// Everything a sweep needs.
#[derive(Debug, Clone)]
pub struct Options {
    pub wasm: PathBuf,
    pub servers: usize,
    pub speed: Speed,
    pub qps: Vec<f64>,
    pub duration_s: f64,
    /// Requests arriving before this are not measured (caches warm up).
    pub warmup_s: f64,
    pub seeds: Vec<u64>,
    pub workloads: Vec<Workload>,
    pub policies: Vec<PolicyKind>,
    pub push_interval_ms: u64,
    pub stale_after_ms: u64,
    /// Worker VMs of the filter (requests alternate between them).
    pub workers: usize,
    /// Merged over the filter's `endpoints` defaults (both filter policies).
    pub endpoints: Value,
    /// `endpoints.prefix` of the affinity policy.
    pub prefix: Value,
    pub check: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            wasm: PathBuf::from("dist/llm_router.wasm"),
            servers: 8,
            speed: Speed::default(),
            qps: vec![16.0, 20.0, 24.0, 28.0, 32.0],
            duration_s: 150.0,
            warmup_s: 30.0,
            seeds: vec![1, 2],
            workloads: vec![Workload::Chat, Workload::Rag, Workload::NoReuse],
            policies: PolicyKind::DEFAULT.to_vec(),
            // The sidecar's default scrape-and-push interval (sidecar `interval_ms`).
            push_interval_ms: 500,
            stale_after_ms: 2000,
            workers: 2,
            endpoints: json!({}),
            prefix: json!({}),
            check: false,
        }
    }
}

impl Options {
    /// The filter's plugin configuration for a filter policy (None for the others).
    pub fn plugin_config(&self, kind: PolicyKind) -> Result<Option<Value>> {
        Ok(match kind {
            PolicyKind::Router => Some(policy::plugin_config(
                self.stale_after_ms,
                &self.endpoints,
                None,
            )?),
            PolicyKind::Affinity => Some(policy::plugin_config(
                self.stale_after_ms,
                &self.endpoints,
                Some(&self.prefix),
            )?),
            _ => None,
        })
    }

    pub fn fleet(&self) -> Fleet {
        Fleet {
            servers: self.servers,
            speed: self.speed.clone(),
            push_interval_ms: self.push_interval_ms,
            check: self.check,
        }
    }

    pub fn spec(&self, workload: Workload, qps: f64, seed: u64) -> Spec {
        Spec {
            workload,
            qps,
            duration_s: self.duration_s,
            seed,
            block_tokens: self.speed.block_tokens,
        }
    }

    pub fn params(&self) -> Value {
        json!({
            "servers": self.servers,
            "speed": {
                "prefill_tokens_per_s": self.speed.prefill_tps,
                "step_base_ms": self.speed.step_base_ms,
                "step_per_seq_ms": self.speed.step_per_seq_ms,
                "max_running": self.speed.max_running,
                "max_step_tokens": self.speed.max_step_tokens,
                "kv_blocks": self.speed.kv_blocks,
                "block_tokens": self.speed.block_tokens,
            },
            "qps": self.qps, "duration_s": self.duration_s, "warmup_s": self.warmup_s,
            "seeds": self.seeds,
            "workloads": self.workloads.iter().map(|w| w.name()).collect::<Vec<_>>(),
            "policies": self.policies.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "push_interval_ms": self.push_interval_ms, "stale_after_ms": self.stale_after_ms,
            "workers": self.workers, "endpoints": self.endpoints, "prefix": self.prefix,
        })
    }
}

/// One policy over one arrival sequence.
pub fn run_one(
    opts: &Options,
    kind: PolicyKind,
    reqs: &[workload::Request],
    seed: u64,
) -> Result<Run> {
    let config = opts.plugin_config(kind)?;
    let mut p = policy::build(
        kind,
        &opts.wasm,
        config.as_ref(),
        opts.workers,
        seed,
        opts.servers,
    )?;
    simulate(reqs, &opts.fleet(), p.as_mut())
}

/// The whole sweep: every workload x QPS x policy, seeds pooled. `progress` gets a line per
/// finished point.
pub fn sweep(opts: &Options, progress: &mut dyn FnMut(&str)) -> Result<Vec<Summary>> {
    let mut rows = Vec::new();
    for &w in &opts.workloads {
        for &q in &opts.qps {
            let mut accs: Vec<(PolicyKind, Acc, Option<String>)> = opts
                .policies
                .iter()
                .map(|p| (*p, Acc::default(), None))
                .collect();
            for &seed in &opts.seeds {
                let spec = opts.spec(w, q, seed);
                let warmup_us = ((opts.warmup_s + spec.preroll_s()) * 1e6) as u64;
                let reqs = generate(&spec)?;
                for (kind, acc, missing) in &mut accs {
                    if missing.is_some() {
                        continue;
                    }
                    match run_one(opts, *kind, &reqs, seed) {
                        Ok(run) => acc.add(&reqs, &run.outcomes, warmup_us, run.fallbacks),
                        // Without a filter that knows `endpoints.prefix` (before prefix
                        // affinity lands) the affinity policy is reported unavailable.
                        Err(e) if *kind == PolicyKind::Affinity && is_config_refusal(&e) => {
                            *missing = Some(refusal(&e));
                        }
                        Err(e) => {
                            return Err(e.context(format!(
                                "{} {} QPS {}",
                                w.name(),
                                q,
                                kind.name()
                            )))
                        }
                    }
                }
            }
            for (kind, acc, missing) in accs {
                let row = match missing {
                    Some(why) => report::unavailable(w.name(), q, kind.name(), why),
                    None => acc.summary(w.name(), q, kind.name()),
                };
                progress(&format!(
                    "  {} {} QPS {}: p99 TTFT {:.3} s, hit {:.1}%",
                    w.name(),
                    q,
                    kind.name(),
                    row.ttft_p99_s,
                    row.hit_rate * 100.0
                ));
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

/// The guest's own words of a configuration refusal, short.
fn refusal(e: &anyhow::Error) -> String {
    let all = format!("{e:#}").replace('\n', " ");
    let why = all.split("invalid configuration: ").nth(1).unwrap_or(&all);
    let short: String = why.chars().take(100).collect();
    format!("the filter refused the configuration: {short}")
}

fn is_config_refusal(e: &anyhow::Error) -> bool {
    format!("{e:#}").contains("refused the configuration")
}
