#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::config::Config;

fn cfg(json: &str) -> Config {
    Config::parse(json.as_bytes()).unwrap()
}

fn facts<'a>(model: Option<&'a str>, tokens: u64) -> Facts<'a> {
    Facts {
        path: "/v1/chat/completions",
        model,
        prompt_tokens: tokens,
        stream: false,
    }
}

const RULES: &str = r#"{
  "tiers": {"small": {"model": "s-model"}, "large": {"model": "l-model"}, "code": {}},
  "default_tier": "small",
  "rules": [
    {"tier": "large", "models": ["gpt-4o", "large"]},
    {"tier": "large", "min_prompt_tokens": 1024},
    {"tier": "large", "header": {"name": "x-customer-tier", "value": "premium"}},
    {"tier": "code", "path_prefix": "/v1/completions", "stream": true, "max_prompt_tokens": 100}
  ]
}"#;

fn no_headers(_: &str) -> Option<&'static str> {
    None
}

#[test]
fn default_when_nothing_matches() {
    let c = cfg(RULES);
    assert_eq!(
        select_tier(&c, &facts(Some("x"), 10), no_headers),
        (0, Reason::Default)
    );
}

#[test]
fn model_rule() {
    let c = cfg(RULES);
    assert_eq!(
        select_tier(&c, &facts(Some("gpt-4o"), 1), no_headers),
        (1, Reason::Rule(0))
    );
    assert_eq!(
        select_tier(&c, &facts(None, 1), no_headers),
        (0, Reason::Default)
    );
}

#[test]
fn prompt_length_rule_boundaries() {
    let c = cfg(RULES);
    assert_eq!(select_tier(&c, &facts(None, 1023), no_headers).0, 0);
    assert_eq!(
        select_tier(&c, &facts(None, 1024), no_headers),
        (1, Reason::Rule(1))
    );
}

#[test]
fn header_rule_is_exact() {
    let c = cfg(RULES);
    let premium = |n: &str| (n == "x-customer-tier").then_some("premium");
    let other = |n: &str| (n == "x-customer-tier").then_some("Premium");
    assert_eq!(
        select_tier(&c, &facts(None, 1), premium),
        (1, Reason::Rule(2))
    );
    assert_eq!(select_tier(&c, &facts(None, 1), other).0, 0);
}

#[test]
fn conditions_in_one_rule_are_anded() {
    let c = cfg(RULES);
    let mut f = Facts {
        path: "/v1/completions",
        model: None,
        prompt_tokens: 50,
        stream: true,
    };
    assert_eq!(select_tier(&c, &f, no_headers), (2, Reason::Rule(3)));
    f.stream = false;
    assert_eq!(select_tier(&c, &f, no_headers).0, 0);
    f.stream = true;
    f.prompt_tokens = 101;
    assert_eq!(select_tier(&c, &f, no_headers).0, 0);
    f.prompt_tokens = 50;
    f.path = "/v1/chat/completions";
    assert_eq!(select_tier(&c, &f, no_headers).0, 0);
}

#[test]
fn first_match_wins() {
    let c = cfg(
        r#"{"tiers": {"a": {}, "b": {}}, "rules": [{"tier": "b", "min_prompt_tokens": 5}, {"tier": "a"}]}"#,
    );
    assert_eq!(
        select_tier(&c, &facts(None, 10), no_headers),
        (1, Reason::Rule(0))
    );
    // a rule without conditions always matches
    assert_eq!(
        select_tier(&c, &facts(None, 1), no_headers),
        (0, Reason::Rule(1))
    );
}

#[test]
fn tier_model_rewrites() {
    let c = cfg(RULES);
    let m = choose_model(&c, 1, Some("gpt-4o"), 0);
    assert_eq!(m.model.as_deref(), Some("l-model"));
    assert!(m.rewrite);
    let same = choose_model(&c, 1, Some("l-model"), 0);
    assert!(!same.rewrite);
    // tier without a model keeps the client's
    let keep = choose_model(&c, 2, Some("client-model"), 0);
    assert_eq!(keep.model.as_deref(), Some("client-model"));
    assert!(!keep.rewrite);
    let none = choose_model(&c, 2, None, 0);
    assert_eq!(none.model, None);
    // no model in the body, tier has one: it is inserted
    assert!(choose_model(&c, 0, None, 0).rewrite);
}

const SPLIT: &str = r#"{
  "tiers": {"small": {"model": "s-model"}},
  "models": {"canary": {"targets": [{"model": "v2", "weight": 10}, {"model": "v1", "weight": 90}], "criticality": "sheddable"},
             "zero": {"targets": [{"model": "never", "weight": 0}, {"model": "always", "weight": 3}]}}
}"#;

#[test]
fn split_boundaries() {
    let c = cfg(SPLIT);
    let at = |roll| choose_model(&c, 0, Some("canary"), roll).model.unwrap();
    assert_eq!(at(0), "v2");
    assert_eq!(at(9), "v2");
    assert_eq!(at(10), "v1");
    assert_eq!(at(99), "v1");
    assert_eq!(at(100), "v2");
    assert_eq!(at(u64::MAX), at(u64::MAX % 100));
    let m = choose_model(&c, 0, Some("canary"), 0);
    assert_eq!(m.split, Some(0));
    assert_eq!(m.criticality, Criticality::Sheddable);
    assert!(m.rewrite);
    for roll in 0..10 {
        assert_eq!(
            choose_model(&c, 0, Some("zero"), roll).model.as_deref(),
            Some("always")
        );
    }
}

#[test]
fn split_weights_are_followed() {
    let c = cfg(SPLIT);
    // A cheap deterministic generator standing in for the host's random source.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v2 = 0;
    let n = 100_000;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if choose_model(&c, 0, Some("canary"), x).model.as_deref() == Some("v2") {
            v2 += 1;
        }
    }
    let share = v2 as f64 / n as f64;
    assert!((share - 0.10).abs() < 0.01, "v2 share {share}");
}
