//! Logging, time and ticks; stream control and local replies; http and gRPC calls;
//! effective context, foreign functions and metrics.

use wasmtime::Linker;

use super::*;

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
    let now = lock(&c.data().shared).wall_ns();
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

/// A gRPC stream (not supported by this host): the token is handed out and the stream is closed
/// with UNIMPLEMENTED after the current call.
fn grpc_stream_start(c: &mut C, ret: i32) -> R {
    let d = c.data_mut();
    let token = d.next_grpc_token;
    d.next_grpc_token = d.next_grpc_token.wrapping_add(2).max(2);
    let ctx = d.context();
    d.grpc_to_close.push((ctx, token));
    if !write_u32(c, ret, token) {
        return st(Status::InvalidMemoryAccess);
    }
    ok()
}

/// The next free odd call token of this VM (Envoy's call ids are odd, stream ids even).
fn next_call_token(d: &mut VmState) -> u32 {
    loop {
        let token = d.next_grpc_call_token | 1;
        d.next_grpc_call_token = token.wrapping_add(2);
        if !d.grpc_calls.contains_key(&token) {
            return token;
        }
    }
}

/// `proxy_grpc_call(upstream, service, method, initial_metadata, message, timeout, &token)`.
/// As Envoy: `upstream` is a serialized GrpcService or a cluster name (`grpc_upstream`); one
/// that names no known cluster is ParseFailure; the answer arrives
/// later on the calling context (`proxy_on_grpc_receive` or `proxy_on_grpc_close`).
#[allow(clippy::too_many_arguments)]
fn proxy_grpc_call(
    mut c: C,
    up: i32,
    ul: i32,
    sp: i32,
    sl: i32,
    mp: i32,
    ml: i32,
    hp: i32,
    hl: i32,
    bp: i32,
    bl: i32,
    timeout: i32,
    ret: i32,
) -> R {
    use crate::types::grpc_limits as lim;
    let too_big = |len: i32, max: usize| len as u32 as usize > max;
    if too_big(ul, lim::MAX_NAME_BYTES)
        || too_big(sl, lim::MAX_NAME_BYTES)
        || too_big(ml, lim::MAX_NAME_BYTES)
        || too_big(hl, lim::MAX_METADATA_BYTES)
        || too_big(bl, lim::MAX_MESSAGE_BYTES)
    {
        return st(Status::BadArgument);
    }
    let upstream = read_or_fail!(&mut c, up, ul);
    let upstream = match crate::grpc_upstream::read(&upstream) {
        crate::grpc_upstream::GrpcUpstream::Cluster(name) => match String::from_utf8(name) {
            Ok(name) => name,
            // No cluster has such a name.
            Err(_) => return st(Status::ParseFailure),
        },
        crate::grpc_upstream::GrpcUpstream::Unsupported => return st(Status::BadArgument),
    };
    let service = str_or_fail!(&mut c, sp, sl);
    let method = str_or_fail!(&mut c, mp, ml);
    let hdata = read_or_fail!(&mut c, hp, hl);
    let message = read_or_fail!(&mut c, bp, bl);
    let Ok(metadata) = abi::deserialize_pairs_raw(&hdata) else {
        return st(Status::ParseFailure);
    };
    if let Some(known) = &lock(&c.data().shared).grpc_clusters {
        if !known.contains(&upstream) {
            return st(Status::ParseFailure);
        }
    }
    if c.data().grpc_calls.len() >= lim::MAX_PENDING_CALLS {
        return st(Status::InternalFailure);
    }
    let now = now_ms(c.data());
    let d = c.data_mut();
    let token = next_call_token(d);
    let timeout_ms = timeout as u32;
    let info = GrpcCallInfo {
        worker: d.worker,
        token,
        context_id: d.context(),
        upstream,
        service,
        method,
        initial_metadata: Headers::from_pairs(&metadata),
        message,
        timeout_ms,
    };
    d.grpc_calls.insert(
        token,
        PendingGrpc {
            info,
            deadline_ms: (timeout_ms > 0).then(|| now + timeout_ms as u64),
            dispatched: false,
        },
    );
    if !write_u32(&mut c, ret, token) {
        c.data_mut().grpc_calls.remove(&token);
        return st(Status::InvalidMemoryAccess);
    }
    ok()
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
    grpc_stream_start(&mut c, ret)
}

/// `proxy_grpc_cancel` and `proxy_grpc_close` on a unary call: the call is dropped and its
/// answer never delivered (Envoy: NotFound for an unknown call token).
fn grpc_drop(mut c: C, token: i32) -> R {
    let token = token as u32;
    let d = c.data_mut();
    if token & 1 == 1 {
        return match d.grpc_calls.remove(&token) {
            Some(_) => ok(),
            None => st(Status::NotFound),
        };
    }
    let before = d.grpc_to_close.len();
    d.grpc_to_close.retain(|(_, t)| *t != token);
    if d.grpc_to_close.len() < before {
        ok()
    } else {
        st(Status::NotFound)
    }
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
    // Envoy's stats are 64-bit integers that wrap; a guest's huge offset must not panic here.
    match kind {
        MetricKind::Counter if offset > 0 => m.value = m.value.wrapping_add(offset),
        MetricKind::Counter => return st(Status::BadArgument),
        MetricKind::Gauge => m.value = m.value.wrapping_add(offset),
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
        MetricKind::Counter => m.value = m.value.wrapping_add(value),
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

pub(super) fn register(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_log", proxy_log)?;
    l.func_wrap("env", "proxy_get_log_level", proxy_get_log_level)?;
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        proxy_get_current_time_nanoseconds,
    )?;
    l.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        proxy_set_tick_period_milliseconds,
    )?;
    l.func_wrap("env", "proxy_continue_stream", proxy_continue_stream)?;
    l.func_wrap("env", "proxy_close_stream", proxy_close_stream)?;
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        proxy_send_local_response,
    )?;
    l.func_wrap("env", "proxy_http_call", proxy_http_call)?;
    l.func_wrap("env", "proxy_grpc_call", proxy_grpc_call)?;
    l.func_wrap("env", "proxy_grpc_stream", proxy_grpc_stream)?;
    l.func_wrap("env", "proxy_get_status", proxy_get_status)?;
    l.func_wrap(
        "env",
        "proxy_set_effective_context",
        proxy_set_effective_context,
    )?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        proxy_call_foreign_function,
    )?;
    l.func_wrap("env", "proxy_done", proxy_done)?;
    l.func_wrap("env", "proxy_define_metric", proxy_define_metric)?;
    l.func_wrap("env", "proxy_increment_metric", proxy_increment_metric)?;
    l.func_wrap("env", "proxy_record_metric", proxy_record_metric)?;
    l.func_wrap("env", "proxy_get_metric", proxy_get_metric)?;
    l.func_wrap(
        "env",
        "proxy_grpc_send",
        |_c: C, _t: i32, _p: i32, _l: i32, _e: i32| ok(),
    )?;
    l.func_wrap("env", "proxy_grpc_cancel", grpc_drop)?;
    l.func_wrap("env", "proxy_grpc_close", grpc_drop)?;
    Ok(())
}
