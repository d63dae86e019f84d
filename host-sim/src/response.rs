//! [`ResponseBuilder`]: drives the upstream response of an [`Exchange`] through the filter
//! (headers, body chunks with delays on the simulated clock, trailers).

use anyhow::{anyhow, bail, Result};
use host_engine::state::Dir;
use host_engine::{ChunkOutcome, Headers};

use crate::exchange::{ClientResponse, Exchange};

impl<'h> Exchange<'h> {
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
        host.core
            .set_access(key, |s| s.response_code = Some(status));
        let has_trailers = trailers.is_some();
        let n = chunks.len();
        host.core
            .on_headers(key, Dir::Response, h, n == 0 && !has_trailers && !keep_open)?;
        host.perform_grpc_calls();
        for (i, (delay, c)) in chunks.iter().enumerate() {
            host.advance_ms(*delay)?;
            let at_ms = host.now_ms();
            if host.stream(key).is_none_or(|s| s.reset) {
                break;
            }
            host.core.on_data(
                key,
                Dir::Response,
                c,
                i + 1 == n && !has_trailers && !keep_open,
            )?;
            host.perform_grpc_calls();
            let (paused, delivered) = host.stream(key).map_or((false, 0), |s| {
                let r = &s.response;
                (
                    r.headers_held || r.buffering || r.stop_all,
                    r.out_body.len(),
                )
            });
            host.core.set_access(key, |s| {
                s.chunk_log.push(ChunkOutcome {
                    at_ms,
                    len: c.len(),
                    paused,
                    delivered,
                })
            });
        }
        if let Some(t) = trailers.filter(|_| !keep_open) {
            host.core.on_trailers(key, Dir::Response, t)?;
        }
        host.core.settle();
        host.perform_grpc_calls();
        client_view(ex)
    }
}

/// What the client received; a response the filter still holds is a valid outcome, reported as
/// an empty, incomplete one.
fn client_view(ex: &Exchange<'_>) -> Result<ClientResponse> {
    if let Some(r) = ex.client_response() {
        return Ok(r);
    }
    match ex.s() {
        Some(s) => Ok(ClientResponse {
            status: 0,
            headers: Headers::new(),
            body: Vec::new(),
            trailers: None,
            complete: false,
            local: false,
            chunks: s.chunk_log.clone(),
        }),
        None => Err(anyhow!(
            "no response headers reached the client (held by the filter)"
        )),
    }
}
