//! The real thing: the server running the unchanged dist/llm_router.wasm in the wasmtime host,
//! driven by a gRPC ext_proc client as a gateway would drive it. A missing dist/llm_router.wasm
//! fails these tests (build it with scripts/build-wasm.sh or `make build`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{channel, http, open, request_body, stop, ExtProcStream, Running};
use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation::Mutation, processing_request::Request, processing_response::Response,
    CommonResponse, HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
    ProtocolConfiguration,
};
use envoy_types::pb::google::protobuf::value::Kind;
use llm_router_extproc::engine::EngineSettings;
use llm_router_extproc::host;
use llm_router_extproc::server::{Bound, ServeOptions};
use serde_json::{json, Value};

const PUSH: &str = "/.well-known/llm-router/load";
const TOKEN: &str = "s3cret";
const LARGE_EP: &str = "10.2.0.1:8000";

fn wasm() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/llm_router.wasm");
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e} (build it: scripts/build-wasm.sh)"))
}

fn config() -> Value {
    json!({
        "tiers": {"small": {"model": "s"}, "large": {"model": "l"}},
        "default_tier": "small",
        "rules": [{"tier": "large", "models": ["big"]}],
        "tenants": {"header": "x-tenant-id", "unknown": "default",
                    "default": {"requests_per_minute": 600, "tokens_per_minute": 100000},
                    "limits": {"acme": {"requests_per_minute": 1, "tokens_per_minute": 100000}}},
        "endpoints": {"push_path": PUSH, "push_token_env": "LLM_ROUTER_PUSH_TOKEN",
                      "stale_after_ms": 60000, "max_queue": 5, "max_kv_cache": 0.8}
    })
}

async fn start_real(name: &str) -> Running {
    let cfg = config().to_string();
    let config_path = common::temp_config(name, &cfg);
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let bound = Bound::bind(ServeOptions {
        grpc_addr: any,
        health_addr: any,
        metrics_addr: any,
        tls: None,
        plugin_config_path: config_path.clone(),
        plugin_config: cfg.clone().into_bytes(),
        drain: Duration::from_secs(2),
        reload_period: Duration::from_millis(200),
        otlp_endpoint: None,
    })
    .await
    .unwrap();
    let [grpc, health, metrics] = bound.local_addrs();
    let settings = EngineSettings {
        wasm: wasm(),
        plugin_config: cfg.into_bytes(),
        env: vec![("LLM_ROUTER_PUSH_TOKEN".into(), TOKEN.into())],
        workers: 2,
        memory_limit_bytes: 256 << 20,
        fail_open: false,
        grpc_clusters: Default::default(),
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
    // Ready once /metrics answers (the engine compiled the module and configured every VM).
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(metrics).await.is_ok()
            && http(metrics, "GET", "/metrics", &[], "").await.0 == 200
        {
            return running;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server did not become ready");
}

fn hmap(pairs: &[(&str, &str)]) -> HeaderMap {
    common::hmap(pairs)
}

fn chat_headers(mode: BodySendMode, tenant: &str) -> ProcessingRequest {
    ProcessingRequest {
        protocol_config: Some(ProtocolConfiguration {
            request_body_mode: mode as i32,
            response_body_mode: mode as i32,
            send_body_without_waiting_for_header_response: false,
        }),
        request: Some(Request::RequestHeaders(HttpHeaders {
            headers: Some(hmap(&[
                (":method", "POST"),
                (":path", "/v1/chat/completions"),
                (":authority", "gw.example"),
                (":scheme", "http"),
                ("content-type", "application/json"),
                ("x-tenant-id", tenant),
                // A client trying to choose its own endpoint: must be replaced.
                ("x-gateway-destination-endpoint", "6.6.6.6:1"),
            ])),
            end_of_stream: false,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn chat_body() -> Vec<u8> {
    json!({"model": "big", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5})
        .to_string()
        .into_bytes()
}

fn common_of(r: &ProcessingResponse) -> CommonResponse {
    match &r.response {
        Some(Response::RequestHeaders(h)) | Some(Response::ResponseHeaders(h)) => {
            h.response.clone().unwrap_or_default()
        }
        Some(Response::RequestBody(b)) | Some(Response::ResponseBody(b)) => {
            b.response.clone().unwrap_or_default()
        }
        other => panic!("not a headers/body answer: {other:?}"),
    }
}

fn set_header(c: &CommonResponse, name: &str) -> Option<String> {
    c.header_mutation
        .as_ref()?
        .set_headers
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key == name)
        .map(|h| String::from_utf8_lossy(&h.raw_value).into_owned())
}

fn lb_endpoint(r: &ProcessingResponse) -> Option<String> {
    match &r.dynamic_metadata.as_ref()?.fields.get("envoy.lb")?.kind {
        Some(Kind::StructValue(s)) => match &s.fields.get("x-gateway-destination-endpoint")?.kind {
            Some(Kind::StringValue(v)) => Some(v.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn sent_body(c: &CommonResponse) -> Option<Value> {
    let bytes = match c.body_mutation.as_ref()?.mutation.as_ref()? {
        Mutation::StreamedResponse(s) => s.body.clone(),
        Mutation::Body(b) => b.clone(),
        Mutation::ClearBody(_) => return None,
    };
    serde_json::from_slice(&bytes).ok()
}

async fn push_snapshot(metrics: SocketAddr, token: &str) -> u16 {
    let snapshot = json!({"pools": {
        "small": [{"address": "10.1.0.1:8000", "waiting": 0, "running": 0, "kv_cache": 0.1}],
        "large": [{"address": LARGE_EP, "waiting": 0, "running": 1, "kv_cache": 0.2}]}});
    let auth = format!("Bearer {token}");
    http(
        metrics,
        "POST",
        PUSH,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        &snapshot.to_string(),
    )
    .await
    .0
}

async fn respond(stream: &mut ExtProcStream) {
    stream
        .send(ProcessingRequest {
            request: Some(Request::ResponseHeaders(HttpHeaders {
                headers: Some(hmap(&[
                    (":status", "200"),
                    ("content-type", "application/json"),
                ])),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await;
    assert!(matches!(
        stream.recv().await.response,
        Some(Response::ResponseHeaders(_))
    ));
    let usage = json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}});
    stream
        .send(ProcessingRequest {
            request: Some(Request::ResponseBody(HttpBody {
                body: usage.to_string().into_bytes(),
                end_of_stream: true,
                ..Default::default()
            })),
            ..Default::default()
        })
        .await;
    let out = stream.recv().await;
    assert!(
        matches!(out.response, Some(Response::ResponseBody(_))),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_request_429_and_push_through_the_real_filter() {
    let running = start_real("real").await;
    assert_eq!(
        push_snapshot(running.metrics, "wrong").await,
        403,
        "the filter refuses a wrong token"
    );
    assert_eq!(
        push_snapshot(running.metrics, TOKEN).await,
        204,
        "the filter's push handler accepts"
    );
    let ch = channel(running.grpc, None).await;

    // FULL_DUPLEX_STREAMED: nothing until the body ends, then headers, then the body.
    let mut s = open(ch.clone()).await;
    s.send(chat_headers(BodySendMode::FullDuplexStreamed, "acme"))
        .await;
    let body = chat_body();
    s.send(request_body(&body[..20], false)).await;
    s.send(request_body(&body[20..], true)).await;
    let headers = s.recv().await;
    assert!(
        matches!(headers.response, Some(Response::RequestHeaders(_))),
        "{headers:?}"
    );
    let c = common_of(&headers);
    assert!(c.clear_route_cache);
    assert_eq!(set_header(&c, "x-llm-model-type").as_deref(), Some("large"));
    assert_eq!(
        set_header(&c, "x-gateway-destination-endpoint").as_deref(),
        Some(LARGE_EP)
    );
    assert_eq!(lb_endpoint(&headers).as_deref(), Some(LARGE_EP));
    let sent = s.recv().await;
    assert_eq!(
        sent_body(&common_of(&sent)).map(|b| b["model"].clone()),
        Some(json!("l"))
    );
    respond(&mut s).await;
    drop(s);

    // The same tenant again within the minute: 429 from the filter, as an immediate response.
    let mut s = open(ch.clone()).await;
    s.send(chat_headers(BodySendMode::FullDuplexStreamed, "acme"))
        .await;
    s.send(request_body(&body, true)).await;
    match s.recv().await.response {
        Some(Response::ImmediateResponse(i)) => {
            assert_eq!(i.status.map(|s| s.code), Some(429));
            let text = String::from_utf8_lossy(&i.body).into_owned();
            assert!(text.contains("rate_limit_exceeded"), "{text}");
            let names: Vec<String> = i
                .headers
                .unwrap_or_default()
                .set_headers
                .into_iter()
                .filter_map(|o| o.header.map(|h| h.key))
                .collect();
            assert!(names.iter().any(|n| n == "retry-after"), "{names:?}");
        }
        other => panic!("expected 429, got {other:?}"),
    }
    drop(s);

    // BUFFERED: headers answered at once, everything else on the body response.
    let mut s = open(ch.clone()).await;
    s.send(chat_headers(BodySendMode::Buffered, "t2")).await;
    let first = s.recv().await;
    assert!(
        common_of(&first).header_mutation.is_none()
            || set_header(&common_of(&first), "x-gateway-destination-endpoint").is_none()
    );
    s.send(request_body(&body, true)).await;
    let answer = s.recv().await;
    assert!(
        matches!(answer.response, Some(Response::RequestBody(_))),
        "{answer:?}"
    );
    let c = common_of(&answer);
    assert_eq!(
        set_header(&c, "x-gateway-destination-endpoint").as_deref(),
        Some(LARGE_EP)
    );
    assert_eq!(lb_endpoint(&answer).as_deref(), Some(LARGE_EP));
    assert_eq!(sent_body(&c).map(|b| b["model"].clone()), Some(json!("l")));
    respond(&mut s).await;
    drop(s);

    // A streamed answer: each SSE event is passed on as it comes, never held.
    let mut s = open(ch.clone()).await;
    s.send(chat_headers(BodySendMode::FullDuplexStreamed, "t3"))
        .await;
    let mut streaming = serde_json::from_slice::<Value>(&body).unwrap();
    streaming["stream"] = json!(true);
    s.send(request_body(streaming.to_string().as_bytes(), true))
        .await;
    assert!(matches!(
        s.recv().await.response,
        Some(Response::RequestHeaders(_))
    ));
    assert!(matches!(
        s.recv().await.response,
        Some(Response::RequestBody(_))
    ));
    s.send(ProcessingRequest {
        request: Some(Request::ResponseHeaders(HttpHeaders {
            headers: Some(hmap(&[
                (":status", "200"),
                ("content-type", "text/event-stream"),
            ])),
            ..Default::default()
        })),
        ..Default::default()
    })
    .await;
    assert!(matches!(
        s.recv().await.response,
        Some(Response::ResponseHeaders(_))
    ));
    let events = [
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n".to_string(),
        "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n".to_string(),
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\ndata: [DONE]\n\n".to_string(),
    ];
    for (i, event) in events.iter().enumerate() {
        let last = i == events.len() - 1;
        s.send(ProcessingRequest {
            request: Some(Request::ResponseBody(HttpBody {
                body: event.clone().into_bytes(),
                end_of_stream: last,
                ..Default::default()
            })),
            ..Default::default()
        })
        .await;
        let out = s.recv().await;
        match common_of(&out).body_mutation.and_then(|m| m.mutation) {
            Some(Mutation::StreamedResponse(r)) => {
                assert_eq!(
                    String::from_utf8_lossy(&r.body),
                    *event,
                    "event {i} passed on unchanged"
                );
                assert_eq!(r.end_of_stream, last);
            }
            other => panic!("event {i}: {other:?}"),
        }
    }
    drop(s);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, text) = http(running.metrics, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    assert!(text.contains("llm_router_requests_total{"), "{text}");
    assert!(text.contains("tier=\"large\""), "{text}");
    assert!(text.contains("llm_router_rate_limited_total{"), "{text}");
    assert!(
        text.contains("llm_router_extproc_streams_total 4"),
        "{text}"
    );
    assert!(
        text.contains("llm_router_time_to_first_token_milliseconds"),
        "{text}"
    );
    stop(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_configuration_keeps_the_old_one() {
    let running = start_real("real-reload").await;
    let mut bad = config();
    bad["tenants"]["limits"]["acme"]["requests_per_mnute"] = json!(5);
    std::fs::write(&running.config_path, bad.to_string()).unwrap();
    let mut text = String::new();
    for _ in 0..100 {
        text = http(running.metrics, "GET", "/metrics", &[], "").await.1;
        if text.contains("llm_router_extproc_config_reload_failures_total 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        text.contains("llm_router_extproc_config_reload_failures_total 1"),
        "{text}"
    );
    // Still the old configuration: "big" goes to the large tier, acme still has 1 rpm.
    let ch = channel(running.grpc, None).await;
    for expect_429 in [false, true] {
        let mut s = open(ch.clone()).await;
        s.send(chat_headers(BodySendMode::FullDuplexStreamed, "acme"))
            .await;
        s.send(request_body(&chat_body(), true)).await;
        let out = s.recv().await;
        match (&out.response, expect_429) {
            (Some(Response::ImmediateResponse(i)), true) => {
                assert_eq!(i.status.map(|s| s.code), Some(429))
            }
            (Some(Response::RequestHeaders(_)), false) => {
                assert_eq!(
                    set_header(&common_of(&out), "x-llm-model-type").as_deref(),
                    Some("large")
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A good file is applied: acme gets a larger limit.
    let mut good = config();
    good["tenants"]["limits"]["acme"]["requests_per_minute"] = json!(100);
    std::fs::write(&running.config_path, good.to_string()).unwrap();
    for _ in 0..100 {
        text = http(running.metrics, "GET", "/metrics", &[], "").await.1;
        if text.contains("llm_router_extproc_config_reloads_total 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        text.contains("llm_router_extproc_config_reloads_total 1"),
        "{text}"
    );
    stop(running).await.unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary as an operator runs it: serves, reports ready, and drains on SIGTERM (exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_tls_by_default_and_exits_cleanly_on_sigterm() {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let config_path = common::temp_config("binary", &config().to_string());
    let wasm_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/llm_router.wasm");
    assert!(
        std::path::Path::new(wasm_path).exists(),
        "{wasm_path} missing: scripts/build-wasm.sh"
    );
    let [g, h, m] = [free_port(), free_port(), free_port()];
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_llm-router-extproc"))
        .args(["--wasm", wasm_path, "--plugin-config"])
        .arg(&config_path)
        .args([
            "--grpc-addr",
            &addr(g),
            "--health-addr",
            &addr(h),
            "--metrics-addr",
            &addr(m),
        ])
        .args([
            "--env",
            "LLM_ROUTER_PUSH_TOKEN",
            "--workers",
            "2",
            "--drain-seconds",
            "3",
        ])
        .env("LLM_ROUTER_PUSH_TOKEN", TOKEN)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut health = HealthClient::new(channel(addr(h).parse().unwrap(), None).await);
    let mut ready = false;
    for _ in 0..600 {
        let r = health
            .check(HealthCheckRequest {
                service: "readiness".into(),
            })
            .await;
        if r.map(|r| r.into_inner().status == ServingStatus::Serving as i32)
            .unwrap_or(false)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "readiness never became SERVING");
    assert_eq!(push_snapshot(addr(m).parse().unwrap(), TOKEN).await, 204);
    // TLS is on by default: a plaintext ext_proc client is refused.
    let plain = tonic::transport::Channel::from_shared(format!("http://{}", addr(g)))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut client = envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient::new(ch);
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        assert!(client
            .process(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .is_err());
    }
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
}

fn with_subset(mut first: ProcessingRequest, list: &[&str]) -> ProcessingRequest {
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::google::protobuf::{ListValue, Struct, Value as PbValue};
    let values = list
        .iter()
        .map(|a| PbValue {
            kind: Some(Kind::StringValue(a.to_string())),
        })
        .collect();
    let hint = Struct {
        fields: [(
            "x-gateway-destination-endpoint-subset".to_string(),
            PbValue {
                kind: Some(Kind::ListValue(ListValue { values })),
            },
        )]
        .into_iter()
        .collect(),
    };
    first.metadata_context = Some(Metadata {
        filter_metadata: [("envoy.lb.subset_hint".to_string(), hint)]
            .into_iter()
            .collect(),
        ..Default::default()
    });
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_picks_only_inside_the_gateways_subset() {
    let running = start_real("subset").await;
    // Two large servers; the idle one will be outside the gateway's subset.
    let snapshot = json!({"pools": {"large": [
        {"address": "10.2.0.1:8000", "waiting": 0, "running": 0, "kv_cache": 0.0},
        {"address": "10.2.0.2:8000", "waiting": 3, "running": 2, "kv_cache": 0.5}]}});
    let auth = format!("Bearer {TOKEN}");
    let pushed = http(
        running.metrics,
        "POST",
        PUSH,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        &snapshot.to_string(),
    )
    .await
    .0;
    assert_eq!(pushed, 204);
    let ch = channel(running.grpc, None).await;
    let body = chat_body();

    // The busier server is the only one allowed: it is picked, not the idle one.
    let mut s = open(ch.clone()).await;
    let first = chat_headers(BodySendMode::FullDuplexStreamed, "globex");
    s.send(with_subset(first, &["10.2.0.2:8000", "10.9.9.9:1"]))
        .await;
    s.send(request_body(&body, true)).await;
    let headers = s.recv().await;
    let c = common_of(&headers);
    assert_eq!(
        set_header(&c, "x-gateway-destination-endpoint").as_deref(),
        Some("10.2.0.2:8000")
    );
    assert_eq!(lb_endpoint(&headers).as_deref(), Some("10.2.0.2:8000"));
    let _ = s.recv().await;
    respond(&mut s).await;
    drop(s);

    // No server of the chosen tier in the subset: 503 from the filter itself.
    let mut s = open(ch.clone()).await;
    let first = chat_headers(BodySendMode::FullDuplexStreamed, "globex");
    s.send(with_subset(first, &["10.1.0.1:8000"])).await;
    s.send(request_body(&body, true)).await;
    match s.recv().await.response {
        Some(Response::ImmediateResponse(i)) => {
            assert_eq!(i.status.map(|s| s.code), Some(503));
            let text = String::from_utf8_lossy(&i.body).into_owned();
            assert!(text.contains("no_eligible_endpoint"), "{text}");
        }
        other => panic!("expected 503, got {other:?}"),
    }
    drop(s);
    stop(running).await.unwrap();
}
