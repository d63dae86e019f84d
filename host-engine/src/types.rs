//! Plain data the test sees: header lists, local replies, logs, traps, property values.

use crate::abi::LogLevel;

/// One header field: the bytes as they travel (Envoy passes obs-text bytes 0x80-0xFF through in
/// values, and keeps names as received after lowercasing), plus a lossy text view of each.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    name: Vec<u8>,
    value: Vec<u8>,
    name_text: String,
    value_text: String,
}

impl Field {
    fn new(name: &[u8], value: &[u8]) -> Field {
        let name = name.to_ascii_lowercase();
        Field {
            name_text: String::from_utf8_lossy(&name).into_owned(),
            value_text: String::from_utf8_lossy(value).into_owned(),
            name,
            value: value.to_vec(),
        }
    }

    fn is(&self, name: &[u8]) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// An ordered header list with case-insensitive lookup. Names are stored lowercased, as Envoy
/// stores them. Names and values are bytes; the `&str` accessors show a lossy UTF-8 view
/// (U+FFFD for invalid bytes), the `*_bytes` accessors the exact bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<Field>);

impl Headers {
    pub fn new() -> Headers {
        Headers(Vec::new())
    }

    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Headers {
        Headers(
            pairs
                .iter()
                .map(|(k, v)| Field::new(k.as_ref(), v.as_ref()))
                .collect(),
        )
    }

    /// First value of `name` (Envoy's `proxy_get_header_map_value` returns the first too), as
    /// lossy text.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.field(name.as_bytes()).map(|f| f.value_text.as_str())
    }

    /// First value of `name`, exact bytes.
    pub fn get_bytes(&self, name: impl AsRef<[u8]>) -> Option<&[u8]> {
        self.field(name.as_ref()).map(|f| f.value.as_slice())
    }

    fn field(&self, name: &[u8]) -> Option<&Field> {
        self.0.iter().find(|f| f.is(name))
    }

    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|f| f.is(name.as_bytes()))
            .map(|f| f.value_text.as_str())
            .collect()
    }

    pub fn get_all_bytes(&self, name: impl AsRef<[u8]>) -> Vec<&[u8]> {
        let name = name.as_ref();
        self.0
            .iter()
            .filter(|f| f.is(name))
            .map(|f| f.value.as_slice())
            .collect()
    }

    pub fn contains(&self, name: impl AsRef<[u8]>) -> bool {
        self.field(name.as_ref()).is_some()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// (name, value) in order, as lossy text.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .map(|f| (f.name_text.as_str(), f.value_text.as_str()))
    }

    /// (name, value) in order, exact bytes.
    pub fn iter_bytes(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.0
            .iter()
            .map(|f| (f.name.as_slice(), f.value.as_slice()))
    }

    /// Every pair as lossy text (for comparisons in tests).
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|f| (f.name_text.clone(), f.value_text.clone()))
            .collect()
    }

    /// Appends a value (Envoy `addCopy`).
    pub fn add(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.0.push(Field::new(name.as_ref(), value.as_ref()));
    }

    /// Replaces every value of `name` by one value, in place of the first (Envoy `setCopy`).
    pub fn set(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let field = Field::new(name.as_ref(), value.as_ref());
        if let Some(pos) = self.0.iter().position(|f| f.name == field.name) {
            let lower = field.name.clone();
            self.0[pos] = field;
            let mut i = 0;
            self.0.retain(|f| {
                let keep = f.name != lower || i == pos;
                i += 1;
                keep
            });
        } else {
            self.0.push(field);
        }
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: impl AsRef<[u8]>) {
        let name = name.as_ref();
        self.0.retain(|f| !f.is(name));
    }

    /// Changes from `before` to `self`: (set or changed headers with their new values, removed
    /// header names), as lossy text. Compared by name on the exact values.
    pub fn diff(&self, before: &Headers) -> (Vec<(String, String)>, Vec<String>) {
        let mut set: Vec<(String, String)> = Vec::new();
        for f in &self.0 {
            if before.get_all_bytes(&f.name) != self.get_all_bytes(&f.name)
                && !set.iter().any(|(sk, _)| *sk == f.name_text)
            {
                set.push((f.name_text.clone(), f.value_text.clone()));
            }
        }
        let mut removed: Vec<String> = Vec::new();
        for f in &before.0 {
            if !self.contains(&f.name) && !removed.contains(&f.name_text) {
                removed.push(f.name_text.clone());
            }
        }
        (set, removed)
    }
}

/// Identifies a stream: worker index and context id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub worker: usize,
    pub context: u32,
}

/// A reply the filter produced itself with `proxy_send_local_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    /// The `status_code_details` argument (Envoy's response code details).
    pub details: String,
    /// Headers exactly as the filter passed them.
    pub headers: Headers,
    pub body: Vec<u8>,
    /// The gRPC status argument (`None` for -1).
    pub grpc_status: Option<i32>,
}

impl LocalReply {
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn body_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// One log line, from `proxy_log` or from WASI stdout/stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub worker: usize,
    pub level: LogLevel,
    /// `proxy_log`, `stdout` or `stderr`.
    pub source: &'static str,
    pub context_id: u32,
    pub message: String,
}

impl std::fmt::Display for LogLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[worker {}][{}][ctx {}] {}",
            self.worker,
            self.level.name(),
            self.context_id,
            self.message
        )
    }
}

/// A trap (or `proc_exit`) in one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrapRecord {
    pub worker: usize,
    /// The export that was running (`proxy_on_request_headers`, ...).
    pub function: String,
    pub message: String,
}

/// A value for `proxy_get_property`, serialized the way Envoy serializes CEL values.
#[derive(Debug, Clone, PartialEq)]
pub enum PropValue {
    /// Raw UTF-8 bytes.
    Str(String),
    /// 8 bytes little endian.
    Int(i64),
    /// 8 bytes little endian IEEE 754.
    Double(f64),
    /// 1 byte.
    Bool(bool),
    Bytes(Vec<u8>),
}

impl PropValue {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            PropValue::Str(s) => s.as_bytes().to_vec(),
            PropValue::Int(i) => i.to_le_bytes().to_vec(),
            PropValue::Double(d) => d.to_le_bytes().to_vec(),
            PropValue::Bool(b) => vec![u8::from(*b)],
            PropValue::Bytes(b) => b.clone(),
        }
    }

    /// Serializes a JSON leaf as Envoy serializes a `google.protobuf.Value` leaf: strings raw,
    /// numbers as doubles, booleans as one byte. Objects and arrays come back as JSON text
    /// (Envoy would return a serialized protobuf message; filters should read leaves).
    pub fn from_json(v: &serde_json::Value) -> PropValue {
        match v {
            serde_json::Value::String(s) => PropValue::Str(s.clone()),
            serde_json::Value::Number(n) => PropValue::Double(n.as_f64().unwrap_or(0.0)),
            serde_json::Value::Bool(b) => PropValue::Bool(*b),
            serde_json::Value::Null => PropValue::Bytes(Vec::new()),
            other => PropValue::Str(other.to_string()),
        }
    }
}

impl From<&str> for PropValue {
    fn from(s: &str) -> Self {
        PropValue::Str(s.to_string())
    }
}
impl From<String> for PropValue {
    fn from(s: String) -> Self {
        PropValue::Str(s)
    }
}
impl From<i64> for PropValue {
    fn from(v: i64) -> Self {
        PropValue::Int(v)
    }
}
impl From<bool> for PropValue {
    fn from(v: bool) -> Self {
        PropValue::Bool(v)
    }
}
impl From<f64> for PropValue {
    fn from(v: f64) -> Self {
        PropValue::Double(v)
    }
}

/// An outgoing `proxy_http_call` waiting for the test to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCallInfo {
    pub worker: usize,
    pub token: u32,
    /// The context that made the call (root or stream).
    pub context_id: u32,
    pub upstream: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    pub timeout_ms: u32,
}

/// A `proxy_call_foreign_function` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignCall {
    pub name: String,
    pub args: Vec<u8>,
    /// The status returned to the guest.
    pub status: i32,
}

/// What happened to one response body chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkOutcome {
    /// Clock (ms since host start) when the chunk arrived.
    pub at_ms: u64,
    pub len: usize,
    /// The filter held it (Pause / StopIterationAndBuffer, or held headers).
    pub paused: bool,
    /// Body bytes the client had received after this chunk.
    pub delivered: usize,
}

/// An outgoing `proxy_grpc_call` (a unary gRPC call) waiting for its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCallInfo {
    pub worker: usize,
    /// The token the guest got (odd, as Envoy's call tokens).
    pub token: u32,
    /// The context that made the call (root or stream); the answer goes to it.
    pub context_id: u32,
    /// The `upstream` argument: a cluster name the host maps to a target.
    pub upstream: String,
    pub service: String,
    pub method: String,
    pub initial_metadata: Headers,
    /// The serialized request message.
    pub message: Vec<u8>,
    /// 0: no timeout.
    pub timeout_ms: u32,
}

/// The outcome of a unary gRPC call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcAnswer {
    /// Status OK with the serialized response message: `proxy_on_grpc_receive` only (Envoy
    /// calls no `proxy_on_grpc_close` after a successful unary call).
    Ok(Vec<u8>),
    /// A non-OK gRPC status: `proxy_on_grpc_close(code)`, `proxy_get_status` gives code and
    /// message.
    Err { code: u32, message: String },
}

impl GrpcAnswer {
    pub fn err(code: u32, message: impl Into<String>) -> GrpcAnswer {
        GrpcAnswer::Err {
            code,
            message: message.into(),
        }
    }
}

/// gRPC status codes the host produces itself.
pub mod grpc_code {
    pub const CANCELLED: u32 = 1;
    pub const UNKNOWN: u32 = 2;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
}

/// Bounds on what one `proxy_grpc_call` may carry (larger arguments get BadArgument) and on the
/// calls a VM may have outstanding (more get InternalFailure).
pub mod grpc_limits {
    pub const MAX_NAME_BYTES: usize = 1024;
    pub const MAX_METADATA_BYTES: usize = 64 * 1024;
    pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
    pub const MAX_PENDING_CALLS: usize = 1024;
}
