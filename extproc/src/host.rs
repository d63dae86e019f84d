//! The production engine: the `host_engine` crate (package `llm-router-host`) adapted to the
//! server's [`FilterEngine`] seam. This file is the one place the server depends on it.

use std::sync::Arc;

use grpc_call::GrpcClient;
use host_engine::{Engine, EngineOptions, GrpcTransportRef};

use crate::engine::{
    EngineError, EngineSettings, EngineStats, FilterEngine, FilterStream, Headers, Step,
    StreamProps,
};

/// The wasmtime Proxy-Wasm host running `llm_router.wasm`.
pub struct ProductionEngine(Engine);

/// One stream pinned to one worker VM.
pub struct ProductionStream(host_engine::Stream);

fn step(s: host_engine::Step) -> Step {
    match s {
        host_engine::Step::Hold => Step::Hold,
        host_engine::Step::Continue {
            headers,
            body,
            end_of_stream,
            clear_route_cache,
        } => Step::Continue {
            headers,
            body,
            end_of_stream,
            clear_route_cache,
        },
        host_engine::Step::Reply {
            status,
            headers,
            body,
        } => Step::Reply {
            status,
            headers,
            body,
        },
        host_engine::Step::Trapped {
            continue_unchanged,
            message,
        } => Step::Trapped {
            continue_unchanged,
            message,
        },
    }
}

impl FilterStream for ProductionStream {
    fn request_headers(&mut self, headers: Headers, end_of_stream: bool) -> Step {
        step(self.0.request_headers(headers, end_of_stream))
    }
    fn request_body(&mut self, chunk: Vec<u8>, end_of_stream: bool) -> Step {
        step(self.0.request_body(chunk, end_of_stream))
    }
    fn request_trailers(&mut self, trailers: Headers) -> Step {
        step(self.0.request_trailers(trailers))
    }
    fn response_headers(&mut self, headers: Headers, end_of_stream: bool) -> Step {
        step(self.0.response_headers(headers, end_of_stream))
    }
    fn response_body(&mut self, chunk: Vec<u8>, end_of_stream: bool) -> Step {
        step(self.0.response_body(chunk, end_of_stream))
    }
    fn response_trailers(&mut self, trailers: Headers) -> Step {
        step(self.0.response_trailers(trailers))
    }
    fn finish(self) {
        self.0.finish();
    }
    fn finish_published(self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        self.0.finish_published(prefix)
    }
}

impl FilterEngine for ProductionEngine {
    type Stream = ProductionStream;
    fn open_stream(&self, props: StreamProps) -> ProductionStream {
        ProductionStream(self.0.open_stream(host_engine::StreamProps {
            source_address: props.source_address,
            destination_address: props.destination_address,
            properties: props.properties,
        }))
    }
    fn reconfigure(&self, plugin_config: Vec<u8>) -> Result<(), EngineError> {
        self.0
            .reconfigure(plugin_config)
            .map_err(|e| EngineError(e.0))
    }
    fn prometheus(&self) -> String {
        self.0.prometheus()
    }
    fn stats(&self) -> EngineStats {
        let s = self.0.stats();
        EngineStats {
            streams: s.streams,
            traps: s.traps,
            vm_reloads: s.vm_reloads,
            config_reloads: s.config_reloads,
            config_reload_failures: s.config_reload_failures,
        }
    }
}

/// Compiles the module and starts one VM per worker. Called on the server's tokio runtime (a
/// blocking thread of it): the module's gRPC calls run on that runtime.
pub fn start(settings: EngineSettings) -> Result<ProductionEngine, EngineError> {
    let grpc = if settings.grpc_clusters.is_empty() {
        None
    } else {
        let client = GrpcClient::on_current_runtime(settings.grpc_clusters).map_err(EngineError)?;
        Some(GrpcTransportRef(Arc::new(client)))
    };
    Engine::start(EngineOptions {
        grpc,
        wasm: settings.wasm,
        plugin_config: settings.plugin_config,
        env: with_subset_hints(settings.env),
        workers: settings.workers,
        memory_limit_bytes: settings.memory_limit_bytes,
        fail_open: settings.fail_open,
        ..EngineOptions::default()
    })
    .map(ProductionEngine)
    .map_err(|e| EngineError(e.0))
}

/// The module's environment plus the variable that has it read the gateway's subset hint
/// (`props::SUBSET_PROPERTY`) on each request; Envoy in-proxy gives none and does not set it.
fn with_subset_hints(mut env: Vec<(String, String)>) -> Vec<(String, String)> {
    env.retain(|(k, _)| k != llm_router::endpoints::SUBSET_HINTS_ENV);
    env.push((
        llm_router::endpoints::SUBSET_HINTS_ENV.to_string(),
        "1".to_string(),
    ));
    env
}
