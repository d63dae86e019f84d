//! The production engine on the real `dist/llm_router.wasm`: streams answered with Steps,
//! limits and endpoint loads shared by worker threads, reconfiguration, concurrency.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use common::*;
use host_engine::{Engine, Step, StreamProps};
use serde_json::{json, Value};

fn routing_config() -> Value {
    json!({
        "tiers": {"small": {"model": "s"}, "large": {"model": "l"}},
        "default_tier": "small",
        "rules": [{"tier": "large", "models": ["big"]}],
        "endpoints": {
            "push_path": PUSH_PATH,
            "push_token_env": "LLM_ROUTER_PUSH_TOKEN",
            "stale_after_ms": 60000
        }
    })
}

fn limits_config(acme_rpm: u64) -> Value {
    json!({
        "tiers": {"small": {"model": "s"}},
        "tenants": {
            "header": "x-tenant-id",
            "default": {"requests_per_minute": 1000, "tokens_per_minute": 10_000_000},
            "limits": {"acme": {"requests_per_minute": acme_rpm, "tokens_per_minute": 10_000_000}}
        }
    })
}

/// Sum of the Prometheus samples of `base` (any labels).
fn prom_sum(text: &str, base: &str) -> i64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{base}{{")) || l.starts_with(&format!("{base} ")))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<i64>().ok()))
        .sum()
}

#[test]
fn a_chat_request_is_held_until_its_body_ends_then_routed() -> Result<()> {
    let engine = engine(&routing_config(), 2)?;
    let mut s = engine.open_stream(StreamProps::default());
    let body = chat_body("big", "please explain quantum computing");
    let out = send(&mut s, "/v1/chat/completions", &[], &body, 3)?;
    let Outcome::Forwarded {
        headers,
        body,
        clear_route_cache,
    } = out
    else {
        bail!("expected the request to be forwarded");
    };
    assert_eq!(header(&headers, "x-llm-model-type"), Some("large"));
    assert_eq!(header(&headers, ":path"), Some("/v1/chat/completions"));
    assert!(clear_route_cache, "routing headers were set while held");
    let sent: Value = serde_json::from_slice(&body)?;
    assert_eq!(
        sent["model"], "l",
        "the tier's model is written into the body"
    );
    assert_eq!(
        sent["messages"][0]["content"],
        "please explain quantum computing"
    );
    assert_eq!(
        header(&headers, "content-length"),
        None,
        "rewritten body: no stale length"
    );

    // The response comes back to the client whole, with its status.
    let reply = json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}});
    let reply = reply.to_string().into_bytes();
    let h = pairs(&[(":status", "200"), ("content-type", "application/json")]);
    let (mut status, mut got, mut done) = (None, Vec::new(), false);
    for step in [
        s.response_headers(h, false),
        s.response_body(reply.clone(), true),
    ] {
        match step {
            Step::Hold => {}
            Step::Continue {
                headers,
                body,
                end_of_stream,
                ..
            } => {
                if let Some(h) = headers {
                    status = header(&h, ":status").map(str::to_string);
                }
                got.extend(body.unwrap_or_default());
                done = end_of_stream;
            }
            other => bail!("response: unexpected {other:?}"),
        }
    }
    assert_eq!(status.as_deref(), Some("200"));
    assert_eq!(got, reply);
    assert!(done);
    s.finish();
    assert_eq!(engine.stats().streams, 1);
    Ok(())
}

#[test]
fn a_tenant_bucket_shared_by_two_workers_answers_429_when_empty() -> Result<()> {
    let engine = engine(&limits_config(2), 2)?;
    let mut workers = Vec::new();
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let mut s = engine.open_stream(StreamProps::default());
        workers.push(s.worker());
        let body = chat_body("m", "hi");
        outcomes.push(send(
            &mut s,
            "/v1/chat/completions",
            &[("x-tenant-id", "acme")],
            &body,
            1,
        )?);
        s.finish();
    }
    assert_eq!(workers, vec![0, 1, 0], "round robin over both VMs");
    assert!(matches!(outcomes[0], Outcome::Forwarded { .. }));
    assert!(matches!(outcomes[1], Outcome::Forwarded { .. }));
    let Outcome::Replied { status, body } = &outcomes[2] else {
        bail!("the third request of a 2-per-minute tenant was forwarded");
    };
    assert_eq!(*status, 429);
    let err: Value = serde_json::from_slice(body)?;
    assert_eq!(err["error"]["code"], "rate_limit_exceeded", "{err}");
    assert_eq!(err["error"]["type"], "requests", "{err}");
    // Another tenant is not affected.
    assert!(matches!(
        chat(&engine, Some("other"), "m")?,
        Outcome::Forwarded { .. }
    ));
    assert_eq!(
        prom_sum(&engine.prometheus(), "llm_router_rate_limited_total"),
        1
    );
    Ok(())
}

#[test]
fn a_pushed_load_snapshot_is_answered_204_and_steers_later_picks() -> Result<()> {
    let engine = engine(&routing_config(), 2)?;
    let a = "10.1.0.1:8000";
    let snapshot = json!({"pools": {
        "small": [{"address": a, "waiting": 0, "running": 0, "kv_cache": 0.1}],
        "large": [{"address": "10.2.0.1:8000", "waiting": 0, "running": 0, "kv_cache": 0.0}]
    }});
    assert_eq!(push(&engine, &snapshot)?, 204);
    // The push ran on worker 0; these run on workers 1 and 0.
    for _ in 0..2 {
        let Outcome::Forwarded { headers, .. } = chat(&engine, None, "m")? else {
            bail!("a chat request was answered locally");
        };
        assert_eq!(header(&headers, EP), Some(a));
        assert_eq!(header(&headers, "x-llm-model-type"), Some("small"));
    }
    Ok(())
}

#[test]
fn a_rejected_reconfiguration_keeps_the_old_configuration() -> Result<()> {
    let engine = engine(&routing_config(), 2)?;
    let bad = json!({"tiers": {"small": {}}, "tier_typo": true}).to_string();
    let err = engine
        .reconfigure(bad.into_bytes())
        .err()
        .ok_or_else(|| anyhow!("an unknown field was accepted"))?;
    assert!(
        err.0.contains("tier_typo"),
        "the error names the field: {err}"
    );
    assert_eq!(engine.stats().config_reload_failures, 1);
    for _ in 0..2 {
        let Outcome::Forwarded { headers, .. } = chat(&engine, None, "big")? else {
            bail!("answered locally");
        };
        assert_eq!(
            header(&headers, "x-llm-model-type"),
            Some("large"),
            "old rules"
        );
    }
    // A good configuration takes effect on every worker.
    let good = json!({"tiers": {"small": {"model": "s"}, "large": {"model": "l"}},
        "default_tier": "small", "rules": [{"tier": "large", "models": ["huge"]}]});
    engine
        .reconfigure(good.to_string().into_bytes())
        .map_err(|e| anyhow!("{e}"))?;
    assert_eq!(engine.stats().config_reloads, 1);
    for _ in 0..2 {
        let Outcome::Forwarded { headers, .. } = chat(&engine, None, "big")? else {
            bail!("answered locally");
        };
        assert_eq!(
            header(&headers, "x-llm-model-type"),
            Some("small"),
            "new rules"
        );
    }
    Ok(())
}

#[test]
fn many_streams_from_several_threads_keep_limits_exact() -> Result<()> {
    let engine: Engine = engine(&limits_config(50), 3)?;
    let (tx, rx) = mpsc::channel();
    for t in 0..4 {
        let (engine, tx) = (engine.clone(), tx.clone());
        std::thread::spawn(move || {
            let mut counts = (0, 0);
            for _ in 0..25 {
                match chat(&engine, Some("acme"), "m") {
                    Ok(Outcome::Forwarded { .. }) => counts.0 += 1,
                    Ok(Outcome::Replied { status: 429, .. }) => counts.1 += 1,
                    Ok(Outcome::Replied { status, .. }) => {
                        let _ = tx.send(Err(format!("thread {t}: status {status}")));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("thread {t}: {e:#}")));
                        return;
                    }
                }
            }
            let _ = tx.send(Ok(counts));
        });
    }
    drop(tx);
    let (mut forwarded, mut limited) = (0, 0);
    for _ in 0..4 {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok((f, l))) => {
                forwarded += f;
                limited += l;
            }
            Ok(Err(e)) => bail!("{e}"),
            Err(_) => bail!("a client thread did not finish in 120 s (deadlock?)"),
        }
    }
    assert_eq!(
        (forwarded, limited),
        (50, 50),
        "exactly the bucket's 50 requests pass"
    );
    assert_eq!(engine.stats().streams, 100);
    assert_eq!(engine.stats().traps, 0);
    assert_eq!(
        prom_sum(&engine.prometheus(), "llm_router_rate_limited_total"),
        50
    );
    Ok(())
}
