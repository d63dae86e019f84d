//! Load-aware endpoint picking on the real filter: the sidecar's push (answered locally, never
//! forwarded), picks that follow load, in-flight counts shared by worker VMs and released when
//! requests end (also on client resets), stale / missing snapshots, unhealthy endpoints,
//! shedding of `sheddable` requests, and in-flight counts restarting with each snapshot version.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use anyhow::Result;
use common::*;
use host_sim::{Host, StreamKey};
use serde_json::{json, Value};

const A: &str = "10.1.0.1:8000";
const B: &str = "10.1.0.2:8000";
const C: &str = "10.1.0.3:8000";
const EP: &str = "x-gateway-destination-endpoint";

fn config() -> Value {
    json!({
        "tiers": {"small": {"model": "s"}, "large": {"model": "l"}},
        "default_tier": "small",
        "rules": [{"tier": "large", "models": ["big"]}],
        "models": {"cheap": {"targets": [{"model": "s", "weight": 1}], "criticality": "sheddable"}},
        "endpoints": {
            "push_path": PUSH_PATH,
            "push_token_env": "LLM_ROUTER_PUSH_TOKEN",
            "stale_after_ms": 2000,
            "max_queue": 5,
            "max_kv_cache": 0.8
        }
    })
}

fn ep(addr: &str, waiting: u64, running: u64, kv: f64) -> Value {
    json!({"address": addr, "waiting": waiting, "running": running, "kv_cache": kv})
}

fn snapshot(small: &[Value]) -> Value {
    json!({"pools": {"small": small, "large": [ep("10.2.0.1:8000", 0, 0, 0.0)]}})
}

fn body(model: &str) -> Value {
    chat_body(model, "hi", Some(5), false)
}

/// One request answered at once; the endpoint it was sent to.
fn pick(host: &mut Host, worker: usize, model: &str) -> Option<String> {
    let mut ex = chat(host, worker, None, &body(model));
    assert!(ex.local_reply().is_none(), "{:?}", ex.local_reply());
    let e = ex.upstream().and_then(|u| u.header(EP).map(str::to_string));
    ex.response(200).json(&json!({})).send().unwrap();
    ex.finish().unwrap();
    e
}

/// A request picked and left open (no response yet).
fn open(host: &mut Host, worker: usize) -> (StreamKey, String) {
    let ex = chat(host, worker, None, &body("m"));
    let e = ex
        .upstream()
        .and_then(|u| u.header(EP).map(str::to_string))
        .expect("picked");
    (ex.detach(), e)
}

/// (version, count) of an endpoint in the pool's in-flight record in shared data (one record
/// per pool: version, then address length, address, count per endpoint with requests).
fn inflight(host: &Host, addr: &str) -> Option<(u64, u32)> {
    let (b, _) = host.shared_data_get("llm_router/ep/pool-inflight/small")?;
    let version = u64::from_le_bytes(b[..8].try_into().unwrap());
    let mut rest = &b[8..];
    let mut count = 0;
    while let Some((&len, tail)) = rest.split_first() {
        let (a, tail) = tail.split_at(usize::from(len));
        let (c, tail) = tail.split_at(4);
        if a == addr.as_bytes() {
            count = u32::from_le_bytes(c.try_into().unwrap());
        }
        rest = tail;
    }
    Some((version, count))
}

fn snapshot_version(host: &Host) -> Option<u64> {
    let (b, _) = host.shared_data_get("llm_router/ep/meta")?;
    Some(u64::from_le_bytes(b[..8].try_into().unwrap()))
}

/// method, authorization, source address, body, expected status, expected error code.
type PushCase<'a> = (&'a str, Option<&'a str>, &'a str, Vec<u8>, u32, &'a str);

#[test]
fn push_is_answered_by_the_filter_and_checked() -> Result<()> {
    let mut host = started(&config(), 2)?;
    let snap = snapshot(&[ep(A, 0, 0, 0.1)]);
    let good = serde_json::to_vec(&snap)?;
    let bearer = format!("Bearer {PUSH_TOKEN}");
    let cases: Vec<PushCase<'_>> = vec![
        (
            "POST",
            Some("Bearer wrong"),
            "127.0.0.1:5000",
            good.clone(),
            403,
            "forbidden",
        ),
        (
            "POST",
            None,
            "127.0.0.1:5000",
            good.clone(),
            403,
            "forbidden",
        ),
        (
            "POST",
            Some("Basic dGVzdC10b2tlbg=="),
            "127.0.0.1:5000",
            good.clone(),
            403,
            "forbidden",
        ),
        (
            "POST",
            Some(bearer.as_str()),
            "10.0.0.5:1234",
            good.clone(),
            403,
            "forbidden",
        ),
        (
            "POST",
            Some(bearer.as_str()),
            "127.0.0.1:5000",
            b"{not json".to_vec(),
            400,
            "invalid_snapshot",
        ),
        (
            "POST",
            Some(bearer.as_str()),
            "127.0.0.1:5000",
            br#"{"pools":{"small":[{"address":"nope"}]}}"#.to_vec(),
            400,
            "invalid_snapshot",
        ),
        (
            "GET",
            Some(bearer.as_str()),
            "127.0.0.1:5000",
            Vec::new(),
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            Some(bearer.as_str()),
            "[::1]:5000",
            good.clone(),
            204,
            "",
        ),
        (
            "POST",
            Some(bearer.as_str()),
            "127.0.0.1:5000",
            good.clone(),
            204,
            "",
        ),
    ];
    for (i, (method, auth, source, payload, status, code)) in cases.into_iter().enumerate() {
        let mut rb = host
            .worker(i % 2)
            .request()
            .method(method)
            .path(PUSH_PATH)
            .source_address(source);
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        if !payload.is_empty() {
            rb = rb.header("content-type", "application/json").body(payload);
        }
        let ex = rb.send();
        assert!(ex.trap().is_none(), "{:?}", ex.trap());
        assert!(
            ex.upstream().is_none(),
            "case {i}: a push never reaches upstream"
        );
        let lr = ex
            .local_reply()
            .unwrap_or_else(|| panic!("case {i}: no local reply"));
        assert_eq!(lr.status, status, "case {i}: {}", lr.body_str());
        if status == 204 {
            assert!(lr.body.is_empty());
        } else {
            assert_eq!(lr.body_json().unwrap()["error"]["code"], code, "case {i}");
        }
        if status == 405 {
            assert_eq!(lr.headers.get("allow"), Some("POST"));
        }
        ex.finish()?;
    }
    // Only the two accepted pushes stored a snapshot.
    assert_eq!(snapshot_version(&host), Some(2));
    // A push-path query string is still the push path; other paths are ordinary traffic.
    let ex = host
        .worker(0)
        .request()
        .method("GET")
        .path(&format!("{PUSH_PATH}?x=1"))
        .send();
    assert_eq!(ex.local_reply().map(|l| l.status), Some(405));
    drop(ex);
    assert!(host
        .metrics()
        .iter()
        .all(|m| m.base_name() != "llm_router_requests_total"));
    Ok(())
}

#[test]
fn picks_follow_load_and_ties_spread_at_random() -> Result<()> {
    let mut host = started(&config(), 2)?;
    assert_eq!(
        push(
            &mut host,
            0,
            &snapshot(&[ep(A, 3, 2, 0.3), ep(B, 0, 0, 0.1), ep(C, 1, 0, 0.2)])
        ),
        (false, Some(204))
    );
    for i in 0..20 {
        assert_eq!(
            pick(&mut host, i % 2, "m").as_deref(),
            Some(B),
            "request {i}"
        );
    }
    assert_eq!(
        host.metric_sum(
            "llm_router_endpoint_picked_total",
            &[("pool", "small"), ("endpoint", B)]
        ),
        20
    );
    assert_eq!(host.metric_sum("llm_router_endpoint_picked_total", &[]), 20);
    // The large tier has its own pool.
    assert_eq!(pick(&mut host, 1, "big").as_deref(), Some("10.2.0.1:8000"));

    // Equal loads: the seeded random tie-break spreads 300 requests about evenly, and the same
    // seed gives the same sequence.
    let even = snapshot(&[ep(A, 1, 1, 0.2), ep(B, 1, 1, 0.2), ep(C, 1, 1, 0.2)]);
    let run = |seed: u64| -> Result<Vec<String>> {
        let mut h = started_seeded(&config(), 2, seed)?;
        push(&mut h, 1, &even);
        Ok((0..300)
            .map(|i| pick(&mut h, i % 2, "m").unwrap())
            .collect())
    };
    let seq = run(7)?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &seq {
        *counts.entry(e.as_str()).or_default() += 1;
    }
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), vec![A, B, C]);
    assert!(
        counts.values().all(|&n| (70..=130).contains(&n)),
        "{counts:?}"
    );
    assert_eq!(run(7)?, seq, "same seed, same picks");
    assert_ne!(run(8)?, seq, "another seed, other picks");
    Ok(())
}

#[test]
fn in_flight_requests_on_one_worker_steer_the_others_and_are_released() -> Result<()> {
    let mut host = started(&config(), 2)?;
    push(
        &mut host,
        0,
        &snapshot(&[ep(A, 0, 0, 0.0), ep(B, 0, 0, 0.0)]),
    );
    // Six concurrent requests alternating workers: each sees the others' in-flight counts.
    let mut opened = Vec::new();
    for i in 0..6 {
        opened.push(open(&mut host, i % 2));
    }
    for pair in opened.chunks(2) {
        assert_ne!(
            pair[0].1, pair[1].1,
            "a pick on one worker steers the next on the other: {opened:?}"
        );
    }
    let on = |e: &str| opened.iter().filter(|(_, x)| x == e).count();
    assert_eq!((on(A), on(B)), (3, 3));
    assert_eq!(inflight(&host, A), Some((1, 3)));
    assert_eq!(inflight(&host, B), Some((1, 3)));
    // End them every way a request can end.
    let keys: Vec<StreamKey> = opened.iter().map(|(k, _)| *k).collect();
    {
        let mut ex = host.exchange(keys[0]);
        ex.response(200).json(&json!({})).send()?;
        ex.finish()?;
    }
    {
        let mut ex = host.exchange(keys[1]);
        ex.response(503).json(&json!({})).send()?;
        ex.finish()?;
    }
    host.exchange(keys[2]).reset()?; // client gone before any response
    {
        let mut ex = host.exchange(keys[3]);
        ex.response(200)
            .sse(&[json!({"choices": [{"delta": {"content": "x"}}]})], 5)
            .keep_open()
            .send()?;
        ex.reset()?; // client gone mid-stream
    }
    host.exchange(keys[4]).finish()?; // ended without a response (stream torn down)
    {
        let mut ex = host.exchange(keys[5]);
        ex.response(200).sse(&[json!("[DONE]")], 0).send()?;
        ex.finish()?;
    }
    assert_eq!(inflight(&host, A).map(|f| f.1), Some(0));
    assert_eq!(inflight(&host, B).map(|f| f.1), Some(0));
    assert!(host.open_streams(0).is_empty() && host.open_streams(1).is_empty());
    assert!(host.traps().is_empty(), "{:?}", host.traps());
    Ok(())
}

#[test]
fn stale_or_missing_snapshot_falls_back_to_the_gateway() -> Result<()> {
    let mut host = started(&config(), 2)?;
    let fb = |h: &Host, reason: &str| {
        h.metric_sum(
            "llm_router_endpoint_fallback_total",
            &[("pool", "small"), ("reason", reason)],
        )
    };
    assert_eq!(pick(&mut host, 0, "m"), None);
    assert_eq!(fb(&host, "no_snapshot"), 1);
    push(&mut host, 1, &snapshot(&[ep(A, 0, 0, 0.0)]));
    assert_eq!(pick(&mut host, 0, "m").as_deref(), Some(A));
    host.advance_ms(2_000)?;
    assert_eq!(
        pick(&mut host, 1, "m").as_deref(),
        Some(A),
        "exactly stale_after_ms: still fresh"
    );
    host.advance_ms(1)?;
    assert_eq!(pick(&mut host, 0, "m"), None);
    assert_eq!(pick(&mut host, 1, "m"), None);
    assert_eq!(fb(&host, "stale"), 2);
    assert_eq!(fb(&host, "no_snapshot"), 1);
    // A stale pick takes no in-flight count.
    assert_eq!(inflight(&host, A).map(|f| f.1), Some(0));
    // A fresh push brings picking back.
    push(&mut host, 0, &snapshot(&[ep(A, 0, 0, 0.0)]));
    assert_eq!(pick(&mut host, 1, "m").as_deref(), Some(A));
    Ok(())
}

#[test]
fn unhealthy_endpoints_are_never_picked() -> Result<()> {
    let mut host = started(&config(), 2)?;
    let mut idle_but_down = ep(A, 0, 0, 0.0);
    idle_but_down["healthy"] = json!(false);
    push(
        &mut host,
        0,
        &snapshot(&[idle_but_down.clone(), ep(B, 4, 9, 0.7), ep(C, 9, 9, 0.95)]),
    );
    for i in 0..10 {
        assert_eq!(
            pick(&mut host, i % 2, "m").as_deref(),
            Some(B),
            "request {i}"
        );
    }
    let mut c_down = ep(C, 0, 0, 0.0);
    c_down["healthy"] = json!(false);
    push(&mut host, 1, &snapshot(&[idle_but_down, c_down]));
    assert_eq!(pick(&mut host, 0, "m"), None);
    assert_eq!(
        host.metric_sum(
            "llm_router_endpoint_fallback_total",
            &[("pool", "small"), ("reason", "no_endpoint")]
        ),
        1
    );
    assert_eq!(
        host.metric_sum("llm_router_endpoint_picked_total", &[("endpoint", A)]),
        0
    );
    Ok(())
}

#[test]
fn sheddable_requests_are_shed_when_every_endpoint_is_saturated() -> Result<()> {
    let mut host = started(&config(), 2)?;
    // Every endpoint saturated (queue >= 5 or KV cache >= 0.8); B is the least loaded.
    push(
        &mut host,
        0,
        &snapshot(&[ep(A, 9, 0, 0.1), ep(B, 5, 0, 0.0), ep(C, 0, 0, 0.9)]),
    );
    for w in 0..2 {
        let ex = chat(&mut host, w, None, &body("cheap"));
        assert!(ex.upstream().is_none());
        let lr = ex.local_reply().expect("shed");
        assert_eq!(lr.status, 429);
        assert_eq!(lr.body_json().unwrap()["error"]["code"], "overloaded");
        assert_eq!(lr.headers.get("retry-after"), Some("1"));
        drop(ex);
    }
    assert_eq!(
        host.metric_sum("llm_router_shed_total", &[("model", "s")]),
        2
    );
    assert_eq!(host.metric_sum("llm_router_shed_total", &[]), 2);
    assert_eq!(
        host.metric_sum("llm_router_requests_total", &[("status", "local")]),
        2
    );
    // A standard request still goes, to the least loaded.
    assert_eq!(pick(&mut host, 1, "m").as_deref(), Some(B));
    // Once one endpoint has room again, sheddable requests go there.
    push(
        &mut host,
        1,
        &snapshot(&[ep(A, 9, 0, 0.1), ep(B, 5, 0, 0.0), ep(C, 0, 0, 0.5)]),
    );
    assert_eq!(pick(&mut host, 0, "cheap").as_deref(), Some(C));
    Ok(())
}

#[test]
fn a_new_snapshot_restarts_in_flight_counts() -> Result<()> {
    let mut host = started(&config(), 2)?;
    // A scores 0, B 0.4 (2 waiting of 5): the first two requests both go to A.
    push(
        &mut host,
        0,
        &snapshot(&[ep(A, 0, 0, 0.0), ep(B, 2, 0, 0.0)]),
    );
    let (k1, e1) = open(&mut host, 0);
    let (k2, e2) = open(&mut host, 1);
    assert_eq!((e1.as_str(), e2.as_str()), (A, A));
    assert_eq!(inflight(&host, A), Some((1, 2)));
    // The sidecar's next snapshot already includes those two in A's load: counts restart.
    push(
        &mut host,
        1,
        &snapshot(&[ep(A, 0, 0, 0.0), ep(B, 2, 0, 0.0)]),
    );
    let (k3, e3) = open(&mut host, 0);
    assert_eq!(
        e3, A,
        "the old in-flight requests no longer count (else A 0.4 would tie B 0.4)"
    );
    assert_eq!(inflight(&host, A), Some((2, 1)));
    // The old requests end: they must not take from the new snapshot's count.
    host.exchange(k1).finish()?;
    host.exchange(k2).reset()?;
    assert_eq!(inflight(&host, A), Some((2, 1)));
    host.exchange(k3).finish()?;
    assert_eq!(inflight(&host, A), Some((2, 0)));
    // Old requests ending after a push with no new picks leave the count at 0, never below.
    let (k4, _) = open(&mut host, 1);
    let (k5, _) = open(&mut host, 0);
    push(
        &mut host,
        0,
        &snapshot(&[ep(A, 0, 0, 0.0), ep(B, 2, 0, 0.0)]),
    );
    host.exchange(k4).finish()?;
    host.exchange(k5).finish()?;
    let (_, n) = inflight(&host, A).unwrap();
    assert_eq!(n, 0, "not wrapped below zero");
    assert_eq!(pick(&mut host, 1, "m").as_deref(), Some(A));
    assert_eq!(inflight(&host, A).map(|f| f.1), Some(0));
    Ok(())
}
