//! Envoy's rate-limit service on the quota service's port, with a real redis-server: OK,
//! OVER_LIMIT with hits_addend (duration_until_reset, current_limit), descriptors that are
//! not ours, refunds, and the same buckets as the Quota API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod quota_common;

use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{rate_limit::Unit, Code};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use llm_router_extproc::quota::config;
use llm_router_extproc::quota::proto::{Bucket, TakeItem, TakeRequest};
use quota_common::{metric, Redis, Service};
use tonic::transport::Channel;

const CONFIG: &str = r#"{"tenants": {"header": "x-tenant-id",
    "default": {"requests_per_minute": 600, "tokens_per_minute": 100000},
    "limits": {"acme": {"requests_per_minute": 60, "burst_requests": 3,
                        "tokens_per_minute": 600, "burst_tokens": 100}}}}"#;

fn ours(tenant: &str, limit: &str, hits: Option<u64>) -> RateLimitDescriptor {
    descriptor(
        &[("llm_router_tenant", tenant), ("llm_router_limit", limit)],
        hits,
    )
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

async fn ask(
    c: &mut RateLimitServiceClient<Channel>,
    descriptors: Vec<RateLimitDescriptor>,
    hits: u32,
) -> RateLimitResponse {
    c.should_rate_limit(RateLimitRequest {
        domain: "llm_router".into(),
        descriptors,
        hits_addend: hits,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn started(r: &Redis) -> (Service, RateLimitServiceClient<Channel>) {
    let limits = config::parse(CONFIG.as_bytes()).unwrap();
    let svc = Service::start(&r.url(), Duration::from_millis(500), Some(limits)).await;
    let c = RateLimitServiceClient::new(svc.channel().await);
    (svc, c)
}

#[tokio::test]
async fn ok_then_over_limit_with_hits_addend() {
    let r = Redis::start();
    let (svc, mut c) = started(&r).await;
    // 80 of 100 tokens (descriptor hits) and one request (no hits anywhere: 1).
    let got = ask(
        &mut c,
        vec![
            ours("acme", "tokens", Some(80)),
            ours("acme", "requests", None),
        ],
        0,
    )
    .await;
    assert_eq!(got.overall_code, Code::Ok as i32, "{got:?}");
    assert_eq!(got.statuses.len(), 2);
    assert_eq!(got.statuses[0].limit_remaining, 20);
    assert_eq!(got.statuses[1].limit_remaining, 2);
    // 30 more do not fit: OVER_LIMIT, nothing taken, and when they would (10 at 10 a second).
    let got = ask(&mut c, vec![ours("acme", "tokens", None)], 30).await;
    assert_eq!(got.overall_code, Code::OverLimit as i32, "{got:?}");
    let s = &got.statuses[0];
    assert_eq!(s.code, Code::OverLimit as i32);
    let reset = s.duration_until_reset.unwrap();
    let reset_ms = reset.seconds * 1000 + i64::from(reset.nanos) / 1_000_000;
    assert!((1..=1000).contains(&reset_ms), "{reset:?}");
    let limit = s.current_limit.clone().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit),
        (600, Unit::Minute as i32)
    );
    assert!(s.limit_remaining >= 20 && s.limit_remaining < 30, "{s:?}");
    // The same bucket as the Quota API: 20 are there.
    let mut q = llm_router_extproc::quota::proto::QuotaClient::new(svc.channel().await);
    let got = q
        .take(TakeRequest {
            items: vec![TakeItem {
                bucket: Some(Bucket {
                    tenant: "acme".into(),
                    limit: "tokens".into(),
                    per_minute: 600,
                    capacity: 100,
                }),
                want: 20,
                min: 20,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.grants[0].granted, 20);
    // Requests: burst 3, two left; the third and fourth of this call do not fit together.
    let got = ask(&mut c, vec![ours("acme", "requests", None)], 3).await;
    assert_eq!(got.overall_code, Code::OverLimit as i32);
    let got = ask(&mut c, vec![ours("acme", "requests", None)], 2).await;
    assert_eq!(got.overall_code, Code::Ok as i32);
    let text = svc.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            r#"llm_router_quota_calls_total{method="should_rate_limit",result="denied"}"#
        ),
        Some(2)
    );
    svc.stop().await;
}

#[tokio::test]
async fn descriptors_that_are_not_ours_are_ok() {
    let r = Redis::start();
    let (svc, mut c) = started(&r).await;
    let got = ask(
        &mut c,
        vec![
            descriptor(&[("remote_address", "10.0.0.1")], Some(1_000_000)),
            descriptor(&[("llm_router_tenant", "acme")], Some(1_000_000)),
            descriptor(
                &[
                    ("llm_router_tenant", "acme"),
                    ("llm_router_limit", "tokens"),
                    ("path", "/"),
                ],
                Some(1_000_000),
            ),
        ],
        0,
    )
    .await;
    assert_eq!(got.overall_code, Code::Ok as i32);
    assert!(got.statuses.iter().all(|s| s.code == Code::Ok as i32));
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut r.conn()).unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    // An unconfigured tenant gets the default limits.
    let got = ask(&mut c, vec![ours("u/someone", "tokens", Some(100_001))], 0).await;
    assert_eq!(got.overall_code, Code::OverLimit as i32);
    let got = ask(&mut c, vec![ours("u/someone", "tokens", Some(100_000))], 0).await;
    assert_eq!(got.overall_code, Code::Ok as i32);
    // A tenant name no bucket can have is over limit, whatever the other descriptors say.
    let got = ask(
        &mut c,
        vec![ours("}x", "requests", None), ours("acme", "requests", None)],
        0,
    )
    .await;
    assert_eq!(got.overall_code, Code::OverLimit as i32);
    assert_eq!(got.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(got.statuses[1].code, Code::Ok as i32);
    // A bad limit name in our descriptor is the caller's error.
    let err = c
        .should_rate_limit(RateLimitRequest {
            domain: "llm_router".into(),
            descriptors: vec![ours("acme", "cost", None)],
            hits_addend: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    svc.stop().await;
}

#[tokio::test]
async fn negative_hits_refund_and_redis_down_is_unavailable() {
    let mut r = Redis::start();
    let (svc, mut c) = started(&r).await;
    let got = ask(&mut c, vec![ours("acme", "tokens", Some(100))], 0).await;
    assert_eq!(got.overall_code, Code::Ok as i32);
    let mut refund = ours("acme", "tokens", Some(60));
    refund.is_negative_hits = true;
    ask(&mut c, vec![refund], 0).await;
    let got = ask(&mut c, vec![ours("acme", "tokens", Some(60))], 0).await;
    assert_eq!(got.overall_code, Code::Ok as i32, "{got:?}");
    r.kill();
    let err = c
        .should_rate_limit(RateLimitRequest {
            domain: "llm_router".into(),
            descriptors: vec![ours("acme", "tokens", None)],
            hits_addend: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    svc.stop().await;
}
