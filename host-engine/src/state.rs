//! State behind the host calls: what every VM shares (clock, randomness, shared data, queues,
//! metrics, logs) and what one VM owns (its contexts, streams, outgoing calls, tick period).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::abi::LogLevel;
use crate::metrics::{MetricKind, MetricStore};
use crate::types::{
    ForeignCall, GrpcCallInfo, Headers, HttpCallInfo, LocalReply, LogLine, PropValue, TrapRecord,
};

/// Randomness for `random_get`: SplitMix64 from a seed (deterministic, for tests) or the
/// operating system's generator (production).
#[derive(Debug, Clone)]
pub enum Rng {
    Seeded(u64),
    Os,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng::Seeded(seed)
    }

    fn next_u64(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        match self {
            Rng::Seeded(state) => {
                for chunk in buf.chunks_mut(8) {
                    let v = Rng::next_u64(state).to_le_bytes();
                    chunk.copy_from_slice(&v[..chunk.len()]);
                }
            }
            Rng::Os => {
                if getrandom::fill(buf).is_err() {
                    // No OS generator (never seen on Linux): fall back to a clock-seeded stream
                    // rather than handing the guest zeros.
                    let mut state = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64);
                    for chunk in buf.chunks_mut(8) {
                        let v = Rng::next_u64(&mut state).to_le_bytes();
                        chunk.copy_from_slice(&v[..chunk.len()]);
                    }
                }
            }
        }
    }
}

/// The clock the guest sees: simulated (moved by the test) or real.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// `Shared::now_ns` is the wall clock; the test moves it.
    Simulated,
    /// Wall clock at start (`Shared::start_ns`) plus the time elapsed since `origin`.
    Real { origin: std::time::Instant },
}

/// Where guest log lines go besides `Shared::logs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSink {
    /// Kept in `Shared::logs` only (tests read them all).
    Keep,
    /// Forwarded to the `log` crate (target `llm_router`) and kept, at most this many, in
    /// `Shared::logs` (the oldest go first).
    Forward { keep: usize },
}

#[derive(Debug)]
pub struct Queue {
    pub owner_worker: usize,
    pub owner_context: u32,
    pub items: VecDeque<Vec<u8>>,
}

/// Everything all VMs of one host share (one Envoy process).
#[derive(Debug)]
pub struct Shared {
    /// Simulated wall clock, ns since the Unix epoch (see [`Shared::wall_ns`]).
    pub now_ns: u64,
    pub clock: Clock,
    /// Wall clock at host creation; the monotonic clock counts from here.
    pub start_ns: u64,
    pub rng: Rng,
    pub vm_id: String,
    pub root_id: String,
    pub plugin_name: String,
    pub env: Vec<(String, String)>,
    pub log_level: LogLevel,
    pub shared_data: HashMap<(String, String), (Vec<u8>, u32)>,
    pub next_cas: u32,
    pub queue_tokens: HashMap<(String, String), u32>,
    pub queues: BTreeMap<u32, Queue>,
    pub next_queue_token: u32,
    /// (worker, context, queue token) notifications not delivered yet.
    pub queue_ready: VecDeque<(usize, u32, u32)>,
    pub metrics: MetricStore,
    pub logs: Vec<LogLine>,
    /// Log lines dropped from the front of `logs` (see [`LogSink::Forward`]).
    pub logs_dropped: usize,
    pub log_sink: LogSink,
    pub traps: Vec<TrapRecord>,
    /// Host-wide properties (plugin-level), by NUL-joined path.
    pub properties: HashMap<Vec<u8>, PropValue>,
    /// When set, `proxy_http_call` to other clusters fails with BadArgument.
    pub known_clusters: Option<Vec<String>>,
    /// When set, `proxy_grpc_call` to other upstreams fails with ParseFailure (what Envoy
    /// returns for an unknown cluster name). None: every name is accepted (host-sim answers
    /// calls by hand).
    pub grpc_clusters: Option<Vec<String>>,
    pub echo_logs: bool,
}

impl Shared {
    /// Shared state with Envoy-like defaults: simulated clock at `start_ms`, seed 0, log level
    /// info, lines kept. Callers adjust the public fields.
    pub fn new(start_ms: u64, vm_id: &str, root_id: &str, plugin_name: &str) -> Shared {
        Shared {
            now_ns: start_ms * 1_000_000,
            clock: Clock::Simulated,
            start_ns: start_ms * 1_000_000,
            rng: Rng::new(0),
            vm_id: vm_id.to_string(),
            root_id: root_id.to_string(),
            plugin_name: plugin_name.to_string(),
            env: Vec::new(),
            log_level: LogLevel::Info,
            shared_data: HashMap::new(),
            next_cas: 1,
            queue_tokens: HashMap::new(),
            queues: BTreeMap::new(),
            next_queue_token: 1,
            queue_ready: VecDeque::new(),
            metrics: MetricStore::default(),
            logs: Vec::new(),
            logs_dropped: 0,
            log_sink: LogSink::Keep,
            traps: Vec::new(),
            properties: HashMap::new(),
            known_clusters: None,
            grpc_clusters: None,
            echo_logs: false,
        }
    }

    /// Envoy's CAS counter: global, starts at 1, skips 0 on wrap.
    pub fn next_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        cas
    }

    /// Wall clock the guest sees, ns since the Unix epoch.
    pub fn wall_ns(&self) -> u64 {
        match self.clock {
            Clock::Simulated => self.now_ns,
            Clock::Real { origin } => self
                .start_ns
                .saturating_add(origin.elapsed().as_nanos() as u64),
        }
    }

    /// Nanoseconds since the host started (the monotonic clock).
    pub fn elapsed_ns(&self) -> u64 {
        self.wall_ns().saturating_sub(self.start_ns)
    }

    /// Milliseconds since the host started.
    pub fn elapsed_ms(&self) -> u64 {
        self.elapsed_ns() / 1_000_000
    }

    pub fn log(&mut self, line: LogLine) {
        if self.echo_logs {
            eprintln!("{line}");
        }
        if let LogSink::Forward { keep } = self.log_sink {
            log::log!(target: "llm_router", line.level.to_log(), "worker {}: {}", line.worker, line.message);
            if self.logs.len() >= keep.max(1) {
                let drop = self.logs.len() / 2 + 1;
                self.logs.drain(..drop);
                self.logs_dropped += drop;
            }
        }
        self.logs.push(line);
    }

    /// A mark for [`Shared::logs_since`]: the number of lines logged so far.
    pub fn log_mark(&self) -> usize {
        self.logs_dropped + self.logs.len()
    }

    /// Lines logged since `mark` (those still kept).
    pub fn logs_since(&self, mark: usize) -> &[LogLine] {
        let from = mark.saturating_sub(self.logs_dropped).min(self.logs.len());
        &self.logs[from..]
    }
}

pub type SharedRef = Arc<Mutex<Shared>>;

pub fn lock(shared: &SharedRef) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A direction of an HTTP stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Request,
    Response,
}

/// Whether a header map can be used from the guest right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    /// Not received yet, or gone (Envoy hands the guest a null map): BadArgument.
    #[default]
    Unavailable,
    /// Held by the filter: reads and writes work.
    Mutable,
    /// Already forwarded after the filter held it (Envoy keeps the pointer): reads work,
    /// writes are accepted but reach nobody, so host-sim records them as late writes.
    Late,
    /// Access-log phase: reads only.
    ReadOnly,
}

/// One direction (request or response) of an HTTP stream, as Envoy's filter manager sees it
/// around this one filter.
#[derive(Debug, Default)]
pub struct Direction {
    pub headers: Headers,
    pub headers_access: Access,
    /// The body buffer the guest sees (the current chunk, or everything buffered so far).
    pub body: Vec<u8>,
    pub body_access: bool,
    pub trailers: Headers,
    pub trailers_access: Access,
    /// Headers were received from the peer.
    pub started: bool,
    /// Headers are held by the filter (StopIteration).
    pub headers_held: bool,
    /// Headers returned StopAll: data and trailers wait in `pending` without calling the guest.
    pub stop_all: bool,
    /// Data received while `stop_all`.
    pub pending: Vec<u8>,
    /// The last data callback returned StopIterationAndBuffer.
    pub buffering: bool,
    /// The peer finished sending (end_of_stream seen, with data or trailers).
    pub peer_done: bool,
    /// Trailers from the peer, waiting for delivery (after stop_all) or held by the filter.
    pub trailers_pending: Option<Headers>,
    pub trailers_held: bool,
    /// The guest called proxy_continue_stream for this direction during the last call.
    pub continue_requested: bool,
    /// What got past the filter: headers, body, trailers, and whether it is complete.
    pub out_headers: Option<Headers>,
    pub out_body: Vec<u8>,
    pub out_trailers: Option<Headers>,
    pub out_complete: bool,
}

/// One HTTP stream context.
#[derive(Debug, Default)]
pub struct StreamState {
    pub request: Direction,
    pub response: Direction,
    /// The request headers as the client sent them (before the filter).
    pub original_request_headers: Headers,
    pub original_request_body: Vec<u8>,
    /// Per-request properties by NUL-joined path.
    pub properties: HashMap<Vec<u8>, PropValue>,
    /// `metadata.filter_metadata.<filter>` trees.
    pub filter_metadata: serde_json::Map<String, serde_json::Value>,
    /// Set by `proxy_send_local_response`, delivered after the call returns.
    pub local_reply_pending: Option<LocalReply>,
    pub local_reply: Option<LocalReply>,
    pub extra_local_replies: usize,
    /// The request was stopped (local reply, close, trap): no more request callbacks.
    pub request_stopped: bool,
    pub closed: Vec<i32>,
    pub foreign_calls: Vec<ForeignCall>,
    /// Request headers were modified while held (ABI 0.2.1 clears the route cache then).
    pub request_headers_modified: bool,
    pub late_writes: Vec<String>,
    pub trap: Option<String>,
    pub logged: bool,
    pub reset: bool,
    pub response_code: Option<u32>,
    pub chunk_log: Vec<crate::types::ChunkOutcome>,
}

/// An http call's response while `proxy_on_http_call_response` runs.
#[derive(Debug, Default)]
pub struct CallResponse {
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
}

#[derive(Debug)]
pub struct PendingCall {
    pub info: HttpCallInfo,
    /// Clock (ms since host start) at which Envoy would time the call out.
    pub deadline_ms: Option<u64>,
}

/// An outstanding `proxy_grpc_call`.
#[derive(Debug)]
pub struct PendingGrpc {
    pub info: GrpcCallInfo,
    /// Clock (ms since host start) at which the call fails with DEADLINE_EXCEEDED.
    pub deadline_ms: Option<u64>,
    /// Handed to a transport already ([`crate::Core::take_new_grpc_calls`]).
    pub dispatched: bool,
}

/// Store data of one VM (one worker thread).
pub struct VmState {
    pub shared: SharedRef,
    pub worker: usize,
    pub memory: Option<wasmtime::Memory>,
    pub alloc: Option<wasmtime::TypedFunc<i32, i32>>,
    pub plugin_config: Vec<u8>,
    pub vm_config: Vec<u8>,
    pub root_context: u32,
    pub current_context: u32,
    pub effective_context: Option<u32>,
    pub streams: BTreeMap<u32, StreamState>,
    pub call_response: Option<CallResponse>,
    pub http_calls: BTreeMap<u32, PendingCall>,
    pub next_token: u32,
    pub tick_period_ms: u32,
    pub next_tick_ms: Option<u64>,
    /// metric id -> (kind, name); ids carry the kind in the low 2 bits as in Envoy.
    pub metric_ids: HashMap<u32, (MetricKind, String)>,
    pub next_metric_seq: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// gRPC streams (not supported) to close with UNIMPLEMENTED after the current call:
    /// (context, token).
    pub grpc_to_close: Vec<(u32, u32)>,
    pub grpc_status: Option<(u32, String)>,
    /// Next gRPC stream token (even, as Envoy's).
    pub next_grpc_token: u32,
    /// Next gRPC call token (odd, as Envoy's).
    pub next_grpc_call_token: u32,
    /// Outstanding unary gRPC calls by token.
    pub grpc_calls: BTreeMap<u32, PendingGrpc>,
    /// The response message while `proxy_on_grpc_receive` runs.
    pub grpc_receive: Option<Vec<u8>>,
    pub done_called: bool,
    /// Root-context foreign calls (outside any stream).
    pub foreign_calls: Vec<ForeignCall>,
    /// Memory limit of this VM (wasmtime's store limiter).
    pub limits: wasmtime::StoreLimits,
    /// Cost metering (instructions and host calls per guest call), when the factory asks.
    pub meter: Option<crate::cost::Meter>,
}

impl VmState {
    /// A fresh VM's state: root context 1, nothing open.
    pub fn new(
        shared: SharedRef,
        worker: usize,
        plugin_config: Vec<u8>,
        vm_config: Vec<u8>,
        limits: wasmtime::StoreLimits,
    ) -> VmState {
        VmState {
            shared,
            worker,
            memory: None,
            alloc: None,
            plugin_config,
            vm_config,
            root_context: crate::abi::ROOT_CONTEXT_ID,
            current_context: 0,
            effective_context: None,
            streams: BTreeMap::new(),
            call_response: None,
            http_calls: BTreeMap::new(),
            next_token: 1,
            tick_period_ms: 0,
            next_tick_ms: None,
            metric_ids: HashMap::new(),
            next_metric_seq: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
            grpc_to_close: Vec::new(),
            grpc_status: None,
            next_grpc_token: 2,
            next_grpc_call_token: 1,
            grpc_calls: BTreeMap::new(),
            grpc_receive: None,
            done_called: false,
            foreign_calls: Vec::new(),
            limits,
            meter: None,
        }
    }

    /// The context host calls act on: the effective context if one was set, else the current.
    pub fn context(&self) -> u32 {
        self.effective_context.unwrap_or(self.current_context)
    }

    pub fn stream_mut(&mut self) -> Option<&mut StreamState> {
        let ctx = self.context();
        self.streams.get_mut(&ctx)
    }

    pub fn stream(&self) -> Option<&StreamState> {
        self.streams.get(&self.context())
    }
}
