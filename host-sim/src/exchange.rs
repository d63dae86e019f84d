//! One HTTP request/response through the filter: building it, driving it the way Envoy's
//! filter manager drives a filter, and what came out on either side.
//!
//! Model of Envoy's filter manager around this one filter (Envoy >= 1.35, the Wasm filter's
//! `Context::decode*`/`encode*`):
//! - Headers callback: `Continue` forwards the headers and the guest loses the map (Envoy nulls
//!   its pointer: later header calls return BadArgument). `Pause` is `StopIteration` when
//!   `allow_on_headers_stop_iteration` is true: the headers are held (and stay writable) and body
//!   chunks keep arriving. When it is false, Envoy turns `Pause` into
//!   `StopAllIterationAndWatermark`: the headers are held, body data and trailers are buffered by
//!   Envoy *without calling the filter*, and nothing moves until the filter calls
//!   `proxy_continue_stream`; then the headers go on and the filter's body callback gets all the
//!   buffered data at once. A filter that waits for the body before continuing hangs (that is
//!   what Envoy does; the exchange reports `stalled()`).
//! - Body callback: `Pause` is `StopIterationAndBuffer`: the chunk is kept and the next callback
//!   sees the accumulated buffer (size and bytes). `Continue` forwards held headers plus the
//!   buffer. Header writes made during that callback still count; after it the headers are gone
//!   upstream and writes are recorded as late writes (Envoy accepts them, nobody sees them).
//! - Trailers callback: `Continue` forwards everything held; `Pause` holds the trailers too.
//! - `proxy_send_local_response` takes effect after the callback returns, whatever it returned:
//!   the request stops (never reaches upstream, or is reset if it already had), and the reply
//!   runs through this filter's response callbacks like any response, as Envoy's local replies
//!   do. A local reply asked for while the response is already being filtered goes straight to
//!   the client.

use anyhow::{anyhow, bail, Result};

use crate::host::{prop_path, Host, ROOT_CONTEXT_ID};
use crate::state::{Access, Direction, StreamState};
use crate::types::{ForeignCall, Headers, LocalReply, PropValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Request,
    Response,
}

/// Identifies a stream: worker index and context id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub worker: usize,
    pub context: u32,
}

/// What reached the upstream (the router, i.e. the model server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Option<Headers>,
    /// The whole request (end of stream) got through.
    pub complete: bool,
}

impl Upstream {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn body_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// `content-length` is present and differs from the body forwarded.
    pub fn content_length_mismatch(&self) -> bool {
        match self.headers.get("content-length") {
            Some(v) => v.trim().parse::<usize>().ok() != Some(self.body.len()),
            None => false,
        }
    }
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

/// What the client received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResponse {
    /// 0 when no headers reached the client.
    pub status: u32,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Option<Headers>,
    /// The whole response (end of stream) reached the client.
    pub complete: bool,
    /// It was a local reply from the filter (or from the host, for a failed VM).
    pub local: bool,
    /// Per body chunk driven by the test, in order.
    pub chunks: Vec<ChunkOutcome>,
}

impl ClientResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn body_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Describes a request; `send()` runs it through the filter.
pub struct RequestBuilder<'h> {
    host: &'h mut Host,
    worker: usize,
    method: String,
    path: Vec<u8>,
    authority: String,
    scheme: String,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    chunks: Vec<Vec<u8>>,
    trailers: Option<Headers>,
    properties: Vec<(Vec<u8>, PropValue)>,
    metadata: serde_json::Map<String, serde_json::Value>,
    source: String,
    destination: String,
    content_length: bool,
    stop_after: Option<usize>,
}

fn split_addr(addr: &str) -> (String, i64) {
    match addr.rsplit_once(':') {
        Some((_, p)) => (addr.to_string(), p.parse().unwrap_or(0)),
        None => (addr.to_string(), 0),
    }
}

impl<'h> RequestBuilder<'h> {
    pub(crate) fn new(host: &'h mut Host, worker: usize) -> Self {
        RequestBuilder {
            host,
            worker,
            method: "GET".into(),
            path: b"/".to_vec(),
            authority: "gateway.local".into(),
            scheme: "http".into(),
            headers: Vec::new(),
            chunks: Vec::new(),
            trailers: None,
            properties: Vec::new(),
            metadata: serde_json::Map::new(),
            source: "10.0.0.1:40000".into(),
            destination: "10.0.0.2:10000".into(),
            content_length: true,
            stop_after: None,
        }
    }

    pub fn method(mut self, m: &str) -> Self {
        self.method = m.to_string();
        self
    }

    pub fn path(mut self, p: &str) -> Self {
        self.path = p.as_bytes().to_vec();
        self
    }

    /// `:path` as raw bytes (Envoy passes bytes it does not reject through unchanged).
    pub fn path_bytes(mut self, p: impl AsRef<[u8]>) -> Self {
        self.path = p.as_ref().to_vec();
        self
    }

    /// `:authority`. Default `gateway.local`.
    pub fn authority(mut self, a: &str) -> Self {
        self.authority = a.to_string();
        self
    }

    pub fn scheme(mut self, s: &str) -> Self {
        self.scheme = s.to_string();
        self
    }

    /// Adds a header (name lowercased).
    pub fn header(self, k: &str, v: &str) -> Self {
        self.header_bytes(k, v)
    }

    /// Adds a header given as bytes (name lowercased ASCII-wise; obs-text kept as is).
    pub fn header_bytes(mut self, k: impl AsRef<[u8]>, v: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((k.as_ref().to_ascii_lowercase(), v.as_ref().to_vec()));
        self
    }

    pub fn headers(mut self, hs: &[(&str, &str)]) -> Self {
        for (k, v) in hs {
            self = self.header_bytes(k, v);
        }
        self
    }

    /// The body as one chunk.
    pub fn body(mut self, b: impl AsRef<[u8]>) -> Self {
        self.chunks = vec![b.as_ref().to_vec()];
        self
    }

    /// The body as JSON, plus `content-type: application/json` unless one was given.
    pub fn json(mut self, v: &serde_json::Value) -> Self {
        if !self.headers.iter().any(|(k, _)| k == b"content-type") {
            self.headers
                .push((b"content-type".to_vec(), b"application/json".to_vec()));
        }
        self.chunks = vec![v.to_string().into_bytes()];
        self
    }

    /// The body as these chunks, delivered one callback each.
    pub fn body_chunks<B: AsRef<[u8]>>(mut self, chunks: &[B]) -> Self {
        self.chunks = chunks.iter().map(|c| c.as_ref().to_vec()).collect();
        self
    }

    /// Re-splits the body given so far into `n` chunks of near-equal size.
    pub fn chunks(mut self, n: usize) -> Self {
        let body: Vec<u8> = self.chunks.concat();
        self.chunks = split_chunks(&body, n);
        self
    }

    pub fn trailer(self, k: &str, v: &str) -> Self {
        self.trailer_bytes(k, v)
    }

    pub fn trailer_bytes(mut self, k: impl AsRef<[u8]>, v: impl AsRef<[u8]>) -> Self {
        self.trailers.get_or_insert_with(Headers::new).add(k, v);
        self
    }

    /// Downstream peer `ip:port` (properties `source.address`, `source.port`).
    pub fn source_address(mut self, addr: &str) -> Self {
        self.source = addr.to_string();
        self
    }

    /// Listener `ip:port` (properties `destination.address`, `destination.port`).
    pub fn destination_address(mut self, addr: &str) -> Self {
        self.destination = addr.to_string();
        self
    }

    /// A property for this request by dotted path (`connection.mtls`).
    pub fn property(mut self, dotted: &str, v: impl Into<PropValue>) -> Self {
        self.properties.push((prop_path(dotted), v.into()));
        self
    }

    /// A property by explicit segments (for segments containing dots).
    pub fn property_path(mut self, segments: &[&str], v: impl Into<PropValue>) -> Self {
        self.properties
            .push((segments.join("\0").into_bytes(), v.into()));
        self
    }

    /// Dynamic metadata of a filter: `metadata.filter_metadata.<filter>.<keys...>`.
    pub fn filter_metadata(mut self, filter: &str, v: serde_json::Value) -> Self {
        self.metadata.insert(filter.to_string(), v);
        self
    }

    /// jwt_authn's verified payload stored under `payload_key`
    /// (`metadata.filter_metadata.envoy.filters.http.jwt_authn.<payload_key>.<claim>`).
    pub fn jwt_payload(mut self, payload_key: &str, claims: serde_json::Value) -> Self {
        let entry = self
            .metadata
            .entry("envoy.filters.http.jwt_authn".to_string())
            .or_insert_with(|| serde_json::json!({}));
        if let serde_json::Value::Object(m) = entry {
            m.insert(payload_key.to_string(), claims);
        }
        self
    }

    /// Do not add `content-length` automatically (a chunked request).
    pub fn no_content_length(mut self) -> Self {
        self.content_length = false;
        self
    }

    /// The client sends only the headers and the first `n` body chunks, then goes quiet (no end
    /// of stream): use it with [`Exchange::reset`] to cancel a request mid-stream.
    pub fn stop_after_chunks(mut self, n: usize) -> Self {
        self.stop_after = Some(n);
        self
    }

    /// Runs the request through the filter. Traps are recorded on the exchange
    /// ([`Exchange::trap`]) and the host; see [`RequestBuilder::try_send`] to get them as errors.
    pub fn send(self) -> Exchange<'h> {
        match self.send_inner() {
            Ok(ex) => ex,
            Err((host, key, e)) => {
                if let Some(s) = host.stream_mut(key) {
                    if s.trap.is_none() {
                        s.trap = Some(e.to_string());
                    }
                }
                Exchange::new(host, key)
            }
        }
    }

    /// Like `send`, but a trap (or a host error) is returned as the error.
    pub fn try_send(self) -> Result<Exchange<'h>> {
        let worker = self.worker;
        if worker >= self.host.worker_count() {
            bail!("no worker {worker}");
        }
        let ex = self.send();
        if let Some(t) = ex.trap() {
            return Err(anyhow!("worker {worker}: {t}"));
        }
        Ok(ex)
    }

    #[allow(clippy::type_complexity)]
    fn send_inner(
        self,
    ) -> std::result::Result<Exchange<'h>, (&'h mut Host, StreamKey, anyhow::Error)> {
        let RequestBuilder {
            host,
            worker,
            method,
            path,
            authority,
            scheme,
            headers,
            chunks,
            trailers,
            properties,
            metadata,
            source,
            destination,
            content_length,
            stop_after,
        } = self;
        let chunks: Vec<Vec<u8>> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let body: Vec<u8> = chunks.concat();
        let mut h = Headers::new();
        h.add(":authority", &authority);
        h.add(":path", &path);
        h.add(":method", &method);
        h.add(":scheme", &scheme);
        for (k, v) in &headers {
            h.add(k, v);
        }
        if content_length && !body.is_empty() && !h.contains("content-length") {
            h.add("content-length", body.len().to_string());
        }
        let mut s = StreamState {
            original_request_headers: h.clone(),
            original_request_body: body.clone(),
            filter_metadata: metadata,
            ..Default::default()
        };
        let (sa, sp) = split_addr(&source);
        let (da, dp) = split_addr(&destination);
        s.properties.insert(prop_path("source.address"), sa.into());
        s.properties.insert(prop_path("source.port"), sp.into());
        s.properties
            .insert(prop_path("destination.address"), da.into());
        s.properties
            .insert(prop_path("destination.port"), dp.into());
        s.properties
            .insert(prop_path("request.protocol"), "HTTP/1.1".into());
        s.properties
            .insert(prop_path("connection.mtls"), false.into());
        s.properties
            .insert(prop_path("request.total_size"), (body.len() as i64).into());
        for (k, v) in properties {
            s.properties.insert(k, v);
        }
        if host.worker_count() <= worker {
            // Not reachable through Worker, but keep the API total.
            let key = StreamKey {
                worker: 0,
                context: 0,
            };
            return Err((host, key, anyhow!("no worker {worker}")));
        }
        let key = match host.new_stream(worker, s) {
            Ok(k) => k,
            Err(e) => return Err((host, StreamKey { worker, context: 0 }, e)),
        };
        let has_trailers = trailers.is_some();
        let n = chunks.len();
        let result = (|| -> Result<()> {
            if host.vm_failed(worker) {
                return host.failed_vm_stream(key, h, body, trailers);
            }
            let ctx = key.context as i64;
            if host
                .call(
                    worker,
                    key.context,
                    "proxy_on_context_create",
                    &[ctx, ROOT_CONTEXT_ID as i64],
                )
                .is_err()
            {
                host.trapped(key, "proxy_on_context_create");
                if host.fail_open {
                    return host.failed_vm_stream(key, h, body, trailers);
                }
                return Ok(());
            }
            let partial = stop_after.is_some();
            host.on_headers(key, Dir::Request, h, n == 0 && !has_trailers && !partial)?;
            for (i, c) in chunks.iter().enumerate() {
                if stop_after.is_some_and(|m| i >= m) {
                    break;
                }
                host.on_data(
                    key,
                    Dir::Request,
                    c,
                    i + 1 == n && !has_trailers && !partial,
                )?;
            }
            if let Some(t) = trailers.filter(|_| !partial) {
                host.on_trailers(key, Dir::Request, t)?;
            }
            host.settle();
            Ok(())
        })();
        match result {
            Ok(()) => Ok(Exchange::new(host, key)),
            Err(e) => Err((host, key, e)),
        }
    }
}

pub(crate) fn split_chunks(body: &[u8], n: usize) -> Vec<Vec<u8>> {
    let n = n.max(1).min(body.len().max(1));
    let size = body.len().div_ceil(n).max(1);
    body.chunks(size).map(|c| c.to_vec()).collect()
}

/// A request in flight or done. Dropping it without [`Exchange::finish`] finishes it (as Envoy
/// always ends a stream); use [`Exchange::detach`] to keep it open.
pub struct Exchange<'h> {
    host: &'h mut Host,
    key: StreamKey,
    open: bool,
}

impl<'h> Exchange<'h> {
    pub(crate) fn new(host: &'h mut Host, key: StreamKey) -> Self {
        let open = host.stream(key).is_some();
        Exchange { host, key, open }
    }

    pub fn key(&self) -> StreamKey {
        self.key
    }

    pub fn context_id(&self) -> u32 {
        self.key.context
    }

    pub fn worker(&self) -> usize {
        self.key.worker
    }

    /// The host, for clock, metrics, http calls... while this exchange is open.
    pub fn host(&mut self) -> &mut Host {
        self.host
    }

    fn s(&self) -> Option<&StreamState> {
        self.host.stream(self.key)
    }

    /// What reached the upstream: `None` if the request headers never got past the filter.
    pub fn upstream(&self) -> Option<Upstream> {
        let s = self.s()?;
        let headers = s.request.out_headers.clone()?;
        Some(Upstream {
            headers,
            body: s.request.out_body.clone(),
            trailers: s.request.out_trailers.clone(),
            complete: s.request.out_complete && !s.reset,
        })
    }

    /// The filter's local reply, if it sent one.
    pub fn local_reply(&self) -> Option<LocalReply> {
        self.s()?.local_reply.clone()
    }

    /// What the client has received so far (a local reply, or the filtered upstream response).
    pub fn client_response(&self) -> Option<ClientResponse> {
        let s = self.s()?;
        let headers = s.response.out_headers.clone()?;
        let status = headers
            .get(":status")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Some(ClientResponse {
            status,
            headers,
            body: s.response.out_body.clone(),
            trailers: s.response.out_trailers.clone(),
            complete: s.response.out_complete,
            local: s.local_reply.is_some(),
            chunks: s.chunk_log.clone(),
        })
    }

    /// The request headers the client sent (before the filter).
    pub fn original_headers(&self) -> Headers {
        self.s()
            .map(|s| s.original_request_headers.clone())
            .unwrap_or_default()
    }

    /// Header changes the filter made on the way upstream: (set or changed, removed).
    pub fn header_changes(&self) -> (Vec<(String, String)>, Vec<String>) {
        match self.upstream() {
            Some(u) => u.headers.diff(&self.original_headers()),
            None => (Vec::new(), Vec::new()),
        }
    }

    /// The request reached the upstream with headers and body unchanged.
    pub fn passthrough(&self) -> bool {
        let Some(s) = self.s() else { return false };
        match self.upstream() {
            Some(u) => {
                u.complete
                    && u.headers == s.original_request_headers
                    && u.body == s.original_request_body
            }
            None => false,
        }
    }

    /// The route cache was cleared: `clear_route_cache` was called, or (ABI 0.2.1) request
    /// headers were modified while held.
    pub fn route_cache_cleared(&self) -> bool {
        self.s().is_some_and(|s| {
            s.request_headers_modified
                || s.foreign_calls
                    .iter()
                    .any(|c| c.name == "clear_route_cache" && c.status == 0)
        })
    }

    /// How many times the filter called the `clear_route_cache` foreign function.
    pub fn clear_route_cache_calls(&self) -> usize {
        self.s().map_or(0, |s| {
            s.foreign_calls
                .iter()
                .filter(|c| c.name == "clear_route_cache")
                .count()
        })
    }

    pub fn foreign_calls(&self) -> Vec<ForeignCall> {
        self.s()
            .map(|s| s.foreign_calls.clone())
            .unwrap_or_default()
    }

    /// The trap that hit this stream, if any.
    pub fn trap(&self) -> Option<String> {
        self.s().and_then(|s| s.trap.clone())
    }

    /// The request is neither through to the upstream nor answered: the filter holds it and
    /// waits for something (an http call response, a tick...), or hangs.
    pub fn stalled(&self) -> bool {
        self.s().is_some_and(|s| {
            !s.request_stopped && !s.reset && s.local_reply.is_none() && !s.request.out_complete
        })
    }

    /// Header writes the filter made after the headers had already gone on.
    pub fn late_header_writes(&self) -> Vec<String> {
        self.s().map(|s| s.late_writes.clone()).unwrap_or_default()
    }

    /// `proxy_send_local_response` calls ignored because a reply was already sent.
    pub fn extra_local_replies(&self) -> usize {
        self.s().map_or(0, |s| s.extra_local_replies)
    }

    /// The filter closed (reset) the stream with `proxy_close_stream`.
    pub fn closed_by_filter(&self) -> bool {
        self.s().is_some_and(|s| !s.closed.is_empty())
    }

    /// The client sends one more request body chunk (after [`RequestBuilder::stop_after_chunks`]
    /// held the rest back): lets a test interleave the body callbacks of several open requests,
    /// on one worker or several. `end_of_stream` ends the request body.
    pub fn send_request_chunk(
        &mut self,
        data: impl AsRef<[u8]>,
        end_of_stream: bool,
    ) -> Result<()> {
        let key = self.key;
        let host = &mut *self.host;
        {
            let s = host
                .stream(key)
                .ok_or_else(|| anyhow!("the stream is finished"))?;
            if s.reset {
                bail!("the stream was reset");
            }
            if s.request.peer_done {
                bail!("the request body already ended");
            }
        }
        host.on_data(key, Dir::Request, data.as_ref(), end_of_stream)?;
        host.settle();
        Ok(())
    }

    /// Drives the upstream response: status, headers and body chunks as
    /// `(delay_ms_before_chunk, bytes)`. Returns what the client received.
    pub fn respond(
        &mut self,
        status: u32,
        headers: &[(&str, &str)],
        chunks: &[(u64, &[u8])],
    ) -> Result<ClientResponse> {
        let mut r = self.response(status);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        for (delay, c) in chunks {
            r = r.chunk_after(*delay, c);
        }
        r.send()
    }

    /// Describes the upstream response step by step.
    pub fn response(&mut self, status: u32) -> ResponseBuilder<'_, 'h> {
        ResponseBuilder {
            ex: self,
            status,
            headers: Vec::new(),
            chunks: Vec::new(),
            trailers: None,
            keep_open: false,
        }
    }

    /// Ends the stream normally: `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`.
    pub fn finish(mut self) -> Result<()> {
        self.open = false;
        self.host.finish_stream(self.key, false)
    }

    /// The client resets the stream mid-way: no (more) response; then log, done, delete.
    pub fn reset(mut self) -> Result<()> {
        self.open = false;
        self.host.finish_stream(self.key, true)
    }

    /// Keeps the stream open after this handle is dropped; reattach with [`Host::exchange`].
    pub fn detach(mut self) -> StreamKey {
        self.open = false;
        self.key
    }
}

impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.host.finish_stream(self.key, false);
        }
    }
}

/// Builds an upstream response for an exchange.
pub struct ResponseBuilder<'e, 'h> {
    ex: &'e mut Exchange<'h>,
    status: u32,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    chunks: Vec<(u64, Vec<u8>)>,
    trailers: Option<Headers>,
    keep_open: bool,
}

impl ResponseBuilder<'_, '_> {
    /// The upstream sends what was described but not the end of stream: the response stays
    /// open (use [`Exchange::reset`] for a client that goes away mid-stream).
    pub fn keep_open(mut self) -> Self {
        self.keep_open = true;
        self
    }

    pub fn header(self, k: &str, v: &str) -> Self {
        self.header_bytes(k, v)
    }

    /// A response header given as bytes (name lowercased ASCII-wise).
    pub fn header_bytes(mut self, k: impl AsRef<[u8]>, v: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((k.as_ref().to_ascii_lowercase(), v.as_ref().to_vec()));
        self
    }

    /// A body chunk arriving right after the previous one.
    pub fn chunk(self, data: impl AsRef<[u8]>) -> Self {
        self.chunk_after(0, data)
    }

    /// A body chunk arriving `delay_ms` after the previous event (the clock advances, ticks fire).
    pub fn chunk_after(mut self, delay_ms: u64, data: impl AsRef<[u8]>) -> Self {
        self.chunks.push((delay_ms, data.as_ref().to_vec()));
        self
    }

    /// A JSON body (one chunk) with `content-type: application/json` and `content-length`.
    pub fn json(mut self, v: &serde_json::Value) -> Self {
        let body = v.to_string().into_bytes();
        self = self.header("content-type", "application/json");
        self = self.header("content-length", &body.len().to_string());
        self.chunks.push((0, body));
        self
    }

    /// Server-sent events, one chunk per event (`data: <event>\n\n`), `delay_ms` apart, with
    /// `content-type: text/event-stream`. Strings are sent as-is; other JSON is serialized.
    pub fn sse(mut self, events: &[serde_json::Value], delay_ms: u64) -> Self {
        self = self.header("content-type", "text/event-stream");
        for e in events {
            let text = match e {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            self.chunks
                .push((delay_ms, format!("data: {text}\n\n").into_bytes()));
        }
        self
    }

    pub fn trailer(self, k: &str, v: &str) -> Self {
        self.trailer_bytes(k, v)
    }

    pub fn trailer_bytes(mut self, k: impl AsRef<[u8]>, v: impl AsRef<[u8]>) -> Self {
        self.trailers.get_or_insert_with(Headers::new).add(k, v);
        self
    }

    /// Runs the response through the filter; returns what the client received.
    pub fn send(self) -> Result<ClientResponse> {
        let ResponseBuilder {
            ex,
            status,
            headers,
            chunks,
            trailers,
            keep_open,
        } = self;
        let key = ex.key;
        let host = &mut *ex.host;
        {
            let s = host
                .stream(key)
                .ok_or_else(|| anyhow!("the stream is finished"))?;
            if s.local_reply.is_some() {
                bail!("the filter answered locally; there is no upstream response to drive");
            }
            if s.reset || s.request_stopped {
                bail!("the stream was reset");
            }
            if s.request.out_headers.is_none() {
                bail!("the request never reached the upstream (stalled in the filter)");
            }
            if s.response.started {
                bail!("a response was already driven for this exchange");
            }
        }
        let mut h = Headers::new();
        h.add(":status", status.to_string());
        for (k, v) in &headers {
            h.add(k, v);
        }
        host.set_access(key, |s| s.response_code = Some(status));
        let has_trailers = trailers.is_some();
        let n = chunks.len();
        host.on_headers(key, Dir::Response, h, n == 0 && !has_trailers && !keep_open)?;
        for (i, (delay, c)) in chunks.iter().enumerate() {
            host.advance_ms(*delay)?;
            let at_ms = host.now_ms();
            if host.stream(key).is_none_or(|s| s.reset) {
                break;
            }
            host.on_data(
                key,
                Dir::Response,
                c,
                i + 1 == n && !has_trailers && !keep_open,
            )?;
            let (paused, delivered) = host.stream(key).map_or((false, 0), |s| {
                let r = &s.response;
                (
                    r.headers_held || r.buffering || r.stop_all,
                    r.out_body.len(),
                )
            });
            host.set_access(key, |s| {
                s.chunk_log.push(ChunkOutcome {
                    at_ms,
                    len: c.len(),
                    paused,
                    delivered,
                })
            });
        }
        if let Some(t) = trailers.filter(|_| !keep_open) {
            host.on_trailers(key, Dir::Response, t)?;
        }
        host.settle();
        ex.client_response()
            .ok_or_else(|| anyhow!("no response headers reached the client (held by the filter)"))
            .or_else(|e| {
                // A held response is a valid outcome; report it as an empty, incomplete one.
                if ex.s().is_some() {
                    Ok(ClientResponse {
                        status: 0,
                        headers: Headers::new(),
                        body: Vec::new(),
                        trailers: None,
                        complete: false,
                        local: false,
                        chunks: ex.s().map(|s| s.chunk_log.clone()).unwrap_or_default(),
                    })
                } else {
                    Err(e)
                }
            })
    }
}

// ---------------------------------------------------------------------------------------------
// The filter-manager model (see the module docs).

impl Direction {
    fn forward_headers(&mut self, late: bool) {
        if self.headers_held || self.out_headers.is_none() {
            self.out_headers = Some(self.headers.clone());
        }
        self.headers_held = false;
        self.headers_access = if late {
            Access::Late
        } else {
            Access::Unavailable
        };
    }

    fn update_complete(&mut self) {
        self.out_complete = self.out_headers.is_some()
            && self.peer_done
            && !self.headers_held
            && !self.stop_all
            && !self.buffering
            && !self.trailers_held
            && self.trailers_pending.is_none()
            && self.body.is_empty();
    }
}

fn dir_mut(s: &mut StreamState, d: Dir) -> &mut Direction {
    match d {
        Dir::Request => &mut s.request,
        Dir::Response => &mut s.response,
    }
}

fn names(d: Dir) -> (&'static str, &'static str, &'static str) {
    match d {
        Dir::Request => (
            "proxy_on_request_headers",
            "proxy_on_request_body",
            "proxy_on_request_trailers",
        ),
        Dir::Response => (
            "proxy_on_response_headers",
            "proxy_on_response_body",
            "proxy_on_response_trailers",
        ),
    }
}

impl Host {
    /// Whether callbacks for this direction must not run any more.
    fn dir_stopped(&self, k: StreamKey, d: Dir) -> bool {
        match self.stream(k) {
            None => true,
            Some(s) => {
                s.reset
                    || s.trap.is_some() && !self.fail_open
                    || match d {
                        Dir::Request => s.request_stopped || s.local_reply_pending.is_some(),
                        Dir::Response => false,
                    }
            }
        }
    }

    /// After a callback: its return value no longer matters because a local reply is pending
    /// (Envoy sends it before the filter manager sees the status), or the stream is gone.
    fn result_ignored(&self, k: StreamKey, d: Dir) -> bool {
        self.stream(k).is_none_or(|s| {
            s.local_reply_pending.is_some() || s.reset || (d == Dir::Request && s.request_stopped)
        })
    }

    /// Records a trap on a stream and applies Envoy's failure policy: fail closed answers 503
    /// (`wasm_fail_stream`) without the filter; fail open lets the stream go on unfiltered.
    pub(crate) fn trapped(&mut self, k: StreamKey, function: &str) {
        let msg = self
            .worker_failed(k.worker)
            .unwrap_or_else(|| format!("{function} failed"));
        let fail_open = self.fail_open;
        self.set_access(k, |s| {
            if s.trap.is_none() {
                s.trap = Some(msg);
            }
            if !fail_open && s.local_reply.is_none() && s.response.out_headers.is_none() {
                s.request_stopped = true;
                let mut h = Headers::new();
                h.add(":status", "503");
                h.add("content-length", "0");
                s.local_reply = Some(LocalReply {
                    status: 503,
                    details: "wasm_fail_stream".into(),
                    headers: Headers::new(),
                    body: Vec::new(),
                    grpc_status: None,
                });
                s.response = Direction {
                    out_headers: Some(h),
                    out_complete: true,
                    started: true,
                    ..Default::default()
                };
            }
        });
    }

    /// A stream on a VM that already failed: Envoy creates no context for it.
    pub(crate) fn failed_vm_stream(
        &mut self,
        k: StreamKey,
        headers: Headers,
        body: Vec<u8>,
        trailers: Option<Headers>,
    ) -> Result<()> {
        if self.fail_open {
            self.set_access(k, |s| {
                s.request.out_headers = Some(headers);
                s.request.out_body = body;
                s.request.out_trailers = trailers;
                s.request.out_complete = true;
                s.request.peer_done = true;
            });
        } else {
            self.trapped(k, "failed VM");
        }
        Ok(())
    }

    /// Runs a stream callback; `None` if it trapped (failure policy already applied) or the
    /// export is missing (treated as Continue by the caller).
    fn stream_call(&mut self, k: StreamKey, name: &str, args: &[i64]) -> (bool, Option<i64>) {
        match self.call(k.worker, k.context, name, args) {
            Ok(v) => (true, v),
            Err(_) => {
                self.trapped(k, name);
                (false, None)
            }
        }
    }

    pub(crate) fn on_headers(
        &mut self,
        k: StreamKey,
        d: Dir,
        headers: Headers,
        eos: bool,
    ) -> Result<()> {
        if self.dir_stopped(k, d) {
            return Ok(());
        }
        let n = headers.len() as i64;
        self.set_access(k, |s| {
            let dir = dir_mut(s, d);
            dir.headers = headers;
            dir.headers_access = Access::Mutable;
            dir.started = true;
            dir.peer_done = eos;
        });
        let (ok, r) = self.stream_call(k, names(d).0, &[k.context as i64, n, eos as i64]);
        if !ok && !self.fail_open {
            return Ok(());
        }
        let allow = self.allow_on_headers_stop_iteration;
        let skip = self.result_ignored(k, d);
        if !skip {
            self.set_access(k, |s| {
                let dir = dir_mut(s, d);
                match r.unwrap_or(0) {
                    // Continue, ContinueAndDontEndStream
                    0 | 2 => dir.forward_headers(false),
                    // StopIteration
                    1 if allow => dir.headers_held = true,
                    // StopAllIterationAndBuffer / AndWatermark (and Pause without the option)
                    _ => {
                        dir.headers_held = true;
                        dir.stop_all = true;
                    }
                }
                dir.update_complete();
            });
        }
        self.settle();
        Ok(())
    }

    pub(crate) fn on_data(&mut self, k: StreamKey, d: Dir, chunk: &[u8], eos: bool) -> Result<()> {
        if self.dir_stopped(k, d) {
            return Ok(());
        }
        let mut stop_all = false;
        let mut len = 0;
        self.set_access(k, |s| {
            let dir = dir_mut(s, d);
            if eos {
                dir.peer_done = true;
            }
            if dir.stop_all {
                dir.pending.extend_from_slice(chunk);
                stop_all = true;
                return;
            }
            if dir.buffering {
                dir.body.extend_from_slice(chunk);
            } else {
                dir.body = chunk.to_vec();
            }
            dir.body_access = true;
            len = dir.body.len();
        });
        if stop_all {
            return Ok(());
        }
        let (ok, r) = self.stream_call(k, names(d).1, &[k.context as i64, len as i64, eos as i64]);
        if !ok && !self.fail_open {
            return Ok(());
        }
        let skip = self.result_ignored(k, d);
        if !skip {
            self.set_access(k, |s| {
                let dir = dir_mut(s, d);
                match r.unwrap_or(0) {
                    0 => forward_body(dir),
                    // StopIterationNoBuffer: the filter keeps nothing and nothing moves.
                    3 => dir.body.clear(),
                    _ => dir.buffering = true,
                }
                dir.body_access = dir.buffering;
                dir.update_complete();
            });
        }
        self.settle();
        Ok(())
    }

    pub(crate) fn on_trailers(&mut self, k: StreamKey, d: Dir, trailers: Headers) -> Result<()> {
        if self.dir_stopped(k, d) {
            return Ok(());
        }
        let mut stop_all = false;
        let n = trailers.len() as i64;
        self.set_access(k, |s| {
            let dir = dir_mut(s, d);
            dir.peer_done = true;
            if dir.stop_all {
                dir.trailers_pending = Some(trailers);
                stop_all = true;
                return;
            }
            dir.trailers = trailers;
            dir.trailers_access = Access::Mutable;
        });
        if stop_all {
            return Ok(());
        }
        let (ok, r) = self.stream_call(k, names(d).2, &[k.context as i64, n]);
        if !ok && !self.fail_open {
            return Ok(());
        }
        let skip = self.result_ignored(k, d);
        if !skip {
            self.set_access(k, |s| {
                let dir = dir_mut(s, d);
                if r.unwrap_or(0) == 0 {
                    forward_body(dir);
                    forward_trailers(dir);
                } else {
                    dir.trailers_held = true;
                }
                dir.update_complete();
            });
        }
        self.settle();
        Ok(())
    }

    /// `proxy_continue_stream` for one direction, applied after the call that asked for it.
    pub(crate) fn continue_dir(&mut self, k: StreamKey, d: Dir) -> Result<()> {
        if self.dir_stopped(k, d) {
            return Ok(());
        }
        let mut redeliver: Option<(Vec<u8>, bool, Option<Headers>)> = None;
        self.set_access(k, |s| {
            let dir = dir_mut(s, d);
            if dir.stop_all {
                // Envoy continues the headers, then calls this filter's data callback with what
                // it buffered (iteration restarts from the current filter).
                dir.stop_all = false;
                dir.forward_headers(true);
                let data = std::mem::take(&mut dir.pending);
                let trailers = dir.trailers_pending.take();
                let eos = dir.peer_done && trailers.is_none();
                redeliver = Some((data, eos, trailers));
            } else {
                if dir.headers_held {
                    dir.forward_headers(true);
                }
                forward_body(dir);
                if dir.trailers_held {
                    forward_trailers(dir);
                }
            }
            dir.update_complete();
        });
        if let Some((data, eos, trailers)) = redeliver {
            let peer_done = self.stream(k).is_some_and(|s| match d {
                Dir::Request => s.request.peer_done,
                Dir::Response => s.response.peer_done,
            });
            if !data.is_empty() || (eos && peer_done) {
                self.on_data(k, d, &data, eos)?;
            }
            if let Some(t) = trailers {
                self.on_trailers(k, d, t)?;
            }
        }
        Ok(())
    }

    /// Applies a pending `proxy_send_local_response`: the request stops, and the reply runs
    /// through this filter's response callbacks (unless a response is already being filtered,
    /// in which case it goes straight to the client).
    pub(crate) fn deliver_local_reply(&mut self, k: StreamKey) -> Result<()> {
        let Some(s) = self.stream_mut(k) else {
            return Ok(());
        };
        let Some(lr) = s.local_reply_pending.take() else {
            return Ok(());
        };
        s.request_stopped = true;
        s.local_reply = Some(lr.clone());
        s.response_code = Some(lr.status);
        let mut h = Headers::new();
        h.add(":status", lr.status.to_string());
        for (k2, v) in lr.headers.iter_bytes() {
            h.add(k2, v);
        }
        if !lr.body.is_empty() {
            if !h.contains("content-type") {
                h.add("content-type", "text/plain");
            }
            h.set("content-length", lr.body.len().to_string());
        }
        if s.response.started {
            if s.response.out_headers.is_some() {
                // Headers already went to the client: Envoy can only reset the stream.
                s.reset = true;
            } else {
                s.response = Direction {
                    out_headers: Some(h),
                    out_body: lr.body.clone(),
                    out_complete: true,
                    started: true,
                    peer_done: true,
                    ..Default::default()
                };
            }
            return Ok(());
        }
        let body = lr.body;
        self.on_headers(k, Dir::Response, h, body.is_empty())?;
        if !body.is_empty() {
            self.on_data(k, Dir::Response, &body, true)?;
        }
        Ok(())
    }

    /// Ends a stream: the access-log phase (`proxy_on_log`, maps read-only), then
    /// `proxy_on_done` and `proxy_on_delete`, and forgets it.
    pub(crate) fn finish_stream(&mut self, k: StreamKey, client_reset: bool) -> Result<()> {
        let Some(s) = self.stream_mut(k) else {
            return Ok(());
        };
        if client_reset {
            s.reset = true;
        }
        // What the access log sees: the request as forwarded (or as received), the response.
        if let Some(h) = s.request.out_headers.clone() {
            s.request.headers = h;
        }
        for dir in [&mut s.request, &mut s.response] {
            dir.headers_access = if dir.started {
                Access::ReadOnly
            } else {
                Access::Unavailable
            };
            dir.trailers_access = if dir.out_trailers.is_some() {
                Access::ReadOnly
            } else {
                Access::Unavailable
            };
            dir.body_access = false;
        }
        s.logged = true;
        let created = !self.vm_failed(k.worker);
        let mut result = Ok(());
        if created {
            let ctx = k.context as i64;
            for f in ["proxy_on_log", "proxy_on_done", "proxy_on_delete"] {
                if let Err(e) = self.call(k.worker, k.context, f, &[ctx]) {
                    result = Err(e);
                    break;
                }
                self.settle();
            }
        }
        self.remove_stream(k);
        result
    }
}

fn forward_body(dir: &mut Direction) {
    if dir.headers_held {
        dir.forward_headers(true);
    }
    let body = std::mem::take(&mut dir.body);
    dir.out_body.extend_from_slice(&body);
    dir.buffering = false;
    dir.body_access = false;
}

fn forward_trailers(dir: &mut Direction) {
    dir.out_trailers = Some(dir.trailers.clone());
    dir.trailers_held = false;
    dir.trailers_access = Access::Unavailable;
}
