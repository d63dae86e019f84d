//! How the production engine performs the filter's gRPC calls. host-engine has no async
//! runtime: the embedding server provides a [`GrpcTransport`] (llm-router-extproc's is in the
//! `llm-router-grpc` crate, on tokio), the worker thread hands it each call the guest made, and
//! the transport answers through the [`GrpcReply`] from any thread. The answer runs on the
//! worker's VM, on the context that made the call.

use std::sync::mpsc::Sender;
use std::sync::Arc;

use super::step::Cmd;
use crate::types::{GrpcAnswer, GrpcCallInfo};

/// Performs unary gRPC calls for the engine.
pub trait GrpcTransport: Send + Sync + 'static {
    /// The upstream (cluster) names it can reach; a `proxy_grpc_call` to any other name gets
    /// ParseFailure, as in Envoy for an unknown cluster.
    fn clusters(&self) -> Vec<String>;
    /// Starts `call` without blocking; answers it exactly once through `reply` (dropping the
    /// reply unanswered leaves the call to its timeout). `call.timeout_ms` (0: none) bounds it;
    /// the engine also times the call out itself.
    fn start(&self, call: GrpcCallInfo, reply: GrpcReply);
}

/// A shared [`GrpcTransport`] for [`crate::EngineOptions::grpc`].
#[derive(Clone)]
pub struct GrpcTransportRef(pub Arc<dyn GrpcTransport>);

impl std::fmt::Debug for GrpcTransportRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GrpcTransport{:?}", self.0.clusters())
    }
}

/// Where the answer of one call goes: its worker thread, the VM generation that made it (a VM
/// recreated after a trap lost its calls) and its token.
pub struct GrpcReply {
    pub(super) sender: Sender<Cmd>,
    pub(super) generation: u64,
    pub(super) token: u32,
}

impl GrpcReply {
    /// The call's token.
    pub fn token(&self) -> u32 {
        self.token
    }

    /// Delivers the answer (ignored when the call was cancelled, timed out or its context
    /// ended meanwhile).
    pub fn send(self, answer: GrpcAnswer) {
        let _ = self.sender.send(Cmd::GrpcAnswer {
            generation: self.generation,
            token: self.token,
            answer,
        });
    }
}
