//! What one callback's outcome means for the proxy in front: the [`Step`] an ext_proc server
//! (or any host driving the filter from outside) acts on, computed from the filter-manager
//! state after the callback and the work it caused.

use std::sync::mpsc::Sender;

use crate::core::Core;
use crate::state::{Dir, StreamState};
use crate::types::{Headers, LocalReply, StreamKey};

/// A header map as the proxy sends it: names and values as bytes.
pub type HeaderPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// What the filter decided for one callback of a [`crate::Stream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The filter holds this direction (headers paused until the body is complete, or body
    /// buffered): send nothing downstream/upstream yet; feed the next chunk.
    Hold,
    /// Go on. `headers`: the direction's header map as it must be sent now (pseudo-headers
    /// included), or None when the headers already went (then header mutations are
    /// impossible, as in Envoy). `body`: the bytes to send for everything held/buffered so far
    /// plus this chunk (after any `proxy_set_buffer_bytes`), or None when there is no body to
    /// send for this step. `end_of_stream`: this direction is now complete.
    /// `clear_route_cache`: request headers only; the module called `clear_route_cache` or
    /// changed the request headers while they were held.
    Continue {
        headers: Option<HeaderPairs>,
        body: Option<Vec<u8>>,
        end_of_stream: bool,
        clear_route_cache: bool,
    },
    /// The filter answered locally (`proxy_send_local_response`), as the client must receive
    /// it after the filter's own response callbacks: status, headers (no `:status`), body.
    Reply {
        status: u32,
        headers: HeaderPairs,
        body: Vec<u8>,
    },
    /// The VM trapped in this stream (the VM is recreated for later streams), or the stream
    /// cannot go on through the filter: fail closed (503) or open (pass through unchanged) as
    /// `EngineOptions::fail_open` says; `continue_unchanged` tells which.
    Trapped {
        continue_unchanged: bool,
        message: String,
    },
}

/// What Envoy would answer to `proxy_get_property` for one stream (request properties such as
/// `request.path` come from the request headers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamProps {
    /// Downstream peer `ip:port` (`source.address`, `source.port`).
    pub source_address: Option<String>,
    /// Listener `ip:port` (`destination.address`, `destination.port`).
    pub destination_address: Option<String>,
    /// Path segments -> bytes (e.g. jwt_authn metadata:
    /// `["metadata", "filter_metadata", "envoy.filters.http.jwt_authn", "payload", "sub"]`).
    pub properties: Vec<(Vec<String>, Vec<u8>)>,
}

/// One callback of a stream.
pub(crate) enum Op {
    RequestHeaders(Headers, bool),
    RequestBody(Vec<u8>, bool),
    RequestTrailers(Headers),
    ResponseHeaders(Headers, bool),
    ResponseBody(Vec<u8>, bool),
    ResponseTrailers(Headers),
}

/// What a worker thread is asked to do.
pub(crate) enum Cmd {
    Open {
        id: u64,
        props: StreamProps,
        reply: Sender<Step>,
    },
    Op {
        id: u64,
        op: Op,
    },
    /// `ack`: answer with `Step::Hold` once done.
    Finish {
        id: u64,
        ack: bool,
    },
    /// Finish, answering with the stream's properties under `prefix` after the end callbacks.
    FinishPublished {
        id: u64,
        prefix: String,
        reply: Sender<Vec<(String, Vec<u8>)>>,
    },
    Configure {
        config: Vec<u8>,
        reply: Sender<Result<(), String>>,
    },
    /// The answer of a gRPC call a VM of generation `generation` made.
    GrpcAnswer {
        generation: u64,
        token: u32,
        answer: crate::types::GrpcAnswer,
    },
    /// The engine is going away (answers in flight may still hold senders).
    Shutdown,
}

/// A stream as its worker thread tracks it: where it lives and what was already emitted.
pub(super) struct Pinned {
    pub key: StreamKey,
    pub reply: Sender<Step>,
    /// The VM generation the stream was created in (a reload loses the stream's context).
    pub generation: u64,
    pub headers_sent: [bool; 2],
    pub complete_sent: [bool; 2],
    pub replied: Option<Step>,
    pub trap: Option<String>,
    /// The last callback held the stream while its context waits for gRPC answers: its step
    /// (direction, body step) is sent when they arrived.
    pub waiting: Option<(Dir, bool)>,
}

fn index(d: Dir) -> usize {
    match d {
        Dir::Request => 0,
        Dir::Response => 1,
    }
}

pub(super) fn pairs(h: &Headers) -> HeaderPairs {
    h.iter_bytes()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

pub(super) fn trapped(fail_open: bool, message: String) -> Step {
    Step::Trapped {
        continue_unchanged: fail_open,
        message,
    }
}

fn reply_step(s: &StreamState, lr: &LocalReply) -> Step {
    match &s.response.out_headers {
        Some(h) => Step::Reply {
            status: h
                .get(":status")
                .and_then(|v| v.parse().ok())
                .unwrap_or(lr.status),
            headers: pairs(h)
                .into_iter()
                .filter(|(k, _)| k.as_slice() != b":status")
                .collect(),
            body: s.response.out_body.clone(),
        },
        None => Step::Reply {
            status: lr.status,
            headers: pairs(&lr.headers),
            body: lr.body.clone(),
        },
    }
}

fn route_cache_cleared(s: &StreamState) -> bool {
    s.request_headers_modified
        || s.foreign_calls
            .iter()
            .any(|c| c.name == "clear_route_cache" && c.status == 0)
}

/// The step after a callback on direction `d` (`body_step`: a body chunk was fed).
pub(super) fn after(
    core: &mut Core,
    p: &mut Pinned,
    d: Dir,
    body_step: bool,
    fail_open: bool,
) -> Step {
    if let Some(t) = &p.trap {
        return trapped(fail_open, t.clone());
    }
    let Some(s) = core.stream_mut(p.key) else {
        return trapped(fail_open, "the stream's VM was lost".into());
    };
    if let Some(t) = &s.trap {
        p.trap = Some(t.clone());
        return trapped(fail_open, t.clone());
    }
    if let Some(r) = &p.replied {
        return r.clone();
    }
    if s.reset {
        return trapped(false, "the filter reset the stream".into());
    }
    if let Some(lr) = &s.local_reply {
        let step = reply_step(s, lr);
        p.replied = Some(step.clone());
        return step;
    }
    let clear = route_cache_cleared(s);
    let i = index(d);
    let dir = match d {
        Dir::Request => &mut s.request,
        Dir::Response => &mut s.response,
    };
    let headers = match &dir.out_headers {
        Some(h) if !p.headers_sent[i] => Some(pairs(h)),
        _ => None,
    };
    p.headers_sent[i] |= headers.is_some();
    let body = std::mem::take(&mut dir.out_body);
    let newly_complete = dir.out_complete && !p.complete_sent[i];
    p.complete_sent[i] |= newly_complete;
    let holding = dir.headers_held || dir.stop_all || dir.buffering || dir.trailers_held;
    if headers.is_none() && body.is_empty() && !newly_complete && (holding || !body_step) {
        return Step::Hold;
    }
    Step::Continue {
        clear_route_cache: d == Dir::Request && headers.is_some() && clear,
        headers,
        body: if body.is_empty() && !body_step {
            None
        } else {
            Some(body)
        },
        end_of_stream: dir.out_complete,
    }
}
