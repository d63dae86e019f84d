//! A scripted stand-in for the Proxy-Wasm engine, and helpers to run the real server on it.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    external_processor_client::ExternalProcessorClient, processing_request::Request, HttpBody,
    HttpHeaders, ProcessingRequest, ProcessingResponse, ProtocolConfiguration,
};
use llm_router_extproc::engine::{
    EngineError, EngineStats, FilterEngine, FilterStream, Headers, Step, StreamProps,
};
use llm_router_extproc::server::{Bound, ServeOptions};
use llm_router_extproc::tls::Material;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

pub const PICKED: &str = "10.1.2.3:8000";
pub const PUSH_PATH: &str = "/.well-known/llm-router/load";

#[derive(Default)]
pub struct Record {
    pub finished: AtomicU64,
    pub config: Mutex<Vec<u8>>,
}

/// Routes every request to PICKED; answers 429 to a body containing "over-limit"; answers the
/// push path itself (204 from loopback, 403 otherwise); refuses configs without "tiers".
pub struct FakeEngine(pub Arc<Record>);

pub struct FakeStream {
    record: Arc<Record>,
    source: Option<String>,
    headers: Headers,
    body: Vec<u8>,
}

fn path_of(h: &Headers) -> Vec<u8> {
    h.iter()
        .find(|(n, _)| n == b":path")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

impl FilterStream for FakeStream {
    fn request_headers(&mut self, headers: Headers, _eos: bool) -> Step {
        if path_of(&headers) == PUSH_PATH.as_bytes() {
            let loopback = self
                .source
                .as_deref()
                .is_some_and(|s| s.starts_with("127."));
            return Step::Reply {
                status: if loopback { 204 } else { 403 },
                headers: vec![],
                body: vec![],
            };
        }
        self.headers = headers;
        Step::Hold
    }
    fn request_body(&mut self, chunk: Vec<u8>, eos: bool) -> Step {
        // Like Envoy's buffering: the filter sees, and sends on, everything held so far.
        self.body.extend_from_slice(&chunk);
        let chunk = std::mem::take(&mut self.body);
        if !eos {
            self.body = chunk;
            return Step::Hold;
        }
        if String::from_utf8_lossy(&chunk).contains("over-limit") {
            return Step::Reply {
                status: 429,
                headers: vec![(b"retry-after".to_vec(), b"7".to_vec())],
                body: br#"{"error":{"code":"rate_limit_exceeded"}}"#.to_vec(),
            };
        }
        let mut headers = std::mem::take(&mut self.headers);
        headers.push((
            b"x-gateway-destination-endpoint".to_vec(),
            PICKED.as_bytes().to_vec(),
        ));
        Step::Continue {
            headers: Some(headers),
            body: Some(chunk),
            end_of_stream: true,
            clear_route_cache: true,
        }
    }
    fn request_trailers(&mut self, _: Headers) -> Step {
        Step::Continue {
            headers: None,
            body: None,
            end_of_stream: true,
            clear_route_cache: false,
        }
    }
    fn response_headers(&mut self, _: Headers, _: bool) -> Step {
        Step::Continue {
            headers: None,
            body: None,
            end_of_stream: false,
            clear_route_cache: false,
        }
    }
    fn response_body(&mut self, chunk: Vec<u8>, eos: bool) -> Step {
        Step::Continue {
            headers: None,
            body: Some(chunk),
            end_of_stream: eos,
            clear_route_cache: false,
        }
    }
    fn response_trailers(&mut self, _: Headers) -> Step {
        Step::Continue {
            headers: None,
            body: None,
            end_of_stream: true,
            clear_route_cache: false,
        }
    }
    fn finish(self) {
        self.record.finished.fetch_add(1, Ordering::SeqCst);
    }
}

impl FilterEngine for FakeEngine {
    type Stream = FakeStream;
    fn open_stream(&self, props: StreamProps) -> FakeStream {
        FakeStream {
            record: self.0.clone(),
            source: props.source_address,
            headers: vec![],
            body: vec![],
        }
    }
    fn reconfigure(&self, cfg: Vec<u8>) -> Result<(), EngineError> {
        if !String::from_utf8_lossy(&cfg).contains("tiers") {
            return Err(EngineError("configuration: missing field `tiers`".into()));
        }
        if let Ok(mut c) = self.0.config.lock() {
            *c = cfg;
        }
        Ok(())
    }
    fn prometheus(&self) -> String {
        "# TYPE llm_router_requests_total counter\nllm_router_requests_total{tier=\"small\"} 3\n"
            .into()
    }
    fn stats(&self) -> EngineStats {
        EngineStats::default()
    }
}

pub struct Running {
    pub grpc: SocketAddr,
    pub health: SocketAddr,
    pub metrics: SocketAddr,
    pub record: Arc<Record>,
    pub stop: Option<oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<Result<(), String>>,
    pub config_path: PathBuf,
    pub cert_pem: Option<Vec<u8>>,
}

pub fn temp_config(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("extproc-test-{}-{name}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("plugin.json");
    let _ = std::fs::write(&path, contents);
    path
}

/// Starts the real server on the fake engine, on free loopback ports.
pub async fn start(name: &str, tls: Option<Material>, engine_delay: Duration) -> Running {
    let config = r#"{"tiers":{"small":{}}}"#;
    let config_path = temp_config(name, config);
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let cert_pem = tls.as_ref().map(|t| t.cert_pem.clone());
    let bound = Bound::bind(ServeOptions {
        grpc_addr: any,
        health_addr: any,
        metrics_addr: any,
        tls,
        plugin_config_path: config_path.clone(),
        plugin_config: config.as_bytes().to_vec(),
        drain: Duration::from_secs(5),
        reload_period: Duration::from_millis(100),
        otlp_endpoint: None,
    })
    .await
    .unwrap_or_else(|e| panic!("bind: {e}"));
    let [grpc, health, metrics] = bound.local_addrs();
    let record = Arc::new(Record::default());
    let engine_record = record.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        bound
            .run(
                move || {
                    std::thread::sleep(engine_delay);
                    Ok(FakeEngine(engine_record))
                },
                async move {
                    let _ = stopped.await;
                },
            )
            .await
            .map_err(|e| e.to_string())
    });
    Running {
        grpc,
        health,
        metrics,
        record,
        stop: Some(stop),
        done,
        config_path,
        cert_pem,
    }
}

pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

pub async fn channel(addr: SocketAddr, cert_pem: Option<&[u8]>) -> Channel {
    let (scheme, tls) = match cert_pem {
        Some(pem) => (
            "https",
            Some(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(pem))
                    .domain_name("localhost"),
            ),
        ),
        None => ("http", None),
    };
    let mut endpoint =
        Channel::from_shared(format!("{scheme}://{addr}")).unwrap_or_else(|e| panic!("{e}"));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap_or_else(|e| panic!("{e}"));
    }
    for _ in 0..50 {
        if let Ok(ch) = endpoint.connect().await {
            return ch;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot connect to {addr}");
}

/// One open ext_proc stream: send messages, read answers.
pub struct ExtProcStream {
    pub tx: mpsc::Sender<ProcessingRequest>,
    pub rx: tonic::Streaming<ProcessingResponse>,
}

pub async fn open(channel: Channel) -> ExtProcStream {
    let (tx, rx) = mpsc::channel(16);
    let mut client = ExternalProcessorClient::new(channel);
    let response = client
        .process(ReceiverStream::new(rx))
        .await
        .unwrap_or_else(|e| panic!("process: {e}"));
    ExtProcStream {
        tx,
        rx: response.into_inner(),
    }
}

impl ExtProcStream {
    pub async fn send(&self, m: ProcessingRequest) {
        self.tx
            .send(m)
            .await
            .unwrap_or_else(|e| panic!("send: {e}"));
    }
    pub async fn recv(&mut self) -> ProcessingResponse {
        match tokio::time::timeout(Duration::from_secs(10), self.rx.message()).await {
            Ok(Ok(Some(m))) => m,
            other => panic!("no answer: {other:?}"),
        }
    }
}

pub fn hmap(pairs: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                value: String::new(),
                raw_value: v.as_bytes().to_vec(),
            })
            .collect(),
    }
}

pub fn request_headers(mode: BodySendMode, path: &str) -> ProcessingRequest {
    ProcessingRequest {
        protocol_config: Some(ProtocolConfiguration {
            request_body_mode: mode as i32,
            response_body_mode: mode as i32,
            send_body_without_waiting_for_header_response: false,
        }),
        request: Some(Request::RequestHeaders(HttpHeaders {
            headers: Some(hmap(&[
                (":method", "POST"),
                (":path", path),
                ("content-type", "application/json"),
            ])),
            end_of_stream: false,
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn request_body(bytes: &[u8], eos: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Request::RequestBody(HttpBody {
            body: bytes.to_vec(),
            end_of_stream: eos,
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn response_headers() -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Request::ResponseHeaders(HttpHeaders {
            headers: Some(hmap(&[
                (":status", "200"),
                ("content-type", "text/event-stream"),
            ])),
            end_of_stream: false,
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn response_body(bytes: &[u8], eos: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Request::ResponseBody(HttpBody {
            body: bytes.to_vec(),
            end_of_stream: eos,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// GET/POST over plain HTTP/1.1 on a raw socket; returns (status, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub async fn stop(mut r: Running) -> Result<(), String> {
    if let Some(s) = r.stop.take() {
        let _ = s.send(());
    }
    match tokio::time::timeout(Duration::from_secs(10), r.done).await {
        Ok(Ok(res)) => res,
        other => Err(format!("server did not stop: {other:?}")),
    }
}

pub fn fut_is_pending<F: Future>(_f: &F) {}
