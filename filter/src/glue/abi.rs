//! The Proxy-Wasm 0.2.1 host functions the filter calls, declared here and wrapped so that no
//! status code and no byte sequence from the host can panic.
//!
//! The SDK's `proxy_wasm::hostcalls` are not used: each of them `panic!`s on any status it does
//! not expect (e.g. a header write after the headers were sent returns `BadArgument`), and the
//! header-map and property readers `unwrap` a UTF-8 conversion. A panic is a trap, and a trap
//! kills the VM of a whole worker. Only the SDK's context dispatcher and allocator remain in use.

use crate::hostmap;

/// A host call's status, as a plain number (an unknown code must not become an invalid enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

pub const OK: u32 = 0;
pub const NOT_FOUND: u32 = 1;
pub const CAS_MISMATCH: u32 = 8;

/// `MapType` values of the ABI.
pub mod map {
    pub const REQUEST_HEADERS: u32 = 0;
    pub const RESPONSE_HEADERS: u32 = 2;
}

/// `BufferType` values of the ABI.
pub mod buffer {
    pub const REQUEST_BODY: u32 = 0;
    pub const RESPONSE_BODY: u32 = 1;
    pub const GRPC_RECEIVE: u32 = 5;
    pub const PLUGIN_CONFIGURATION: u32 = 7;
}

/// `MetricType` values of the ABI.
pub mod metric {
    pub const COUNTER: u32 = 0;
    pub const GAUGE: u32 = 1;
    pub const HISTOGRAM: u32 = 2;
}

// The SDK declares some of these with its own enum types; the ABI is the same (u32).
#[allow(clashing_extern_declarations)]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
    fn proxy_get_buffer_bytes(
        kind: u32,
        start: usize,
        max: usize,
        out_data: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        kind: u32,
        start: usize,
        size: usize,
        data: *const u8,
        data_size: usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(kind: u32, out_data: *mut *mut u8, out_size: *mut usize) -> u32;
    fn proxy_replace_header_map_value(
        kind: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(kind: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        out_data: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        out_data: *mut *mut u8,
        out_size: *mut usize,
        out_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_call_foreign_function(
        name: *const u8,
        name_size: usize,
        args: *const u8,
        args_size: usize,
        out_data: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, out_id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_set_property(
        path: *const u8,
        path_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
}

fn check(code: u32) -> Result<(), Status> {
    if code == OK {
        Ok(())
    } else {
        Err(Status(code))
    }
}

/// Takes ownership of bytes the host wrote into memory it obtained from the module's allocator
/// (`proxy_on_memory_allocate`, the SDK's: a `Vec<u8>` of exactly `size` bytes).
///
/// # Safety
/// `data`/`size` must come from a successful host call that returned memory.
unsafe fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        // SAFETY: the host allocated `size` bytes through the module's allocator, which hands
        // out `Vec<u8>` buffers of capacity `size`, and gave up the pointer.
        unsafe { Vec::from_raw_parts(data, size, size) }
    }
}

/// Runs a host call that returns bytes; `Ok(None)` when the host says `NotFound`.
fn returned(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Option<Vec<u8>>, Status> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    match call(&mut data, &mut size) {
        // SAFETY: the call succeeded and handed over `data`/`size`.
        OK => Ok(Some(unsafe { owned(data, size) })),
        NOT_FOUND => Ok(None),
        code => Err(Status(code)),
    }
}

pub fn log(level: u32, message: &str) {
    // SAFETY: pointer and length of a live str. A failing log has nowhere to be reported.
    let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

pub fn now_ns() -> Result<u64, Status> {
    let mut t: u64 = 0;
    // SAFETY: `t` is a valid u64 out-parameter.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut t) }).map(|()| t)
}

pub fn get_buffer(kind: u32, start: usize, max: usize) -> Result<Vec<u8>, Status> {
    // SAFETY: valid out-parameters.
    returned(|d, s| unsafe { proxy_get_buffer_bytes(kind, start, max, d, s) })
        .map(Option::unwrap_or_default)
}

pub fn set_buffer(kind: u32, start: usize, size: usize, value: &[u8]) -> Result<(), Status> {
    // SAFETY: pointer and length of a live slice.
    check(unsafe { proxy_set_buffer_bytes(kind, start, size, value.as_ptr(), value.len()) })
}

/// Every pair of a header map, as bytes.
pub fn get_map(kind: u32) -> Result<Vec<hostmap::RawPair>, Status> {
    Ok(get_map_bytes(kind)?
        .map(|b| hostmap::decode(&b))
        .unwrap_or_default())
}

/// A header map in its serialized form (`hostmap::pairs` reads it), `None` when absent.
pub fn get_map_bytes(kind: u32) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: valid out-parameters.
    returned(|d, s| unsafe { proxy_get_header_map_pairs(kind, d, s) })
}

/// Sets (`Some`) or removes (`None`) a header.
pub fn set_map_value(kind: u32, name: &str, value: Option<&[u8]>) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live slices.
    let code = unsafe {
        match value {
            Some(v) => {
                proxy_replace_header_map_value(kind, name.as_ptr(), name.len(), v.as_ptr(), v.len())
            }
            None => proxy_remove_header_map_value(kind, name.as_ptr(), name.len()),
        }
    };
    check(code)
}

pub fn get_property<S: AsRef<str>>(path: &[S]) -> Result<Option<Vec<u8>>, Status> {
    let path = hostmap::property_path(path);
    // SAFETY: pointer and length of a live vec; valid out-parameters.
    returned(|d, s| unsafe { proxy_get_property(path.as_ptr(), path.len(), d, s) })
}

/// The value and its CAS, `None` when the key is missing.
pub fn get_shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, Status> {
    let mut cas: u32 = 0;
    // SAFETY: pointer and length of a live str; valid out-parameters.
    let value =
        returned(|d, s| unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), d, s, &mut cas) })?;
    Ok(value.map(|v| (v, cas)))
}

pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live slices.
    check(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

pub fn send_local_response(
    status: u32,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(), Status> {
    let map = hostmap::encode(headers);
    // SAFETY: pointers and lengths of live slices; no details string.
    check(unsafe {
        proxy_send_local_response(
            status,
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            -1,
        )
    })
}

pub fn call_foreign_function(name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: pointers and lengths of live slices; valid out-parameters.
    returned(|d, s| unsafe {
        proxy_call_foreign_function(name.as_ptr(), name.len(), args.as_ptr(), args.len(), d, s)
    })
}

pub fn define_metric(kind: u32, name: &str) -> Result<u32, Status> {
    let mut id: u32 = 0;
    // SAFETY: pointer and length of a live str; valid out-parameter.
    check(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) }).map(|()| id)
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), Status> {
    // SAFETY: plain values.
    check(unsafe { proxy_increment_metric(id, offset) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: plain values.
    check(unsafe { proxy_record_metric(id, value) })
}

/// The `log` crate's messages to the host's log, at the host's levels. A failing log call is
/// ignored (the SDK's logger unwraps it).
pub struct HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => 0,
            log::Level::Debug => 1,
            log::Level::Info => 2,
            log::Level::Warn => 3,
            log::Level::Error => 4,
        };
        log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

static LOGGER: HostLogger = HostLogger;

/// Installs the host logger (once per VM) and a panic hook that logs the panic at critical
/// level before the module aborts, so a bug shows in the proxy's log.
pub fn init_logging() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
        std::panic::set_hook(Box::new(|info| log(5, &info.to_string())));
    }
}

pub fn set_tick_period_ms(period: u32) -> Result<(), Status> {
    // SAFETY: plain value.
    check(unsafe { proxy_set_tick_period_milliseconds(period) })
}

/// Sets a property of the current stream (Envoy: filter state `wasm.<path>`).
pub fn set_property<S: AsRef<str>>(path: &[S], value: &[u8]) -> Result<(), Status> {
    // One segment (every key the filter publishes) is its own encoding: no copy.
    let joined;
    let path: &[u8] = match path {
        [one] => one.as_ref().as_bytes(),
        _ => {
            joined = hostmap::property_path(path);
            &joined
        }
    };
    // SAFETY: pointers and lengths of live slices.
    check(unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
}

/// Resumes the request of the current HTTP context after a pause.
pub fn continue_request() -> Result<(), Status> {
    // SAFETY: plain value (0: the HTTP request stream).
    check(unsafe { proxy_continue_stream(0) })
}

/// Starts a unary gRPC call; the answer comes to the calling context's
/// `on_grpc_call_response` with the returned token.
///
/// This is the one host call made through the SDK: its dispatcher routes the answer by a token
/// table only its own `dispatch_grpc_call` can fill, so a raw `proxy_grpc_call` here would
/// never hear back. The SDK returns the statuses Envoy's `grpcCall` gives for calls that do
/// not start (`ParseFailure`: unknown cluster; `InternalFailure`) as errors; it panics on any
/// other non-Ok status. Envoy returns `BadArgument` when `upstream` parses as a serialized
/// GrpcService it cannot build a client for, and a plain cluster name can parse as one (`pa`,
/// `quota_svc`): so `upstream` is always the serialized `GrpcService { envoy_grpc }` that
/// configuration builds (`Global::upstream`), for which Envoy builds the client without
/// checking the cluster (an unknown one fails the call later, UNAVAILABLE).
pub fn dispatch_grpc_call(
    upstream: &str,
    service: &str,
    method: &str,
    message: &[u8],
    timeout_ms: u64,
) -> Result<u32, Status> {
    proxy_wasm::hostcalls::dispatch_grpc_call(
        upstream,
        service,
        method,
        Vec::new(),
        Some(message),
        std::time::Duration::from_millis(timeout_ms),
    )
    .map_err(|s| Status(s as u32))
}
