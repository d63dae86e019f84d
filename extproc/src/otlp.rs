//! OTLP/gRPC export of the server's spans (`trace::SpanData`) to a collector's TraceService,
//! with the published OpenTelemetry protos (`opentelemetry-proto`). Spans queue in a bounded
//! channel and go out in batches from one task; a full queue or an unreachable collector
//! drops spans (counted, logged), never slows a request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use crate::trace::{SpanData, SPAN_NAME};

const QUEUE: usize = 4096;
const BATCH: usize = 512;
const LINGER: Duration = Duration::from_millis(200);

/// The `service.name` of the spans.
pub const SERVICE_NAME: &str = "llm-router-extproc";

/// Sends spans to one collector.
#[derive(Clone)]
pub struct Exporter {
    tx: mpsc::Sender<SpanData>,
    dropped: Arc<AtomicU64>,
}

/// `http://host:port` for an endpoint given as `host:port` (OTLP/gRPC's usual form).
pub fn endpoint_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

impl Exporter {
    /// Starts the export task (on the current tokio runtime); connects lazily.
    pub fn start(endpoint: &str) -> Result<Exporter, String> {
        let url = endpoint_url(endpoint);
        let channel = Endpoint::from_shared(url.clone())
            .map_err(|e| format!("OTLP endpoint {url:?}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(TraceServiceClient::new(channel), rx, dropped.clone()));
        log::info!("tracing: exporting spans over OTLP/gRPC to {url}");
        Ok(Exporter { tx, dropped })
    }

    /// Queues a span; drops it when the queue is full.
    pub fn record(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Spans dropped so far (queue full or export failed).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn run(
    mut client: TraceServiceClient<Channel>,
    mut rx: mpsc::Receiver<SpanData>,
    dropped: Arc<AtomicU64>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < BATCH {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(s) => batch.push(s),
                    None => break,
                },
                _ = &mut linger => break,
            }
        }
        let n = batch.len() as u64;
        if let Err(status) = client.export(request(&batch)).await {
            let before = dropped.fetch_add(n, Ordering::Relaxed);
            // Once per hundred lost spans, not once per batch.
            if before / 100 != (before + n) / 100 || before == 0 {
                log::warn!("tracing: OTLP export failed, {n} spans dropped: {status}");
            }
        }
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

/// The OTLP request for a batch: one resource (`service.name`), one scope.
pub fn request(spans: &[SpanData]) -> ExportTraceServiceRequest {
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| SERVICE_NAME.to_string());
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text("service.name", &service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: SERVICE_NAME.to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                spans: spans.iter().map(otlp_span).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn otlp_span(s: &SpanData) -> Span {
    Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        name: SPAN_NAME.to_string(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: s.start_unix_ns,
        end_time_unix_nano: s.end_unix_ns,
        attributes: s.attributes.iter().map(|(k, v)| text(k, v)).collect(),
        status: s.error.then(|| Status {
            code: status::StatusCode::Error as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}
