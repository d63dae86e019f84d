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

pub mod abi;
mod exchange;
pub mod fuzz;
mod host;
mod hostcalls;
pub mod metrics;
pub mod replay;
mod state;
mod types;

pub use abi::{LogLevel, Status};
pub use exchange::{
    ChunkOutcome, ClientResponse, Exchange, RequestBuilder, ResponseBuilder, StreamKey, Upstream,
};
pub use host::{ConfigureError, Host, HostBuilder, Worker};
pub use hostcalls::ProcExit;
pub use metrics::{Metric, MetricKind};
pub use types::{ForeignCall, Headers, HttpCallInfo, LocalReply, LogLine, PropValue, TrapRecord};
