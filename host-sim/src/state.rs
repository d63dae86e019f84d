//! State behind the host calls: what every VM shares (clock, randomness, shared data, queues,
//! metrics, logs) and what one VM owns (its contexts, streams, outgoing calls, tick period).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::abi::LogLevel;
use crate::metrics::{MetricKind, MetricStore};
use crate::types::{
    ForeignCall, Headers, HttpCallInfo, LocalReply, LogLine, PropValue, TrapRecord,
};

/// SplitMix64: small, seedable, good enough for `random_get` in tests.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) owner_worker: usize,
    pub(crate) owner_context: u32,
    pub(crate) items: VecDeque<Vec<u8>>,
}

/// Everything all VMs of one host share (one Envoy process).
#[derive(Debug)]
pub(crate) struct Shared {
    /// Wall clock, ns since the Unix epoch.
    pub(crate) now_ns: u64,
    /// Wall clock at host creation; the monotonic clock counts from here.
    pub(crate) start_ns: u64,
    pub(crate) rng: Rng,
    pub(crate) vm_id: String,
    pub(crate) root_id: String,
    pub(crate) plugin_name: String,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) log_level: LogLevel,
    pub(crate) shared_data: HashMap<(String, String), (Vec<u8>, u32)>,
    pub(crate) next_cas: u32,
    pub(crate) queue_tokens: HashMap<(String, String), u32>,
    pub(crate) queues: BTreeMap<u32, Queue>,
    pub(crate) next_queue_token: u32,
    /// (worker, context, queue token) notifications not delivered yet.
    pub(crate) queue_ready: VecDeque<(usize, u32, u32)>,
    pub(crate) metrics: MetricStore,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) traps: Vec<TrapRecord>,
    /// Host-wide properties (plugin-level), by NUL-joined path.
    pub(crate) properties: HashMap<Vec<u8>, PropValue>,
    /// When set, `proxy_http_call` to other clusters fails with BadArgument.
    pub(crate) known_clusters: Option<Vec<String>>,
    pub(crate) echo_logs: bool,
}

impl Shared {
    /// Envoy's CAS counter: global, starts at 1, skips 0 on wrap.
    pub(crate) fn next_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        cas
    }

    pub(crate) fn log(&mut self, line: LogLine) {
        if self.echo_logs {
            eprintln!("{line}");
        }
        self.logs.push(line);
    }
}

pub(crate) type SharedRef = Arc<Mutex<Shared>>;

pub(crate) fn lock(shared: &SharedRef) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether a header map can be used from the guest right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Access {
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
pub(crate) struct Direction {
    pub(crate) headers: Headers,
    pub(crate) headers_access: Access,
    /// The body buffer the guest sees (the current chunk, or everything buffered so far).
    pub(crate) body: Vec<u8>,
    pub(crate) body_access: bool,
    pub(crate) trailers: Headers,
    pub(crate) trailers_access: Access,
    /// Headers were received from the peer.
    pub(crate) started: bool,
    /// Headers are held by the filter (StopIteration).
    pub(crate) headers_held: bool,
    /// Headers returned StopAll: data and trailers wait in `pending` without calling the guest.
    pub(crate) stop_all: bool,
    /// Data received while `stop_all`.
    pub(crate) pending: Vec<u8>,
    /// The last data callback returned StopIterationAndBuffer.
    pub(crate) buffering: bool,
    /// The peer finished sending (end_of_stream seen, with data or trailers).
    pub(crate) peer_done: bool,
    /// Trailers from the peer, waiting for delivery (after stop_all) or held by the filter.
    pub(crate) trailers_pending: Option<Headers>,
    pub(crate) trailers_held: bool,
    /// The guest called proxy_continue_stream for this direction during the last call.
    pub(crate) continue_requested: bool,
    /// What got past the filter: headers, body, trailers, and whether it is complete.
    pub(crate) out_headers: Option<Headers>,
    pub(crate) out_body: Vec<u8>,
    pub(crate) out_trailers: Option<Headers>,
    pub(crate) out_complete: bool,
}

/// One HTTP stream context.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    pub(crate) request: Direction,
    pub(crate) response: Direction,
    /// The request headers as the client sent them (before the filter).
    pub(crate) original_request_headers: Headers,
    pub(crate) original_request_body: Vec<u8>,
    /// Per-request properties by NUL-joined path.
    pub(crate) properties: HashMap<Vec<u8>, PropValue>,
    /// `metadata.filter_metadata.<filter>` trees.
    pub(crate) filter_metadata: serde_json::Map<String, serde_json::Value>,
    /// Set by `proxy_send_local_response`, delivered after the call returns.
    pub(crate) local_reply_pending: Option<LocalReply>,
    pub(crate) local_reply: Option<LocalReply>,
    pub(crate) extra_local_replies: usize,
    /// The request was stopped (local reply, close, trap): no more request callbacks.
    pub(crate) request_stopped: bool,
    pub(crate) closed: Vec<i32>,
    pub(crate) foreign_calls: Vec<ForeignCall>,
    /// Request headers were modified while held (ABI 0.2.1 clears the route cache then).
    pub(crate) request_headers_modified: bool,
    pub(crate) late_writes: Vec<String>,
    pub(crate) trap: Option<String>,
    pub(crate) logged: bool,
    pub(crate) reset: bool,
    pub(crate) response_code: Option<u32>,
    pub(crate) chunk_log: Vec<crate::exchange::ChunkOutcome>,
}

/// An http call's response while `proxy_on_http_call_response` runs.
#[derive(Debug, Default)]
pub(crate) struct CallResponse {
    pub(crate) headers: Headers,
    pub(crate) body: Vec<u8>,
    pub(crate) trailers: Headers,
}

#[derive(Debug)]
pub(crate) struct PendingCall {
    pub(crate) info: HttpCallInfo,
    /// Clock (ms since host start) at which Envoy would time the call out.
    pub(crate) deadline_ms: Option<u64>,
}

/// Store data of one VM (one worker thread).
pub(crate) struct VmState {
    pub(crate) shared: SharedRef,
    pub(crate) worker: usize,
    pub(crate) memory: Option<wasmtime::Memory>,
    pub(crate) alloc: Option<wasmtime::TypedFunc<i32, i32>>,
    pub(crate) plugin_config: Vec<u8>,
    pub(crate) vm_config: Vec<u8>,
    pub(crate) root_context: u32,
    pub(crate) current_context: u32,
    pub(crate) effective_context: Option<u32>,
    pub(crate) streams: BTreeMap<u32, StreamState>,
    pub(crate) call_response: Option<CallResponse>,
    pub(crate) http_calls: BTreeMap<u32, PendingCall>,
    pub(crate) next_token: u32,
    pub(crate) tick_period_ms: u32,
    pub(crate) next_tick_ms: Option<u64>,
    /// metric id -> (kind, name); ids carry the kind in the low 2 bits as in Envoy.
    pub(crate) metric_ids: HashMap<u32, (MetricKind, String)>,
    pub(crate) next_metric_seq: u32,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    /// gRPC calls to close with UNIMPLEMENTED after the current call: (context, token).
    pub(crate) grpc_to_close: Vec<(u32, u32)>,
    pub(crate) grpc_status: Option<(u32, String)>,
    pub(crate) next_grpc_token: u32,
    pub(crate) done_called: bool,
    /// Root-context foreign calls (outside any stream).
    pub(crate) foreign_calls: Vec<ForeignCall>,
}

impl VmState {
    /// The context host calls act on: the effective context if one was set, else the current.
    pub(crate) fn context(&self) -> u32 {
        self.effective_context.unwrap_or(self.current_context)
    }

    pub(crate) fn stream_mut(&mut self) -> Option<&mut StreamState> {
        let ctx = self.context();
        self.streams.get_mut(&ctx)
    }

    pub(crate) fn stream(&self) -> Option<&StreamState> {
        self.streams.get(&self.context())
    }
}
