//! The quota service's answers fuzzed on the real filter (`dist/llm_router.wasm`), seeded:
//! garbage bytes, truncated or hostile protobuf, every gRPC status, timeouts, huge and negative
//! grants, answers to calls whose client went away, ticks in between, on two worker VMs and
//! three `on_outage` actions. After every step: no VM trapped, no request left waiting once its
//! call is answered or timed out, every local reply one the filter makes for limits (429, 503),
//! and with nothing granted no request ever reached upstream. `LLM_ROUTER_FUZZ_ITERS` runs more
//! rounds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use anyhow::{bail, Result};
use common::*;
use host_sim::{grpc_code, Host};
use llm_router_extproc::quota::proto::{Grant, LevelsResponse, TakeResponse};
use prost::Message;
use serde_json::json;

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

fn iters(default: u64) -> u64 {
    std::env::var("LLM_ROUTER_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn host(on_outage: &str, seed: u64) -> Result<Host> {
    let path = wasm_path();
    if !path.exists() {
        bail!("{} does not exist; run `make build`", path.display());
    }
    let cfg = json!({
        "tiers": {"small": {"model": "s"}},
        "tenants": {
            "header": "x-tenant-id",
            "max_tracked_tenants": 8,
            "default": {"requests_per_minute": 30, "tokens_per_minute": 100000},
            "limits": {"acme": {"requests_per_minute": 60, "burst_requests": 20}},
            "global": {"cluster": "quota", "lease_requests": 3, "replicas": 2,
                       "on_outage": on_outage, "timeout_ms": 200,
                       "refill_interval_ms": 50, "idle_ms": 2000}
        }
    });
    let mut h = Host::builder()
        .wasm_file(&path)
        .workers(2)
        .plugin_config(cfg.to_string())
        .grpc_upstreams(&["quota"])
        .seed(seed)
        .build()?;
    h.start()?;
    Ok(h)
}

fn amount(rng: &mut Rng) -> i64 {
    match rng.below(6) {
        0 => 0,
        1 => rng.below(10) as i64,
        2 => -(rng.below(1000) as i64),
        3 => i64::MAX,
        4 => i64::MIN,
        _ => rng.below(1 << 20) as i64,
    }
}

/// An answer to a pending call: (Some(bytes) = success with that message | None = a status).
fn answer(rng: &mut Rng, method: &str, granting: bool) -> Result<Vec<u8>, u32> {
    let statuses = [
        grpc_code::CANCELLED,
        grpc_code::UNKNOWN,
        grpc_code::DEADLINE_EXCEEDED,
        grpc_code::RESOURCE_EXHAUSTED,
        grpc_code::UNIMPLEMENTED,
        grpc_code::INTERNAL,
        grpc_code::UNAVAILABLE,
        3,
        16,
        9999,
    ];
    match rng.below(6) {
        0 => Err(statuses[rng.below(statuses.len() as u64) as usize]),
        1 => {
            let n = rng.below(40) as usize;
            Ok((0..n).map(|_| rng.next() as u8).collect())
        }
        2 if method == "Take" => {
            let n = rng.below(4) as usize;
            let grants = (0..n)
                .map(|_| Grant {
                    granted: if granting { amount(rng) } else { 0 },
                    level: amount(rng),
                })
                .collect();
            let retry = if rng.below(2) == 0 { 0 } else { rng.next() };
            let mut b = TakeResponse {
                grants,
                retry_after_ms: retry,
            }
            .encode_to_vec();
            b.truncate(rng.below(b.len() as u64 + 1) as usize + b.len() / 2);
            Ok(b)
        }
        _ if method == "Take" => {
            let g = if granting { amount(rng) } else { 0 };
            let grants = vec![
                Grant {
                    granted: g,
                    level: 0
                };
                rng.below(3) as usize
            ];
            Ok(TakeResponse {
                grants,
                retry_after_ms: 0,
            }
            .encode_to_vec())
        }
        _ => {
            let levels = (0..rng.below(4)).map(|_| amount(rng)).collect();
            Ok(LevelsResponse { levels }.encode_to_vec())
        }
    }
}

fn round(on_outage: &str, seed: u64, granting: bool) -> Result<()> {
    let mut rng = Rng(seed);
    let mut h = host(on_outage, seed)?;
    let tenants = ["acme", "bob", "carol", "x".repeat(200).leak() as &str];
    let mut upstream = 0;
    let mut answered = 0;
    for step in 0..60 {
        let tenant = tenants[rng.below(tenants.len() as u64) as usize];
        let worker = rng.below(2) as usize;
        let body = chat_body("m", "hello", Some(rng.below(100)), rng.below(3) == 0);
        let mut ex = chat(&mut h, worker, Some(tenant), &body);
        // Answer (or not) every call in flight, in random order; some after the client left.
        let leave = rng.below(5) == 0;
        if leave && ex.stalled() {
            ex.reset()?;
        } else {
            for c in ex.host().pending_grpc_calls() {
                if rng.below(4) == 0 {
                    continue; // left to time out
                }
                let a = answer(&mut rng, &c.method, granting);
                let r = match a {
                    Ok(bytes) => ex.host().respond_grpc_call(c.worker, c.token, &bytes),
                    Err(code) => ex.host().fail_grpc_call(c.worker, c.token, code, "fuzz"),
                };
                // Refused only for calls already gone (timed out, cancelled).
                answered += u64::from(r.is_ok());
            }
            if ex.stalled() {
                ex.host().advance_ms(200)?; // the call times out
            }
            if let Some(t) = ex.trap() {
                bail!("seed {seed} step {step}: trap {t}");
            }
            if ex.stalled() {
                bail!("seed {seed} step {step}: the request still waits after its timeout");
            }
            match ex.local_reply() {
                Some(lr) => assert!(
                    [429, 503].contains(&lr.status),
                    "seed {seed} step {step}: {} {}",
                    lr.status,
                    lr.body_str()
                ),
                None => {
                    upstream += 1;
                    ex.response(200)
                        .json(&json!({"usage": {"prompt_tokens": rng.below(50),
                            "completion_tokens": rng.below(500), "total_tokens": 7}}))
                        .send()?;
                }
            }
            ex.finish()?;
        }
        // Ticks, and their calls answered the same way (or left to time out).
        h.advance_ms([0, 10, 50, 200, 3000][rng.below(5) as usize])?;
        for c in h.pending_grpc_calls() {
            if rng.below(3) == 0 {
                continue;
            }
            let r = match answer(&mut rng, &c.method, granting) {
                Ok(bytes) => h.respond_grpc_call(c.worker, c.token, &bytes),
                Err(code) => h.fail_grpc_call(c.worker, c.token, code, "fuzz"),
            };
            answered += u64::from(r.is_ok());
        }
        if !h.traps().is_empty() {
            bail!("seed {seed} step {step}: {:?}", h.traps());
        }
        for w in 0..2 {
            if let Some(f) = h.worker_failed(w) {
                bail!("seed {seed} step {step}: worker {w} failed: {f}");
            }
        }
    }
    // The rounds reach what they are about.
    assert!(answered > 10, "seed {seed}: {answered} answers");
    if granting {
        assert!(upstream > 0, "seed {seed}: nothing admitted");
    }
    if !granting && on_outage == "reject" {
        // Nothing was ever granted and an outage rejects: nothing may have gone upstream.
        assert_eq!(upstream, 0, "seed {seed}: admitted without a grant");
    }
    Ok(())
}

#[test]
fn quota_answers_of_any_shape_never_trap_hang_or_admit_ungranted() -> Result<()> {
    for i in 0..iters(6) {
        for (j, action) in ["reject", "static_share", "admit"].iter().enumerate() {
            let seed = 0x14_0000 + i * 16 + j as u64;
            round(action, seed, i % 2 == 0)?;
        }
    }
    Ok(())
}
