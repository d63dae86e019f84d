//! The module's gRPC calls through the real server (`--grpc-cluster`): a small guest
//! (`host-engine/tests/wat/grpc_guest.wat`) calls `grpc.health.v1.Health/Check` of a real
//! tonic-health server from ticks and from paused requests; an ext_proc client drives the
//! server as a gateway would. The ext_proc answer to a paused request goes out when the call's
//! answer is in, carrying what the guest made of it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{channel, http, open, stop, Running};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_request::Request, processing_response::Response, HttpHeaders, ProcessingRequest,
    ProcessingResponse,
};
use llm_router_extproc::engine::EngineSettings;
use llm_router_extproc::host;
use llm_router_extproc::server::{Bound, ServeOptions};

const GUEST: &str = include_str!("../../host-engine/tests/wat/grpc_guest.wat");

async fn health_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (_reporter, service) = tonic_health::server::health_reporter();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    format!("http://{addr}")
}

/// Accepts connections and never answers.
async fn black_hole() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    format!("http://{addr}")
}

/// The server on the guest with plugin configuration `config` and clusters `health`, `hole`.
async fn start(name: &str, config: &str) -> Running {
    let config_path = common::temp_config(name, config);
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let bound = Bound::bind(ServeOptions {
        grpc_addr: any,
        health_addr: any,
        metrics_addr: any,
        tls: None,
        plugin_config_path: config_path.clone(),
        plugin_config: config.as_bytes().to_vec(),
        drain: Duration::from_secs(2),
        reload_period: Duration::from_millis(200),
        otlp_endpoint: None,
    })
    .await
    .unwrap();
    let [grpc, health, metrics] = bound.local_addrs();
    let clusters = grpc_call::Clusters::parse(&[
        format!("health={}", health_server().await),
        format!("hole={}", black_hole().await),
    ])
    .unwrap();
    let settings = EngineSettings {
        wasm: GUEST.as_bytes().to_vec(),
        plugin_config: config.as_bytes().to_vec(),
        env: Vec::new(),
        workers: 2,
        memory_limit_bytes: 64 << 20,
        fail_open: false,
        grpc_clusters: clusters,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        bound
            .run(move || host::start(settings), async move {
                let _ = stop_rx.await;
            })
            .await
            .map_err(|e| e.to_string())
    });
    let running = Running {
        grpc,
        health,
        metrics,
        record: Default::default(),
        stop: Some(stop_tx),
        done,
        config_path,
        cert_pem: None,
    };
    for _ in 0..600 {
        if http(metrics, "GET", "/metrics", &[], "").await.0 == 200 {
            return running;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server did not become ready");
}

fn get(extra: &[(&str, &str)]) -> ProcessingRequest {
    let mut h = vec![(":method", "GET"), (":path", "/"), (":authority", "gw")];
    h.extend_from_slice(extra);
    ProcessingRequest {
        request: Some(Request::RequestHeaders(HttpHeaders {
            headers: Some(common::hmap(&h)),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The value the headers answer sets for `name`.
fn set_header(r: &ProcessingResponse, name: &str) -> Option<String> {
    let Some(Response::RequestHeaders(h)) = &r.response else {
        panic!("expected a request headers answer, got {r:?}");
    };
    h.response
        .as_ref()?
        .header_mutation
        .as_ref()?
        .set_headers
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key == name)
        .map(|h| String::from_utf8_lossy(&h.raw_value).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_request_is_answered_when_its_grpc_call_is() {
    let running = start("grpc-paused", "Nhealth").await;
    let ch = channel(running.grpc, None).await;

    let mut s = open(ch.clone()).await;
    s.send(get(&[("x-grpc", "health")])).await;
    let answer = s.recv().await;
    assert_eq!(
        set_header(&answer, "x-grpc-answer").as_deref(),
        Some("0801")
    );

    // A call that can only time out: the answer waits for the guest's 1 s deadline.
    let mut s = open(ch.clone()).await;
    s.send(get(&[("x-grpc", "hole")])).await;
    let answer = s.recv().await;
    assert_eq!(set_header(&answer, "x-grpc-close").as_deref(), Some("04"));

    // An upstream with no --grpc-cluster: the hostcall fails (ParseFailure), no wait.
    let mut s = open(ch).await;
    s.send(get(&[("x-grpc", "nope")])).await;
    let answer = s.recv().await;
    assert_eq!(set_header(&answer, "x-grpc-status").as_deref(), Some("4"));
    stop(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_fire_in_the_servers_vms_and_their_calls_are_answered() {
    let running = start("grpc-ticks", "Thealth").await;
    // Each worker's root context calls on its ticks; every answer counts in the guest's
    // counter, which the metrics endpoint shows.
    let mut seen = 0;
    for _ in 0..100 {
        let (_, body) = http(running.metrics, "GET", "/metrics", &[], "").await;
        seen = body
            .lines()
            .find(|l| l.starts_with("grpc_deliveries"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        if seen >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen >= 4, "grpc_deliveries stayed at {seen}");
    stop(running).await.unwrap();
}
