//! [`RequestBuilder`]: describes a request and runs it through the filter the way Envoy's
//! filter manager would (headers, body chunks, trailers).

use anyhow::{anyhow, bail, Result};
use host_engine::state::{Dir, StreamState};
use host_engine::{Headers, PropValue, StreamKey};

use crate::exchange::Exchange;
use crate::host::{prop_path, Host, Worker};

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
                if let Some(s) = host.core.stream_mut(key) {
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
        add_properties(&mut s, &source, &destination, body.len(), properties);
        if host.worker_count() <= worker {
            // Not reachable through Worker, but keep the API total.
            let key = StreamKey {
                worker: 0,
                context: 0,
            };
            return Err((host, key, anyhow!("no worker {worker}")));
        }
        let key = match host.core.new_stream(worker, s) {
            Ok(k) => k,
            Err(e) => return Err((host, StreamKey { worker, context: 0 }, e)),
        };
        let has_trailers = trailers.is_some();
        let n = chunks.len();
        let result = (|| -> Result<()> {
            if !host.core.create_context(key) {
                // A VM that failed earlier creates no context; one that trapped now already
                // applied the failure policy. Fail open passes the request through unfiltered.
                return host.core.failed_vm_stream(key, h, body, trailers);
            }
            let partial = stop_after.is_some();
            host.core
                .on_headers(key, Dir::Request, h, n == 0 && !has_trailers && !partial)?;
            host.perform_grpc_calls();
            for (i, c) in chunks.iter().enumerate() {
                if stop_after.is_some_and(|m| i >= m) {
                    break;
                }
                host.core.on_data(
                    key,
                    Dir::Request,
                    c,
                    i + 1 == n && !has_trailers && !partial,
                )?;
                host.perform_grpc_calls();
            }
            if let Some(t) = trailers.filter(|_| !partial) {
                host.core.on_trailers(key, Dir::Request, t)?;
            }
            host.core.settle();
            host.perform_grpc_calls();
            Ok(())
        })();
        match result {
            Ok(()) => Ok(Exchange::new(host, key)),
            Err(e) => Err((host, key, e)),
        }
    }
}

/// The properties Envoy answers for a request: peer and listener addresses, protocol, mTLS,
/// size, then the test's own.
fn add_properties(
    s: &mut StreamState,
    source: &str,
    destination: &str,
    body_len: usize,
    properties: Vec<(Vec<u8>, PropValue)>,
) {
    let (sa, sp) = split_addr(source);
    let (da, dp) = split_addr(destination);
    let p = &mut s.properties;
    p.insert(prop_path("source.address"), sa.into());
    p.insert(prop_path("source.port"), sp.into());
    p.insert(prop_path("destination.address"), da.into());
    p.insert(prop_path("destination.port"), dp.into());
    p.insert(prop_path("request.protocol"), "HTTP/1.1".into());
    p.insert(prop_path("connection.mtls"), false.into());
    p.insert(prop_path("request.total_size"), (body_len as i64).into());
    for (k, v) in properties {
        p.insert(k, v);
    }
}

pub(crate) fn split_chunks(body: &[u8], n: usize) -> Vec<Vec<u8>> {
    let n = n.max(1).min(body.len().max(1));
    let size = body.len().div_ceil(n).max(1);
    body.chunks(size).map(|c| c.to_vec()).collect()
}

impl<'h> Worker<'h> {
    /// Starts describing a request to send through this worker's filter.
    pub fn request(self) -> RequestBuilder<'h> {
        RequestBuilder::new(self.host, self.index)
    }
}
