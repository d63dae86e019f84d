//! One HTTP request/response through the filter in the simulated host: what came out on either
//! side of it (the filter-manager rules that decide it live in `host_engine::manager`).

use anyhow::{anyhow, bail, Result};
use host_engine::state::{Dir, StreamState};
use host_engine::{ChunkOutcome, ForeignCall, Headers, LocalReply, StreamKey};

use crate::host::Host;

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

/// A request in flight or done. Dropping it without [`Exchange::finish`] finishes it (as Envoy
/// always ends a stream); use [`Exchange::detach`] to keep it open.
pub struct Exchange<'h> {
    pub(crate) host: &'h mut Host,
    pub(crate) key: StreamKey,
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

    pub(crate) fn s(&self) -> Option<&StreamState> {
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
        host.core
            .on_data(key, Dir::Request, data.as_ref(), end_of_stream)?;
        host.core.settle();
        host.perform_grpc_calls();
        Ok(())
    }

    /// Ends the stream normally: `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`.
    pub fn finish(mut self) -> Result<()> {
        self.open = false;
        self.host.core.finish_stream(self.key, false)
    }

    /// Ends the stream normally and returns the properties under `prefix` the filter left
    /// (segments joined by `.`; values as text, bytes that are not UTF-8 replaced): what
    /// Envoy's tracer reads as filter state when the request's span ends.
    pub fn finish_published(
        mut self,
        prefix: &str,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        self.open = false;
        let props = self
            .host
            .core
            .finish_stream_published(self.key, false, prefix)?;
        Ok(props
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect())
    }

    /// The client resets the stream mid-way: no (more) response; then log, done, delete.
    pub fn reset(mut self) -> Result<()> {
        self.open = false;
        self.host.core.finish_stream(self.key, true)
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
            let _ = self.host.core.finish_stream(self.key, false);
        }
    }
}

impl Host {
    /// Re-attaches to a detached exchange.
    pub fn exchange(&mut self, key: StreamKey) -> Exchange<'_> {
        Exchange::new(self, key)
    }
}
