#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::config::Config;
use crate::plan::{plan, Plan};

const CFG: &str = r#"{
  "tiers": {"small": {"model": "llama-8b"}, "large": {"model": "llama-70b"}},
  "rules": [{"tier": "large", "models": ["gpt-4o"]}],
  "models": {"canary": {"targets": [{"model": "v2", "weight": 1}, {"model": "v1", "weight": 0}]}}
}"#;

fn decide(body: &str) -> (Config, Forward) {
    let cfg = Config::parse(CFG.as_bytes()).unwrap();
    match plan(
        &cfg,
        "/v1/chat/completions",
        &Vec::new(),
        Ok(body.as_bytes()),
        0,
        0,
    ) {
        Plan::Forward(f) => (cfg, f),
        Plan::Reject(_, r) => panic!("rejected: {r:?}"),
    }
}

fn get<'a>(facts: &'a Facts, k: &str) -> Option<&'a str> {
    facts
        .iter()
        .find(|(key, _)| *key == k)
        .map(|(_, v)| v.as_ref())
}

#[test]
fn a_rule_decision_names_tier_rule_model_and_estimate() {
    let (cfg, fwd) = decide(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#);
    let f = routed(&cfg, "/v1/chat/completions", &fwd);
    assert_eq!(get(&f, key::OPERATION), Some("chat"));
    assert_eq!(get(&f, key::TIER), Some("large"));
    assert_eq!(get(&f, key::RULE), Some("0"));
    assert_eq!(get(&f, key::MODEL), Some("llama-70b"));
    assert_eq!(get(&f, key::STREAM), Some("false"));
    assert!(
        get(&f, key::PROMPT_ESTIMATE)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(get(&f, key::SPLIT), None);
}

#[test]
fn the_default_tier_and_a_split_are_named() {
    let (cfg, fwd) = decide(r#"{"model":"canary","stream":true,"messages":[]}"#);
    let f = routed(&cfg, "/v1/chat/completions", &fwd);
    assert_eq!(get(&f, key::RULE), Some("default"));
    assert_eq!(get(&f, key::SPLIT), Some("canary"));
    assert_eq!(get(&f, key::SPLIT_TARGET), Some("v2"));
    assert_eq!(get(&f, key::MODEL), Some("v2"));
    assert_eq!(get(&f, key::STREAM), Some("true"));
}

#[test]
fn operations_follow_the_genai_names() {
    assert_eq!(operation("/v1/chat/completions"), "chat");
    assert_eq!(operation("/v1/completions"), "text_completion");
    assert_eq!(operation("/v1/embeddings/"), "embeddings");
    assert_eq!(operation("/v1/other"), "other");
}

#[test]
fn replies_publish_their_code_and_a_bodyless_reply_nothing() {
    let r = LocalReply::error(429, "requests", "rate_limit_exceeded", "slow down");
    assert_eq!(
        local_reply(&r),
        vec![(key::LOCAL_REPLY, "rate_limit_exceeded".into())]
    );
    let empty = LocalReply {
        status: 204,
        headers: Vec::new(),
        body: Vec::new(),
        code: "",
    };
    assert!(local_reply(&empty).is_empty());
    let rej = rejected("/v1/completions");
    assert_eq!(get(&rej, key::OPERATION), Some("text_completion"));
}

#[test]
fn endpoint_and_usage_facts() {
    let f = endpoint(Some("10.0.0.1:8000"), ENDPOINT_PICKED);
    assert_eq!(get(&f, key::ENDPOINT), Some("10.0.0.1:8000"));
    assert_eq!(get(&f, key::ENDPOINT_REASON), Some("least_loaded"));
    assert_eq!(endpoint(None, ENDPOINT_SHED).len(), 1);
    let u = usage(&Usage {
        prompt_tokens: 12,
        completion_tokens: 34,
        total_tokens: 46,
    });
    assert_eq!(get(&u, key::PROMPT_TOKENS), Some("12"));
    assert_eq!(get(&u, key::COMPLETION_TOKENS), Some("34"));
}

#[test]
fn every_key_is_one_segment_under_the_prefix_and_has_one_attribute() {
    let mut keys: Vec<&str> = ATTRIBUTES.iter().map(|(_, k)| *k).collect();
    for k in &keys {
        assert!(k.starts_with("llm_router.") && !k.contains('\0'), "{k}");
    }
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), ATTRIBUTES.len());
}

#[test]
fn the_envoy_config_generator_maps_every_attribute_like_the_filter() {
    // scripts/gen-tracing-configs.py writes the custom tags of the shipped tracing configs.
    let generator = include_str!("../../../scripts/gen-tracing-configs.py");
    for (attr, key) in ATTRIBUTES {
        let line = format!("(\"{attr}\", \"{key}\"),");
        assert!(generator.contains(&line), "generator lacks {line}");
    }
    let mapped = generator.matches("\", \"llm_router.").count();
    assert_eq!(
        mapped,
        ATTRIBUTES.len(),
        "the generator maps other properties"
    );
}
