//! The ext_proc protocol state machine for one gRPC stream (= one HTTP stream), mapping
//! Envoy's `ProcessingRequest`s onto a [`FilterStream`] and the filter's [`Step`]s back onto
//! `ProcessingResponse`s, per the Gateway API Inference Extension endpoint-picker protocol.
//!
//! Body modes, per direction, from the first message's `protocol_config`:
//! - `FULL_DUPLEX_STREAMED`: while the filter holds the headers, nothing is answered; when it
//!   continues, the headers response goes first (with the header diff, `clear_route_cache` and
//!   the picked endpoint), then the body as `streamed_response` chunks of at most 62,000 bytes,
//!   then the trailers. A chunk the filter passes on is answered at once (SSE events flow).
//! - every other mode (`BUFFERED`, `BUFFERED_PARTIAL`, `STREAMED`, `NONE`) and an absent
//!   `protocol_config` (Envoy before 1.35 does not send it; its default is headers only and
//!   buffered-style bodies): every message is answered exactly once, at once. Headers the filter
//!   holds are answered unchanged, and their mutations go out with the final body response
//!   (Envoy applies header mutations of a buffered body response). A body rewrite that arrives
//!   after earlier chunks already went out unchanged cannot be applied; it is dropped and
//!   counted (`Events::lost_body_rewrite`).

use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_request::Request, HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
};

use crate::engine::{FilterStream, Headers, Step};
use crate::messages::{self as m, Dir};
use crate::props;

/// Settings from the plugin configuration that the protocol needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolOptions {
    /// `headers.endpoint` of the plugin configuration (lower case).
    pub endpoint_header: String,
}

impl Default for ProtocolOptions {
    fn default() -> Self {
        ProtocolOptions {
            endpoint_header: m::DESTINATION_KEY.to_string(),
        }
    }
}

/// How body messages of one direction are exchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    FullDuplex,
    /// One answer per message, at once (BUFFERED and every other mode).
    PerMessage,
}

/// What happened on the stream, for logs and the server's metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Events {
    pub picked_endpoint: Option<String>,
    pub served_endpoint: Option<String>,
    pub local_reply: Option<u32>,
    pub trapped: bool,
    pub lost_body_rewrite: bool,
    pub subset_rejected: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The filter trapped and the stream fails open: everything passes unchanged.
    Passthrough,
    /// An immediate response went out: Envoy ends the stream, nothing more is answered.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    Headers { end_of_stream: bool },
    Body { end_of_stream: bool, len: usize },
    Trailers,
}

#[derive(Debug, Default)]
struct Half {
    /// The headers as Envoy sent them.
    original: Headers,
    /// The filter holds the headers: their final form is not known yet.
    headers_held: bool,
    /// Bytes given to the filter since its last Continue (what an unchanged pass-through sends).
    pending: Vec<u8>,
}

/// One ext_proc stream bound to one filter stream.
pub struct Session<S: FilterStream> {
    stream: S,
    options: ProtocolOptions,
    request_mode: BodyMode,
    response_mode: BodyMode,
    request: Half,
    response: Half,
    subset: Option<Vec<String>>,
    state: State,
    events: Events,
}

impl<S: FilterStream> Session<S> {
    pub fn new(stream: S, options: ProtocolOptions) -> Self {
        Session {
            stream,
            options,
            request_mode: BodyMode::PerMessage,
            response_mode: BodyMode::PerMessage,
            request: Half::default(),
            response: Half::default(),
            subset: None,
            state: State::Open,
            events: Events::default(),
        }
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    pub fn mode(&self, dir: Dir) -> BodyMode {
        match dir {
            Dir::Request => self.request_mode,
            Dir::Response => self.response_mode,
        }
    }

    /// The stream ended (normally or cancelled): the filter's on_log/on_done run.
    pub fn finish(self) {
        self.stream.finish();
    }

    /// `finish`, returning what the filter published under `prefix` (for the trace).
    pub fn finish_published(self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        self.stream.finish_published(prefix)
    }

    /// Answers one message of Envoy's; the result may be empty (held) or several messages.
    pub fn handle(&mut self, message: ProcessingRequest) -> Vec<ProcessingResponse> {
        if let Some(config) = &message.protocol_config {
            self.request_mode = mode_of(config.request_body_mode);
            self.response_mode = mode_of(config.response_body_mode);
        }
        if let Some(metadata) = &message.metadata_context {
            if self.subset.is_none() {
                self.subset = props::subset_hint(metadata);
            }
            if let Some(served) = props::served_endpoint(metadata) {
                self.events.served_endpoint = Some(served);
            }
        }
        if self.state == State::Closed {
            return Vec::new();
        }
        match message.request {
            Some(Request::RequestHeaders(h)) => self.on_headers(Dir::Request, h),
            Some(Request::ResponseHeaders(h)) => self.on_headers(Dir::Response, h),
            Some(Request::RequestBody(b)) => self.on_body(Dir::Request, b),
            Some(Request::ResponseBody(b)) => self.on_body(Dir::Response, b),
            Some(Request::RequestTrailers(t)) => {
                self.on_trailers(Dir::Request, m::headers_from(t.trailers.as_ref()))
            }
            Some(Request::ResponseTrailers(t)) => {
                self.on_trailers(Dir::Response, m::headers_from(t.trailers.as_ref()))
            }
            None => Vec::new(),
        }
    }

    fn half(&mut self, dir: Dir) -> &mut Half {
        match dir {
            Dir::Request => &mut self.request,
            Dir::Response => &mut self.response,
        }
    }

    fn on_headers(&mut self, dir: Dir, h: HttpHeaders) -> Vec<ProcessingResponse> {
        let headers = m::headers_from(h.headers.as_ref());
        if dir == Dir::Response {
            let served = self.options_served_header();
            if let Some((_, v)) = headers
                .iter()
                .find(|(n, _)| n.as_slice() == served.as_bytes())
            {
                self.events.served_endpoint = Some(String::from_utf8_lossy(v).into_owned());
            }
        }
        self.half(dir).original = headers.clone();
        let msg = Msg::Headers {
            end_of_stream: h.end_of_stream,
        };
        if self.state == State::Passthrough {
            return self.unchanged(dir, msg);
        }
        let step = match dir {
            Dir::Request => self.stream.request_headers(headers, h.end_of_stream),
            Dir::Response => self.stream.response_headers(headers, h.end_of_stream),
        };
        self.apply(dir, msg, step)
    }

    fn options_served_header(&self) -> String {
        format!("{}-served", m::DESTINATION_KEY)
    }

    fn on_body(&mut self, dir: Dir, b: HttpBody) -> Vec<ProcessingResponse> {
        let msg = Msg::Body {
            end_of_stream: b.end_of_stream,
            len: b.body.len(),
        };
        self.half(dir).pending.extend_from_slice(&b.body);
        if self.state == State::Passthrough {
            return self.unchanged(dir, msg);
        }
        let step = match dir {
            Dir::Request => self.stream.request_body(b.body, b.end_of_stream),
            Dir::Response => self.stream.response_body(b.body, b.end_of_stream),
        };
        self.apply(dir, msg, step)
    }

    fn on_trailers(&mut self, dir: Dir, trailers: Headers) -> Vec<ProcessingResponse> {
        if self.state == State::Passthrough {
            return self.unchanged(dir, Msg::Trailers);
        }
        let step = match dir {
            Dir::Request => self.stream.request_trailers(trailers),
            Dir::Response => self.stream.response_trailers(trailers),
        };
        self.apply(dir, Msg::Trailers, step)
    }

    fn apply(&mut self, dir: Dir, msg: Msg, step: Step) -> Vec<ProcessingResponse> {
        match step {
            Step::Reply {
                status,
                headers,
                body,
            } => {
                self.state = State::Closed;
                self.events.local_reply = Some(status);
                vec![m::immediate(status, &headers, body)]
            }
            Step::Trapped {
                continue_unchanged,
                message,
            } => {
                self.events.trapped = true;
                log::warn!("filter trapped in this stream: {message}");
                if continue_unchanged {
                    self.state = State::Passthrough;
                    self.unchanged(dir, msg)
                } else {
                    self.state = State::Closed;
                    vec![m::service_unavailable("the request could not be processed")]
                }
            }
            Step::Hold => self.hold(dir, msg),
            Step::Continue {
                headers,
                body,
                clear_route_cache,
                ..
            } => match self.mode(dir) {
                BodyMode::FullDuplex => {
                    self.duplex_continue(dir, msg, headers, body, clear_route_cache)
                }
                BodyMode::PerMessage => {
                    self.message_continue(dir, msg, headers, body, clear_route_cache)
                }
            },
        }
    }

    fn hold(&mut self, dir: Dir, msg: Msg) -> Vec<ProcessingResponse> {
        let duplex = self.mode(dir) == BodyMode::FullDuplex;
        match msg {
            // Nothing more will come that could release held data: pass it on unchanged
            // rather than stall the stream.
            Msg::Headers {
                end_of_stream: true,
            }
            | Msg::Body {
                end_of_stream: true,
                ..
            }
            | Msg::Trailers => self.unchanged(dir, msg),
            Msg::Headers { .. } if duplex => {
                self.half(dir).headers_held = true;
                Vec::new()
            }
            Msg::Body { .. } if duplex => Vec::new(),
            Msg::Headers { .. } => {
                self.half(dir).headers_held = true;
                vec![m::headers_response(dir, m::common(None, false))]
            }
            Msg::Body { .. } => vec![m::body_response(dir, m::common(None, false))],
        }
    }

    /// Answers `msg` leaving everything as Envoy sent it, flushing what the filter held.
    fn unchanged(&mut self, dir: Dir, msg: Msg) -> Vec<ProcessingResponse> {
        let duplex = self.mode(dir) == BodyMode::FullDuplex;
        let half = self.half(dir);
        let pending = std::mem::take(&mut half.pending);
        let headers_held = std::mem::replace(&mut half.headers_held, false);
        let mut out = Vec::new();
        if duplex {
            if headers_held || matches!(msg, Msg::Headers { .. }) {
                out.push(m::headers_response(dir, m::common(None, false)));
            }
            match msg {
                Msg::Headers { .. } => {}
                Msg::Body { end_of_stream, .. } => {
                    out.extend(m::streamed_body(dir, &pending, end_of_stream))
                }
                Msg::Trailers => {
                    out.extend(m::streamed_body(dir, &pending, false));
                    out.push(m::trailers_response(dir));
                }
            }
        } else {
            out.push(match msg {
                Msg::Headers { .. } => m::headers_response(dir, m::common(None, false)),
                Msg::Body { .. } => m::body_response(dir, m::common(None, false)),
                Msg::Trailers => m::trailers_response(dir),
            });
        }
        out
    }

    fn duplex_continue(
        &mut self,
        dir: Dir,
        msg: Msg,
        headers: Option<Headers>,
        body: Option<Vec<u8>>,
        clear_route_cache: bool,
    ) -> Vec<ProcessingResponse> {
        let half = self.half(dir);
        let headers_due =
            std::mem::replace(&mut half.headers_held, false) || matches!(msg, Msg::Headers { .. });
        half.pending.clear();
        let mut out = Vec::new();
        if headers_due {
            match self.headers_answer(dir, headers, clear_route_cache, true) {
                Ok(answer) => out.push(answer),
                Err(reply) => return vec![*reply],
            }
        }
        let body = body.unwrap_or_default();
        match msg {
            Msg::Headers { .. } => {}
            Msg::Body { end_of_stream, .. } => {
                out.extend(m::streamed_body(dir, &body, end_of_stream))
            }
            Msg::Trailers => {
                out.extend(m::streamed_body(dir, &body, false));
                out.push(m::trailers_response(dir));
            }
        }
        out
    }

    fn message_continue(
        &mut self,
        dir: Dir,
        msg: Msg,
        headers: Option<Headers>,
        body: Option<Vec<u8>>,
        clear_route_cache: bool,
    ) -> Vec<ProcessingResponse> {
        match msg {
            Msg::Headers { .. } => {
                self.half(dir).headers_held = false;
                match self.headers_answer(dir, headers, clear_route_cache, true) {
                    Ok(answer) => vec![answer],
                    Err(reply) => vec![*reply],
                }
            }
            Msg::Body { len, .. } => {
                let half = self.half(dir);
                let pending = std::mem::take(&mut half.pending);
                let earlier_went_unchanged = pending.len() > len;
                let headers_due = std::mem::replace(&mut half.headers_held, false);
                let mut answer = if headers_due {
                    match self.headers_answer(dir, headers, clear_route_cache, false) {
                        Ok(answer) => answer,
                        Err(reply) => return vec![*reply],
                    }
                } else {
                    m::body_response(dir, m::common(None, clear_route_cache))
                };
                if let Some(body) = body.filter(|b| *b != pending) {
                    if earlier_went_unchanged {
                        // Earlier chunks already went out as they were: a rewrite of the
                        // whole body cannot be applied any more in this mode.
                        log::warn!("body rewrite dropped: earlier chunks were already sent");
                        self.events.lost_body_rewrite = true;
                    } else {
                        self.set_body(&mut answer, body);
                    }
                }
                vec![answer]
            }
            Msg::Trailers => {
                let half = self.half(dir);
                if half.headers_held {
                    half.headers_held = false;
                    self.events.lost_body_rewrite = true;
                }
                vec![m::trailers_response(dir)]
            }
        }
    }

    fn set_body(&mut self, answer: &mut ProcessingResponse, body: Vec<u8>) {
        use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as R;
        let common = match &mut answer.response {
            Some(R::RequestBody(b)) | Some(R::ResponseBody(b)) => b.response.as_mut(),
            _ => None,
        };
        match common {
            Some(common) => common.body_mutation = Some(m::replace_body(body)),
            None => self.events.lost_body_rewrite = true,
        }
    }
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;

impl<S: FilterStream> Session<S> {
    /// The answer that carries the final headers of `dir`: a headers response (or, for
    /// buffered bodies, the body response) with the header diff, `clear_route_cache` and, on
    /// the request, the picked endpoint in `envoy.lb`. Err: the 503 immediate response when
    /// the endpoint is outside the gateway's subset hint.
    fn headers_answer(
        &mut self,
        dir: Dir,
        headers: Option<Headers>,
        clear_route_cache: bool,
        as_headers: bool,
    ) -> Result<ProcessingResponse, Box<ProcessingResponse>> {
        let original = self.half(dir).original.clone();
        let mut wanted = headers.unwrap_or_else(|| original.clone());
        let mut metadata = None;
        if dir == Dir::Request {
            let picked = single_endpoint(&mut wanted, &self.options.endpoint_header);
            if let Some(subset) = &self.subset {
                let eligible = match &picked {
                    Some(endpoint) => subset.contains(endpoint),
                    None => !subset.is_empty(),
                };
                if !eligible {
                    self.state = State::Closed;
                    self.events.subset_rejected = true;
                    return Err(Box::new(m::service_unavailable(
                        "no eligible endpoint in the gateway's endpoint subset",
                    )));
                }
            }
            if let Some(endpoint) = picked {
                metadata = Some(m::destination_metadata(&endpoint));
                self.events.picked_endpoint = Some(endpoint);
            }
        }
        let common = m::common(m::header_mutation(&original, &wanted), clear_route_cache);
        let mut answer = if as_headers {
            m::headers_response(dir, common)
        } else {
            m::body_response(dir, common)
        };
        answer.dynamic_metadata = metadata;
        Ok(answer)
    }
}

/// Reduces the endpoint header to exactly one `ip:port` (the first listed) and returns it:
/// agentgateway rejects lists, and header and metadata must agree.
fn single_endpoint(headers: &mut Headers, name: &str) -> Option<String> {
    let value = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())?;
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name.as_bytes()));
    let first = value
        .split(',')
        .map(str::trim)
        .find(|s| !s.is_empty())?
        .to_string();
    headers.push((name.as_bytes().to_vec(), first.clone().into_bytes()));
    Some(first)
}

fn mode_of(raw: i32) -> BodyMode {
    if raw == BodySendMode::FullDuplexStreamed as i32 {
        BodyMode::FullDuplex
    } else {
        BodyMode::PerMessage
    }
}
