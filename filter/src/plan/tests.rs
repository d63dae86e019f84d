#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::config::Config;

const CFG: &str = r#"{
  "tiers": {"small": {"model": "llama-8b"}, "large": {"model": "llama-70b"}, "raw": {}},
  "default_tier": "small",
  "rules": [
    {"tier": "large", "models": ["gpt-4o"]},
    {"tier": "large", "min_prompt_tokens": 1000},
    {"tier": "large", "header": {"name": "x-customer-tier", "value": "premium"}},
    {"tier": "raw", "models": ["keep-me", "canary"]}
  ],
  "models": {"canary": {"targets": [{"model": "v2", "weight": 1}, {"model": "v1", "weight": 1}]}}
}"#;

fn cfg(extra: &str) -> Config {
    let mut v: serde_json::Value = serde_json::from_str(CFG).unwrap();
    let e: serde_json::Value = serde_json::from_str(extra).unwrap();
    for (k, val) in e.as_object().unwrap() {
        v[k] = val.clone();
    }
    Config::parse(v.to_string().as_bytes()).unwrap()
}

fn forward(p: Plan) -> Forward {
    match p {
        Plan::Forward(f) => f,
        Plan::Reject(_, r) => panic!("expected forward, got reply {r:?}"),
    }
}

fn hdr<'a>(f: &'a Forward, name: &str) -> Option<&'a str> {
    header(&f.set_headers, name)
}

fn run(c: &Config, headers: &[(&str, &str)], body: &str) -> Plan {
    let h: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    plan(c, "/v1/chat/completions", &h, Ok(body.as_bytes()), 0, 0)
}

/// The body the upstream gets: the plan's edit applied to what was sent (an edit is expected).
fn rewritten(f: &Forward, sent: &str) -> Vec<u8> {
    f.body
        .as_ref()
        .expect("a rewritten body")
        .apply(sent.as_bytes())
}

fn chat(model: &str, text: &str) -> String {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}]}).to_string()
}

#[test]
fn short_prompt_goes_to_default_tier_with_its_model() {
    let c = cfg("{}");
    let sent = chat("whatever", "hello");
    let f = forward(run(&c, &[], &sent));
    assert_eq!(hdr(&f, "x-llm-model-type"), Some("small"));
    assert_eq!(hdr(&f, "x-model-id"), Some("llama-8b"));
    assert_eq!(f.reason, Reason::Default);
    let tokens: u64 = hdr(&f, "x-llm-prompt-tokens").unwrap().parse().unwrap();
    assert!((5..20).contains(&tokens), "{tokens}");
    let body: serde_json::Value = serde_json::from_slice(&rewritten(&f, &sent)).unwrap();
    assert_eq!(body["model"], "llama-8b");
    assert_eq!(body["messages"][0]["content"], "hello");
}

#[test]
fn long_prompt_goes_large() {
    let c = cfg("{}");
    let f = forward(run(&c, &[], &chat("x", &"lorem ipsum dolor ".repeat(400))));
    assert_eq!(hdr(&f, "x-llm-model-type"), Some("large"));
    assert_eq!(f.reason, Reason::Rule(1));
    assert_eq!(f.model.as_deref(), Some("llama-70b"));
}

#[test]
fn header_and_model_rules() {
    let c = cfg("{}");
    let f = forward(run(&c, &[("x-customer-tier", "premium")], &chat("x", "hi")));
    assert_eq!(f.reason, Reason::Rule(2));
    let f = forward(run(&c, &[], &chat("gpt-4o", "hi")));
    assert_eq!(f.reason, Reason::Rule(0));
}

#[test]
fn tier_without_model_keeps_body_untouched() {
    let c = cfg("{}");
    let body = chat("keep-me", "hi");
    let f = forward(run(&c, &[], &body));
    assert_eq!(hdr(&f, "x-llm-model-type"), Some("raw"));
    assert_eq!(hdr(&f, "x-model-id"), Some("keep-me"));
    assert_eq!(f.body, None);
}

#[test]
fn split_rewrites_to_a_target() {
    let c = cfg("{}");
    let body = chat("canary", "hi");
    let h: Vec<(String, String)> = vec![];
    let a = forward(plan(
        &c,
        "/v1/chat/completions",
        &h,
        Ok(body.as_bytes()),
        0,
        0,
    ));
    let b = forward(plan(
        &c,
        "/v1/chat/completions",
        &h,
        Ok(body.as_bytes()),
        0,
        1,
    ));
    assert_eq!(a.model.as_deref(), Some("v2"));
    assert_eq!(b.model.as_deref(), Some("v1"));
    assert_eq!(a.split, Some(0));
    let v: serde_json::Value = serde_json::from_slice(&rewritten(&a, &body)).unwrap();
    assert_eq!(v["model"], "v2");
}

#[test]
fn unsafe_client_model_is_not_echoed_in_a_header() {
    let c = cfg("{}");
    let f = forward(run(&c, &[], &chat("keep-me\r\nx-evil: 1", "hi")));
    // tier "raw" is not selected (model does not match), small has a model: header is ours
    assert_eq!(hdr(&f, "x-model-id"), Some("llama-8b"));
    let c = cfg(r#"{"tiers": {"raw": {}}, "rules": [], "default_tier": "raw"}"#);
    let f = forward(run(&c, &[], &chat("bad\nname", "hi")));
    assert_eq!(hdr(&f, "x-model-id"), None);
    assert_eq!(hdr(&f, "x-llm-model-type"), Some("raw"));
}

#[test]
fn invalid_bodies_default_tier() {
    let c = cfg("{}");
    for body in ["{oops", "[1]", ""] {
        let f = forward(run(&c, &[], body));
        assert_eq!(f.reason, Reason::InvalidBody, "{body}");
        assert_eq!(hdr(&f, "x-llm-model-type"), Some("small"));
        assert_eq!(
            f.body, None,
            "a body that is not a JSON object is forwarded as it came"
        );
        assert!(f.invalid.is_some());
        assert_eq!(f.prompt_tokens, None);
        assert_eq!(f.body_bytes, body.len() as u64);
    }
    let h: Vec<(String, String)> = vec![];
    let f = forward(plan(
        &c,
        "/v1/completions",
        &h,
        Err(InvalidBody::TooLarge),
        5_000_000,
        0,
    ));
    assert_eq!(f.invalid, Some(InvalidBody::TooLarge));
    // Not readable: no estimate, but the size is known for a conservative charge.
    assert_eq!(f.prompt_tokens, None);
    assert_eq!(f.body_bytes, 5_000_000);
    assert_eq!(f.n, 1);
}

#[test]
fn invalid_bodies_rejected() {
    let c = cfg(r#"{"on_invalid_body": "reject"}"#);
    match run(&c, &[], "{oops") {
        Plan::Reject(why, r) => {
            assert_eq!(why, InvalidBody::NotJson);
            assert_eq!(r.status, 400);
            assert_eq!(r.code, "invalid_request_body");
        }
        p => panic!("{p:?}"),
    }
    let h: Vec<(String, String)> = vec![];
    match plan(&c, "/v1/completions", &h, Err(InvalidBody::TooLarge), 0, 0) {
        Plan::Reject(_, r) => assert_eq!(r.status, 413),
        p => panic!("{p:?}"),
    }
}

#[test]
fn stream_usage_is_injected_when_enabled() {
    let c = cfg(r#"{"inject_stream_usage": true}"#);
    let body = r#"{"model":"keep-me","stream":true,"messages":[]}"#;
    let f = forward(run(&c, &[], body));
    let v: serde_json::Value = serde_json::from_slice(&rewritten(&f, body)).unwrap();
    assert_eq!(v["stream_options"]["include_usage"], true);
    assert_eq!(v["model"], "keep-me");
    // with a model rewrite too
    let sent = r#"{"stream":true,"messages":[]}"#;
    let f = forward(run(&c, &[], sent));
    let v: serde_json::Value = serde_json::from_slice(&rewritten(&f, sent)).unwrap();
    assert_eq!(v["stream_options"]["include_usage"], true);
    assert_eq!(v["model"], "llama-8b");
    // the client's own stream_options are left alone
    let f = forward(run(
        &c,
        &[],
        r#"{"model":"keep-me","stream":true,"stream_options":{"include_usage":false}}"#,
    ));
    assert_eq!(f.body, None);
    // off: not injected
    let c = cfg(r#"{"inject_stream_usage": false}"#);
    assert_eq!(forward(run(&c, &[], body)).body, None);
}

#[test]
fn path_query_is_ignored_by_rules() {
    let c = cfg(
        r#"{"rules": [{"tier": "large", "path_prefix": "/v1/completions"}], "on_invalid_body": "reject"}"#,
    );
    let h: Vec<(String, String)> = vec![];
    let f = forward(plan(
        &c,
        "/v1/completions?x=1",
        &h,
        Ok(br#"{"prompt":"a"}"#),
        0,
        0,
    ));
    assert_eq!(c.tiers[f.tier].name, "large");
}

#[test]
fn hostile_bodies_are_routed_and_rewritten() {
    let c = cfg("{}");
    // `model: null` and duplicated members: one model member, the tier's, goes upstream.
    for body in [
        r#"{"model":null,"messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":"gpt-4o","messages":[],"model":null}"#,
        r#"{"model":"x","model":"y","model":5}"#,
    ] {
        let f = forward(run(&c, &[], body));
        let out = rewritten(&f, body);
        let spans = body::locate_model(&out).unwrap().model_spans;
        assert_eq!(spans.len(), 1, "{}", String::from_utf8_lossy(&out));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], f.model.unwrap());
    }
    // Wrongly typed numbers are read, not a reason to skip the charge.
    let f = forward(run(
        &c,
        &[],
        r#"{"model":"m","prompt":"hi","max_tokens":100.0,"n":"2","best_of":3,"stream":"true"}"#,
    ));
    assert_eq!(f.invalid, None);
    assert_eq!(f.max_tokens, Some(100));
    assert_eq!(f.n, 3);
    assert!(f.stream);
    assert!(f.prompt_tokens.is_some());
}

#[test]
fn forward_carries_n_and_body_bytes() {
    let c = cfg("{}");
    let body = r#"{"model":"m","prompt":"hello","max_completion_tokens":0,"max_tokens":9}"#;
    let h: Vec<(String, String)> = vec![];
    let f = forward(plan(&c, "/v1/completions", &h, Ok(body.as_bytes()), 0, 0));
    assert_eq!(f.body_bytes, body.len() as u64);
    assert_eq!(f.n, 1);
    assert_eq!(f.max_tokens, Some(9));
}

#[test]
fn wrongly_typed_body_still_gets_the_tier_model() {
    let c = cfg("{}");
    // Refused by the reader (a negative limit the server refuses too), but a JSON object:
    // routed to the default tier with its model written in, never with the client's.
    let body = r#"{"model":"gpt-4o","max_tokens":-1,"model":null,"prompt":"x"}"#;
    let f = forward(run(&c, &[], body));
    assert_eq!(f.invalid, Some(InvalidBody::InvalidField));
    assert_eq!(f.prompt_tokens, None);
    assert_eq!(f.body_bytes, body.len() as u64);
    let out = rewritten(&f, body);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["model"], "llama-8b");
    assert_eq!(body::locate_model(&out).unwrap().model_spans.len(), 1);
    // A tier without a model leaves the body alone.
    let c = cfg(r#"{"tiers": {"raw": {}}, "rules": [], "default_tier": "raw"}"#);
    assert_eq!(forward(run(&c, &[], body)).body, None);
}

#[test]
fn tool_definitions_raise_the_estimate_and_the_tier() {
    let c = cfg("{}");
    let description = "Returns the current weather report for a city. ".repeat(200);
    let body = serde_json::json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "w", "description": description}}],
    })
    .to_string();
    let f = forward(run(&c, &[], &body));
    assert!(f.prompt_tokens.unwrap() > 1000, "{:?}", f.prompt_tokens);
    assert_eq!(c.tiers[f.tier].name, "large");
}
