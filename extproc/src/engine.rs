//! The seam between the ext_proc server and the Proxy-Wasm host engine.
//!
//! The protocol layer ([`crate::protocol`]) talks only to [`FilterStream`]; the servers talk only
//! to [`FilterEngine`]. Tests implement both with fakes; production implements them with the
//! `host_engine` crate (see [`crate::host`]), which is the one compile-time dependency point.

use std::fmt;

/// A header map as the filter sees it: names and values are bytes (Envoy passes obs-text on).
pub type Headers = Vec<(Vec<u8>, Vec<u8>)>;

/// What the filter decided for one callback (the engine contract's `Step`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The filter holds this direction: send nothing yet, feed the next chunk.
    Hold,
    /// Go on. `headers`: the header map to send now (None when the headers already went).
    /// `body`: the bytes to send for everything held so far plus this chunk (None: nothing).
    Continue {
        headers: Option<Headers>,
        body: Option<Vec<u8>>,
        end_of_stream: bool,
        clear_route_cache: bool,
    },
    /// The filter answered locally.
    Reply {
        status: u32,
        headers: Headers,
        body: Vec<u8>,
    },
    /// The VM trapped in this stream.
    Trapped {
        continue_unchanged: bool,
        message: String,
    },
}

/// One HTTP stream in the filter (one ext_proc gRPC stream).
pub trait FilterStream: Send + 'static {
    fn request_headers(&mut self, headers: Headers, end_of_stream: bool) -> Step;
    fn request_body(&mut self, chunk: Vec<u8>, end_of_stream: bool) -> Step;
    fn request_trailers(&mut self, trailers: Headers) -> Step;
    fn response_headers(&mut self, headers: Headers, end_of_stream: bool) -> Step;
    fn response_body(&mut self, chunk: Vec<u8>, end_of_stream: bool) -> Step;
    fn response_trailers(&mut self, trailers: Headers) -> Step;
    /// The stream ended (normally, or the gateway cancelled it): on_log + on_done + on_delete.
    fn finish(self);
    /// `finish`, returning the properties under `prefix` the filter left (what it published
    /// for the trace, `llm_router::trace`), segments joined by `.`.
    fn finish_published(self, prefix: &str) -> Vec<(String, Vec<u8>)>
    where
        Self: Sized,
    {
        let _ = prefix;
        self.finish();
        Vec::new()
    }
}

/// What Envoy would answer to `proxy_get_property` for one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamProps {
    pub source_address: Option<String>,
    pub destination_address: Option<String>,
    pub properties: Vec<(Vec<String>, Vec<u8>)>,
}

/// Counters the engine keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub streams: u64,
    pub traps: u64,
    pub vm_reloads: u64,
    pub config_reloads: u64,
    pub config_reload_failures: u64,
}

/// An engine error, as text the operator can act on (it names the guest's log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineError(pub String);

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EngineError {}

/// The running filter: VMs, shared data, metrics.
pub trait FilterEngine: Send + Sync + 'static {
    type Stream: FilterStream;
    fn open_stream(&self, props: StreamProps) -> Self::Stream;
    fn reconfigure(&self, plugin_config: Vec<u8>) -> Result<(), EngineError>;
    fn prometheus(&self) -> String;
    fn stats(&self) -> EngineStats;
}

/// What the server needs to start an engine.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub wasm: Vec<u8>,
    pub plugin_config: Vec<u8>,
    pub env: Vec<(String, String)>,
    pub workers: usize,
    pub memory_limit_bytes: usize,
    pub fail_open: bool,
    /// Upstream names of the module's `proxy_grpc_call`s and their targets
    /// (`--grpc-cluster NAME=URL`); calls to other names fail as for an unknown cluster.
    pub grpc_clusters: grpc_call::Clusters,
}
