//! The `envoy.service.ext_proc.v3.ExternalProcessor` gRPC service: one task per stream feeding
//! a [`Session`]; engine calls block (they run on the pinned VM's thread), so each runs on
//! tokio's blocking pool. A stream that ends or is cancelled finishes its filter stream.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use envoy_types::pb::envoy::service::ext_proc::v3::{
    external_processor_server::ExternalProcessor, ProcessingRequest, ProcessingResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::engine::{FilterEngine, Headers};
use crate::facts::ConfigFacts;
use crate::otlp::Exporter;
use crate::props;
use crate::protocol::{ProtocolOptions, Session};
use crate::stats::Counters;
use crate::trace::{self, Parent};

/// What every part of the server shares.
pub struct Shared<E: FilterEngine> {
    pub engine: E,
    pub facts: RwLock<ConfigFacts>,
    pub counters: Counters,
    /// Span export (`--otlp-endpoint`); None: no spans.
    pub tracer: Option<Exporter>,
}

impl<E: FilterEngine> Shared<E> {
    pub fn new(engine: E, facts: ConfigFacts) -> Self {
        Shared {
            engine,
            facts: RwLock::new(facts),
            counters: Counters::default(),
            tracer: None,
        }
    }

    pub fn with_tracer(mut self, tracer: Option<Exporter>) -> Self {
        self.tracer = tracer;
        self
    }

    pub fn facts(&self) -> ConfigFacts {
        self.facts.read().map(|f| f.clone()).unwrap_or_default()
    }

    pub fn set_facts(&self, facts: ConfigFacts) {
        if let Ok(mut f) = self.facts.write() {
            *f = facts;
        }
    }
}

pub struct ExtProc<E: FilterEngine> {
    shared: Arc<Shared<E>>,
}

impl<E: FilterEngine> ExtProc<E> {
    pub fn new(shared: Arc<Shared<E>>) -> Self {
        ExtProc { shared }
    }
}

#[tonic::async_trait]
impl<E: FilterEngine> ExternalProcessor for ExtProc<E> {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        // Envoy puts its ext_proc span's context in the call's metadata when it traces.
        let parent = self
            .shared
            .tracer
            .as_ref()
            .and_then(|_| trace::parent_in(&metadata_headers(request.metadata())));
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(run_stream(self.shared.clone(), inbound, tx, parent));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

type Tx = mpsc::Sender<Result<ProcessingResponse, Status>>;

/// The trace-context entries of gRPC metadata as a header map.
fn metadata_headers(metadata: &tonic::metadata::MetadataMap) -> Headers {
    [
        "traceparent",
        "x-datadog-trace-id",
        "x-datadog-parent-id",
        "x-datadog-sampling-priority",
    ]
    .iter()
    .filter_map(|name| {
        let v = metadata.get(*name)?;
        Some((name.as_bytes().to_vec(), v.as_bytes().to_vec()))
    })
    .collect()
}

/// The trace context of the HTTP request itself (its first message's headers).
fn request_parent(first: &ProcessingRequest) -> Option<Parent> {
    use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
    match &first.request {
        Some(Request::RequestHeaders(h)) => {
            trace::parent_in(&crate::messages::headers_from(h.headers.as_ref()))
        }
        _ => None,
    }
}

/// Random-enough ids for spans (not secrets): a per-process random hasher over a counter.
fn span_ids() -> impl FnMut() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let state = std::collections::hash_map::RandomState::new();
    move || {
        let mut h = state.build_hasher();
        h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
        h.write_u64(trace::now_unix_ns());
        h.finish()
    }
}

struct ActiveGuard<'a>(&'a Counters);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.streams_active.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn run_stream<E: FilterEngine>(
    shared: Arc<Shared<E>>,
    mut inbound: Streaming<ProcessingRequest>,
    tx: Tx,
    mut parent: Option<Parent>,
) {
    let started_ns = trace::now_unix_ns();
    let counters = &shared.counters;
    counters.inc(|c| &c.streams);
    counters.streams_active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(counters);
    let mut session: Option<Session<E::Stream>> = None;
    loop {
        let next = tokio::select! {
            next = inbound.message() => next,
            // Envoy went away (cancel): stop reading, finish below.
            _ = tx.closed() => break,
        };
        let message = match next {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(status) => {
                log::debug!("ext_proc stream ended: {status}");
                if status.code() != tonic::Code::Cancelled {
                    counters.inc(|c| &c.stream_errors);
                }
                break;
            }
        };
        if session.is_none() && parent.is_none() && shared.tracer.is_some() {
            parent = request_parent(&message);
        }
        let worker = shared.clone();
        let current = session.take();
        let handled = tokio::task::spawn_blocking(move || {
            let mut s = current.unwrap_or_else(|| open(&worker, &message));
            let out = s.handle(message);
            (s, out)
        })
        .await;
        let Ok((s, out)) = handled else {
            counters.inc(|c| &c.stream_errors);
            let _ = tx.send(Err(Status::internal("filter engine failed"))).await;
            return;
        };
        session = Some(s);
        for response in out {
            if tx.send(Ok(response)).await.is_err() {
                break;
            }
        }
    }
    if let Some(s) = session {
        counters.record(s.events());
        if let Some(served) = &s.events().served_endpoint {
            log::debug!("served by {served}");
        }
        let Some(tracer) = shared.tracer.clone() else {
            let _ = tokio::task::spawn_blocking(move || s.finish()).await;
            return;
        };
        let local_reply = s.events().local_reply;
        let published =
            tokio::task::spawn_blocking(move || s.finish_published(trace::PUBLISHED_PREFIX))
                .await
                .unwrap_or_default();
        let end_ns = trace::now_unix_ns();
        if let Some(span) = trace::span(
            parent,
            span_ids(),
            started_ns,
            end_ns,
            &published,
            local_reply,
        ) {
            tracer.record(span);
        }
    }
}

fn open<E: FilterEngine>(shared: &Shared<E>, first: &ProcessingRequest) -> Session<E::Stream> {
    let stream = shared.engine.open_stream(props::stream_props(first));
    let options = ProtocolOptions {
        endpoint_header: shared.facts().endpoint_header,
    };
    Session::new(stream, options)
}
