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

use crate::engine::FilterEngine;
use crate::facts::ConfigFacts;
use crate::props;
use crate::protocol::{ProtocolOptions, Session};
use crate::stats::Counters;

/// What every part of the server shares.
pub struct Shared<E: FilterEngine> {
    pub engine: E,
    pub facts: RwLock<ConfigFacts>,
    pub counters: Counters,
}

impl<E: FilterEngine> Shared<E> {
    pub fn new(engine: E, facts: ConfigFacts) -> Self {
        Shared {
            engine,
            facts: RwLock::new(facts),
            counters: Counters::default(),
        }
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
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(run_stream(self.shared.clone(), inbound, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

type Tx = mpsc::Sender<Result<ProcessingResponse, Status>>;

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
) {
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
        let _ = tokio::task::spawn_blocking(move || s.finish()).await;
    }
}

fn open<E: FilterEngine>(shared: &Shared<E>, first: &ProcessingRequest) -> Session<E::Stream> {
    let stream = shared.engine.open_stream(props::stream_props(first));
    let options = ProtocolOptions {
        endpoint_header: shared.facts().endpoint_header,
    };
    Session::new(stream, options)
}
