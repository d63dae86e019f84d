//! Rate limiting on the real filter (`dist/llm_router.wasm`) with several worker VMs sharing
//! one proxy's shared data: exact admission under interleaving, reconciliation from real
//! usage, limits changed by a new configuration, bounded tenant ids, JWT claims, and unknown
//! tenants refused. The clock only moves when a test moves it, so every level is exact.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use anyhow::{anyhow, Result};
use common::*;
use host_sim::{Host, StreamKey};
use serde_json::{json, Value};

const ACME: &str = "llm_router/rl/t/acme";

fn limits_config(acme_rpm: u64, acme_tpm: u64) -> Value {
    json!({
        "tiers": {"small": {"model": "s"}},
        "tenants": {
            "header": "x-tenant-id",
            "default": {"requests_per_minute": 1000, "tokens_per_minute": 10_000_000},
            "limits": {
                "acme": {"requests_per_minute": acme_rpm, "tokens_per_minute": acme_tpm},
                "beta": {"requests_per_minute": acme_rpm, "tokens_per_minute": acme_tpm}
            }
        }
    })
}

fn hdr<'a>(lr: &'a host_sim::LocalReply, name: &str) -> Option<&'a str> {
    lr.headers.get(name)
}

/// Sends one small request; Ok(true) when admitted (and answered 200), Ok(false) on 429.
fn one(host: &mut Host, worker: usize, tenant: &str) -> Result<bool> {
    let body = chat_body("m", "hi", Some(5), false);
    let mut ex = chat(host, worker, Some(tenant), &body);
    if let Some(t) = ex.trap() {
        return Err(anyhow!("trap: {t}"));
    }
    match ex.local_reply() {
        Some(lr) => {
            assert_eq!(lr.status, 429, "{}", lr.body_str());
            Ok(false)
        }
        None => {
            assert!(ex.upstream().is_some_and(|u| u.complete));
            ex.response(200).json(&json!({"choices": []})).send()?;
            ex.finish()?;
            Ok(true)
        }
    }
}

#[test]
fn four_workers_alternating_admit_exactly_the_bucket_then_the_exact_refill() -> Result<()> {
    let mut host = started(&limits_config(12, 10_000_000), 4)?;
    let body = chat_body("m", "hi", Some(5), false);
    let mut admitted = Vec::new();
    let mut refused = 0;
    for i in 0..20 {
        let ex = chat(&mut host, i % 4, Some("acme"), &body);
        assert!(ex.trap().is_none(), "{:?}", ex.trap());
        match ex.local_reply() {
            None => admitted.push(i),
            Some(lr) => {
                refused += 1;
                assert_eq!(lr.status, 429);
                let b = lr.body_json().expect("JSON body");
                assert_eq!(b["error"]["code"], "rate_limit_exceeded");
                assert_eq!(b["error"]["type"], "requests");
                assert_eq!(b["error"]["param"], Value::Null);
                assert!(b["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("acme")));
                assert_eq!(hdr(&lr, "content-type"), Some("application/json"));
                // Empty request bucket refilling 12/min: one request in exactly 5 s.
                assert_eq!(hdr(&lr, "retry-after"), Some("5"));
                assert_eq!(hdr(&lr, "x-ratelimit-limit-requests"), Some("12"));
                assert_eq!(hdr(&lr, "x-ratelimit-remaining-requests"), Some("0"));
                assert_eq!(hdr(&lr, "x-ratelimit-reset-requests"), Some("1m0s"));
                assert_eq!(hdr(&lr, "x-ratelimit-limit-tokens"), Some("10000000"));
                assert!(hdr(&lr, "x-ratelimit-remaining-tokens").is_some());
                assert!(hdr(&lr, "x-ratelimit-reset-tokens").is_some());
            }
        }
        ex.finish()?;
    }
    assert_eq!(
        admitted,
        (0..12).collect::<Vec<_>>(),
        "the first 12, on all 4 workers"
    );
    assert_eq!(refused, 8);
    assert_eq!(
        host.metric_sum(
            "llm_router_rate_limited_total",
            &[("tenant", "acme"), ("bucket", "requests")]
        ),
        8
    );
    // Another tenant is unaffected.
    for i in 0..5 {
        assert!(one(&mut host, i % 4, "beta")?, "beta #{i}");
    }
    // Exact refill: 12/min = one request per 5000 ms.
    host.advance_ms(5_000)?;
    assert!(one(&mut host, 1, "acme")?);
    assert!(!one(&mut host, 2, "acme")?);
    host.advance_ms(4_999)?;
    assert!(!one(&mut host, 3, "acme")?, "1 ms short of a whole request");
    host.advance_ms(1)?;
    assert!(one(&mut host, 0, "acme")?);
    assert!(!one(&mut host, 1, "acme")?);
    // A full minute refills the whole burst, not more.
    host.advance_ms(600_000)?;
    let n = (0..20)
        .filter(|i| one(&mut host, i % 4, "acme").unwrap())
        .count();
    assert_eq!(n, 12);
    assert!(host.traps().is_empty(), "{:?}", host.traps());
    Ok(())
}

#[test]
fn callbacks_interleaved_across_workers_admit_exactly_the_bucket() -> Result<()> {
    let mut host = started(&limits_config(6, 10_000_000), 4)?;
    let body = chat_body("m", "hello there, interleaved world", Some(5), false).to_string();
    let b = body.as_bytes();
    let (c1, c2, c3) = (&b[..10], &b[10..20], &b[20..]);
    // Start 12 requests, 3 per worker: headers + first chunk only.
    let mut keys: Vec<StreamKey> = Vec::new();
    for i in 0..12 {
        let ex = host
            .worker(i % 4)
            .request()
            .method("POST")
            .path("/v1/chat/completions")
            .header("x-tenant-id", "acme")
            .header("content-length", &b.len().to_string())
            .body_chunks(&[c1, c2, c3])
            .stop_after_chunks(1)
            .send();
        assert!(
            ex.upstream().is_none() && ex.local_reply().is_none(),
            "held for the body"
        );
        keys.push(ex.detach());
    }
    // Middle chunks in one order, last chunks (where admission happens) in another.
    let middle = [5, 0, 11, 3, 8, 1, 10, 6, 2, 9, 4, 7];
    let last = [7, 2, 11, 4, 0, 9, 5, 1, 10, 3, 8, 6];
    for &i in &middle {
        let mut ex = host.exchange(keys[i]);
        ex.send_request_chunk(c2, false)?;
        assert!(ex.upstream().is_none() && ex.local_reply().is_none());
        ex.detach();
    }
    let mut outcome = Vec::new();
    for &i in &last {
        let mut ex = host.exchange(keys[i]);
        ex.send_request_chunk(c3, true)?;
        assert!(ex.trap().is_none(), "{:?}", ex.trap());
        let admitted = match (ex.upstream(), ex.local_reply()) {
            (Some(u), None) => {
                assert!(u.complete);
                true
            }
            (None, Some(lr)) => {
                assert_eq!(lr.status, 429);
                assert_eq!(
                    lr.body_json().unwrap()["error"]["code"],
                    "rate_limit_exceeded"
                );
                false
            }
            other => panic!("request {i}: {other:?}"),
        };
        outcome.push((i, admitted));
        ex.detach(); // still open while the others arrive
    }
    let admitted: Vec<usize> = outcome
        .iter()
        .filter(|(_, a)| *a)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(
        admitted,
        last[..6].to_vec(),
        "the first six bodies to end win"
    );
    for k in keys {
        host.exchange(k).finish()?;
    }
    let (req_units, _, _) = bucket(&host, ACME).expect("acme bucket");
    assert_eq!(req_units, 0);
    // Exact refill: 6/min = one per 10 s; two racing bodies, one wins.
    host.advance_ms(10_000)?;
    let mut pair = Vec::new();
    for w in [3, 1] {
        let ex = host
            .worker(w)
            .request()
            .method("POST")
            .path("/v1/chat/completions")
            .header("x-tenant-id", "acme")
            .header("content-length", &b.len().to_string())
            .body_chunks(&[c1, c2, c3])
            .stop_after_chunks(2)
            .send();
        pair.push(ex.detach());
    }
    let mut wins = Vec::new();
    for k in [pair[1], pair[0]] {
        let mut ex = host.exchange(k);
        ex.send_request_chunk(c3, true)?;
        wins.push(ex.upstream().is_some());
        ex.detach();
    }
    assert_eq!(wins, vec![true, false]);
    for k in pair {
        host.exchange(k).finish()?;
    }
    assert_eq!(
        host.metric_sum(
            "llm_router_rate_limited_total",
            &[("tenant", "acme"), ("bucket", "requests")]
        ),
        7
    );
    assert!(host.traps().is_empty(), "{:?}", host.traps());
    Ok(())
}

/// The token level of acme, in whole tokens (exact: the clock does not move in these tests).
fn tokens_left(host: &Host, key: &str) -> i64 {
    let (_, tok, _) = bucket(host, key).expect("bucket");
    assert_eq!(
        tok % UNIT,
        0,
        "no time passed, so the level is whole: {tok}"
    );
    tok / UNIT
}

#[test]
fn reconcile_from_json_usage_refunds_into_the_next_request() -> Result<()> {
    let mut host = started(&limits_config(1000, 10_000), 2)?;
    let body = chat_body(
        "m",
        "Tell me a story about a lighthouse keeper.",
        Some(100),
        false,
    );
    let mut ex = chat(&mut host, 0, Some("acme"), &body);
    let p = prompt_estimate(&ex);
    let resp = ex
        .response(200)
        .json(&json!({"choices": [], "usage": {"prompt_tokens": p, "completion_tokens": 10, "total_tokens": p + 10}}))
        .send()?;
    let charged = p + 100;
    assert_eq!(
        resp.header("x-ratelimit-remaining-tokens"),
        Some((10_000 - charged).to_string().as_str())
    );
    assert_eq!(resp.header("x-ratelimit-limit-tokens"), Some("10000"));
    assert_eq!(resp.header("x-ratelimit-remaining-requests"), Some("999"));
    assert_eq!(
        tokens_left(ex.host(), ACME),
        (10_000 - charged) as i64,
        "before the end"
    );
    ex.finish()?;
    // 90 reserved but unused completion tokens came back.
    assert_eq!(tokens_left(&host, ACME), (10_000 - p - 10) as i64);
    let mut ex = chat(&mut host, 1, Some("acme"), &body);
    let resp = ex.response(200).json(&json!({"choices": []})).send()?;
    assert_eq!(
        resp.header("x-ratelimit-remaining-tokens"),
        Some((10_000 - p - 10 - charged).to_string().as_str())
    );
    ex.finish()?;
    // No usage and a 2xx: the estimate stands.
    assert_eq!(tokens_left(&host, ACME), (10_000 - p - 10 - charged) as i64);
    Ok(())
}

#[test]
fn reconcile_from_the_final_sse_event_without_holding_the_stream() -> Result<()> {
    let mut host = started(&limits_config(1000, 10_000), 2)?;
    let body = chat_body("m", "Stream me a haiku about rivers.", Some(200), true);
    let mut ex = chat(&mut host, 1, Some("acme"), &body);
    let p = prompt_estimate(&ex);
    let events = [
        json!({"choices": [{"delta": {"content": "Water"}}]}),
        json!({"choices": [{"delta": {"content": " runs"}}]}),
        json!({"choices": [], "usage": {"prompt_tokens": p, "completion_tokens": 7, "total_tokens": p + 7}}),
        json!("[DONE]"),
    ];
    let client = ex.response(200).sse(&events, 0).send()?;
    assert_eq!(client.chunks.len(), 4);
    assert!(
        client.chunks.iter().all(|c| !c.paused),
        "{:?}",
        client.chunks
    );
    assert_eq!(
        client.header("x-ratelimit-remaining-tokens"),
        Some((10_000 - p - 200).to_string().as_str())
    );
    ex.finish()?;
    assert_eq!(tokens_left(&host, ACME), (10_000 - p - 7) as i64);
    Ok(())
}

#[test]
fn upstream_failure_and_client_reset_keep_the_prompt_and_what_streamed() -> Result<()> {
    let mut host = started(&limits_config(1000, 10_000), 2)?;
    // Upstream 503 after the request went upstream: the server ran the prefill, so the prompt
    // stays charged; only the completion reservation comes back.
    let body = chat_body("m", "Summarise the news.", Some(300), false);
    let mut ex = chat(&mut host, 0, Some("acme"), &body);
    let p = prompt_estimate(&ex);
    assert_eq!(tokens_left(ex.host(), ACME), (10_000 - p - 300) as i64);
    ex.response(503)
        .json(&json!({"error": {"message": "overloaded"}}))
        .send()?;
    ex.finish()?;
    assert_eq!(tokens_left(&host, ACME), (10_000 - p) as i64);
    let base = tokens_left(&host, ACME);

    // The client goes away after two streamed events (no usage, no [DONE]).
    let body = chat_body("m", "Summarise the news.", Some(300), true);
    let mut ex = chat(&mut host, 1, Some("acme"), &body);
    let p = prompt_estimate(&ex);
    let events = [
        json!({"choices": [{"delta": {"content": "Today"}}]}),
        json!({"choices": [{"delta": {"content": ","}}]}),
    ];
    let client = ex.response(200).sse(&events, 0).keep_open().send()?;
    assert!(!client.complete && client.chunks.iter().all(|c| !c.paused));
    assert_eq!(tokens_left(ex.host(), ACME), base - (p + 300) as i64);
    ex.reset()?;
    // Kept: the prompt and the streamed text ("Today", ","), estimated like the prompt.
    let left = tokens_left(&host, ACME);
    let kept = base - left;
    assert!(
        kept >= p as i64 + 2 && kept <= p as i64 + 4,
        "prompt {p} + streamed text kept, got {kept}"
    );

    // A client that goes away after the request went upstream, before any answer: the
    // prompt stays charged, the completion reservation comes back.
    let before = tokens_left(&host, ACME);
    let ex = chat(&mut host, 0, Some("acme"), &body);
    let p = prompt_estimate(&ex);
    assert!(ex.upstream().is_some());
    ex.reset()?;
    assert_eq!(tokens_left(&host, ACME), before - p as i64);
    Ok(())
}

#[test]
fn oversized_request_is_reconciled_from_the_burst_it_was_charged() -> Result<()> {
    let config = json!({
        "tiers": {"small": {}},
        "tenants": {
            "header": "x-tenant-id",
            "default": {"requests_per_minute": 1000, "tokens_per_minute": 10_000_000},
            "limits": {"big": {"requests_per_minute": 1000, "tokens_per_minute": 6000, "burst_tokens": 50}}
        }
    });
    let mut host = started(&config, 2)?;
    let key = "llm_router/rl/t/big";
    let body = chat_body("m", "Write a long essay.", Some(1000), false);
    let mut ex = chat(&mut host, 0, Some("big"), &body);
    assert!(
        ex.local_reply().is_none(),
        "cost > burst still runs on a full bucket"
    );
    let p = prompt_estimate(&ex);
    assert!(p + 1000 > 50);
    assert_eq!(
        tokens_left(ex.host(), key),
        0,
        "charged the whole burst (50), not {}",
        p + 1000
    );
    ex.response(200)
        .json(&json!({"usage": {"prompt_tokens": p, "completion_tokens": 120 - p, "total_tokens": 120}}))
        .send()?;
    ex.finish()?;
    // 120 used, 50 charged: 70 of debt (not 120 - (p + 1000), a refund).
    assert_eq!(tokens_left(&host, key), -70);
    let ex = chat(&mut host, 1, Some("big"), &body);
    let lr = ex.local_reply().expect("429 while in debt");
    assert_eq!(lr.status, 429);
    assert_eq!(lr.body_json().unwrap()["error"]["type"], "tokens");
    // From -70 to the 50 it needs at 100 tokens/s: 1.2 s.
    assert_eq!(lr.headers.get("retry-after"), Some("2"));
    assert_eq!(lr.headers.get("x-ratelimit-remaining-tokens"), Some("0"));
    drop(ex);
    assert_eq!(
        host.metric_sum(
            "llm_router_rate_limited_total",
            &[("tenant", "big"), ("bucket", "tokens")]
        ),
        1
    );
    Ok(())
}

fn rpm_config(rpm: u64) -> Value {
    json!({
        "tiers": {"small": {}},
        "tenants": {
            "header": "x-tenant-id",
            "default": {"requests_per_minute": 1000},
            "limits": {"acme": {"requests_per_minute": rpm}}
        }
    })
}

#[test]
fn a_new_configuration_keeps_bucket_levels() -> Result<()> {
    let mut host = started(&rpm_config(10), 3)?;
    for i in 0..8 {
        assert!(one(&mut host, i % 3, "acme")?);
    }
    assert_eq!(bucket(&host, ACME).unwrap().0, 2 * UNIT);
    // Raised to 20: the level is carried (2 left), not reset to the new burst.
    host.reconfigure(rpm_config(20).to_string())?;
    assert_eq!(bucket(&host, ACME).unwrap().0, 2 * UNIT);
    let body = chat_body("m", "hi", Some(5), false);
    let mut ex = chat(&mut host, 2, Some("acme"), &body);
    let resp = ex.response(200).json(&json!({})).send()?;
    assert_eq!(resp.header("x-ratelimit-limit-requests"), Some("20"));
    assert_eq!(resp.header("x-ratelimit-remaining-requests"), Some("1"));
    ex.finish()?;
    assert!(one(&mut host, 0, "acme")?);
    assert!(
        !one(&mut host, 1, "acme")?,
        "2 left after the raise, not 12 or 20"
    );
    // Then refill at the new rate: 20/min = one per 3 s.
    host.advance_ms(2_999)?;
    assert!(!one(&mut host, 2, "acme")?);
    host.advance_ms(1)?;
    assert!(one(&mut host, 0, "acme")?);
    // Full at 20, then lowered to 5: clamped to the new burst.
    host.advance_ms(120_000)?;
    host.reconfigure(rpm_config(5).to_string())?;
    let n = (0..10)
        .filter(|i| one(&mut host, i % 3, "acme").unwrap())
        .count();
    assert_eq!(n, 5, "clamped to the lowered burst");
    // A rejected configuration keeps the previous one in force (and the levels).
    let bad = json!({"tiers": {"small": {}}, "tenants": {"header": "x-tenant-id", "bogus": 1}});
    assert!(host.reconfigure(bad.to_string()).is_err());
    assert!(!one(&mut host, 1, "acme")?, "still limited at 5/min");
    assert!(host.traps().is_empty(), "{:?}", host.traps());
    Ok(())
}

#[test]
fn unknown_tenant_ids_are_bounded() -> Result<()> {
    let config = json!({
        "tiers": {"small": {}},
        "tenants": {
            "header": "x-tenant-id",
            "max_tracked_tenants": 10,
            "default": {"requests_per_minute": 5},
            "limits": {"acme": {"requests_per_minute": 2}}
        }
    });
    let mut host = started(&config, 4)?;
    let mut admitted = 0;
    for i in 0..100 {
        if one(&mut host, i % 4, &format!("u{i:03}"))? {
            admitted += 1;
        }
    }
    // Each id holds a slot of the 10 while its bucket is not full again; an id finds no free
    // slot among the 8 it may use once (nearly) all are busy: then it shares the overflow
    // bucket of 5 requests.
    let slots_used = admitted - 5;
    assert!((8..=10).contains(&slots_used), "admitted {admitted}");
    let rl_keys: Vec<String> = host
        .shared_data_keys()
        .into_iter()
        .filter(|k| k.starts_with("llm_router/rl/"))
        .collect();
    let mut allowed: Vec<String> = (0..10).map(|i| format!("llm_router/rl/u/{i}")).collect();
    allowed.push("llm_router/rl/overflow".into());
    assert!(rl_keys.iter().all(|k| allowed.contains(k)), "{rl_keys:?}");
    assert_eq!(rl_keys.len(), slots_used + 1);
    // A new id shares the (empty) overflow bucket; an early id keeps its own slot.
    assert!(!one(&mut host, 0, "u050")?);
    assert!(!one(&mut host, 1, "another-new-id")?);
    for _ in 0..4 {
        assert!(one(&mut host, 2, "u003")?);
    }
    assert!(!one(&mut host, 3, "u003")?);
    for _ in 0..5 {
        assert!(one(&mut host, 0, "")?); // no id: anonymous (a header with an empty value)
    }
    assert!(!one(&mut host, 1, "")?);
    for _ in 0..2 {
        assert!(one(&mut host, 2, "acme")?);
    }
    assert!(!one(&mut host, 3, "acme")?);
    assert_eq!(
        host.shared_data_keys()
            .iter()
            .filter(|k| k.starts_with("llm_router/rl/"))
            .count(),
        slots_used + 3
    );
    let rl = |t: &str| host.metric_sum("llm_router_rate_limited_total", &[("tenant", t)]);
    let overflowed = 100 - slots_used as i64 - 5;
    assert_eq!(
        (rl("overflow"), rl("default"), rl("anonymous"), rl("acme")),
        (overflowed + 2, 1, 1, 1)
    );
    let mut labels: Vec<String> = host
        .metrics()
        .iter()
        .flat_map(|m| m.tags())
        .filter(|(k, _)| k == "tenant")
        .map(|(_, v)| v)
        .collect();
    labels.sort();
    labels.dedup();
    assert_eq!(labels, vec!["acme", "anonymous", "default", "overflow"]);
    assert!(
        !host.render_prometheus().contains("u0"),
        "no client id in any label"
    );
    Ok(())
}

#[test]
fn jwt_claim_names_the_tenant() -> Result<()> {
    let config = json!({
        "tiers": {"small": {}},
        "tenants": {
            "jwt_claim": "org",
            "default": {"requests_per_minute": 3},
            "limits": {"org-a": {"requests_per_minute": 2}, "org-b": {"requests_per_minute": 2}}
        }
    });
    let mut host = started(&config, 2)?;
    let body = chat_body("m", "hi", Some(5), false);
    // org: via the builder's jwt_payload, via the raw property path, or absent.
    let send = |host: &mut Host, w: usize, org: Option<&str>, raw: bool| -> bool {
        let mut rb = host
            .worker(w)
            .request()
            .method("POST")
            .path("/v1/chat/completions")
            // A client header must not matter: the tenant comes from the verified claim.
            .header("x-tenant-id", "org-b");
        match (org, raw) {
            (Some(o), false) => rb = rb.jwt_payload("jwt_payload", json!({"org": o, "sub": "u1"})),
            (Some(o), true) => {
                rb = rb.property_path(
                    &[
                        "metadata",
                        "filter_metadata",
                        "envoy.filters.http.jwt_authn",
                        "jwt_payload",
                        "org",
                    ],
                    o,
                )
            }
            (None, _) => {}
        }
        let ex = rb.json(&body).send();
        assert!(ex.trap().is_none(), "{:?}", ex.trap());
        let ok = ex.local_reply().is_none();
        if let Some(lr) = ex.local_reply() {
            assert_eq!(lr.status, 429, "{}", lr.body_str());
        }
        ok
    };
    assert!(send(&mut host, 0, Some("org-a"), false));
    assert!(send(&mut host, 1, Some("org-a"), true));
    assert!(!send(&mut host, 0, Some("org-a"), false));
    // org-b has its own bucket.
    assert!(send(&mut host, 1, Some("org-b"), true));
    assert!(send(&mut host, 0, Some("org-b"), false));
    assert!(!send(&mut host, 1, Some("org-b"), true));
    // No claim: anonymous (default limits, 3).
    for i in 0..3 {
        assert!(send(&mut host, i % 2, None, false));
    }
    assert!(!send(&mut host, 0, None, false));
    assert!(bucket(&host, "llm_router/rl/t/org-a").is_some());
    assert!(bucket(&host, "llm_router/rl/t/org-b").is_some());
    assert!(bucket(&host, "llm_router/rl/t/anonymous").is_some());
    let rl = |t: &str| host.metric_sum("llm_router_rate_limited_total", &[("tenant", t)]);
    assert_eq!((rl("org-a"), rl("org-b"), rl("anonymous")), (1, 1, 1));
    Ok(())
}

#[test]
fn unknown_tenant_is_refused_with_401_when_configured_so() -> Result<()> {
    let config = json!({
        "tiers": {"small": {}},
        "tenants": {
            "header": "x-tenant-id",
            "unknown": "reject",
            "default": {"requests_per_minute": 100},
            "limits": {"acme": {"requests_per_minute": 100}}
        }
    });
    let mut host = started(&config, 2)?;
    let body = chat_body("m", "hi", Some(5), false);
    let ex = chat(&mut host, 0, Some("stranger"), &body);
    let lr = ex.local_reply().expect("401");
    assert_eq!(lr.status, 401);
    let b = lr.body_json().unwrap();
    assert_eq!(b["error"]["code"], "unknown_tenant");
    assert_eq!(b["error"]["param"], Value::Null);
    assert!(ex.upstream().is_none());
    drop(ex);
    let ex = chat(&mut host, 1, Some("acme"), &body);
    assert!(ex.local_reply().is_none() && ex.upstream().is_some());
    drop(ex);
    assert!(
        host.shared_data_keys()
            .iter()
            .all(|k| !k.contains("stranger")),
        "{:?}",
        host.shared_data_keys()
    );
    Ok(())
}

#[test]
fn an_id_spray_only_costs_the_sprayer_once_its_buckets_refill() -> Result<()> {
    let config = json!({
        "tiers": {"small": {}},
        "tenants": {
            "header": "x-tenant-id",
            "max_tracked_tenants": 16,
            "default": {"requests_per_minute": 60}
        }
    });
    let mut host = started(&config, 2)?;
    // A spray of 200 ids takes every slot it can and drains the overflow bucket.
    for i in 0..200 {
        one(&mut host, i % 2, &format!("spray-{i}"))?;
    }
    assert!(!one(&mut host, 0, "real-tenant")?, "overflow is drained");
    // One second later (60 rpm: one request a second) every sprayed bucket is full again and
    // carries nothing: the real tenant gets a slot of its own, the spray left no state behind.
    host.advance_ms(1000)?;
    for _ in 0..60 {
        assert!(one(&mut host, 1, "real-tenant")?);
    }
    assert!(!one(&mut host, 0, "real-tenant")?, "its own 60, not more");
    let slots = host
        .shared_data_keys()
        .into_iter()
        .filter(|k| k.starts_with("llm_router/rl/u/"))
        .count();
    assert!(slots <= 16, "{slots}");
    assert!(host.traps().is_empty(), "{:?}", host.traps());
    Ok(())
}
