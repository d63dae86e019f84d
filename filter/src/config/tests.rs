#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// The example configuration of the product contract (SPEC.md), verbatim.
pub const SPEC_EXAMPLE: &str = r#"{
  "apis": ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"],
  "max_body_bytes": 1048576,
  "on_invalid_body": "default_tier",
  "headers": {
    "tier": "x-llm-model-type",
    "model": "x-model-id",
    "endpoint": "x-gateway-destination-endpoint",
    "prompt_tokens": "x-llm-prompt-tokens"
  },
  "tiers": {
    "small": { "model": "llama-3.1-8b-instruct" },
    "large": { "model": "llama-3.1-70b-instruct" }
  },
  "default_tier": "small",
  "rules": [
    { "tier": "large", "models": ["gpt-4o", "large"] },
    { "tier": "large", "min_prompt_tokens": 1024 },
    { "tier": "large", "header": { "name": "x-customer-tier", "value": "premium" } }
  ],
  "models": {
    "chat-canary": {
      "targets": [ { "model": "llama-3.1-8b-v2", "weight": 10 }, { "model": "llama-3.1-8b", "weight": 90 } ],
      "criticality": "standard"
    }
  },
  "tenants": {
    "header": "x-tenant-id",
    "unknown": "default",
    "default": { "requests_per_minute": 600, "tokens_per_minute": 100000 },
    "limits": { "acme": { "requests_per_minute": 60, "tokens_per_minute": 20000 } }
  },
  "endpoints": {
    "push_path": "/.well-known/llm-router/load",
    "push_token_env": "LLM_ROUTER_PUSH_TOKEN",
    "stale_after_ms": 2000,
    "max_queue": 5,
    "max_kv_cache": 0.8
  }
}"#;

fn parse(s: &str) -> Result<Config, ConfigError> {
    Config::parse(s.as_bytes())
}

fn parse_err(s: &str) -> ConfigError {
    parse(s).expect_err("configuration should be rejected")
}

#[test]
fn spec_example_is_accepted_with_every_field() {
    let c = parse(SPEC_EXAMPLE).unwrap();
    assert_eq!(c.apis.len(), 3);
    assert_eq!(c.max_body_bytes, 1048576);
    assert_eq!(c.on_invalid_body, InvalidBodyAction::DefaultTier);
    assert_eq!(c.headers.tier, "x-llm-model-type");
    assert_eq!(c.tiers[0].name, "small");
    assert_eq!(c.tiers[1].model.as_deref(), Some("llama-3.1-70b-instruct"));
    assert_eq!(c.default_tier, 0);
    assert_eq!(c.rules.len(), 3);
    assert_eq!(c.rules[1].min_prompt_tokens, Some(1024));
    assert_eq!(
        c.rules[2].header,
        Some(("x-customer-tier".into(), "premium".into()))
    );
    let split = c.split("chat-canary").unwrap();
    assert_eq!(split.total_weight, 100);
    assert_eq!(split.criticality, Criticality::Standard);
    let t = c.tenants.as_ref().unwrap();
    assert_eq!(t.source, TenantSource::Header("x-tenant-id".into()));
    assert_eq!(t.limits[0].0, "acme");
    assert_eq!(
        t.limits[0].1.tokens,
        Some(BucketLimit {
            per_minute: 20000,
            burst: 20000
        })
    );
    let e = c.endpoints.as_ref().unwrap();
    assert_eq!(e.max_queue, 5);
    assert!((e.max_kv_cache - 0.8).abs() < 1e-9);
    // token limits configured => stream usage injection on by default
    assert!(c.inject_stream_usage);
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(r#"{"tiers": {"only": {}}}"#).unwrap();
    assert_eq!(c.apis, DEFAULT_APIS.map(String::from).to_vec());
    assert_eq!(c.max_body_bytes, 1 << 20);
    assert_eq!(c.headers.endpoint, "x-gateway-destination-endpoint");
    assert_eq!(c.headers.prompt_tokens, "x-llm-prompt-tokens");
    assert_eq!(c.default_tier, 0);
    assert!(c.tenants.is_none() && c.endpoints.is_none());
    assert!(!c.inject_stream_usage);
}

#[test]
fn default_tier_defaults_to_first_in_document_order() {
    let c = parse(r#"{"tiers": {"zeta": {}, "alpha": {}}}"#).unwrap();
    assert_eq!(c.tiers[c.default_tier].name, "zeta");
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let e = parse_err(r#"{"tiers": {"s": {}}, "bogus": 1}"#);
    assert_eq!(e.field, "bogus");
    assert!(e.reason.contains("unknown field `bogus`"), "{e}");
    let e = parse_err(
        r#"{"tiers": {"s": {}}, "tenants": {"header": "x-t", "limits": {"acme": {"tokens_per_minut": 5}}}}"#,
    );
    assert_eq!(e.field, "tenants.limits.acme.tokens_per_minut");
    assert!(e.reason.contains("unknown field"), "{e}");
    let e = parse_err(r#"{"tiers": {"s": {"modle": "x"}}}"#);
    assert_eq!(e.field, "tiers.s.modle");
}

#[test]
fn tiers_are_required() {
    let e = parse_err(r#"{}"#);
    assert!(e.reason.contains("missing field `tiers`"), "{e}");
    let e = parse_err(r#"{"tiers": {}}"#);
    assert_eq!(e.field, "tiers");
}

#[test]
fn wrong_types_name_the_field() {
    let e = parse_err(r#"{"tiers": {"s": {}}, "max_body_bytes": "big"}"#);
    assert_eq!(e.field, "max_body_bytes");
    let e = parse_err(r#"{"tiers": {"s": {}}, "rules": [{"tier": "s", "stream": "yes"}]}"#);
    assert_eq!(e.field, "rules[0].stream");
    let e = parse_err(r#"{"tiers": {"s": {}}, "on_invalid_body": "drop"}"#);
    assert_eq!(e.field, "on_invalid_body");
}

#[test]
fn not_json_is_reported() {
    let e = parse_err("not json");
    assert_eq!(e.field, "(root)");
    let e = parse_err("");
    assert_eq!(e.field, "(root)");
}

#[test]
fn references_to_unknown_tiers_are_rejected() {
    let e = parse_err(r#"{"tiers": {"s": {}}, "default_tier": "l"}"#);
    assert_eq!(e.field, "default_tier");
    let e = parse_err(r#"{"tiers": {"s": {}}, "rules": [{"tier": "s"}, {"tier": "xl"}]}"#);
    assert_eq!(e.field, "rules[1].tier");
    assert!(e.reason.contains("xl"));
}

#[test]
fn rule_values_are_checked() {
    let e = parse_err(
        r#"{"tiers": {"s": {}}, "rules": [{"tier": "s", "min_prompt_tokens": 10, "max_prompt_tokens": 5}]}"#,
    );
    assert_eq!(e.field, "rules[0].min_prompt_tokens");
    let e = parse_err(r#"{"tiers": {"s": {}}, "rules": [{"tier": "s", "models": []}]}"#);
    assert_eq!(e.field, "rules[0].models");
    let e = parse_err(
        r#"{"tiers": {"s": {}}, "rules": [{"tier": "s", "header": {"name": "bad name", "value": "v"}}]}"#,
    );
    assert_eq!(e.field, "rules[0].header.name");
    let e = parse_err(r#"{"tiers": {"s": {}}, "rules": [{"tier": "s", "path_prefix": "v1"}]}"#);
    assert_eq!(e.field, "rules[0].path_prefix");
}

#[test]
fn rule_header_names_are_lowercased() {
    let c = parse(
        r#"{"tiers": {"s": {}}, "rules": [{"tier": "s", "header": {"name": "X-Customer", "value": "V"}}]}"#,
    )
    .unwrap();
    assert_eq!(c.rules[0].header, Some(("x-customer".into(), "V".into())));
}

#[test]
fn tier_and_model_names_are_bounded() {
    let e = parse_err(r#"{"tiers": {"a b": {}}}"#);
    assert_eq!(e.field, "tiers.a b");
    let e = parse_err(r#"{"tiers": {"s": {"model": "has space"}}}"#);
    assert_eq!(e.field, "tiers.s.model");
    let e = parse_err(r#"{"tiers": {"s": {}, "s": {}}}"#);
    assert!(e.reason.contains("duplicate key `s`"), "{e}");
}

#[test]
fn splits_are_checked() {
    let e = parse_err(r#"{"tiers": {"s": {}}, "models": {"c": {"targets": []}}}"#);
    assert_eq!(e.field, "models.c.targets");
    let e = parse_err(
        r#"{"tiers": {"s": {}}, "models": {"c": {"targets": [{"model": "a", "weight": 0}]}}}"#,
    );
    assert_eq!(e.field, "models.c.targets");
    let e = parse_err(
        r#"{"tiers": {"s": {}}, "models": {"c": {"targets": [{"model": "a", "weight": -1}]}}}"#,
    );
    assert_eq!(e.field, "models.c.targets[0].weight");
    let e = parse_err(
        r#"{"tiers": {"s": {}}, "models": {"c": {"targets": [{"model": "a", "weight": 1}], "criticality": "vip"}}}"#,
    );
    assert_eq!(e.field, "models.c.criticality");
}

#[test]
fn header_names_are_validated_and_distinct() {
    let e = parse_err(r#"{"tiers": {"s": {}}, "headers": {"tier": "x:y"}}"#);
    assert_eq!(e.field, "headers.tier");
    let e = parse_err(r#"{"tiers": {"s": {}}, "headers": {"tier": "x-a", "model": "X-A"}}"#);
    assert_eq!(e.field, "headers");
}

#[test]
fn tenants_are_checked() {
    let e = parse_err(r#"{"tiers": {"s": {}}, "tenants": {}}"#);
    assert_eq!(e.field, "tenants");
    let e = parse_err(r#"{"tiers": {"s": {}}, "tenants": {"header": "x", "jwt_claim": "sub"}}"#);
    assert_eq!(e.field, "tenants");
    let e = parse_err(
        r#"{"tiers": {"s": {}}, "tenants": {"header": "x", "default": {"requests_per_minute": 0}}}"#,
    );
    assert_eq!(e.field, "tenants.default.requests_per_minute");
    let e = parse_err(
        r#"{"tiers": {"s": {}}, "tenants": {"header": "x", "default": {"burst_tokens": 5}}}"#,
    );
    assert_eq!(e.field, "tenants.default.burst_tokens");
    let e = parse_err(
        r#"{"tiers": {"s": {}}, "tenants": {"header": "x", "limits": {"overflow": {}}}}"#,
    );
    assert_eq!(e.field, "tenants.limits.overflow");
    let e = parse_err(r#"{"tiers": {"s": {}}, "tenants": {"header": "x", "unknown": "maybe"}}"#);
    assert_eq!(e.field, "tenants.unknown");
}

#[test]
fn jwt_claim_source() {
    let c = parse(r#"{"tiers": {"s": {}}, "tenants": {"jwt_claim": "org", "unknown": "reject"}}"#)
        .unwrap();
    let t = c.tenants.unwrap();
    assert_eq!(
        t.source,
        TenantSource::JwtClaim {
            claim: "org".into(),
            payload_key: "jwt_payload".into()
        }
    );
    assert_eq!(t.unknown, UnknownTenant::Reject);
}

#[test]
fn burst_defaults_to_rate() {
    let c = parse(
        r#"{"tiers": {"s": {}}, "tenants": {"header": "x", "default": {"requests_per_minute": 7, "burst_requests": 20}}}"#,
    )
    .unwrap();
    let d = c.tenants.unwrap().default;
    assert_eq!(
        d.requests,
        Some(BucketLimit {
            per_minute: 7,
            burst: 20
        })
    );
    assert_eq!(d.tokens, None);
}

#[test]
fn endpoints_are_checked() {
    let e = parse_err(r#"{"tiers": {"s": {}}, "endpoints": {"max_kv_cache": 1.5}}"#);
    assert_eq!(e.field, "endpoints.max_kv_cache");
    let e =
        parse_err(r#"{"tiers": {"s": {}}, "endpoints": {"push_path": "/v1/completions/load"}}"#);
    assert_eq!(e.field, "endpoints.push_path");
    let e = parse_err(r#"{"tiers": {"s": {}}, "endpoints": {"stale_after_ms": 0}}"#);
    assert_eq!(e.field, "endpoints.stale_after_ms");
}

#[test]
fn max_body_bytes_bounds() {
    assert_eq!(
        parse_err(r#"{"tiers": {"s": {}}, "max_body_bytes": 0}"#).field,
        "max_body_bytes"
    );
    assert_eq!(
        parse_err(r#"{"tiers": {"s": {}}, "max_body_bytes": 1000000000000}"#).field,
        "max_body_bytes"
    );
}

#[test]
fn api_path_matching_is_segment_aware() {
    let c = parse(r#"{"tiers": {"s": {}}}"#).unwrap();
    assert!(c.is_api_path("/v1/chat/completions"));
    assert!(c.is_api_path("/v1/chat/completions?api-version=1"));
    assert!(c.is_api_path("/v1/completions/"));
    assert!(!c.is_api_path("/v1/chat/completionsX"));
    assert!(!c.is_api_path("/v1/models"));
    assert!(!c.is_api_path(""));
}

#[test]
fn error_display_names_field() {
    let e = parse_err(r#"{"tiers": {"s": {}}, "default_tier": "l"}"#);
    assert_eq!(
        e.to_string(),
        "invalid configuration: default_tier: unknown tier `l`"
    );
}
