//! host-engine (`llm-router-host`): a Proxy-Wasm ABI 0.2.1 host on wasmtime that behaves like
//! Envoy's Wasm filter host (proxy-wasm-cpp-host), for `dist/llm_router.wasm`.
//!
//! Two ways to use it:
//! - [`Engine`]: production. One OS thread per worker, each owning its VM; a [`Stream`] is
//!   pinned to one VM and answered with a [`Step`]; real clock and OS randomness; memory limit
//!   per VM; a trap fails its stream and the VM is recreated. The ext_proc server runs on it.
//! - [`Core`] with the filter-manager rules ([`manager`]): the layer host-sim drives on one
//!   thread with a simulated clock and seeded randomness, for deterministic tests.
//!
//! gRPC calls (`proxy_grpc_call`): [`Core`] records them and delivers answers
//! ([`Core::take_new_grpc_calls`], [`Core::answer_grpc_call`]); the [`Engine`] hands them to a
//! [`GrpcTransport`] (the `llm-router-grpc` crate's client; this crate has no async runtime).
//! See docs/grpc-calls.md.
//!
//! Layers, bottom up: [`abi`], [`types`], [`metrics`] -> [`state`] -> `hostcalls` -> [`vm`] ->
//! [`core`] + [`manager`] -> [`engine`].

pub mod abi;
pub mod core;
pub mod cost;
pub mod engine;
pub mod grpc_upstream;
mod hostcalls;
pub mod manager;
pub mod meter;
pub mod metrics;
pub mod state;
pub mod types;
pub mod vm;

pub use crate::core::{ConfigureError, Core, Timer};
pub use abi::{LogLevel, Status};
pub use engine::{
    Engine, EngineError, EngineOptions, EngineStats, GrpcReply, GrpcTransport, GrpcTransportRef,
    HeaderPairs, Step, Stream, StreamProps,
};
pub use hostcalls::ProcExit;
pub use metrics::{Metric, MetricKind};
pub use types::{
    grpc_code, grpc_limits, ChunkOutcome, ForeignCall, GrpcAnswer, GrpcCallInfo, Headers,
    HttpCallInfo, LocalReply, LogLine, PropValue, StreamKey, TrapRecord,
};
