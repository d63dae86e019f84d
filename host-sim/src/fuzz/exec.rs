//! Drives one [`Case`] through a host, either as sent or canonically, and records what the
//! upstream, the client and the host saw.

use anyhow::Result;

use super::case::{split_at, Cancel, Case, GrpcPlan, Pairs};
use crate::{Exchange, Host};

/// What one delivery of a case decided, compared between the two deliveries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Request headers reached the upstream.
    pub forwarded: bool,
    /// Each of the filter's own headers and its values upstream (escaped bytes).
    pub owned: Vec<(String, Vec<String>)>,
    /// The body the upstream received (escaped), when forwarded.
    pub upstream_body: Option<String>,
    /// The filter's local reply: status and body.
    pub local: Option<(u32, String)>,
    /// Status the client saw (0: none).
    pub client_status: u32,
    /// `retry-after` and `x-ratelimit-*` response headers the client saw.
    pub limit_headers: Vec<(String, String)>,
}

/// Everything one delivery produced.
#[derive(Debug, Clone)]
pub struct Observed {
    pub decision: Decision,
    /// Traps recorded by the host during this case.
    pub traps: Vec<String>,
    /// The whole request was sent, yet it is neither through nor answered.
    pub stalled: bool,
    /// Owned header values upstream, as exact bytes.
    pub owned_raw: Vec<(String, Vec<Vec<u8>>)>,
    /// The body the upstream received, exact bytes.
    pub upstream_body: Option<Vec<u8>>,
}

/// How a case is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Chunked at the case's cuts, every header as the client sent it.
    AsSent,
    /// One request chunk, one response chunk, and no client values for `owned` headers.
    Canonical,
}

fn is_owned(owned: &[String], name: &[u8]) -> bool {
    owned
        .iter()
        .any(|o| o.as_bytes().eq_ignore_ascii_case(name))
}

/// The request chunks for this delivery, and how many to send before going quiet.
fn request_chunks(case: &Case, how: Delivery) -> (Vec<Vec<u8>>, Option<usize>) {
    let chunks = split_at(&case.body.0, &case.cuts);
    let stop = match case.cancel {
        Cancel::MidBody(n) => Some(n.min(chunks.len())),
        _ => None,
    };
    if how == Delivery::AsSent {
        return (chunks, stop);
    }
    match stop {
        None => (vec![case.body.0.clone()], None),
        Some(n) => {
            let prefix: Vec<u8> = chunks[..n].concat();
            let rest: Vec<u8> = chunks[n..].concat();
            let sent = usize::from(!prefix.is_empty());
            (vec![prefix, rest], Some(sent))
        }
    }
}

fn response_chunks(body: &[u8], cuts: &[usize], cancel: Cancel, how: Delivery) -> Vec<Vec<u8>> {
    let mut chunks = split_at(body, cuts);
    if let Cancel::MidResponse(n) = cancel {
        chunks.truncate(n);
    }
    if how == Delivery::Canonical {
        let whole = chunks.concat();
        chunks = if whole.is_empty() {
            vec![]
        } else {
            vec![whole]
        };
    }
    chunks
}

fn add_pairs<'h>(
    mut rb: crate::RequestBuilder<'h>,
    pairs: &Pairs,
    skip: &dyn Fn(&[u8]) -> bool,
) -> crate::RequestBuilder<'h> {
    for (k, v) in pairs {
        if !skip(&k.0) {
            rb = rb.header_bytes(&k.0, &v.0);
        }
    }
    rb
}

/// Runs `case` on `host`. Host errors (not traps) are returned as errors.
pub fn run(host: &mut Host, case: &Case, how: Delivery, owned: &[String]) -> Result<Observed> {
    host.advance_ms(case.advance_ms)?;
    for (key, value) in &case.shared {
        host.shared_data_set(key, &value.0);
    }
    let traps_before = host.traps().len();
    answer_grpc(host, &case.grpc)?;
    let result = drive(host, case, how, owned);
    let traps: Vec<String> = host.traps()[traps_before..]
        .iter()
        .map(|t| {
            format!(
                "worker {} in {}: {}",
                t.worker,
                t.function,
                short_trap(&t.message)
            )
        })
        .collect();
    match result {
        Ok(mut o) => {
            o.traps = traps;
            Ok(o)
        }
        // A trap can surface as an error of the call that hit it: report the trap.
        Err(_) if !traps.is_empty() => Ok(Observed {
            decision: Decision::default(),
            traps,
            stalled: false,
            owned_raw: Vec::new(),
            upstream_body: None,
        }),
        Err(e) => Err(e),
    }
}

/// Answers every outstanding gRPC call of the filter (and those the answers make) with the
/// case's plans in turn. An answer the host refuses (the call went meanwhile) is skipped; a
/// trap in an answer callback is recorded by the host and reported with the case's traps.
fn answer_grpc(host: &mut Host, plans: &[GrpcPlan]) -> Result<()> {
    let mut turn = 0usize;
    for _ in 0..64 {
        let calls = host.pending_grpc_calls();
        if calls.is_empty() {
            return Ok(());
        }
        for call in calls {
            let plan = plans.get(turn % plans.len().max(1));
            turn += 1;
            let (w, t) = (call.worker, call.token);
            let _ = match plan {
                Some(GrpcPlan::Ok(bytes)) => host.respond_grpc_call(w, t, &bytes.0),
                Some(GrpcPlan::Status { code, message }) => {
                    host.fail_grpc_call(w, t, *code, &String::from_utf8_lossy(&message.0))
                }
                Some(GrpcPlan::Timeout) if call.timeout_ms > 0 => {
                    host.advance_ms(call.timeout_ms.into())?;
                    Ok(())
                }
                Some(GrpcPlan::Timeout) => host.fail_grpc_call(w, t, 4, "deadline exceeded"),
                None => host.fail_grpc_call(w, t, 14, "fuzz: no answer planned"),
            };
        }
    }
    Ok(())
}

/// A wasmtime trap message without the runtime's own frames: the first line, the frames of
/// the filter and the SDK, and the trap reason.
fn short_trap(msg: &str) -> String {
    let lines: Vec<&str> = msg.lines().collect();
    let mut kept: Vec<&str> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if i == 0 || i + 1 == lines.len() || l.contains("llm_router") || l.contains("proxy_wasm") {
            kept.push(l.trim());
        }
    }
    kept.join(" | ")
}

fn drive(host: &mut Host, case: &Case, how: Delivery, owned: &[String]) -> Result<Observed> {
    let worker = case.worker % host.worker_count().max(1);
    let (chunks, stop) = request_chunks(case, how);
    let skip = |name: &[u8]| how == Delivery::Canonical && is_owned(owned, name);
    let mut rb = host
        .worker(worker)
        .request()
        .method(&case.method)
        .path_bytes(&case.path.0)
        .source_address(&case.source)
        .no_content_length();
    rb = add_pairs(rb, &case.headers, &skip);
    for (k, v) in case.trailers.iter().flatten() {
        rb = rb.trailer_bytes(&k.0, &v.0);
    }
    rb = rb.body_chunks(&chunks);
    if let Some(n) = stop {
        rb = rb.stop_after_chunks(n);
    }
    let mut ex = rb.send();
    answer_grpc(ex.host(), &case.grpc)?;
    let stalled = stop.is_none() && ex.trap().is_none() && ex.stalled();
    let mut decision = request_decision(&ex, owned);
    let owned_raw = owned_raw(&ex, owned);
    let upstream_body = ex.upstream().map(|u| u.body);
    let respond = stop.is_none()
        && case.cancel != Cancel::BeforeResponse
        && ex.trap().is_none()
        && ex.local_reply().is_none()
        && ex.upstream().is_some_and(|u| u.complete);
    if let (Some(r), true) = (&case.response, respond) {
        {
            let mut rs = ex.response(r.status);
            for (k, v) in &r.headers {
                rs = rs.header_bytes(&k.0, &v.0);
            }
            for c in response_chunks(&r.body.0, &r.cuts, case.cancel, how) {
                rs = rs.chunk(c);
            }
            if let Some(t) = &r.trailers {
                for (k, v) in t {
                    rs = rs.trailer_bytes(&k.0, &v.0);
                }
            }
            if matches!(case.cancel, Cancel::MidResponse(_)) {
                rs = rs.keep_open();
            }
            rs.send()?;
        }
        answer_grpc(ex.host(), &case.grpc)?;
    }
    client_side(&ex, &mut decision);
    match case.cancel {
        Cancel::Never => ex.finish()?,
        _ => ex.reset()?,
    }
    Ok(Observed {
        decision,
        traps: Vec::new(),
        stalled,
        owned_raw,
        upstream_body,
    })
}

fn owned_raw(ex: &Exchange<'_>, owned: &[String]) -> Vec<(String, Vec<Vec<u8>>)> {
    let Some(up) = ex.upstream() else {
        return Vec::new();
    };
    owned
        .iter()
        .map(|name| {
            let values = up
                .headers
                .get_all_bytes(name)
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect();
            (name.clone(), values)
        })
        .collect()
}

fn request_decision(ex: &Exchange<'_>, owned: &[String]) -> Decision {
    let up = ex.upstream();
    let owned_values = owned_raw(ex, owned)
        .into_iter()
        .map(|(n, vs)| (n, vs.iter().map(|v| super::case::escape(v)).collect()))
        .collect();
    Decision {
        forwarded: up.is_some(),
        owned: owned_values,
        upstream_body: up.map(|u| super::case::escape(&u.body)),
        local: ex
            .local_reply()
            .map(|l| (l.status, String::from_utf8_lossy(&l.body).into_owned())),
        client_status: 0,
        limit_headers: Vec::new(),
    }
}

fn client_side(ex: &Exchange<'_>, d: &mut Decision) {
    if let Some(c) = ex.client_response() {
        d.client_status = c.status;
        d.limit_headers = c
            .headers
            .iter()
            .filter(|(k, _)| k.starts_with("x-ratelimit-") || *k == "retry-after")
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }
}

#[cfg(test)]
#[path = "exec_tests.rs"]
mod tests;
