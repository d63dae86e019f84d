//! The real server (gRPC, health, metrics, push, TLS, reload, drain) on a scripted engine:
//! what a gateway and an operator see, without the wasm module.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation::Mutation, processing_response::Response, ProcessingResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

fn endpoint_in(r: &ProcessingResponse) -> (Option<String>, Option<String>) {
    let header = match &r.response {
        Some(Response::RequestHeaders(h)) => h
            .response
            .as_ref()
            .and_then(|c| c.header_mutation.as_ref())
            .and_then(|m| {
                m.set_headers
                    .iter()
                    .filter_map(|o| o.header.as_ref())
                    .find(|h| h.key == "x-gateway-destination-endpoint")
                    .map(|h| String::from_utf8_lossy(&h.raw_value).into_owned())
            }),
        _ => None,
    };
    let meta =
        r.dynamic_metadata
            .as_ref()
            .and_then(|d| d.fields.get("envoy.lb"))
            .and_then(|v| match &v.kind {
                Some(Kind::StructValue(s)) => s
                    .fields
                    .get("x-gateway-destination-endpoint")
                    .and_then(|v| match &v.kind {
                        Some(Kind::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    }),
                _ => None,
            });
    (header, meta)
}

fn streamed(r: &ProcessingResponse) -> Option<(Vec<u8>, bool)> {
    let common = match &r.response {
        Some(Response::RequestBody(b)) | Some(Response::ResponseBody(b)) => b.response.as_ref()?,
        _ => return None,
    };
    match common.body_mutation.as_ref()?.mutation.as_ref()? {
        Mutation::StreamedResponse(s) => Some((s.body.clone(), s.end_of_stream)),
        _ => None,
    }
}

async fn routed_exchange(stream: &mut ExtProcStream) {
    let body = br#"{"model":"m","messages":[]}"#;
    stream
        .send(request_headers(
            BodySendMode::FullDuplexStreamed,
            "/v1/chat/completions",
        ))
        .await;
    stream.send(request_body(&body[..5], false)).await;
    stream.send(request_body(&body[5..], true)).await;
    let headers = stream.recv().await;
    assert_eq!(
        endpoint_in(&headers),
        (Some(PICKED.into()), Some(PICKED.into()))
    );
    assert_eq!(streamed(&stream.recv().await), Some((body.to_vec(), true)));
    stream.send(response_headers()).await;
    assert!(matches!(
        stream.recv().await.response,
        Some(Response::ResponseHeaders(_))
    ));
    for (i, chunk) in ["data: 1\n\n", "data: [DONE]\n\n"].iter().enumerate() {
        stream.send(response_body(chunk.as_bytes(), i == 1)).await;
        assert_eq!(
            streamed(&stream.recv().await),
            Some((chunk.as_bytes().to_vec(), i == 1))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_routed_request_429_metrics_push_and_health() {
    let running = start("plain", None, Duration::ZERO).await;
    let ch = channel(running.grpc, None).await;

    let mut stream = open(ch.clone()).await;
    routed_exchange(&mut stream).await;
    drop(stream);

    let mut stream = open(ch.clone()).await;
    stream
        .send(request_headers(
            BodySendMode::FullDuplexStreamed,
            "/v1/chat/completions",
        ))
        .await;
    stream.send(request_body(b"{\"over-limit\":1}", true)).await;
    match stream.recv().await.response {
        Some(Response::ImmediateResponse(i)) => {
            assert_eq!(i.status.map(|s| s.code), Some(429));
            assert!(String::from_utf8_lossy(&i.body).contains("rate_limit_exceeded"));
            let h = i.headers.unwrap_or_default().set_headers;
            assert!(h
                .iter()
                .filter_map(|o| o.header.as_ref())
                .any(|h| h.key == "retry-after" && h.raw_value == b"7"));
        }
        other => panic!("expected an immediate response, got {other:?}"),
    }
    drop(stream);
    let record = running.record.clone();
    eventually("both streams finished", || {
        record.finished.load(Ordering::SeqCst) == 2
    })
    .await;

    let (status, text) = http(running.metrics, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("llm_router_requests_total{tier=\"small\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("llm_router_extproc_streams_total 2"),
        "{text}"
    );
    assert!(
        text.contains("llm_router_extproc_local_replies_total 1"),
        "{text}"
    );
    assert!(
        text.contains("llm_router_extproc_endpoints_picked_total 1"),
        "{text}"
    );

    let (status, _) = http(
        running.metrics,
        "POST",
        PUSH_PATH,
        &[("authorization", "Bearer t")],
        "{\"pools\":{}}",
    )
    .await;
    assert_eq!(
        status, 204,
        "the filter's push handler answers (peer is loopback)"
    );
    let (status, _) = http(running.metrics, "GET", "/other", &[], "").await;
    assert_eq!(status, 404);

    let mut health = HealthClient::new(channel(running.health, None).await);
    for service in [
        "liveness",
        "readiness",
        "envoy.service.ext_proc.v3.ExternalProcessor",
    ] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service}");
    }
    stop(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_generated_certificate() {
    let material = llm_router_extproc::tls::self_signed().unwrap();
    let running = start("tls", Some(material), Duration::ZERO).await;
    let mut stream = open(channel(running.grpc, running.cert_pem.as_deref()).await).await;
    routed_exchange(&mut stream).await;
    // A plaintext client cannot talk to the TLS listener.
    let plain = tonic::transport::Channel::from_shared(format!("http://{}", running.grpc))
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
    stop(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_engine_liveness_does_not() {
    let running = start("ready", None, Duration::from_millis(1500)).await;
    let mut health = HealthClient::new(channel(running.health, None).await);
    let check = |svc: &'static str| {
        let mut h = health.clone();
        async move {
            h.check(HealthCheckRequest {
                service: svc.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
        }
    };
    assert_eq!(check("liveness").await, ServingStatus::Serving as i32);
    assert_eq!(check("readiness").await, ServingStatus::NotServing as i32);
    assert_eq!(
        check("envoy.service.ext_proc.v3.ExternalProcessor").await,
        ServingStatus::NotServing as i32
    );
    for _ in 0..60 {
        if check("readiness").await == ServingStatus::Serving as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(check("readiness").await, ServingStatus::Serving as i32);
    let r = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await;
    assert!(r.is_err(), "unknown services are NOT_FOUND");
    stop(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_stream_finishes_the_filter_stream() {
    let running = start("cancel", None, Duration::ZERO).await;
    let stream = open(channel(running.grpc, None).await).await;
    stream
        .send(request_headers(
            BodySendMode::FullDuplexStreamed,
            "/v1/chat/completions",
        ))
        .await;
    stream.send(request_body(b"{\"mod", false)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(running.record.finished.load(Ordering::SeqCst), 0);
    drop(stream);
    let record = running.record.clone();
    eventually("the cancelled stream finished", || {
        record.finished.load(Ordering::SeqCst) == 1
    })
    .await;
    stop(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_good_configs_and_keeps_the_old_one_on_a_bad_file() {
    let running = start("reload", None, Duration::ZERO).await;
    let record = running.record.clone();
    std::fs::write(&running.config_path, "{\"oops\":1}").unwrap();
    let metrics = running.metrics;
    let mut text = String::new();
    for _ in 0..50 {
        text = http(metrics, "GET", "/metrics", &[], "").await.1;
        if text.contains("llm_router_extproc_config_reload_failures_total 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        text.contains("llm_router_extproc_config_reload_failures_total 1"),
        "{text}"
    );
    assert!(
        record.config.lock().unwrap().is_empty(),
        "the bad config never reached the engine as current"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = http(metrics, "GET", "/metrics", &[], "").await.1;
    assert!(
        text.contains("llm_router_extproc_config_reload_failures_total 1"),
        "counted once per bad file: {text}"
    );
    let good = r#"{"tiers":{"large":{}},"endpoints":{"push_path":"/push2"}}"#;
    std::fs::write(&running.config_path, good).unwrap();
    eventually("the good config applied", || {
        record.config.lock().unwrap().as_slice() == good.as_bytes()
    })
    .await;
    // The push path follows the configuration.
    let (status, _) = http(metrics, "POST", PUSH_PATH, &[], "{}").await;
    assert_eq!(status, 404);
    stop(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_open_streams_finish_before_the_server_stops() {
    let mut running = start("drain", None, Duration::ZERO).await;
    let ch = channel(running.grpc, None).await;
    let mut stream = open(ch.clone()).await;
    stream
        .send(request_headers(
            BodySendMode::FullDuplexStreamed,
            "/v1/chat/completions",
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = running.stop.take().map(|s| s.send(()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !running.done.is_finished(),
        "an open stream keeps the server draining"
    );
    // The open stream still works to its end.
    stream.send(request_body(b"{}", true)).await;
    assert_eq!(endpoint_in(&stream.recv().await).0.as_deref(), Some(PICKED));
    drop(stream);
    let done = tokio::time::timeout(Duration::from_secs(5), &mut running.done).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
}
