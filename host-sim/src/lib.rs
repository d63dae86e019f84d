//! host-sim: a Proxy-Wasm ABI 0.2.1 host on wasmtime that behaves like Envoy's Wasm filter
//! host (proxy-wasm-cpp-host), for fast and deterministic tests of `dist/llm_router.wasm`.
//!
//! ```no_run
//! use host_sim::Host;
//! # fn main() -> anyhow::Result<()> {
//! let mut host = Host::builder()
//!     .wasm_file("../dist/llm_router.wasm")
//!     .workers(2)
//!     .plugin_config(r#"{"tiers":{"small":{}}}"#)
//!     .env("LLM_ROUTER_PUSH_TOKEN", "t")
//!     .seed(7)
//!     .build()?;
//! host.start()?;
//! let ex = host
//!     .worker(0)
//!     .request()
//!     .method("POST")
//!     .path("/v1/chat/completions")
//!     .header("x-tenant-id", "acme")
//!     .body_chunks(&[&b"{\"model\":"[..], &b"\"gpt-4o\"}"[..]])
//!     .send();
//! if let Some(up) = ex.upstream() {
//!     println!("tier = {:?}", up.header("x-llm-model-type"));
//! }
//! ex.finish()?;
//! println!("{}", host.render_prometheus());
//! # Ok(())
//! # }
//! ```

mod builder;
pub mod cost;
mod exchange;
pub mod fleet;
pub mod fuzz;
mod host;
mod observe;
pub mod replay;
mod request;
mod response;

/// The engine's ABI constants and wire formats (`host_engine::abi`).
pub use host_engine::abi;
/// Metrics and their renderings (`host_engine::metrics`).
pub use host_engine::metrics;

pub use builder::HostBuilder;
pub use exchange::{ClientResponse, Exchange, Upstream};
/// The gRPC client of real calls (`--grpc-cluster NAME=URL`).
pub use grpc_call;
pub use host::{Host, Worker};
pub use host_engine::{
    grpc_code, ChunkOutcome, ConfigureError, ForeignCall, GrpcAnswer, GrpcCallInfo, Headers,
    HttpCallInfo, LocalReply, LogLevel, LogLine, Metric, MetricKind, ProcExit, PropValue, Status,
    StreamKey, TrapRecord,
};
pub use request::RequestBuilder;
pub use response::ResponseBuilder;
