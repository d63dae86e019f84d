//! llm-router-sidecar: scrapes model servers' Prometheus `/metrics` and pushes a load snapshot
//! into the llm-router Wasm filter. Pure logic (configuration, the Prometheus text parser,
//! snapshot building, pods to endpoints) lives in its own modules; `run` holds the thin I/O
//! loop and `kube_source` the Kubernetes watchers.

pub mod cli;
pub mod config;
pub mod http;
pub mod kube_pool;
pub mod kube_source;
pub mod logging;
pub mod pools;
pub mod prom;
pub mod run;
pub mod signal;
pub mod snapshot;
