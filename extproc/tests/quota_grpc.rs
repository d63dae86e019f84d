//! The quota service end to end: a tonic client, the service in-process, a real redis-server.
//! Take / Give / Charge, INVALID_ARGUMENT, Redis killed or hung -> UNAVAILABLE, Redis back ->
//! served again, metrics and health, and N parallel clients never getting more than capacity.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod quota_common;

use std::time::{Duration, Instant};

use llm_router_extproc::quota::proto::{
    AmountItem, AmountRequest, Bucket, QuotaClient, TakeItem, TakeRequest, SERVICE_NAME,
};
use quota_common::{metric, Redis, Service};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

fn b(tenant: &str, limit: &str, per_minute: u64, capacity: u64) -> Option<Bucket> {
    Some(Bucket {
        tenant: tenant.into(),
        limit: limit.into(),
        per_minute,
        capacity,
    })
}

fn take1(bucket: Option<Bucket>, want: i64, min: i64) -> TakeRequest {
    TakeRequest {
        items: vec![TakeItem { bucket, want, min }],
    }
}

fn amount1(bucket: Option<Bucket>, amount: i64) -> AmountRequest {
    AmountRequest {
        items: vec![AmountItem { bucket, amount }],
    }
}

#[tokio::test]
async fn take_give_charge() {
    let r = Redis::start();
    let svc = Service::start(&r.url(), Duration::from_millis(500), None).await;
    let mut c = svc.client().await;
    let req = b("acme", "requests", 60, 10);
    let tok = b("acme", "tokens", 6000, 1000);
    let got = c
        .take(TakeRequest {
            items: vec![
                TakeItem {
                    bucket: req.clone(),
                    want: 4,
                    min: 1,
                },
                TakeItem {
                    bucket: tok.clone(),
                    want: 700,
                    min: 500,
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.retry_after_ms, 0);
    let grants: Vec<(i64, i64)> = got.grants.iter().map(|g| (g.granted, g.level)).collect();
    assert_eq!(grants, vec![(4, 6), (700, 300)]);
    // 600 more tokens do not fit: nothing is taken, retry when they would.
    let got = c
        .take(take1(tok.clone(), 600, 600))
        .await
        .unwrap()
        .into_inner();
    assert!(
        got.retry_after_ms > 0 && got.retry_after_ms <= 3000,
        "{got:?}"
    );
    assert_eq!(got.grants[0].granted, 0);
    let levels = c
        .give(amount1(req.clone(), 3))
        .await
        .unwrap()
        .into_inner()
        .levels;
    assert_eq!(levels, vec![9]);
    let levels = c
        .charge(amount1(req.clone(), 30))
        .await
        .unwrap()
        .into_inner()
        .levels;
    assert_eq!(levels, vec![-21]);
    // Any bytes a client can put in a string are a tenant.
    let odd = b("a}{:\u{0}\u{7f}é\r\n", "tokens", 60, 3);
    let got = c.take(take1(odd, 2, 2)).await.unwrap().into_inner();
    assert_eq!((got.grants[0].granted, got.grants[0].level), (2, 1));
    let text = svc.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            r#"llm_router_quota_calls_total{method="take",result="ok"}"#
        ),
        Some(2)
    );
    assert_eq!(
        metric(
            &text,
            r#"llm_router_quota_calls_total{method="take",result="denied"}"#
        ),
        Some(1)
    );
    assert_eq!(
        metric(
            &text,
            r#"llm_router_quota_calls_total{method="charge",result="ok"}"#
        ),
        Some(1)
    );
    assert_eq!(metric(&text, "llm_router_quota_redis_up"), Some(1));
    svc.stop().await;
}

#[tokio::test]
async fn bad_requests_are_invalid_argument() {
    let r = Redis::start();
    let svc = Service::start(&r.url(), Duration::from_millis(500), None).await;
    let mut c = svc.client().await;
    let ok = || b("acme", "tokens", 60, 10);
    let long = "x".repeat(257);
    let cases: Vec<(TakeRequest, &str)> = vec![
        (TakeRequest { items: vec![] }, "items"),
        (take1(None, 1, 1), "items[0].bucket"),
        (
            take1(b("acme", "cost", 60, 10), 1, 1),
            "items[0].bucket.limit",
        ),
        (
            take1(b("", "tokens", 60, 10), 1, 1),
            "items[0].bucket.tenant",
        ),
        (
            take1(b(&long, "tokens", 60, 10), 1, 1),
            "items[0].bucket.tenant",
        ),
        (
            take1(b("acme", "tokens", 0, 10), 1, 1),
            "items[0].bucket.per_minute",
        ),
        (
            take1(b("acme", "tokens", 60, 0), 1, 1),
            "items[0].bucket.capacity",
        ),
        (
            take1(b("acme", "tokens", 60, (1 << 33) + 1), 1, 1),
            "items[0].bucket.capacity",
        ),
        (take1(ok(), -1, 0), "items[0].want"),
        (take1(ok(), 1, -5), "items[0].min"),
        (take1(ok(), i64::MAX, 0), "items[0].want"),
        (
            TakeRequest {
                items: vec![
                    TakeItem {
                        bucket: ok(),
                        want: 1,
                        min: 1,
                    },
                    TakeItem {
                        bucket: b("other", "requests", 60, 10),
                        want: 1,
                        min: 1,
                    },
                ],
            },
            "items[1].bucket.tenant",
        ),
        (
            TakeRequest {
                items: vec![
                    TakeItem {
                        bucket: ok(),
                        want: 1,
                        min: 1
                    };
                    2
                ],
            },
            "items[1].bucket.limit",
        ),
        (
            TakeRequest {
                items: vec![
                    TakeItem {
                        bucket: ok(),
                        want: 1,
                        min: 1
                    };
                    3
                ],
            },
            "items",
        ),
    ];
    for (request, field) in cases {
        let got = c.take(request.clone()).await;
        match got {
            Err(s) => {
                assert_eq!(s.code(), Code::InvalidArgument, "{request:?}: {s:?}");
                assert!(
                    s.message().starts_with(field),
                    "{request:?}: {}",
                    s.message()
                );
            }
            Ok(r) => panic!("{request:?} accepted: {r:?}"),
        }
    }
    for request in [amount1(ok(), -1), AmountRequest { items: vec![] }] {
        for give in [true, false] {
            let got = if give {
                c.give(request.clone()).await
            } else {
                c.charge(request.clone()).await
            };
            assert_eq!(got.map(|_| ()).unwrap_err().code(), Code::InvalidArgument);
        }
    }
    // Nothing of that reached Redis.
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut r.conn()).unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    let text = svc.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            r#"llm_router_quota_calls_total{method="take",result="invalid"}"#
        ),
        Some(14)
    );
    svc.stop().await;
}

async fn quota_health(svc: &Service) -> i32 {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", svc.health))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = HealthClient::new(channel);
    h.check(HealthCheckRequest {
        service: SERVICE_NAME.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .status
}

/// Calls until Redis answers again (the connection manager reconnects by itself).
async fn until_served(c: &mut QuotaClient, request: &TakeRequest) -> Duration {
    let start = Instant::now();
    loop {
        match c.take(request.clone()).await {
            Ok(_) => return start.elapsed(),
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "not served again: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test]
async fn redis_down_is_unavailable_and_back_is_served() {
    let mut r = Redis::start();
    let port = r.port;
    let timeout = Duration::from_millis(200);
    let svc = Service::start(&r.url(), timeout, None).await;
    let mut c = svc.client().await;
    let request = take1(b("acme", "requests", 60, 10), 1, 1);
    c.take(request.clone()).await.unwrap();

    // Killed: refused connections fail at once, never hang.
    r.kill();
    for _ in 0..3 {
        let start = Instant::now();
        let got = c.take(request.clone()).await;
        assert_eq!(got.unwrap_err().code(), Code::Unavailable);
        assert!(start.elapsed() < timeout * 10, "took {:?}", start.elapsed());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = svc.metrics_text().await;
    assert_eq!(metric(&text, "llm_router_quota_redis_up"), Some(0));
    assert!(
        metric(
            &text,
            r#"llm_router_quota_redis_errors_total{kind="unavailable"}"#
        )
        .unwrap()
            >= 3
    );
    assert_eq!(quota_health(&svc).await, ServingStatus::NotServing as i32);

    // Back on the same port: served again without a restart of the service; the restarted
    // Redis has no script cached, so this also goes through NOSCRIPT.
    let r = Redis::start_on(port);
    until_served(&mut c, &request).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(quota_health(&svc).await, ServingStatus::Serving as i32);
    let text = svc.metrics_text().await;
    assert_eq!(metric(&text, "llm_router_quota_redis_up"), Some(1));
    drop(r);
    svc.stop().await;
}

#[tokio::test]
async fn a_hung_redis_is_unavailable_after_the_timeout() {
    let r = Redis::start();
    let timeout = Duration::from_millis(200);
    let svc = Service::start(&r.url(), timeout, None).await;
    let mut c = svc.client().await;
    let request = take1(b("acme", "requests", 60, 10), 1, 1);
    c.take(request.clone()).await.unwrap();
    r.signal("STOP");
    let start = Instant::now();
    let got = c.take(request.clone()).await;
    let took = start.elapsed();
    assert_eq!(got.unwrap_err().code(), Code::Unavailable);
    // Bounded by the timeout (with room for a loaded machine), not by TCP's minutes.
    assert!(took >= timeout && took < timeout * 10, "took {took:?}");
    r.signal("CONT");
    until_served(&mut c, &request).await;
    svc.stop().await;
}

#[tokio::test]
async fn parallel_clients_never_get_more_than_capacity() {
    let r = Redis::start();
    let svc = Service::start(&r.url(), Duration::from_secs(2), None).await;
    // One a minute: at most one more refills during the test.
    let capacity = 200u64;
    let bucket = b("crowd", "tokens", 1, capacity);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut c = svc.client().await;
        let bucket = bucket.clone();
        tasks.push(tokio::spawn(async move {
            let mut total = 0i64;
            for j in 0..40 {
                // Mixed shapes: all-or-nothing takes and take-what-is-there.
                let (want, min) = if (i + j) % 2 == 0 { (3, 3) } else { (5, 0) };
                let got = c
                    .take(take1(bucket.clone(), want, min))
                    .await
                    .unwrap()
                    .into_inner();
                total += got.grants[0].granted;
            }
            total
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let refill = start.elapsed().as_secs() / 60 + 1;
    // 640 calls asked for far more than there is: all of it is handed out, never more.
    assert!(total as u64 >= capacity, "granted {total}");
    assert!(
        total as u64 <= capacity + refill,
        "granted {total} of {capacity}"
    );
    svc.stop().await;
}
