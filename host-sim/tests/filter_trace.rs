//! What the real filter publishes for the request's trace (issue 15): the `llm_router.*`
//! properties Envoy keeps as filter state (`wasm.llm_router.*`, read by the tracing custom tags
//! of envoy-config/envoy-otel.yaml) and llm-router-extproc reads back for its span. Read as
//! they are when the request ends, on the real `.wasm`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use common::*;
use host_sim::Exchange;
use serde_json::{json, Value};

const A: &str = "10.1.0.1:8000";
const B: &str = "10.1.0.2:8000";
const RAW_ID: &str = "cust-4711-secret";

fn config() -> Value {
    json!({
        "tiers": {"small": {"model": "s"}, "large": {"model": "l"}},
        "default_tier": "small",
        "rules": [{"tier": "large", "models": ["big"]}],
        "models": {
            "canary": {"targets": [{"model": "s2", "weight": 1}]},
            "cheap": {"targets": [{"model": "s", "weight": 1}], "criticality": "sheddable"}
        },
        "tenants": {
            "header": "x-tenant-id",
            "unknown": "default",
            "default": {"requests_per_minute": 100, "tokens_per_minute": 100000},
            "limits": {"acme": {"requests_per_minute": 1, "tokens_per_minute": 100000}}
        },
        "endpoints": {
            "push_path": PUSH_PATH,
            "push_token_env": "LLM_ROUTER_PUSH_TOKEN",
            "stale_after_ms": 60000,
            "max_queue": 5,
            "max_kv_cache": 0.8
        }
    })
}

fn loads(waiting: u64) -> Value {
    json!({"pools": {"small": [
        {"address": A, "waiting": waiting, "kv_cache": 0.1},
        {"address": B, "waiting": waiting + 1, "kv_cache": 0.1}
    ]}})
}

fn published(ex: Exchange<'_>) -> BTreeMap<String, String> {
    let p = ex.finish_published("llm_router.").unwrap();
    for (k, v) in &p {
        assert!(
            !v.contains(RAW_ID),
            "the raw tenant id is published in {k}: {p:?}"
        );
    }
    p
}

fn get<'a>(p: &'a BTreeMap<String, String>, k: &str) -> Option<&'a str> {
    p.get(k).map(String::as_str)
}

#[test]
fn a_routed_request_publishes_its_decision_and_usage() {
    let mut host = started(&config(), 1).unwrap();
    assert_eq!(push(&mut host, 0, &loads(0)), (false, Some(204)));
    let mut ex = chat(
        &mut host,
        0,
        Some(RAW_ID),
        &chat_body("any", "hello there", Some(5), false),
    );
    let estimate = prompt_estimate(&ex);
    let usage = json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18});
    ex.response(200)
        .json(&json!({"model": "s", "choices": [], "usage": usage}))
        .send()
        .unwrap();
    let p = published(ex);
    let want: BTreeMap<String, String> = [
        ("llm_router.operation", "chat".to_string()),
        ("llm_router.tier", "small".to_string()),
        ("llm_router.rule", "default".to_string()),
        ("llm_router.model", "s".to_string()),
        ("llm_router.prompt_estimate", estimate.to_string()),
        ("llm_router.stream", "false".to_string()),
        ("llm_router.tenant", "default".to_string()),
        ("llm_router.endpoint", A.to_string()),
        ("llm_router.endpoint_reason", "least_loaded".to_string()),
        ("llm_router.prompt_tokens", "11".to_string()),
        ("llm_router.completion_tokens", "7".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(p, want);
}

#[test]
fn a_rule_a_split_and_a_fallback_are_named() {
    let mut host = started(&config(), 1).unwrap();
    // No snapshot pushed yet: the pool's own balancing, and why.
    let mut ex = chat(&mut host, 0, None, &chat_body("canary", "x", None, false));
    ex.response(200).json(&json!({})).send().unwrap();
    let p = published(ex);
    assert_eq!(get(&p, "llm_router.split"), Some("canary"));
    assert_eq!(get(&p, "llm_router.split_target"), Some("s2"));
    assert_eq!(get(&p, "llm_router.model"), Some("s2"));
    assert_eq!(get(&p, "llm_router.endpoint_reason"), Some("no_snapshot"));
    // A snapshot without the large pool: the pool's own balancing, and why.
    assert_eq!(push(&mut host, 0, &loads(0)), (false, Some(204)));
    let mut ex = chat(&mut host, 0, None, &chat_body("big", "x", None, false));
    ex.response(200).json(&json!({})).send().unwrap();
    let p = published(ex);
    assert_eq!(get(&p, "llm_router.rule"), Some("0"));
    assert_eq!(get(&p, "llm_router.tier"), Some("large"));
    assert_eq!(get(&p, "llm_router.tenant"), Some("anonymous"));
    assert_eq!(get(&p, "llm_router.endpoint_reason"), Some("no_endpoint"));
    assert_eq!(get(&p, "llm_router.endpoint"), None);
}

#[test]
fn a_rate_limited_request_publishes_the_reply_and_the_tenant_label() {
    let mut host = started(&config(), 1).unwrap();
    let mut ex = chat(
        &mut host,
        0,
        Some("acme"),
        &chat_body("any", "x", None, false),
    );
    ex.response(200).json(&json!({})).send().unwrap();
    ex.finish().unwrap();
    let ex = chat(
        &mut host,
        0,
        Some("acme"),
        &chat_body("any", "x", None, false),
    );
    assert_eq!(ex.local_reply().map(|r| r.status), Some(429));
    let p = published(ex);
    assert_eq!(
        get(&p, "llm_router.local_reply"),
        Some("rate_limit_exceeded")
    );
    assert_eq!(get(&p, "llm_router.tenant"), Some("acme"));
    assert_eq!(get(&p, "llm_router.tier"), Some("small"));
    assert_eq!(get(&p, "llm_router.endpoint"), None);
    // The prompt figure it was charged (published before admission for Envoy's `ratelimit`
    // filter, docs/global-limits.md); nothing was completed.
    assert!(get(&p, "llm_router.prompt_tokens").is_some_and(|v| v.parse::<u64>().is_ok()));
    assert_eq!(get(&p, "llm_router.completion_tokens"), None);
}

#[test]
fn a_shed_request_publishes_why() {
    let mut host = started(&config(), 1).unwrap();
    assert_eq!(push(&mut host, 0, &loads(9)), (false, Some(204)));
    let ex = chat(
        &mut host,
        0,
        Some(RAW_ID),
        &chat_body("cheap", "x", None, false),
    );
    assert_eq!(reply_code(&ex).as_deref(), Some("overloaded"));
    let p = published(ex);
    assert_eq!(get(&p, "llm_router.local_reply"), Some("overloaded"));
    assert_eq!(get(&p, "llm_router.endpoint_reason"), Some("shed"));
    assert_eq!(get(&p, "llm_router.tenant"), Some("default"));
}

#[test]
fn a_streamed_request_publishes_the_streamed_usage() {
    let mut host = started(&config(), 1).unwrap();
    let mut ex = chat(
        &mut host,
        0,
        Some(RAW_ID),
        &chat_body("any", "x", None, true),
    );
    let events = [
        json!({"choices": [{"delta": {"content": "one two"}}]}),
        json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}),
    ];
    ex.response(200).sse(&events, 0).send().unwrap();
    let p = published(ex);
    assert_eq!(get(&p, "llm_router.stream"), Some("true"));
    assert_eq!(get(&p, "llm_router.prompt_tokens"), Some("3"));
    assert_eq!(get(&p, "llm_router.completion_tokens"), Some("2"));
}

#[test]
fn a_refused_body_publishes_the_reply() {
    let mut cfg = config();
    cfg["on_invalid_body"] = json!("reject");
    let mut host = started(&cfg, 1).unwrap();
    let ex = host
        .worker(0)
        .request()
        .method("POST")
        .path("/v1/completions")
        .header("content-type", "application/json")
        .body("not json")
        .send();
    assert_eq!(ex.local_reply().map(|r| r.status), Some(400));
    let p = published(ex);
    assert_eq!(get(&p, "llm_router.operation"), Some("text_completion"));
    assert_eq!(
        get(&p, "llm_router.local_reply"),
        Some("invalid_request_body")
    );
}

/// `"trace_properties": false`: no decision property is published (their host calls are
/// saved), but the token figures Envoy's `ratelimit` filter reads stay (tenants configured).
#[test]
fn trace_properties_false_publishes_only_the_token_figures() {
    let mut cfg = config();
    cfg["trace_properties"] = json!(false);
    let mut host = started(&cfg, 1).unwrap();
    assert_eq!(push(&mut host, 0, &loads(0)), (false, Some(204)));
    let mut ex = chat(
        &mut host,
        0,
        Some(RAW_ID),
        &chat_body("any", "hello there", Some(5), false),
    );
    let usage = json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18});
    ex.response(200)
        .json(&json!({"model": "s", "choices": [], "usage": usage}))
        .send()
        .unwrap();
    let p = published(ex);
    let keys: Vec<&str> = p.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["llm_router.completion_tokens", "llm_router.prompt_tokens"],
        "{p:?}"
    );
    assert_eq!(get(&p, "llm_router.prompt_tokens"), Some("11"));
    assert_eq!(get(&p, "llm_router.completion_tokens"), Some("7"));

    // Without tenants nothing at all.
    let mut cfg = json!({"tiers": {"small": {"model": "s"}}, "trace_properties": false});
    cfg["tiers"]["large"] = json!({"model": "l"});
    let mut host = started(&cfg, 1).unwrap();
    let mut ex = chat(
        &mut host,
        0,
        None,
        &chat_body("any", "hello there", Some(5), false),
    );
    ex.response(200)
        .json(&json!({"model": "s", "choices": [], "usage": usage}))
        .send()
        .unwrap();
    assert_eq!(published(ex), BTreeMap::new());
}
