//! `llm-router-extproc`: the unchanged `llm_router.wasm` behind Envoy's external processing
//! API, speaking the Gateway API Inference Extension endpoint-picker protocol.

pub mod engine;
pub mod messages;
pub mod props;
pub mod protocol;
