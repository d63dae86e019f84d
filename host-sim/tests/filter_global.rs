//! Global limits (`tenants.global`) on the real filter (`dist/llm_router.wasm`), the quota
//! service's calls answered by the test in simulated time (its messages read and written with
//! the quota service's own prost types): two worker VMs sharing one lease, the synchronous
//! take of an empty lease, no grant -> 429 with the service's retry-after, each `on_outage`
//! action after failed / timed-out / unreadable calls and the debt charged once the service
//! answers again, a client gone while its take was in flight, 1,000 tenant ids kept bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use anyhow::{anyhow, bail, Result};
use common::*;
use host_sim::{grpc_code, GrpcCallInfo, Host};
use llm_router_extproc::quota::proto::{
    AmountRequest, Grant, LevelsResponse, TakeRequest, TakeResponse,
};
use prost::Message;
use serde_json::{json, Value};

const ACME: &str = "llm_router/gl/l/t/acme";
const SERVICE: &str = "llm_router.quota.v1.Quota";

fn config(global: Value) -> Value {
    let limits = json!({"requests_per_minute": 60, "burst_requests": 100});
    json!({
        "tiers": {"small": {"model": "s"}},
        "tenants": {
            "header": "x-tenant-id",
            "max_tracked_tenants": 32,
            "default": limits,
            "limits": {"acme": limits},
            "global": global
        }
    })
}

fn global(on_outage: &str) -> Value {
    json!({"cluster": "quota", "lease_requests": 5, "replicas": 2, "on_outage": on_outage,
           "timeout_ms": 300, "refill_interval_ms": 100, "idle_ms": 5000})
}

fn host(cfg: &Value, workers: usize) -> Result<Host> {
    let path = wasm_path();
    if !path.exists() {
        bail!("{} does not exist; run `make build`", path.display());
    }
    let mut h = Host::builder()
        .wasm_file(&path)
        .workers(workers)
        .plugin_config(cfg.to_string())
        .grpc_upstreams(&["quota"])
        .seed(3)
        .build()?;
    h.start()?;
    Ok(h)
}

fn body() -> Value {
    chat_body("m", "hi", Some(5), false)
}

/// The only pending call, checked to be a quota call of `method`.
fn call(h: &Host, method: &str) -> Result<GrpcCallInfo> {
    match h.pending_grpc_calls().as_slice() {
        [one] if one.method == method => {
            assert_eq!(
                (one.upstream.as_str(), one.service.as_str()),
                ("quota", SERVICE)
            );
            assert_eq!(one.timeout_ms, 300);
            Ok(one.clone())
        }
        other => Err(anyhow!("expected one {method} call, got {other:?}")),
    }
}

fn grant(n: i64) -> Vec<u8> {
    TakeResponse {
        grants: vec![Grant {
            granted: n,
            level: 0,
        }],
        retry_after_ms: 0,
    }
    .encode_to_vec()
}

/// The lease's request level in shared data.
fn lease(h: &Host, key: &str) -> Option<(i64, i64)> {
    let (b, _) = h.shared_data_get(key)?;
    let f = |i: usize| i64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
    // requests, debt requests
    (b.len() >= 48).then(|| (f(0), f(3)))
}

fn calls(h: &Host, method: &str, result: &str) -> i64 {
    h.metric_sum(
        "llm_router_global_calls_total",
        &[("method", method), ("result", result)],
    )
}

#[test]
fn two_workers_share_one_lease_and_an_empty_lease_takes_synchronously() -> Result<()> {
    let mut h = host(&config(global("reject")), 2)?;
    let mut ex = chat(&mut h, 0, Some("acme"), &body());
    assert!(
        ex.stalled(),
        "an empty lease holds the request for its take"
    );
    let c = call(ex.host(), "Take")?;
    assert_eq!(
        c.context_id,
        ex.context_id(),
        "taken from the request's own context"
    );
    let req = TakeRequest::decode(c.message.as_slice())?;
    assert_eq!(req.items.len(), 1, "no token limit: one bucket");
    let item = &req.items[0];
    let b = item.bucket.as_ref().unwrap();
    assert_eq!(
        (
            b.tenant.as_str(),
            b.limit.as_str(),
            b.per_minute,
            b.capacity
        ),
        ("acme", "requests", 60, 100)
    );
    assert_eq!(
        (item.want, item.min),
        (6, 1),
        "a lease (5) + what it lacks (1)"
    );
    ex.host().respond_grpc_call(c.worker, c.token, &grant(6))?;
    let up = ex.upstream().ok_or_else(|| anyhow!("resumed upstream"))?;
    assert!(up.complete);
    ex.response(200).json(&json!({"choices": []})).send()?;
    ex.finish()?;
    assert_eq!(lease(&h, ACME), Some((5, 0)));
    // The other worker spends the same lease, without a call.
    for i in 0..5 {
        let mut ex = chat(&mut h, 1 - i % 2, Some("acme"), &body());
        assert!(ex.upstream().is_some(), "request {i} passes on the lease");
        assert!(ex.host().pending_grpc_calls().is_empty());
        ex.finish()?;
    }
    assert_eq!(lease(&h, ACME), Some((0, 0)));
    let mut ex = chat(&mut h, 1, Some("acme"), &body());
    assert!(ex.stalled());
    call(ex.host(), "Take")?;
    ex.reset()?;
    assert_eq!(calls(&h, "take", "ok"), 1);
    assert_eq!(
        h.metric_sum(
            "llm_router_global_lease_refills_total",
            &[("trigger", "request")]
        ),
        1
    );
    Ok(())
}

#[test]
fn no_grant_is_a_429_with_the_services_retry_after() -> Result<()> {
    let mut h = host(&config(global("reject")), 1)?;
    let mut ex = chat(&mut h, 0, Some("acme"), &body());
    let c = call(ex.host(), "Take")?;
    let none = TakeResponse {
        grants: Vec::new(),
        retry_after_ms: 2500,
    };
    ex.host()
        .respond_grpc_call(c.worker, c.token, &none.encode_to_vec())?;
    let lr = ex.local_reply().ok_or_else(|| anyhow!("a local reply"))?;
    assert_eq!(lr.status, 429);
    assert_eq!(reply_code(&ex).as_deref(), Some("rate_limit_exceeded"));
    assert_eq!(lr.headers.get("retry-after"), Some("3"));
    assert!(ex.upstream().is_none());
    ex.finish()?;
    assert_eq!(
        h.metric_sum("llm_router_rate_limited_total", &[("tenant", "acme")]),
        1
    );
    Ok(())
}

/// Fails the first take of `acme` in one of three ways; returns the host (in an outage).
fn outage(on_outage: &str, how: usize) -> Result<(Host, Vec<Option<u32>>)> {
    let mut h = host(&config(global(on_outage)), 2)?;
    let mut ex = chat(&mut h, 0, Some("acme"), &body());
    let c = call(ex.host(), "Take")?;
    match how {
        0 => ex
            .host()
            .fail_grpc_call(c.worker, c.token, grpc_code::UNAVAILABLE, "down")?,
        1 => ex.host().advance_ms(300)?, // timeout: DEADLINE_EXCEEDED
        _ => ex
            .host()
            .respond_grpc_call(c.worker, c.token, &[0xff, 0xff, 0xff])?, // unreadable
    }
    assert!(ex.trap().is_none());
    let mut out = vec![ex.local_reply().map(|l| l.status)];
    ex.finish()?;
    // While the service is out, the lease is empty: no more calls, on_outage decides.
    for i in 0..59 {
        let ex = chat(&mut h, i % 2, Some("acme"), &body());
        assert!(!ex.stalled(), "no request waits in an outage");
        out.push(ex.local_reply().map(|l| l.status));
        ex.finish()?;
    }
    // Only the root context's refill probe may be in flight (the timeout case moved the clock
    // over a tick).
    assert!(h.pending_grpc_calls().iter().all(|c| c.context_id == 1));
    Ok((h, out))
}

#[test]
fn outage_reject_answers_503_rate_limiter_unavailable() -> Result<()> {
    for how in 0..3 {
        let (h, out) = outage("reject", how)?;
        assert!(out.iter().all(|s| *s == Some(503)), "{how}: {out:?}");
        assert_eq!(
            h.metric_sum("llm_router_global_fallback_total", &[("action", "reject")]),
            60
        );
        assert_eq!(
            h.metric_sum("llm_router_global_outage", &[("action", "reject")]),
            1
        );
        assert_eq!(
            h.logs_containing("unreachable: leases are spent").len(),
            1,
            "logged once per change"
        );
    }
    Ok(())
}

#[test]
fn outage_static_share_then_the_debt_is_charged_when_the_service_is_back() -> Result<()> {
    let (mut h, out) = outage("static_share", 0)?;
    // burst 100 over 2 replicas: 50 pass on the static share, then 429.
    let passed = out.iter().filter(|s| s.is_none()).count();
    assert_eq!(passed, 50, "{out:?}");
    assert!(out.iter().skip(50).all(|s| *s == Some(429)));
    assert_eq!(lease(&h, ACME), Some((0, 50)), "booked as debt");
    // The tick probes with a refill; the service answers: the outage is over.
    h.advance_ms(100)?;
    let probe = call(&h, "Take")?;
    assert_eq!(probe.context_id, 1, "from the root context");
    let want = TakeRequest::decode(probe.message.as_slice())?.items[0].want;
    h.respond_grpc_call(probe.worker, probe.token, &grant(want))?;
    assert_eq!(
        h.metric_sum("llm_router_global_outage", &[("action", "static_share")]),
        0
    );
    // The next tick charges the debt, once.
    h.advance_ms(100)?;
    let charge = call(&h, "Charge")?;
    let amount = AmountRequest::decode(charge.message.as_slice())?;
    assert_eq!(amount.items[0].amount, 50);
    assert_eq!(amount.items[0].bucket.as_ref().unwrap().tenant, "acme");
    let levels = LevelsResponse { levels: vec![-5] };
    h.respond_grpc_call(charge.worker, charge.token, &levels.encode_to_vec())?;
    assert_eq!(lease(&h, ACME).map(|l| l.1), Some(0));
    h.advance_ms(100)?;
    assert!(h.pending_grpc_calls().iter().all(|c| c.method != "Charge"));
    assert_eq!(h.logs_containing("reachable again").len(), 1);
    Ok(())
}

#[test]
fn outage_admit_lets_everything_through_as_debt() -> Result<()> {
    let (h, out) = outage("admit", 1)?;
    assert!(out.iter().all(Option::is_none), "{out:?}");
    assert_eq!(lease(&h, ACME), Some((0, 60)));
    assert_eq!(calls(&h, "take", "error"), 1);
    Ok(())
}

#[test]
fn a_client_gone_while_its_take_is_in_flight_leaks_no_charge_and_no_pause() -> Result<()> {
    let mut h = host(&config(global("reject")), 1)?;
    let mut ex = chat(&mut h, 0, Some("acme"), &body());
    let c = call(ex.host(), "Take")?;
    ex.reset()?;
    assert!(
        h.pending_grpc_calls().is_empty(),
        "the call ends with the stream"
    );
    assert!(h.respond_grpc_call(c.worker, c.token, &grant(6)).is_err());
    assert!(h.open_streams(0).is_empty());
    assert_eq!(lease(&h, ACME), None, "nothing charged, no lease");
    // The next request takes again and passes.
    let mut ex = chat(&mut h, 0, Some("acme"), &body());
    let c = call(ex.host(), "Take")?;
    ex.host().respond_grpc_call(c.worker, c.token, &grant(6))?;
    assert!(ex.upstream().is_some());
    ex.finish()?;
    assert_eq!(lease(&h, ACME), Some((5, 0)));
    Ok(())
}

#[test]
fn a_thousand_tenant_ids_keep_the_index_and_shared_data_bounded() -> Result<()> {
    let mut h = host(&config(global("reject")), 2)?;
    for i in 0..1000 {
        let id = format!("user-{i}");
        let mut ex = chat(&mut h, i % 2, Some(&id), &body());
        if ex.stalled() {
            let c = call(ex.host(), "Take")?;
            ex.host().respond_grpc_call(c.worker, c.token, &grant(6))?;
        }
        assert!(ex.trap().is_none());
        ex.finish()?;
        if i % 50 == 0 {
            // Ticks: refills and returns, answered at once.
            h.advance_ms(100)?;
            for c in h.pending_grpc_calls() {
                let answer = if c.method == "Take" {
                    grant(0)
                } else {
                    LevelsResponse { levels: vec![0] }.encode_to_vec()
                };
                h.respond_grpc_call(c.worker, c.token, &answer)?;
            }
        }
    }
    let index = h.shared_data_str("llm_router/gl/index").unwrap_or_default();
    let entries = index.split('\n').filter(|k| !k.is_empty()).count();
    // configured (1) + anonymous + overflow + 32 slots.
    assert!(entries <= 35, "{entries} index entries");
    for i in 32..2000 {
        assert!(h
            .shared_data_get(&format!("llm_router/gl/l/u/{i}"))
            .is_none());
    }
    assert!(h.traps().is_empty());
    Ok(())
}

#[test]
fn a_body_still_arriving_while_its_take_is_in_flight_is_held() -> Result<()> {
    // max_body_bytes 64: the first chunk already decides (too large); the rest must wait.
    let mut cfg = config(global("reject"));
    cfg["max_body_bytes"] = json!(64);
    let mut h = host(&cfg, 1)?;
    let first = vec![b'a'; 100];
    let mut ex = h
        .worker(0)
        .request()
        .method("POST")
        .path("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("x-tenant-id", "acme")
        .body_chunks(&[first.as_slice(), b"more", b"end"])
        .stop_after_chunks(1)
        .send();
    let c = call(ex.host(), "Take")?;
    ex.send_request_chunk(b"more", false)?;
    assert!(
        ex.upstream().is_none(),
        "nothing goes upstream while the take is in flight"
    );
    ex.host().respond_grpc_call(c.worker, c.token, &grant(6))?;
    ex.send_request_chunk(b"end", true)?;
    let up = ex
        .upstream()
        .ok_or_else(|| anyhow!("forwarded after the grant"))?;
    assert!(up.complete);
    assert_eq!(up.body.len(), 107, "the whole body, once");
    ex.response(500).send()?;
    ex.finish()?;
    Ok(())
}
