//! The `env` (Proxy-Wasm 0.2.1) and `wasi_snapshot_preview1` imports, with Envoy's semantics.

use wasmtime::{Caller, Extern, Linker, Memory};

use crate::abi::{self, buffer, map, stream, LogLevel, Status};
use crate::metrics::MetricKind;
use crate::state::{lock, Access, CallResponse, PendingCall, VmState};
use crate::types::{ForeignCall, Headers, HttpCallInfo, LocalReply, LogLine, PropValue};

type C<'a> = Caller<'a, VmState>;
type R = wasmtime::Result<i32>;

/// `proc_exit` unwinds the guest with this error.
#[derive(Debug)]
pub struct ProcExit(pub i32);

impl std::fmt::Display for ProcExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "proc_exit({})", self.0)
    }
}

impl std::error::Error for ProcExit {}

fn ok() -> R {
    Ok(Status::Ok.code())
}

fn st(s: Status) -> R {
    Ok(s.code())
}

fn memory(caller: &mut C) -> Option<Memory> {
    if let Some(m) = caller.data().memory {
        return Some(m);
    }
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => {
            caller.data_mut().memory = Some(m);
            Some(m)
        }
        _ => None,
    }
}

fn read(caller: &mut C, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let m = memory(caller)?;
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    m.data(&*caller)
        .get(p..p.checked_add(l)?)
        .map(|s| s.to_vec())
}

fn read_str(caller: &mut C, ptr: i32, len: i32) -> Option<String> {
    read(caller, ptr, len).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn write(caller: &mut C, ptr: i32, data: &[u8]) -> bool {
    let Some(m) = memory(caller) else {
        return false;
    };
    let p = ptr as u32 as usize;
    match m.data_mut(&mut *caller).get_mut(p..p + data.len()) {
        Some(dst) => {
            dst.copy_from_slice(data);
            true
        }
        None => false,
    }
}

fn write_u32(caller: &mut C, ptr: i32, v: u32) -> bool {
    write(caller, ptr, &v.to_le_bytes())
}

fn write_u64(caller: &mut C, ptr: i32, v: u64) -> bool {
    write(caller, ptr, &v.to_le_bytes())
}

/// Copies `data` into guest memory allocated with the guest's allocator and writes the pointer
/// and size (cpp-host `copyToPointerSize`; empty data writes a null pointer and size 0).
fn copy_out(caller: &mut C, data: &[u8], ptr_ptr: i32, size_ptr: i32) -> R {
    let mut ptr = 0i32;
    if !data.is_empty() {
        let Some(alloc) = caller.data().alloc.clone() else {
            return st(Status::InvalidMemoryAccess);
        };
        ptr = alloc.call(&mut *caller, data.len() as i32)?;
        if ptr == 0 || !write(caller, ptr, data) {
            return st(Status::InvalidMemoryAccess);
        }
    }
    if !write_u32(caller, ptr_ptr, ptr as u32) || !write_u32(caller, size_ptr, data.len() as u32) {
        return st(Status::InvalidMemoryAccess);
    }
    ok()
}

macro_rules! read_or_fail {
    ($caller:expr, $ptr:expr, $len:expr) => {
        match read($caller, $ptr, $len) {
            Some(v) => v,
            None => return st(Status::InvalidMemoryAccess),
        }
    };
}

macro_rules! str_or_fail {
    ($caller:expr, $ptr:expr, $len:expr) => {
        match read_str($caller, $ptr, $len) {
            Some(v) => v,
            None => return st(Status::InvalidMemoryAccess),
        }
    };
}

fn now_ms(state: &VmState) -> u64 {
    let s = lock(&state.shared);
    (s.now_ns - s.start_ns) / 1_000_000
}

// ---------------------------------------------------------------------------------------------
// Logging, time, ticks

fn proxy_log(mut c: C, level: i32, ptr: i32, len: i32) -> R {
    if !(0..=5).contains(&level) {
        return st(Status::BadArgument);
    }
    let message = str_or_fail!(&mut c, ptr, len);
    let d = c.data();
    let line = LogLine {
        worker: d.worker,
        level: LogLevel::from_i32(level),
        source: "proxy_log",
        context_id: d.context(),
        message,
    };
    lock(&d.shared).log(line);
    ok()
}

fn proxy_get_log_level(mut c: C, ret: i32) -> R {
    let level = lock(&c.data().shared).log_level as u32;
    if !write_u32(&mut c, ret, level) {
        return st(Status::InvalidMemoryAccess);
    }
    ok()
}

fn proxy_get_current_time_nanoseconds(mut c: C, ret: i32) -> R {
    let now = lock(&c.data().shared).now_ns;
    if !write_u64(&mut c, ret, now) {
        return st(Status::InvalidMemoryAccess);
    }
    ok()
}

fn proxy_set_tick_period_milliseconds(mut c: C, period: i32) -> R {
    let now = now_ms(c.data());
    let d = c.data_mut();
    d.tick_period_ms = period as u32;
    d.next_tick_ms = if period > 0 {
        Some(now + period as u32 as u64)
    } else {
        None
    };
    ok()
}

// ---------------------------------------------------------------------------------------------
// Buffers

fn buffer_bytes(d: &VmState, t: i32) -> Result<Vec<u8>, Status> {
    match t {
        buffer::HTTP_REQUEST_BODY => Ok(d
            .stream()
            .filter(|s| s.request.body_access)
            .map(|s| s.request.body.clone())
            .unwrap_or_default()),
        buffer::HTTP_RESPONSE_BODY => Ok(d
            .stream()
            .filter(|s| s.response.body_access)
            .map(|s| s.response.body.clone())
            .unwrap_or_default()),
        buffer::HTTP_CALL_RESPONSE_BODY => match &d.call_response {
            Some(r) => Ok(r.body.clone()),
            None => Err(Status::NotFound),
        },
        buffer::VM_CONFIGURATION => Ok(d.vm_config.clone()),
        buffer::PLUGIN_CONFIGURATION => Ok(d.plugin_config.clone()),
        buffer::DOWNSTREAM_DATA
        | buffer::UPSTREAM_DATA
        | buffer::GRPC_RECEIVE_BUFFER
        | buffer::CALL_DATA => Err(Status::NotFound),
        _ => Err(Status::BadArgument),
    }
}

fn proxy_get_buffer_bytes(
    mut c: C,
    t: i32,
    start: i32,
    max: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> R {
    let data = match buffer_bytes(c.data(), t) {
        Ok(d) => d,
        Err(s) => return st(s),
    };
    let (start, max) = (start as u32 as usize, max as u32 as usize);
    if start.checked_add(max).is_none() {
        return st(Status::BadArgument);
    }
    if start >= data.len() || max == 0 {
        // cpp-host returns Ok without writing anything when nothing is left to copy.
        return ok();
    }
    let end = (start + max).min(data.len());
    copy_out(&mut c, &data[start..end], ptr_ptr, size_ptr)
}

/// Envoy's `Buffer::copyFrom`: start 0 and size 0 prepends; start 0 and a size covering the
/// whole buffer replaces it; start at or past the end appends; anything else is BadArgument.
fn splice(buf: &mut Vec<u8>, start: usize, size: usize, data: &[u8]) -> Status {
    if start == 0 {
        if size == 0 {
            let mut v = data.to_vec();
            v.extend_from_slice(buf);
            *buf = v;
            Status::Ok
        } else if size >= buf.len() {
            *buf = data.to_vec();
            Status::Ok
        } else {
            Status::BadArgument
        }
    } else if start >= buf.len() {
        buf.extend_from_slice(data);
        Status::Ok
    } else {
        Status::BadArgument
    }
}

fn proxy_set_buffer_bytes(mut c: C, t: i32, start: i32, size: i32, ptr: i32, len: i32) -> R {
    let data = read_or_fail!(&mut c, ptr, len);
    let (start, size) = (start as u32 as usize, size as u32 as usize);
    let d = c.data_mut();
    let status = match t {
        buffer::HTTP_REQUEST_BODY | buffer::HTTP_RESPONSE_BODY => match d.stream_mut() {
            Some(s) => {
                let dir = if t == buffer::HTTP_REQUEST_BODY {
                    &mut s.request
                } else {
                    &mut s.response
                };
                if dir.body_access {
                    splice(&mut dir.body, start, size, &data)
                } else {
                    Status::NotFound
                }
            }
            None => Status::NotFound,
        },
        buffer::HTTP_CALL_RESPONSE_BODY => match d.call_response.as_mut() {
            Some(r) => splice(&mut r.body, start, size, &data),
            None => Status::NotFound,
        },
        // Configuration buffers are immutable.
        buffer::VM_CONFIGURATION | buffer::PLUGIN_CONFIGURATION => Status::BadArgument,
        buffer::DOWNSTREAM_DATA
        | buffer::UPSTREAM_DATA
        | buffer::GRPC_RECEIVE_BUFFER
        | buffer::CALL_DATA => Status::NotFound,
        _ => Status::BadArgument,
    };
    st(status)
}

// ---------------------------------------------------------------------------------------------
// Header maps

fn map_read(d: &VmState, t: i32) -> Result<Headers, Status> {
    let stream_map = |access: Access, h: &Headers| -> Result<Headers, Status> {
        match access {
            Access::Unavailable => Err(Status::BadArgument),
            _ => Ok(h.clone()),
        }
    };
    match t {
        map::HTTP_REQUEST_HEADERS
        | map::HTTP_REQUEST_TRAILERS
        | map::HTTP_RESPONSE_HEADERS
        | map::HTTP_RESPONSE_TRAILERS => {
            let Some(s) = d.stream() else {
                return Err(Status::BadArgument);
            };
            match t {
                map::HTTP_REQUEST_HEADERS => {
                    stream_map(s.request.headers_access, &s.request.headers)
                }
                map::HTTP_REQUEST_TRAILERS => {
                    stream_map(s.request.trailers_access, &s.request.trailers)
                }
                map::HTTP_RESPONSE_HEADERS => {
                    stream_map(s.response.headers_access, &s.response.headers)
                }
                _ => stream_map(s.response.trailers_access, &s.response.trailers),
            }
        }
        map::HTTP_CALL_RESPONSE_HEADERS => match &d.call_response {
            Some(r) => Ok(r.headers.clone()),
            None => Err(Status::BadArgument),
        },
        map::HTTP_CALL_RESPONSE_TRAILERS => match &d.call_response {
            Some(r) => Ok(r.trailers.clone()),
            None => Err(Status::BadArgument),
        },
        map::GRPC_RECEIVE_INITIAL_METADATA | map::GRPC_RECEIVE_TRAILING_METADATA => {
            Err(Status::BadArgument)
        }
        _ => Err(Status::BadArgument),
    }
}

/// Applies a change to a header map, with Envoy's availability rules.
fn map_write(d: &mut VmState, t: i32, what: &str, f: impl FnOnce(&mut Headers)) -> Status {
    let Some(s) = d.stream_mut() else {
        return Status::BadArgument;
    };
    let (access, headers) = match t {
        map::HTTP_REQUEST_HEADERS => (s.request.headers_access, &mut s.request.headers),
        map::HTTP_REQUEST_TRAILERS => (s.request.trailers_access, &mut s.request.trailers),
        map::HTTP_RESPONSE_HEADERS => (s.response.headers_access, &mut s.response.headers),
        map::HTTP_RESPONSE_TRAILERS => (s.response.trailers_access, &mut s.response.trailers),
        _ => return Status::BadArgument,
    };
    match access {
        Access::Mutable => {
            f(headers);
            if t == map::HTTP_REQUEST_HEADERS {
                s.request_headers_modified = true;
            }
            Status::Ok
        }
        Access::Late => {
            f(headers);
            s.late_writes.push(what.to_string());
            Status::Ok
        }
        Access::ReadOnly | Access::Unavailable => Status::BadArgument,
    }
}

fn map_name(t: i32) -> &'static str {
    match t {
        map::HTTP_REQUEST_HEADERS => "request headers",
        map::HTTP_REQUEST_TRAILERS => "request trailers",
        map::HTTP_RESPONSE_HEADERS => "response headers",
        map::HTTP_RESPONSE_TRAILERS => "response trailers",
        _ => "map",
    }
}

fn proxy_get_header_map_pairs(mut c: C, t: i32, ptr_ptr: i32, size_ptr: i32) -> R {
    let h = match map_read(c.data(), t) {
        Ok(h) => h,
        Err(s) => return st(s),
    };
    let pairs: Vec<(&[u8], &[u8])> = h.iter_bytes().collect();
    let bytes = abi::serialize_pairs(&pairs);
    copy_out(&mut c, &bytes, ptr_ptr, size_ptr)
}

fn proxy_set_header_map_pairs(mut c: C, t: i32, ptr: i32, len: i32) -> R {
    let data = read_or_fail!(&mut c, ptr, len);
    let Ok(pairs) = abi::deserialize_pairs_raw(&data) else {
        return st(Status::ParseFailure);
    };
    let what = format!("set all {}", map_name(t));
    st(map_write(c.data_mut(), t, &what, |h| {
        *h = Headers::from_pairs(&pairs);
    }))
}

fn proxy_get_header_map_value(
    mut c: C,
    t: i32,
    kp: i32,
    kl: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> R {
    let key = read_or_fail!(&mut c, kp, kl);
    let h = match map_read(c.data(), t) {
        Ok(h) => h,
        Err(s) => return st(s),
    };
    match h.get_bytes(&key) {
        Some(v) => {
            let v = v.to_vec();
            copy_out(&mut c, &v, ptr_ptr, size_ptr)
        }
        None => st(Status::NotFound),
    }
}

fn proxy_remove_header_map_value(mut c: C, t: i32, kp: i32, kl: i32) -> R {
    let key = read_or_fail!(&mut c, kp, kl);
    let what = format!("remove {} {}", map_name(t), String::from_utf8_lossy(&key));
    st(map_write(c.data_mut(), t, &what, |h| h.remove(&key)))
}

fn proxy_replace_header_map_value(mut c: C, t: i32, kp: i32, kl: i32, vp: i32, vl: i32) -> R {
    let key = read_or_fail!(&mut c, kp, kl);
    let value = read_or_fail!(&mut c, vp, vl);
    let what = format!(
        "replace {} {}: {}",
        map_name(t),
        String::from_utf8_lossy(&key),
        String::from_utf8_lossy(&value)
    );
    st(map_write(c.data_mut(), t, &what, |h| h.set(&key, &value)))
}

fn proxy_add_header_map_value(mut c: C, t: i32, kp: i32, kl: i32, vp: i32, vl: i32) -> R {
    let key = read_or_fail!(&mut c, kp, kl);
    let value = read_or_fail!(&mut c, vp, vl);
    let what = format!(
        "add {} {}: {}",
        map_name(t),
        String::from_utf8_lossy(&key),
        String::from_utf8_lossy(&value)
    );
    st(map_write(c.data_mut(), t, &what, |h| h.add(&key, &value)))
}

// ---------------------------------------------------------------------------------------------
// Properties

fn walk_json<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a serde_json::Value> {
    let mut cur = v;
    for seg in path {
        cur = match cur {
            serde_json::Value::Object(m) => m.get(*seg)?,
            serde_json::Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

pub(crate) fn lookup_property(d: &VmState, path: &[u8]) -> Option<Vec<u8>> {
    let stream = d.stream();
    if let Some(v) = stream.and_then(|s| s.properties.get(path)) {
        return Some(v.encode());
    }
    let shared = lock(&d.shared);
    if let Some(v) = shared.properties.get(path) {
        return Some(v.encode());
    }
    let text = String::from_utf8_lossy(path).into_owned();
    let segs: Vec<&str> = text.split('\0').collect();
    match segs.as_slice() {
        ["plugin_name"] => return Some(shared.plugin_name.as_bytes().to_vec()),
        ["plugin_root_id"] => return Some(shared.root_id.as_bytes().to_vec()),
        ["plugin_vm_id"] => return Some(shared.vm_id.as_bytes().to_vec()),
        _ => {}
    }
    drop(shared);
    let s = stream?;
    let req = &s.request.headers;
    let header = |name: &str| req.get_bytes(name).map(<[u8]>::to_vec);
    let path_part = |query: bool| {
        req.get_bytes(":path").map(|p| {
            let q = p.iter().position(|&b| b == b'?').unwrap_or(p.len());
            if query {
                p.get(q + 1..).unwrap_or_default().to_vec()
            } else {
                p[..q].to_vec()
            }
        })
    };
    match segs.as_slice() {
        ["request", "path"] => header(":path"),
        ["request", "url_path"] => path_part(false),
        ["request", "query"] => path_part(true),
        ["request", "method"] => header(":method"),
        ["request", "host"] => header(":authority"),
        ["request", "scheme"] => header(":scheme"),
        ["request", "id"] => header("x-request-id"),
        ["request", "useragent"] => header("user-agent"),
        ["request", "referer"] => header("referer"),
        ["request", "headers", name] => header(name),
        ["response", "code"] => s.response_code.map(|c| PropValue::Int(c as i64).encode()),
        ["response", "headers", name] => s.response.headers.get_bytes(name).map(<[u8]>::to_vec),
        ["metadata", "filter_metadata", filter, rest @ ..] => {
            let root = s.filter_metadata.get(*filter)?;
            walk_json(root, rest).map(|v| PropValue::from_json(v).encode())
        }
        _ => None,
    }
}

fn proxy_get_property(mut c: C, pp: i32, pl: i32, ptr_ptr: i32, size_ptr: i32) -> R {
    let path = read_or_fail!(&mut c, pp, pl);
    // Some SDKs end the path with a NUL; it is not part of the last segment.
    let path: &[u8] = path.strip_suffix(&[0]).unwrap_or(&path);
    match lookup_property(c.data(), path) {
        Some(v) => copy_out(&mut c, &v, ptr_ptr, size_ptr),
        None => st(Status::NotFound),
    }
}

fn proxy_set_property(mut c: C, pp: i32, pl: i32, vp: i32, vl: i32) -> R {
    let path = read_or_fail!(&mut c, pp, pl);
    let value = read_or_fail!(&mut c, vp, vl);
    let d = c.data_mut();
    match d.stream_mut() {
        Some(s) => {
            s.properties.insert(path, PropValue::Bytes(value));
        }
        None => {
            lock(&d.shared)
                .properties
                .insert(path, PropValue::Bytes(value));
        }
    }
    ok()
}

// ---------------------------------------------------------------------------------------------
// Shared data and queues

fn proxy_get_shared_data(
    mut c: C,
    kp: i32,
    kl: i32,
    ptr_ptr: i32,
    size_ptr: i32,
    cas_ptr: i32,
) -> R {
    let key = str_or_fail!(&mut c, kp, kl);
    let found = {
        let s = lock(&c.data().shared);
        s.shared_data.get(&(s.vm_id.clone(), key)).cloned()
    };
    let Some((value, cas)) = found else {
        return st(Status::NotFound);
    };
    let r = copy_out(&mut c, &value, ptr_ptr, size_ptr)?;
    if r != 0 {
        return Ok(r);
    }
    if !write_u32(&mut c, cas_ptr, cas) {
        return st(Status::InvalidMemoryAccess);
    }
    ok()
}

fn proxy_set_shared_data(mut c: C, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32) -> R {
    let key = str_or_fail!(&mut c, kp, kl);
    let value = read_or_fail!(&mut c, vp, vl);
    let mut s = lock(&c.data().shared);
    let k = (s.vm_id.clone(), key);
    let cas = cas as u32;
    if let Some((_, current)) = s.shared_data.get(&k) {
        if cas != 0 && cas != *current {
            return st(Status::CasMismatch);
        }
    }
    let next = s.next_cas();
    s.shared_data.insert(k, (value, next));
    ok()
}

fn proxy_register_shared_queue(mut c: C, np: i32, nl: i32, ret: i32) -> R {
    let name = str_or_fail!(&mut c, np, nl);
    let (worker, root) = (c.data().worker, c.data().root_context);
    let token = {
        let mut s = lock(&c.data().shared);
        let key = (s.vm_id.clone(), name);
        let token = match s.queue_tokens.get(&key) {
            Some(t) => *t,
            None => {
                let t = s.next_queue_token;
                s.next_queue_token += 1;
                s.queue_tokens.insert(key, t);
                t
            }
        };
        // As in cpp-host, the last registrant receives the notifications.
        let q = s
            .queues
            .entry(token)
            .or_insert_with(|| crate::state::Queue {
                owner_worker: worker,
                owner_context: root,
                items: Default::default(),
            });
        q.owner_worker = worker;
        q.owner_context = root;
        token
    };
    if !write_u32(&mut c, ret, token) {
        return st(Status::InvalidMemoryAccess);
    }
    ok()
}

fn proxy_resolve_shared_queue(mut c: C, vp: i32, vl: i32, np: i32, nl: i32, ret: i32) -> R {
    let vm_id = str_or_fail!(&mut c, vp, vl);
    let name = str_or_fail!(&mut c, np, nl);
    let token = lock(&c.data().shared)
        .queue_tokens
        .get(&(vm_id, name))
        .copied();
    match token {
        Some(t) => {
            if !write_u32(&mut c, ret, t) {
                return st(Status::InvalidMemoryAccess);
            }
            ok()
        }
        None => st(Status::NotFound),
    }
}

fn proxy_dequeue_shared_queue(mut c: C, token: i32, ptr_ptr: i32, size_ptr: i32) -> R {
    let item = {
        let mut s = lock(&c.data().shared);
        match s.queues.get_mut(&(token as u32)) {
            None => return st(Status::NotFound),
            Some(q) => q.items.pop_front(),
        }
    };
    match item {
        None => st(Status::Empty),
        Some(v) => copy_out(&mut c, &v, ptr_ptr, size_ptr),
    }
}

fn proxy_enqueue_shared_queue(mut c: C, token: i32, vp: i32, vl: i32) -> R {
    let value = read_or_fail!(&mut c, vp, vl);
    let mut s = lock(&c.data().shared);
    let token = token as u32;
    let Some(q) = s.queues.get_mut(&token) else {
        return st(Status::NotFound);
    };
    q.items.push_back(value);
    let (w, ctx) = (q.owner_worker, q.owner_context);
    s.queue_ready.push_back((w, ctx, token));
    ok()
}

// ---------------------------------------------------------------------------------------------
// Stream control

fn proxy_continue_stream(mut c: C, t: i32) -> R {
    let d = c.data_mut();
    let Some(s) = d.stream_mut() else {
        // Envoy: a root context has no stream; nothing to continue.
        return ok();
    };
    match t {
        stream::HTTP_REQUEST => s.request.continue_requested = true,
        stream::HTTP_RESPONSE => s.response.continue_requested = true,
        stream::DOWNSTREAM | stream::UPSTREAM => return st(Status::Unimplemented),
        _ => return st(Status::BadArgument),
    }
    ok()
}

fn proxy_close_stream(mut c: C, t: i32) -> R {
    let d = c.data_mut();
    let Some(s) = d.stream_mut() else {
        return st(Status::NotFound);
    };
    match t {
        stream::HTTP_REQUEST | stream::HTTP_RESPONSE => {
            s.closed.push(t);
            s.reset = true;
            s.request_stopped = true;
            ok()
        }
        stream::DOWNSTREAM | stream::UPSTREAM => st(Status::Unimplemented),
        _ => st(Status::BadArgument),
    }
}

#[allow(clippy::too_many_arguments)]
fn proxy_send_local_response(
    mut c: C,
    status: i32,
    dp: i32,
    dl: i32,
    bp: i32,
    bl: i32,
    hp: i32,
    hl: i32,
    grpc: i32,
) -> R {
    let details = str_or_fail!(&mut c, dp, dl);
    let body = read_or_fail!(&mut c, bp, bl);
    let hdata = read_or_fail!(&mut c, hp, hl);
    let Ok(pairs) = abi::deserialize_pairs_raw(&hdata) else {
        return st(Status::ParseFailure);
    };
    let d = c.data_mut();
    let Some(s) = d.stream_mut() else {
        return st(Status::NotFound);
    };
    if s.local_reply_pending.is_some() || s.local_reply.is_some() {
        s.extra_local_replies += 1;
        return ok();
    }
    s.local_reply_pending = Some(LocalReply {
        status: status as u32,
        details,
        headers: Headers::from_pairs(&pairs),
        body,
        grpc_status: if grpc < 0 { None } else { Some(grpc) },
    });
    ok()
}

// ---------------------------------------------------------------------------------------------
// HTTP and gRPC calls

#[allow(clippy::too_many_arguments)]
fn proxy_http_call(
    mut c: C,
    up: i32,
    ul: i32,
    hp: i32,
    hl: i32,
    bp: i32,
    bl: i32,
    tp: i32,
    tl: i32,
    timeout: i32,
    ret: i32,
) -> R {
    let upstream = str_or_fail!(&mut c, up, ul);
    let hdata = read_or_fail!(&mut c, hp, hl);
    let body = read_or_fail!(&mut c, bp, bl);
    let tdata = read_or_fail!(&mut c, tp, tl);
    let (Ok(headers), Ok(trailers)) = (
        abi::deserialize_pairs_raw(&hdata),
        abi::deserialize_pairs_raw(&tdata),
    ) else {
        return st(Status::ParseFailure);
    };
    let headers = Headers::from_pairs(&headers);
    // Envoy requires the pseudo headers that make a request.
    if !headers.contains(":path") || !headers.contains(":method") || !headers.contains(":authority")
    {
        return st(Status::BadArgument);
    }
    if let Some(known) = &lock(&c.data().shared).known_clusters {
        if !known.contains(&upstream) {
            return st(Status::BadArgument);
        }
    }
    let now = now_ms(c.data());
    let d = c.data_mut();
    let token = d.next_token;
    d.next_token += 1;
    let timeout = timeout as u32;
    let info = HttpCallInfo {
        worker: d.worker,
        token,
        context_id: d.context(),
        upstream,
        headers,
        body,
        trailers: Headers::from_pairs(&trailers),
        timeout_ms: timeout,
    };
    d.http_calls.insert(
        token,
        PendingCall {
            info,
            deadline_ms: if timeout > 0 {
                Some(now + timeout as u64)
            } else {
                None
            },
        },
    );
    if !write_u32(&mut c, ret, token) {
        return st(Status::InvalidMemoryAccess);
    }
    ok()
}

fn grpc_start(c: &mut C, ret: i32) -> R {
    let d = c.data_mut();
    let token = d.next_grpc_token;
    d.next_grpc_token += 1;
    let ctx = d.context();
    d.grpc_to_close.push((ctx, token));
    if !write_u32(c, ret, token) {
        return st(Status::InvalidMemoryAccess);
    }
    ok()
}

#[allow(clippy::too_many_arguments)]
fn proxy_grpc_call(
    mut c: C,
    _a: i32,
    _b: i32,
    _c2: i32,
    _d: i32,
    _e: i32,
    _f: i32,
    _g: i32,
    _h: i32,
    _i: i32,
    _j: i32,
    _timeout: i32,
    ret: i32,
) -> R {
    grpc_start(&mut c, ret)
}

#[allow(clippy::too_many_arguments)]
fn proxy_grpc_stream(
    mut c: C,
    _a: i32,
    _b: i32,
    _c2: i32,
    _d: i32,
    _e: i32,
    _f: i32,
    _g: i32,
    _h: i32,
    ret: i32,
) -> R {
    grpc_start(&mut c, ret)
}

fn proxy_get_status(mut c: C, code_ptr: i32, ptr_ptr: i32, size_ptr: i32) -> R {
    let Some((code, msg)) = c.data().grpc_status.clone() else {
        return st(Status::NotFound);
    };
    if !write_u32(&mut c, code_ptr, code) {
        return st(Status::InvalidMemoryAccess);
    }
    copy_out(&mut c, msg.as_bytes(), ptr_ptr, size_ptr)
}

// ---------------------------------------------------------------------------------------------
// Contexts, foreign functions, metrics

fn proxy_set_effective_context(mut c: C, ctx: i32) -> R {
    let d = c.data_mut();
    let ctx = ctx as u32;
    if ctx == d.root_context || d.streams.contains_key(&ctx) {
        d.effective_context = Some(ctx);
        ok()
    } else {
        st(Status::BadArgument)
    }
}

fn proxy_call_foreign_function(
    mut c: C,
    np: i32,
    nl: i32,
    ap: i32,
    al: i32,
    _rp: i32,
    _rs: i32,
) -> R {
    let name = str_or_fail!(&mut c, np, nl);
    let args = read_or_fail!(&mut c, ap, al);
    // Envoy registers clear_route_cache (and others host-sim does not model).
    let status = match name.as_str() {
        "clear_route_cache" => Status::Ok,
        _ => Status::NotFound,
    };
    let call = ForeignCall {
        name,
        args,
        status: status.code(),
    };
    let d = c.data_mut();
    match d.stream_mut() {
        Some(s) => s.foreign_calls.push(call),
        None => d.foreign_calls.push(call),
    }
    st(status)
}

fn proxy_done(mut c: C) -> R {
    c.data_mut().done_called = true;
    ok()
}

fn proxy_define_metric(mut c: C, kind: i32, np: i32, nl: i32, ret: i32) -> R {
    let Some(kind) = MetricKind::from_abi(kind) else {
        return st(Status::BadArgument);
    };
    let name = str_or_fail!(&mut c, np, nl);
    let d = c.data_mut();
    d.next_metric_seq += 1;
    let id = (d.next_metric_seq << 2) | kind as u32;
    d.metric_ids.insert(id, (kind, name.clone()));
    lock(&d.shared).metrics.define(kind, &name);
    if !write_u32(&mut c, ret, id) {
        return st(Status::InvalidMemoryAccess);
    }
    ok()
}

fn proxy_increment_metric(c: C, id: i32, offset: i64) -> R {
    let d = c.data();
    let Some((kind, name)) = d.metric_ids.get(&(id as u32)) else {
        return st(Status::NotFound);
    };
    let mut s = lock(&d.shared);
    let Some(m) = s.metrics.get_mut(name) else {
        return st(Status::NotFound);
    };
    match kind {
        MetricKind::Counter if offset > 0 => m.value += offset,
        MetricKind::Counter => return st(Status::BadArgument),
        MetricKind::Gauge => m.value += offset,
        MetricKind::Histogram => return st(Status::BadArgument),
    }
    ok()
}

fn proxy_record_metric(c: C, id: i32, value: i64) -> R {
    let d = c.data();
    let Some((kind, name)) = d.metric_ids.get(&(id as u32)) else {
        return st(Status::NotFound);
    };
    let mut s = lock(&d.shared);
    let Some(m) = s.metrics.get_mut(name) else {
        return st(Status::NotFound);
    };
    match kind {
        MetricKind::Counter => m.value += value,
        MetricKind::Gauge => m.value = value,
        MetricKind::Histogram => {
            m.samples.push(value as u64);
            m.value = m.samples.len() as i64;
        }
    }
    ok()
}

fn proxy_get_metric(mut c: C, id: i32, ret: i32) -> R {
    let value = {
        let d = c.data();
        let Some((kind, name)) = d.metric_ids.get(&(id as u32)) else {
            return st(Status::NotFound);
        };
        if *kind == MetricKind::Histogram {
            return st(Status::BadArgument);
        }
        let s = lock(&d.shared);
        s.metrics.metrics.get(name).map(|m| m.value).unwrap_or(0)
    };
    if !write_u64(&mut c, ret, value as u64) {
        return st(Status::InvalidMemoryAccess);
    }
    ok()
}

// ---------------------------------------------------------------------------------------------
// WASI preview1, as Envoy (proxy-wasm-cpp-host) provides it.

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_INVAL: i32 = 28;
const ERRNO_NOSYS: i32 = 52;
const ERRNO_SPIPE: i32 = 70;

fn flush_lines(d: &mut VmState, fd: i32) {
    let (buf, level, source) = if fd == 1 {
        (&mut d.stdout, LogLevel::Info, "stdout")
    } else {
        (&mut d.stderr, LogLevel::Error, "stderr")
    };
    let mut lines = Vec::new();
    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = buf.drain(..=pos).collect();
        lines.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
    }
    let (worker, ctx) = (d.worker, d.context());
    let mut s = lock(&d.shared);
    for message in lines {
        s.log(LogLine {
            worker,
            level,
            source,
            context_id: ctx,
            message,
        });
    }
}

fn fd_write(mut c: C, fd: i32, iovs: i32, iovs_len: i32, nwritten: i32) -> R {
    if fd != 1 && fd != 2 {
        return Ok(ERRNO_BADF);
    }
    let mut data = Vec::new();
    for i in 0..iovs_len {
        let Some(iov) = read(&mut c, iovs + i * 8, 8) else {
            return Ok(ERRNO_INVAL);
        };
        let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        let Some(bytes) = read(&mut c, ptr, len) else {
            return Ok(ERRNO_INVAL);
        };
        data.extend_from_slice(&bytes);
    }
    let n = data.len() as u32;
    {
        let d = c.data_mut();
        if fd == 1 {
            d.stdout.extend_from_slice(&data);
        } else {
            d.stderr.extend_from_slice(&data);
        }
        flush_lines(d, fd);
    }
    if !write_u32(&mut c, nwritten, n) {
        return Ok(ERRNO_INVAL);
    }
    Ok(ERRNO_SUCCESS)
}

fn fd_read(_c: C, _fd: i32, _iovs: i32, _len: i32, _nread: i32) -> R {
    Ok(ERRNO_NOSYS)
}

fn fd_seek(_c: C, _fd: i32, _off: i64, _whence: i32, _ret: i32) -> R {
    Ok(ERRNO_SPIPE)
}

fn fd_close(_c: C, _fd: i32) -> R {
    Ok(ERRNO_NOSYS)
}

fn fd_fdstat_get(mut c: C, fd: i32, ret: i32) -> R {
    if !(0..=2).contains(&fd) {
        return Ok(ERRNO_BADF);
    }
    // filetype CHARACTER_DEVICE, no flags, rights fd_write (stdout/stderr) or fd_read (stdin).
    let mut stat = [0u8; 24];
    stat[0] = 2;
    let rights: u64 = if fd == 0 { 1 << 1 } else { 1 << 6 };
    stat[8..16].copy_from_slice(&rights.to_le_bytes());
    if !write(&mut c, ret, &stat) {
        return Ok(ERRNO_INVAL);
    }
    Ok(ERRNO_SUCCESS)
}

fn fd_fdstat_set_flags(_c: C, _fd: i32, _flags: i32) -> R {
    Ok(ERRNO_NOSYS)
}

fn fd_prestat_get(_c: C, _fd: i32, _ret: i32) -> R {
    // No preopened directories: libc stops scanning at the first EBADF.
    Ok(ERRNO_BADF)
}

fn fd_prestat_dir_name(_c: C, _fd: i32, _p: i32, _l: i32) -> R {
    Ok(ERRNO_NOSYS)
}

#[allow(clippy::too_many_arguments)]
fn path_open(
    _c: C,
    _fd: i32,
    _flags: i32,
    _p: i32,
    _l: i32,
    _o: i32,
    _rb: i64,
    _ri: i64,
    _ff: i32,
    _ret: i32,
) -> R {
    Ok(ERRNO_NOSYS)
}

fn env_strings(c: &C) -> Vec<Vec<u8>> {
    lock(&c.data().shared)
        .env
        .iter()
        .map(|(k, v)| {
            let mut s = format!("{k}={v}").into_bytes();
            s.push(0);
            s
        })
        .collect()
}

fn environ_sizes_get(mut c: C, count_ptr: i32, size_ptr: i32) -> R {
    let env = env_strings(&c);
    let size: usize = env.iter().map(|e| e.len()).sum();
    if !write_u32(&mut c, count_ptr, env.len() as u32) || !write_u32(&mut c, size_ptr, size as u32)
    {
        return Ok(ERRNO_INVAL);
    }
    Ok(ERRNO_SUCCESS)
}

fn environ_get(mut c: C, environ: i32, buf: i32) -> R {
    let env = env_strings(&c);
    let mut at = buf;
    for (i, e) in env.iter().enumerate() {
        if !write_u32(&mut c, environ + (i as i32) * 4, at as u32) || !write(&mut c, at, e) {
            return Ok(ERRNO_INVAL);
        }
        at += e.len() as i32;
    }
    Ok(ERRNO_SUCCESS)
}

fn args_sizes_get(mut c: C, argc: i32, size: i32) -> R {
    if !write_u32(&mut c, argc, 0) || !write_u32(&mut c, size, 0) {
        return Ok(ERRNO_INVAL);
    }
    Ok(ERRNO_SUCCESS)
}

fn args_get(_c: C, _argv: i32, _buf: i32) -> R {
    Ok(ERRNO_SUCCESS)
}

fn clock_time_get(mut c: C, id: i32, _precision: i64, ret: i32) -> R {
    let (now, start) = {
        let s = lock(&c.data().shared);
        (s.now_ns, s.start_ns)
    };
    let value = match id {
        0 => now,                             // REALTIME
        1..=3 => now - start + 1_000_000_000, // MONOTONIC, process and thread CPU time
        _ => return Ok(ERRNO_INVAL),
    };
    if !write_u64(&mut c, ret, value) {
        return Ok(ERRNO_INVAL);
    }
    Ok(ERRNO_SUCCESS)
}

fn clock_res_get(mut c: C, _id: i32, ret: i32) -> R {
    if !write_u64(&mut c, ret, 1) {
        return Ok(ERRNO_INVAL);
    }
    Ok(ERRNO_SUCCESS)
}

fn random_get(mut c: C, ptr: i32, len: i32) -> R {
    let mut buf = vec![0u8; len as u32 as usize];
    lock(&c.data().shared).rng.fill(&mut buf);
    if !write(&mut c, ptr, &buf) {
        return Ok(ERRNO_INVAL);
    }
    Ok(ERRNO_SUCCESS)
}

fn proc_exit(_c: C, code: i32) -> wasmtime::Result<()> {
    Err(wasmtime::Error::new(ProcExit(code)))
}

fn sched_yield(_c: C) -> R {
    Ok(ERRNO_SUCCESS)
}

fn poll_oneoff(_c: C, _in: i32, _out: i32, _n: i32, _ret: i32) -> R {
    Ok(ERRNO_NOSYS)
}

/// Registers every import. Unknown imports of a module are left to the caller
/// (`define_unknown_imports_as_traps`).
pub(crate) fn add_to_linker(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    let e = "env";
    l.func_wrap(e, "proxy_log", proxy_log)?;
    l.func_wrap(e, "proxy_get_log_level", proxy_get_log_level)?;
    l.func_wrap(
        e,
        "proxy_get_current_time_nanoseconds",
        proxy_get_current_time_nanoseconds,
    )?;
    l.func_wrap(
        e,
        "proxy_set_tick_period_milliseconds",
        proxy_set_tick_period_milliseconds,
    )?;
    l.func_wrap(e, "proxy_get_buffer_bytes", proxy_get_buffer_bytes)?;
    l.func_wrap(e, "proxy_set_buffer_bytes", proxy_set_buffer_bytes)?;
    l.func_wrap(e, "proxy_get_header_map_pairs", proxy_get_header_map_pairs)?;
    l.func_wrap(e, "proxy_set_header_map_pairs", proxy_set_header_map_pairs)?;
    l.func_wrap(e, "proxy_get_header_map_value", proxy_get_header_map_value)?;
    l.func_wrap(
        e,
        "proxy_remove_header_map_value",
        proxy_remove_header_map_value,
    )?;
    l.func_wrap(
        e,
        "proxy_replace_header_map_value",
        proxy_replace_header_map_value,
    )?;
    l.func_wrap(e, "proxy_add_header_map_value", proxy_add_header_map_value)?;
    l.func_wrap(e, "proxy_get_property", proxy_get_property)?;
    l.func_wrap(e, "proxy_set_property", proxy_set_property)?;
    l.func_wrap(e, "proxy_get_shared_data", proxy_get_shared_data)?;
    l.func_wrap(e, "proxy_set_shared_data", proxy_set_shared_data)?;
    l.func_wrap(
        e,
        "proxy_register_shared_queue",
        proxy_register_shared_queue,
    )?;
    l.func_wrap(e, "proxy_resolve_shared_queue", proxy_resolve_shared_queue)?;
    l.func_wrap(e, "proxy_dequeue_shared_queue", proxy_dequeue_shared_queue)?;
    l.func_wrap(e, "proxy_enqueue_shared_queue", proxy_enqueue_shared_queue)?;
    l.func_wrap(e, "proxy_continue_stream", proxy_continue_stream)?;
    l.func_wrap(e, "proxy_close_stream", proxy_close_stream)?;
    l.func_wrap(e, "proxy_send_local_response", proxy_send_local_response)?;
    l.func_wrap(e, "proxy_http_call", proxy_http_call)?;
    l.func_wrap(e, "proxy_grpc_call", proxy_grpc_call)?;
    l.func_wrap(e, "proxy_grpc_stream", proxy_grpc_stream)?;
    l.func_wrap(
        e,
        "proxy_grpc_send",
        |_c: C, _t: i32, _p: i32, _l: i32, _e: i32| ok(),
    )?;
    l.func_wrap(e, "proxy_grpc_cancel", |_c: C, _t: i32| ok())?;
    l.func_wrap(e, "proxy_grpc_close", |_c: C, _t: i32| ok())?;
    l.func_wrap(e, "proxy_get_status", proxy_get_status)?;
    l.func_wrap(
        e,
        "proxy_set_effective_context",
        proxy_set_effective_context,
    )?;
    l.func_wrap(
        e,
        "proxy_call_foreign_function",
        proxy_call_foreign_function,
    )?;
    l.func_wrap(e, "proxy_done", proxy_done)?;
    l.func_wrap(e, "proxy_define_metric", proxy_define_metric)?;
    l.func_wrap(e, "proxy_increment_metric", proxy_increment_metric)?;
    l.func_wrap(e, "proxy_record_metric", proxy_record_metric)?;
    l.func_wrap(e, "proxy_get_metric", proxy_get_metric)?;

    let w = "wasi_snapshot_preview1";
    l.func_wrap(w, "fd_write", fd_write)?;
    l.func_wrap(w, "fd_read", fd_read)?;
    l.func_wrap(w, "fd_seek", fd_seek)?;
    l.func_wrap(w, "fd_close", fd_close)?;
    l.func_wrap(w, "fd_fdstat_get", fd_fdstat_get)?;
    l.func_wrap(w, "fd_fdstat_set_flags", fd_fdstat_set_flags)?;
    l.func_wrap(w, "fd_prestat_get", fd_prestat_get)?;
    l.func_wrap(w, "fd_prestat_dir_name", fd_prestat_dir_name)?;
    l.func_wrap(w, "path_open", path_open)?;
    l.func_wrap(w, "environ_sizes_get", environ_sizes_get)?;
    l.func_wrap(w, "environ_get", environ_get)?;
    l.func_wrap(w, "args_sizes_get", args_sizes_get)?;
    l.func_wrap(w, "args_get", args_get)?;
    l.func_wrap(w, "clock_time_get", clock_time_get)?;
    l.func_wrap(w, "clock_res_get", clock_res_get)?;
    l.func_wrap(w, "random_get", random_get)?;
    l.func_wrap(w, "proc_exit", proc_exit)?;
    l.func_wrap(w, "sched_yield", sched_yield)?;
    l.func_wrap(w, "poll_oneoff", poll_oneoff)?;
    Ok(())
}

/// Sets the response that `proxy_on_http_call_response` reads.
pub(crate) fn set_call_response(d: &mut VmState, r: Option<CallResponse>) {
    d.call_response = r;
}
