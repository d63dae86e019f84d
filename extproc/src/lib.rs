//! `llm-router-extproc`: the unchanged `llm_router.wasm` behind Envoy's external processing
//! API, speaking the Gateway API Inference Extension endpoint-picker protocol.

pub mod cli;
pub mod engine;
pub mod facts;
pub mod host;
pub mod http;
pub mod logger;
pub mod messages;
pub mod otlp;
pub mod props;
pub mod protocol;
pub mod quota;
pub mod reload;
pub mod server;
pub mod service;
pub mod stats;
pub mod tls;
pub mod trace;
