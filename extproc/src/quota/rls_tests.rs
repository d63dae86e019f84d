use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::google::protobuf::UInt64Value;

use super::*;
use crate::quota::config::parse;

fn limits() -> Limits {
    let json = br#"{"tenants": {"default": {"requests_per_minute": 10},
        "limits": {"acme": {"requests_per_minute": 60, "tokens_per_minute": 1000, "burst_tokens": 50}}}}"#;
    parse(json).unwrap_or_default()
}

fn descriptor(entries: &[(&str, &str)], hits: Option<u64>) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        hits_addend: hits.map(|value| UInt64Value { value }),
        ..Default::default()
    }
}

fn request(descriptors: Vec<RateLimitDescriptor>, hits: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: "llm_router".into(),
        descriptors,
        hits_addend: hits,
    }
}

fn take_of(p: &Plan) -> Option<(&str, Limit, u64, u64, u64)> {
    match p {
        Plan::Take(t) => Some((
            t.bucket.tenant.as_str(),
            t.bucket.limit,
            t.bucket.capacity,
            t.want,
            t.min,
        )),
        _ => None,
    }
}

#[test]
fn hits_come_from_the_descriptor_then_the_request_then_one() {
    let l = limits();
    let r = request(
        vec![
            descriptor(&[(TENANT_KEY, "acme"), (LIMIT_KEY, "tokens")], Some(40)),
            descriptor(&[(LIMIT_KEY, "requests"), (TENANT_KEY, "acme")], None),
        ],
        3,
    );
    let Ok(p) = plan(&r, &l) else {
        unreachable!("refused")
    };
    assert_eq!(take_of(&p[0]), Some(("acme", Limit::Tokens, 50, 40, 40)));
    assert_eq!(take_of(&p[1]), Some(("acme", Limit::Requests, 60, 3, 3)));
    let r = request(
        vec![descriptor(
            &[(TENANT_KEY, "u/x"), (LIMIT_KEY, "requests")],
            None,
        )],
        0,
    );
    let Ok(p) = plan(&r, &l) else {
        unreachable!("refused")
    };
    assert_eq!(take_of(&p[0]), Some(("u/x", Limit::Requests, 10, 1, 1)));
}

#[test]
fn foreign_descriptors_and_unlimited_buckets_pass() {
    let l = limits();
    let r = request(
        vec![
            descriptor(&[("remote_address", "10.0.0.1")], None),
            descriptor(&[(TENANT_KEY, "acme")], None),
            descriptor(
                &[(TENANT_KEY, "acme"), (LIMIT_KEY, "tokens"), ("x", "y")],
                None,
            ),
            // The default has no token limit.
            descriptor(&[(TENANT_KEY, "other"), (LIMIT_KEY, "tokens")], Some(5)),
        ],
        0,
    );
    assert_eq!(plan(&r, &l), Ok(vec![Plan::Pass; 4]));
}

#[test]
fn any_hit_count_is_planned() {
    let l = limits();
    let r = request(vec![ours_u64(u64::MAX), ours_u64(1 << 53), ours_u64(0)], 0);
    let Ok(p) = plan(&r, &l) else {
        unreachable!("refused")
    };
    // Capacity 50: anything above never fits (min = capacity + 1); 0 is a check.
    assert_eq!(take_of(&p[0]), Some(("acme", Limit::Tokens, 50, 50, 51)));
    assert_eq!(take_of(&p[1]), Some(("acme", Limit::Tokens, 50, 50, 51)));
    assert_eq!(take_of(&p[2]), Some(("acme", Limit::Tokens, 50, 0, 0)));
}

fn ours_u64(hits: u64) -> RateLimitDescriptor {
    descriptor(&[(TENANT_KEY, "acme"), (LIMIT_KEY, "tokens")], Some(hits))
}

#[test]
fn tenant_names_no_bucket_can_have_are_refused_not_errors() {
    let l = limits();
    let long = "x".repeat(300);
    for tenant in ["", "}x", long.as_str()] {
        let r = request(
            vec![descriptor(
                &[(TENANT_KEY, tenant), (LIMIT_KEY, "requests")],
                None,
            )],
            0,
        );
        assert_eq!(plan(&r, &l), Ok(vec![Plan::Refuse]), "{tenant:?}");
    }
}

#[test]
fn bad_limit_names_and_negative_hits() {
    let l = limits();
    let r = request(
        vec![descriptor(
            &[(TENANT_KEY, "acme"), (LIMIT_KEY, "cost")],
            None,
        )],
        0,
    );
    assert!(plan(&r, &l).is_err());
    let mut d = descriptor(&[(TENANT_KEY, "acme"), (LIMIT_KEY, "tokens")], Some(7));
    d.is_negative_hits = true;
    let Ok(p) = plan(&request(vec![d], 0), &l) else {
        unreachable!("refused")
    };
    assert!(matches!(&p[0], Plan::Give(m) if m.amount == 7));
}

#[test]
fn reset_is_when_the_bucket_is_full() {
    let l = limits();
    let r = request(
        vec![descriptor(
            &[(TENANT_KEY, "acme"), (LIMIT_KEY, "requests")],
            None,
        )],
        0,
    );
    let Ok(p) = plan(&r, &l) else {
        unreachable!("refused")
    };
    let Plan::Take(t) = &p[0] else {
        unreachable!("not a take")
    };
    // 60 a minute: one per second.
    assert_eq!(until_full(t, 59), 1000);
    assert_eq!(until_full(t, 60), 0);
    assert_eq!(until_full(t, -60), 120_000);
}
