#![allow(clippy::unwrap_used)]

use super::*;
use crate::config::Config;

fn catalog() -> Catalog {
    let cfg = Config::parse(
        br#"{"tiers": {"small": {"model": "m-small"}, "large": {}},
             "rules": [{"tier": "large", "models": ["gpt-4o"]}],
             "models": {"canary": {"targets": [{"model": "v2", "weight": 1}, {"model": "m-small", "weight": 1}]}},
             "tenants": {"header": "x-tenant", "limits": {"acme": {"requests_per_minute": 1}}}}"#,
    )
    .unwrap();
    Catalog::from_config(&cfg)
}

#[test]
fn names_follow_the_istio_convention() {
    let c = catalog();
    let k = Key::new(Metric::Requests, &[0, c.model(Some("m-small")), STATUS_2XX]);
    assert_eq!(
        c.name(&k),
        "llm_router_requests_total;tier=.=small;.;model=.=m-small;.;status=.=2xx;.;"
    );
    let k = Key::new(
        Metric::InvalidBody,
        &[invalid_reason(crate::body::InvalidBody::NotJson)],
    );
    assert_eq!(
        c.name(&k),
        "llm_router_invalid_body_total;reason=.=not_json;.;"
    );
}

#[test]
fn models_come_from_configuration_only() {
    let c = catalog();
    assert_eq!(c.models, ["m-small", "canary", "v2", "gpt-4o"]);
    let unknown = c.model(Some("random-client-model-123"));
    assert_eq!(unknown, c.model(None));
    let k = Key::new(Metric::Shed, &[unknown]);
    assert_eq!(c.name(&k), "llm_router_shed_total;model=.=other;.;");
}

#[test]
fn tenants_are_configured_or_reserved() {
    let c = catalog();
    assert_eq!(c.tenants, ["acme", "default", "anonymous", "overflow"]);
    assert_eq!(c.tenant("acme"), 0);
    assert_eq!(c.tenant("someone-else"), c.tenant("default"));
    let k = Key::new(Metric::RateLimited, &[c.tenant("overflow"), 1]);
    assert_eq!(
        c.name(&k),
        "llm_router_rate_limited_total;tenant=.=overflow;.;bucket=.=tokens;.;"
    );
}

#[test]
fn endpoint_labels_are_bounded() {
    let mut c = catalog();
    for i in 0..MAX_ENDPOINT_LABELS + 50 {
        c.endpoint(&format!("10.0.{}.{}:8000", i / 250, i % 250));
    }
    assert_eq!(c.endpoints.len(), MAX_ENDPOINT_LABELS);
    let late = c.endpoint("10.9.9.9:1");
    let k = Key::new(Metric::EndpointPicked, &[0, late]);
    assert_eq!(
        c.name(&k),
        "llm_router_endpoint_picked_total;pool=.=small;.;endpoint=.=other;.;"
    );
}

#[test]
fn status_classes() {
    assert_eq!(STATUS[usize::from(status_class(200))], "2xx");
    assert_eq!(STATUS[usize::from(status_class(429))], "4xx");
    assert_eq!(STATUS[usize::from(status_class(503))], "5xx");
    assert_eq!(STATUS[usize::from(status_class(101))], "other");
}

#[test]
fn every_metric_has_a_base_name_with_prefix() {
    for m in Metric::ALL {
        assert!(m.base().starts_with("llm_router_"));
        assert!(!m.label_names().is_empty());
    }
}

#[test]
fn label_values_that_would_break_a_stat_name_are_refused() {
    for ok in [
        "small",
        "llama-3.1-8b",
        "meta-llama/Llama-3.1-8B:v2",
        "a.b_c@d",
    ] {
        assert_eq!(label_value_problem(ok), None, "{ok}");
    }
    for bad in [
        "",
        "a;b",
        "a=b",
        "x.=y",
        "a b",
        "a\tb",
        "a\nb",
        "caf\u{e9}",
        "a\"b",
        "a\\b",
    ] {
        assert!(label_value_problem(bad).is_some(), "{bad:?}");
    }
    assert!(label_value_problem(&"m".repeat(MAX_LABEL_VALUE)).is_none());
    assert!(label_value_problem(&"m".repeat(MAX_LABEL_VALUE + 1)).is_some());
}
