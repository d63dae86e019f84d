//! Global limits end to end in host-sim: two proxies (two hosts, each with its own shared
//! data, like two Envoy replicas) running the real filter, the real quota service (in-process,
//! `llm_router_extproc::quota`) and a real redis-server the test starts; the filter's gRPC
//! calls are made for real (`grpc_clusters`, as `--grpc-cluster quota=URL`). A missing
//! redis-server or `dist/llm_router.wasm` fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use common::*;
use host_sim::grpc_call::Clusters;
use host_sim::Host;
use llm_router_extproc::quota::proto::{AmountItem, AmountRequest, Bucket, QuotaClient};
use llm_router_extproc::quota::script::Store;
use llm_router_extproc::quota::server::{QuotaBound, QuotaServe};
use serde_json::{json, Value};

/// redis-server: $REDIS_SERVER, else what scripts/redis-bin.sh prints (installing Debian's
/// package when needed).
fn redis_bin() -> String {
    if let Some(p) = std::env::var("REDIS_SERVER").ok().filter(|p| !p.is_empty()) {
        return p;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/redis-bin.sh");
    let out = Command::new(script)
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/redis-bin.sh");
    assert!(
        out.status.success(),
        "redis-server is required for this test"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start_on(port: u16) -> Redis {
        let child = Command::new(redis_bin())
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(port) {
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { port, child }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The quota service on a free port, plaintext, served by `rt`.
fn quota_service(rt: &tokio::runtime::Runtime, redis_port: u16) -> SocketAddr {
    let url = format!("redis://127.0.0.1:{redis_port}");
    rt.block_on(async {
        let store = Store::new(&url, Duration::from_millis(500)).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bound = QuotaBound::bind(any, any, any).await.unwrap();
        let grpc = bound.local_addrs()[0];
        let serve = QuotaServe {
            store,
            limits: None,
            tls: None,
            drain: Duration::from_secs(1),
        };
        tokio::spawn(async move {
            let _ = bound.run(serve, std::future::pending::<()>()).await;
        });
        grpc
    })
}

/// A bucket's level in Redis, read through the service (a charge of 0).
fn level(rt: &tokio::runtime::Runtime, grpc: SocketAddr, tenant: &str, capacity: u64) -> i64 {
    rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let bucket = Bucket {
            tenant: tenant.into(),
            limit: "requests".into(),
            per_minute: 1,
            capacity,
        };
        let r = AmountRequest {
            items: vec![AmountItem {
                bucket: Some(bucket),
                amount: 0,
            }],
        };
        let answer = QuotaClient::new(channel).charge(r).await.unwrap();
        answer.into_inner().levels[0]
    })
}

fn config() -> Value {
    // 1 request a minute: Redis refills nothing that matters during the test.
    let limits = json!({"requests_per_minute": 1, "burst_requests": 20});
    json!({
        "tiers": {"small": {"model": "s"}},
        "tenants": {
            "header": "x-tenant-id",
            "default": limits,
            "limits": {"acme": limits, "beta": limits},
            "global": {"cluster": "quota", "lease_requests": 3, "replicas": 2,
                       "on_outage": "static_share", "timeout_ms": 1000,
                       "refill_interval_ms": 100, "idle_ms": 60000}
        }
    })
}

fn replica(grpc: SocketAddr) -> Result<Host> {
    let path = wasm_path();
    if !path.exists() {
        bail!("{} does not exist; run `make build`", path.display());
    }
    let clusters = Clusters::parse(&[format!("quota=http://{grpc}")]).map_err(|e| anyhow!(e))?;
    let mut h = Host::builder()
        .wasm_file(&path)
        .plugin_config(config().to_string())
        .grpc_clusters(clusters)
        .build()?;
    h.start()?;
    Ok(h)
}

/// One request; `None` when admitted (answered 200), else the local reply's status and
/// `retry-after`.
fn one(h: &mut Host, tenant: &str) -> Result<Option<(u32, String)>> {
    let mut ex = chat(h, 0, Some(tenant), &chat_body("m", "hi", Some(5), false));
    if let Some(t) = ex.trap() {
        bail!("trap: {t}");
    }
    assert!(!ex.stalled(), "the call was made and answered");
    if let Some(lr) = ex.local_reply() {
        let retry = lr
            .headers
            .get("retry-after")
            .unwrap_or_default()
            .to_string();
        ex.finish()?;
        return Ok(Some((lr.status, retry)));
    }
    ex.response(200).json(&json!({"choices": []})).send()?;
    ex.finish()?;
    Ok(None)
}

#[test]
fn two_replicas_share_the_redis_budget_and_book_an_outage_as_debt() -> Result<()> {
    let mut redis = Redis::start_on(free_port());
    let rt = tokio::runtime::Runtime::new()?;
    let grpc = quota_service(&rt, redis.port);
    let mut a = replica(grpc)?;
    let mut b = replica(grpc)?;

    // A burst for acme spread over both replicas: the budget (20) once, not 20 per replica.
    let mut admitted = 0;
    for i in 0..60 {
        let h = if i % 2 == 0 { &mut a } else { &mut b };
        match one(h, "acme")? {
            None => admitted += 1,
            Some((status, retry)) => {
                assert_eq!(status, 429);
                let secs: u64 = retry.parse()?;
                assert!((1..=60).contains(&secs), "retry-after {retry}");
            }
        }
    }
    assert!((20..=21).contains(&admitted), "admitted {admitted}");
    assert!(level(&rt, grpc, "acme", 20) <= 1);

    // Redis goes away: beta's leases are empty, so static_share (20 / 2 replicas) applies on
    // each replica, booked as debt.
    redis.stop();
    let mut passed = 0;
    for _ in 0..15 {
        if one(&mut a, "beta")?.is_none() {
            passed += 1;
        }
    }
    assert_eq!(passed, 10, "a replica's static share");
    assert_eq!(
        a.metric_sum(
            "llm_router_global_fallback_total",
            &[("action", "static_share")]
        ),
        15
    );
    assert_eq!(
        a.metric_sum("llm_router_global_outage", &[("action", "static_share")]),
        1
    );

    // Redis is back (empty: every bucket full again): the tick's refill probe ends the
    // outage, the next tick charges the debt.
    let _redis = Redis::start_on(redis.port);
    for _ in 0..5 {
        a.advance_ms(100)?;
    }
    assert_eq!(
        a.metric_sum("llm_router_global_outage", &[("action", "static_share")]),
        0
    );
    assert!(
        a.metric_sum(
            "llm_router_global_calls_total",
            &[("method", "charge"), ("result", "ok")]
        ) >= 1
    );
    // 20 - the probe's refill of beta's lease (3) - the debt (10).
    assert_eq!(level(&rt, grpc, "beta", 20), 7);
    Ok(())
}
