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
fn prefix_is_off_by_default_and_checked() {
    let c = parse(r#"{"tiers": {"s": {}}, "endpoints": {}}"#).unwrap();
    assert!(c.endpoints.unwrap().prefix.is_none());
    let c = parse(r#"{"tiers": {"s": {}}, "endpoints": {"prefix": {}}}"#).unwrap();
    let p = c.endpoints.unwrap().prefix.unwrap();
    assert_eq!(
        (p.block_bytes, p.max_blocks, p.index_entries),
        (256, 128, 16384)
    );
    assert_eq!((p.weight, p.load_weight, p.min_match_blocks), (2.0, 1.0, 1));
    let c = parse(
        r#"{"tiers": {"s": {}}, "endpoints": {"prefix": {"block_tokens": 16, "max_blocks": 8,
            "index_entries": 64, "weight": 0.5, "load_weight": 3, "min_match_blocks": 2, "seed": 9}}}"#,
    )
    .unwrap();
    let p = c.endpoints.unwrap().prefix.unwrap();
    assert_eq!((p.block_bytes, p.max_blocks, p.index_entries), (64, 8, 64));
    assert_eq!(
        (p.weight, p.load_weight, p.min_match_blocks, p.seed),
        (0.5, 3.0, 2, 9)
    );
    for (body, field) in [
        (r#"{"block_bytes": 8}"#, "endpoints.prefix.block_bytes"),
        (
            r#"{"block_bytes": 64, "block_tokens": 16}"#,
            "endpoints.prefix.block_tokens",
        ),
        (
            r#"{"block_tokens": 100000}"#,
            "endpoints.prefix.block_tokens",
        ),
        (r#"{"max_blocks": 0}"#, "endpoints.prefix.max_blocks"),
        (r#"{"max_blocks": 1025}"#, "endpoints.prefix.max_blocks"),
        (r#"{"index_entries": 2}"#, "endpoints.prefix.index_entries"),
        (r#"{"weight": -1}"#, "endpoints.prefix.weight"),
        (r#"{"load_weight": 1000}"#, "endpoints.prefix.load_weight"),
        (
            r#"{"min_match_blocks": 200}"#,
            "endpoints.prefix.min_match_blocks",
        ),
        (r#"{"blocks": 3}"#, "endpoints.prefix"),
    ] {
        let cfg = format!(r#"{{"tiers": {{"s": {{}}}}, "endpoints": {{"prefix": {body}}}}}"#);
        let e = parse_err(&cfg);
        assert!(e.field.starts_with(field), "{body}: {e}");
    }
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

/// A configuration with one field replaced by `value` at `path` (a JSON pointer).
fn with(path: &str, value: serde_json::Value) -> String {
    let mut v: serde_json::Value = serde_json::from_str(SPEC_EXAMPLE).unwrap();
    let (parent, key) = path.rsplit_once('/').unwrap();
    match v.pointer_mut(parent).unwrap() {
        serde_json::Value::Object(m) => {
            m.insert(key.to_string(), value);
        }
        serde_json::Value::Array(a) => a[key.parse::<usize>().unwrap()] = value,
        _ => panic!("{path}"),
    }
    v.to_string()
}

#[test]
fn every_configured_label_value_is_checked_by_the_metrics_validator() {
    use serde_json::json;
    for bad in [
        "a;b",
        "a=b",
        "x.=y",
        "has space",
        "tab\there",
        "caf\u{e9}",
        "",
        "q\"",
        "\u{7f}",
    ] {
        let cases = [
            (with("/rules/0/models/1", json!(bad)), "rules[0].models[1]"),
            (with("/tiers/small/model", json!(bad)), "tiers.small.model"),
            (
                with("/models/chat-canary/targets/0/model", json!(bad)),
                "models.chat-canary.targets[0].model",
            ),
        ];
        for (config, field) in cases {
            let e = parse_err(&config);
            assert_eq!(e.field, field, "{bad:?}: {e}");
            assert_eq!(
                Some(e.reason.as_str()),
                crate::metrics::label_value_problem(bad),
                "{bad:?}"
            );
        }
    }
    let long = "m".repeat(257);
    assert_eq!(
        parse_err(&with("/rules/0/models/0", json!(long))).field,
        "rules[0].models[0]"
    );
    assert!(parse(&with("/rules/0/models/0", json!("m".repeat(256)))).is_ok());
    // '/' ':' '@' '.' are fine in a model name (org/model:tag)
    assert!(parse(&with(
        "/rules/0/models/0",
        json!("meta-llama/Llama-3.1-8B:v2@x.y")
    ))
    .is_ok());
    // split names, tier names and tenant names go through it as well
    let e = parse_err(
        r#"{"tiers": {"s": {}}, "models": {"a;b": {"targets": [{"model": "m", "weight": 1}]}}}"#,
    );
    assert_eq!(e.field, "models.a;b");
    let e = parse_err(r#"{"tiers": {"s;x=.=y": {}}}"#);
    assert_eq!(e.field, "tiers.s;x=.=y");
    let e =
        parse_err(r#"{"tiers": {"s": {}}, "tenants": {"header": "x-t", "limits": {"a=b": {}}}}"#);
    assert_eq!(e.field, "tenants.limits.a=b");
    // a name that cannot be shown as it is is quoted in the field
    let e = parse_err("{\"tiers\": {\"a\\u0000b\": {}}}");
    assert_eq!(e.field, "tiers.\"a\\0b\"");
}

#[test]
fn the_tenant_header_cannot_be_one_the_filter_strips_or_a_pseudo_header() {
    use serde_json::json;
    for h in [
        "x-llm-model-type",
        "X-Model-Id",
        "x-gateway-destination-endpoint",
        "x-llm-prompt-tokens",
    ] {
        let e = parse_err(&with("/tenants/header", json!(h)));
        assert_eq!(e.field, "tenants.header", "{h}");
        assert!(e.reason.contains("removes the client's value"), "{e}");
    }
    // also when `headers` renames them
    let mut v: serde_json::Value = serde_json::from_str(SPEC_EXAMPLE).unwrap();
    v["headers"]["tier"] = json!("x-tenant-id");
    assert_eq!(parse_err(&v.to_string()).field, "tenants.header");
    for h in [":authority", ":path"] {
        let e = parse_err(&with("/tenants/header", json!(h)));
        assert_eq!(e.field, "tenants.header");
        assert!(e.reason.contains("pseudo-header"), "{e}");
    }
    assert_eq!(
        parse_err(&with("/tenants/header", json!("x tenant"))).field,
        "tenants.header"
    );
}

#[test]
fn header_names_and_values_from_the_configuration_are_checked() {
    use serde_json::json;
    // the filter's own headers: tokens, and never a header that carries the request itself
    for (field, value) in [
        ("tier", "content-length"),
        ("model", "Host"),
        ("endpoint", "authorization"),
        ("prompt_tokens", "transfer-encoding"),
        ("tier", "x\u{e9}"),
        ("tier", ""),
    ] {
        let e = parse_err(&with(&format!("/headers/{field}"), json!(value)));
        assert_eq!(e.field, format!("headers.{field}"), "{value:?}");
    }
    // a rule header that the filter strips could be chosen by the client
    let e = parse_err(&with(
        "/rules/2/header",
        json!({"name": "x-llm-model-type", "value": "large"}),
    ));
    assert_eq!(e.field, "rules[2].header.name");
    // values that can never match
    for v in [" premium", "premium ", "a\u{1}b", "line\nbreak"] {
        let e = parse_err(&with(
            "/rules/2/header",
            json!({"name": "x-customer-tier", "value": v}),
        ));
        assert_eq!(e.field, "rules[2].header.value", "{v:?}");
    }
    // the criticality header
    let e = parse_err(&with("/endpoints/criticality_header", json!("x-model-id")));
    assert_eq!(e.field, "endpoints.criticality_header");
    let e = parse_err(&with("/endpoints/criticality_header", json!("bad header")));
    assert_eq!(e.field, "endpoints.criticality_header");
    assert!(parse(&with("/endpoints/criticality_header", json!("x-priority"))).is_ok());
}

#[test]
fn paths_and_names_that_could_never_match_are_refused() {
    use serde_json::json;
    for p in [
        "/v1//chat",
        "/v1/./chat",
        "/v1/../x",
        "/v1/chat%2Fcompletions",
        "/v1?x",
        "/a b",
    ] {
        assert_eq!(
            parse_err(&with("/apis/0", json!(p))).field,
            "apis[0]",
            "{p}"
        );
        let e = parse_err(&with("/rules/0/path_prefix", json!(p)));
        assert_eq!(e.field, "rules[0].path_prefix", "{p}");
        let e = parse_err(&with("/endpoints/push_path", json!(p)));
        assert_eq!(e.field, "endpoints.push_path", "{p}");
    }
    assert!(parse(&with("/apis/0", json!("/openai/deployments/v1.2/chat"))).is_ok());
    for env in ["", "1ABC", "A-B", "A B"] {
        let e = parse_err(&with("/endpoints/push_token_env", json!(env)));
        assert_eq!(e.field, "endpoints.push_token_env", "{env:?}");
    }
    let e = parse_err(r#"{"tiers": {"s": {}}, "tenants": {"jwt_claim": ""}}"#);
    assert_eq!(e.field, "tenants.jwt_claim");
    let e = parse_err(
        r#"{"tiers": {"s": {}}, "tenants": {"jwt_claim": "sub", "jwt_payload_key": ""}}"#,
    );
    assert_eq!(e.field, "tenants.jwt_payload_key");
}
