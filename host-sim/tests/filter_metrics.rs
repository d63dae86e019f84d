//! Metrics of the real filter after a scripted set of requests: every series by its exact
//! name (labels embedded Istio-style), value and histogram samples, with durations and time to
//! first token taken from the simulated clock. Also: client model names fold into `other`, and
//! a series is defined once (no `proxy_define_metric` per request).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use anyhow::Result;
use common::*;
use host_sim::Host;
use serde_json::{json, Value};

fn config() -> Value {
    json!({
        "tiers": {
            "small": {"model": "llama-small"},
            "large": {"model": "llama-large"},
            "passthru": {}
        },
        "default_tier": "small",
        "rules": [
            {"tier": "large", "models": ["gpt-4o"]},
            {"tier": "large", "min_prompt_tokens": 200},
            {"tier": "passthru", "header": {"name": "x-passthru", "value": "1"}}
        ],
        "models": {
            "chat-canary": {"targets": [{"model": "canary-v2", "weight": 30}, {"model": "canary-v1", "weight": 70}]}
        },
        "tenants": {
            "header": "x-tenant-id",
            "default": {"requests_per_minute": 1000, "tokens_per_minute": 10_000_000},
            "limits": {"tiny": {"requests_per_minute": 1, "tokens_per_minute": 100_000}}
        }
    })
}

/// Expected series: full metric name -> (counter value, or sorted histogram samples).
#[derive(Default)]
struct Want(BTreeMap<String, Series>);

#[derive(Debug, PartialEq)]
enum Series {
    Counter(i64),
    Histogram(Vec<u64>),
}

fn name(base: &str, labels: &[(&str, &str)]) -> String {
    let mut s = format!("{base};");
    for (k, v) in labels {
        s.push_str(&format!("{k}=.={v};.;"));
    }
    s
}

impl Want {
    fn count(&mut self, base: &str, labels: &[(&str, &str)], n: i64) {
        match self
            .0
            .entry(name(base, labels))
            .or_insert(Series::Counter(0))
        {
            Series::Counter(v) => *v += n,
            h => panic!("{base} is a histogram: {h:?}"),
        }
    }
    fn sample(&mut self, base: &str, labels: &[(&str, &str)], v: u64) {
        match self
            .0
            .entry(name(base, labels))
            .or_insert(Series::Histogram(Vec::new()))
        {
            Series::Histogram(s) => {
                s.push(v);
                s.sort_unstable();
            }
            c => panic!("{base} is a counter: {c:?}"),
        }
    }
    /// A forwarded request's request-side metrics.
    fn routed(&mut self, tier: &str, model: &str, reason: &str, prompt: Option<u64>) {
        self.count(
            "llm_router_model_selected_total",
            &[("tier", tier), ("model", model), ("reason", reason)],
            1,
        );
        if let Some(p) = prompt {
            self.sample("llm_router_prompt_tokens_estimated", &[("tier", tier)], p);
        }
    }
    fn ended(&mut self, tier: &str, model: &str, status: &str, duration: Option<u64>) {
        self.count(
            "llm_router_requests_total",
            &[("tier", tier), ("model", model), ("status", status)],
            1,
        );
        if let Some(d) = duration {
            self.sample(
                "llm_router_request_duration_milliseconds",
                &[("model", model)],
                d,
            );
        }
    }
    fn tokens(&mut self, model: &str, prompt: u64, completion: u64) {
        if prompt > 0 {
            self.count(
                "llm_router_tokens_total",
                &[("model", model), ("type", "prompt")],
                prompt as i64,
            );
        }
        if completion > 0 {
            self.count(
                "llm_router_tokens_total",
                &[("model", model), ("type", "completion")],
                completion as i64,
            );
        }
    }
}

fn observed(host: &Host) -> BTreeMap<String, Series> {
    host.metrics()
        .into_iter()
        .filter(|m| m.name.starts_with("llm_router_"))
        .map(|m| {
            let s = match m.kind {
                host_sim::MetricKind::Histogram => {
                    let mut v = m.samples.clone();
                    v.sort_unstable();
                    Series::Histogram(v)
                }
                _ => Series::Counter(m.value),
            };
            (m.name, s)
        })
        .collect()
}

fn assert_same(host: &Host, want: &Want) {
    let got = observed(host);
    let mut diffs = Vec::new();
    for (k, v) in &want.0 {
        match got.get(k) {
            Some(g) if g == v => {}
            g => diffs.push(format!("{k}: want {v:?}, got {g:?}")),
        }
    }
    for (k, g) in &got {
        if !want.0.contains_key(k) {
            diffs.push(format!("{k}: unexpected series {g:?}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "metric mismatches:\n  {}\n\nprometheus:\n{}",
        diffs.join("\n  "),
        host.render_prometheus()
    );
}

fn send<'h>(
    host: &'h mut Host,
    w: usize,
    tenant: &str,
    body: &Value,
    extra: &[(&str, &str)],
) -> host_sim::Exchange<'h> {
    let mut rb = host
        .worker(w)
        .request()
        .method("POST")
        .path("/v1/chat/completions")
        .header("x-tenant-id", tenant);
    for (k, v) in extra {
        rb = rb.header(k, v);
    }
    rb.json(body).send()
}

fn usage(p: u64, c: u64) -> Value {
    json!({"choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})
}

#[test]
fn scripted_requests_give_exact_metrics() -> Result<()> {
    let mut host = started(&config(), 2)?;
    let mut want = Want::default();
    let rl = "llm_router_rate_limited_total";
    let short = chat_body("m", "hi", Some(10), false);

    // 1. Short request, JSON usage, answered 120 ms later.
    let mut ex = send(&mut host, 0, "t1", &short, &[]);
    let p1 = prompt_estimate(&ex);
    ex.host().advance_ms(120)?;
    ex.response(200).json(&usage(5, 3)).send()?;
    ex.finish()?;
    want.routed("small", "llama-small", "default", Some(p1));
    want.ended("small", "llama-small", "2xx", Some(120));
    want.tokens("llama-small", 5, 3);

    // 2. Long prompt (rule 2), JSON without usage after 250 ms: the estimate counts as prompt.
    let long = chat_body(
        "m",
        &"the quick brown fox jumps over the lazy dog ".repeat(60),
        Some(10),
        false,
    );
    let mut ex = send(&mut host, 1, "t1", &long, &[]);
    let p2 = prompt_estimate(&ex);
    assert!(p2 >= 200);
    assert_eq!(
        ex.upstream().unwrap().header("x-llm-model-type"),
        Some("large")
    );
    ex.host().advance_ms(250)?;
    ex.response(200).json(&json!({"choices": []})).send()?;
    ex.finish()?;
    want.routed("large", "llama-large", "rule", Some(p2));
    want.ended("large", "llama-large", "2xx", Some(250));
    want.tokens("llama-large", p2, 0);

    // 3. Model rule, a stream with usage: first event 100 + 30 ms, last at 100 + 4 * 30.
    let mut ex = send(
        &mut host,
        0,
        "t1",
        &chat_body("gpt-4o", "hello", Some(10), true),
        &[],
    );
    let p3 = prompt_estimate(&ex);
    ex.host().advance_ms(100)?;
    let events = [
        json!({"choices": [{"delta": {"content": "a"}}]}),
        json!({"choices": [{"delta": {"content": "b"}}]}),
        usage(11, 4),
        json!("[DONE]"),
    ];
    let client = ex.response(200).sse(&events, 30).send()?;
    assert!(client.chunks.iter().all(|c| !c.paused));
    ex.finish()?;
    want.routed("large", "llama-large", "rule", Some(p3));
    want.ended("large", "llama-large", "2xx", Some(220));
    want.sample(
        "llm_router_time_to_first_token_milliseconds",
        &[("model", "llama-large")],
        130,
    );
    want.tokens("llama-large", 11, 4);

    // 4. Canary split: whichever target the seeded roll picked.
    let mut ex = send(
        &mut host,
        1,
        "t1",
        &chat_body("chat-canary", "hey", Some(10), false),
        &[],
    );
    let p4 = prompt_estimate(&ex);
    let target = ex
        .upstream()
        .unwrap()
        .header("x-model-id")
        .unwrap()
        .to_string();
    assert!(target == "canary-v1" || target == "canary-v2", "{target}");
    assert_eq!(
        ex.upstream().unwrap().body_json().unwrap()["model"],
        target.as_str()
    );
    ex.response(200).json(&usage(6, 2)).send()?;
    ex.finish()?;
    want.routed("small", &target, "default", Some(p4));
    want.ended("small", &target, "2xx", Some(0));
    want.tokens(&target, 6, 2);

    // 5. Not JSON (default_tier mode): default tier, counted as invalid, no estimate.
    let mut ex = host
        .worker(0)
        .request()
        .method("POST")
        .path("/v1/chat/completions")
        .header("x-tenant-id", "t1")
        .body("this is {not json")
        .send();
    assert_eq!(
        ex.upstream().unwrap().header("x-llm-model-type"),
        Some("small")
    );
    ex.response(200).json(&json!({"choices": []})).send()?;
    ex.finish()?;
    want.count(
        "llm_router_invalid_body_total",
        &[("reason", "not_json")],
        1,
    );
    want.routed("small", "llama-small", "invalid_body", None);
    want.ended("small", "llama-small", "2xx", Some(0));

    // 6. A stream without usage: 50 ms, then an event 10 ms later, then [DONE].
    let mut ex = send(
        &mut host,
        1,
        "t1",
        &chat_body("m", "stream please", Some(10), true),
        &[],
    );
    let p6 = prompt_estimate(&ex);
    ex.host().advance_ms(50)?;
    ex.response(200)
        .sse(
            &[
                json!({"choices": [{"delta": {"content": "x"}}]}),
                json!("[DONE]"),
            ],
            10,
        )
        .send()?;
    ex.finish()?;
    want.routed("small", "llama-small", "default", Some(p6));
    want.ended("small", "llama-small", "2xx", Some(70));
    want.sample(
        "llm_router_time_to_first_token_milliseconds",
        &[("model", "llama-small")],
        60,
    );
    want.tokens("llama-small", p6, 0);

    // 7. Upstream 500 after 40 ms: no tokens.
    let mut ex = send(&mut host, 0, "t1", &short, &[]);
    let p7 = prompt_estimate(&ex);
    ex.host().advance_ms(40)?;
    ex.response(500)
        .json(&json!({"error": {"message": "boom"}}))
        .send()?;
    ex.finish()?;
    want.routed("small", "llama-small", "default", Some(p7));
    want.ended("small", "llama-small", "5xx", Some(40));

    // 8. Tenant `tiny` (1 request/min): one admitted, the next answered 429 locally.
    let mut ex = send(&mut host, 1, "tiny", &short, &[]);
    let p8 = prompt_estimate(&ex);
    ex.response(200).json(&json!({})).send()?;
    ex.finish()?;
    want.routed("small", "llama-small", "default", Some(p8));
    want.ended("small", "llama-small", "2xx", Some(0));
    want.tokens("llama-small", p8, 0);
    let ex = send(&mut host, 0, "tiny", &short, &[]);
    assert_eq!(ex.local_reply().map(|l| l.status), Some(429));
    ex.finish()?;
    want.ended("small", "llama-small", "local", None);
    want.count(rl, &[("tenant", "tiny"), ("bucket", "requests")], 1);

    // 9. The client cancels 70 ms in, before any response.
    let mut ex = send(&mut host, 1, "t1", &short, &[]);
    let p9 = prompt_estimate(&ex);
    ex.host().advance_ms(70)?;
    ex.reset()?;
    want.routed("small", "llama-small", "default", Some(p9));
    want.ended("small", "llama-small", "cancelled", Some(70));

    // 10. Client-chosen model names on a tier without a model: label `other`, never the name.
    for (i, m) in ["rnd-aaa", "rnd-bbb", "zz-top-secret"].iter().enumerate() {
        let mut ex = send(
            &mut host,
            i % 2,
            "t1",
            &chat_body(m, "hi", Some(10), false),
            &[("x-passthru", "1")],
        );
        let p = prompt_estimate(&ex);
        assert_eq!(ex.upstream().unwrap().body_json().unwrap()["model"], *m);
        ex.response(200).json(&usage(1, 1)).send()?;
        ex.finish()?;
        want.routed("passthru", "other", "rule", Some(p));
        want.ended("passthru", "other", "2xx", Some(0));
        want.tokens("other", 1, 1);
    }

    assert_same(&host, &want);
    let prom = host.render_prometheus();
    for secret in ["rnd-", "zz-top", "\"m\"", "gpt-4o", "chat-canary\"", "t1"] {
        assert!(
            !prom.contains(secret),
            "{secret} leaked into labels:\n{prom}"
        );
    }
    assert!(
        prom.contains(
            r#"llm_router_requests_total{tier="small",model="llama-small",status="cancelled"} 1"#
        ),
        "{prom}"
    );

    // Defined once per label combination per VM: repeating identical requests defines nothing.
    let defines = host.metric_define_calls();
    let series = host.metrics().len();
    assert!(
        defines as usize <= series * 2,
        "{defines} defines for {series} series on 2 VMs"
    );
    for _ in 0..3 {
        let mut ex = send(&mut host, 0, "t1", &short, &[]);
        ex.response(200).json(&usage(5, 3)).send()?;
        ex.finish()?;
        let mut ex = send(
            &mut host,
            0,
            "t1",
            &chat_body("rnd-new-name", "hi", Some(10), false),
            &[("x-passthru", "1")],
        );
        ex.response(200).json(&usage(1, 1)).send()?;
        ex.finish()?;
        let ex = send(&mut host, 0, "tiny", &short, &[]);
        assert!(ex.local_reply().is_some());
        ex.finish()?;
    }
    assert_eq!(
        host.metric_define_calls(),
        defines,
        "no define on a known series"
    );
    assert_eq!(host.metrics().len(), series, "no new series");
    assert!(host.traps().is_empty(), "{:?}", host.traps());
    Ok(())
}

fn reject_config() -> Value {
    json!({
        "tiers": {"small": {"model": "llama-small"}},
        "on_invalid_body": "reject",
        "max_body_bytes": 64
    })
}

/// Sends the two bodies `on_invalid_body: reject` refuses: not JSON (400) and too large (413).
fn two_rejects(host: &mut Host) {
    for (w, body, status, code) in [
        (0, b"nope".to_vec(), 400, "invalid_request_body"),
        (1, vec![b' '; 100], 413, "request_too_large"),
    ] {
        let ex = host
            .worker(w)
            .request()
            .method("POST")
            .path("/v1/chat/completions")
            .body(body)
            .send();
        assert!(ex.upstream().is_none());
        let lr = ex.local_reply().expect("local reply");
        assert_eq!(lr.status, status);
        assert_eq!(lr.body_json().unwrap()["error"]["code"], code);
        ex.finish().unwrap();
    }
}

#[test]
fn reject_mode_counts_invalid_bodies() -> Result<()> {
    let mut host = started(&reject_config(), 2)?;
    two_rejects(&mut host);
    assert_eq!(
        host.metric_sum("llm_router_invalid_body_total", &[("reason", "not_json")]),
        1
    );
    assert_eq!(
        host.metric_sum("llm_router_invalid_body_total", &[("reason", "too_large")]),
        1
    );
    assert_eq!(
        host.metric_sum("llm_router_model_selected_total", &[]),
        0,
        "nothing was routed"
    );
    // Answers of the filter, like the 429/401: counted as `local` under the default tier.
    assert_eq!(
        host.metric_value(
            "llm_router_requests_total;tier=.=small;.;model=.=llama-small;.;status=.=local;.;"
        ),
        2,
        "{}",
        host.render_prometheus()
    );
    assert_eq!(host.metric_sum("llm_router_requests_total", &[]), 2);
    assert!(host
        .metrics()
        .iter()
        .all(|m| m.base_name() != "llm_router_prompt_tokens_estimated"
            && m.base_name() != "llm_router_request_duration_milliseconds"));
    Ok(())
}
