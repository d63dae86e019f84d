//! `llm-router-grpc`: the one gRPC client of our Proxy-Wasm hosts. It performs the filter's
//! `proxy_grpc_call`s for real: unary calls carrying raw bytes (the guest serialized the
//! message), to the targets an operator maps upstream names to with `--grpc-cluster NAME=URL`
//! (plaintext `http://` or TLS `https://`), the call's timeout applied, failures mapped to gRPC
//! status codes (a target that refuses the connection is 14 UNAVAILABLE).
//!
//! - [`Clusters`]: the validated `NAME=URL` mapping ([`parse_cluster`] checks one argument).
//! - [`GrpcClient`]: calls on a tokio runtime: [`GrpcClient::call`] (async),
//!   [`GrpcClient::call_blocking`] (host-sim, from the test thread), and the
//!   [`host_engine::GrpcTransport`] implementation the ext_proc server hands its engine.
//!
//! Layering: host-engine (no tokio) <- this crate <- llm-router-extproc, host-sim.

mod client;
mod clusters;
mod codec;

pub use client::GrpcClient;
pub use clusters::{parse_cluster, Cluster, Clusters};
pub use codec::RawCodec;
