//! Envoy's filter manager around this one filter: what a callback's return value does to the
//! stream.
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
//!   what Envoy does; host-sim's exchange reports `stalled()`).
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

use anyhow::Result;

use crate::abi::ROOT_CONTEXT_ID;
use crate::core::Core;
use crate::state::{Access, Dir, Direction, StreamState};
use crate::types::{Headers, LocalReply, StreamKey};

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

impl Core {
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
    pub fn trapped(&mut self, k: StreamKey, function: &str) {
        let msg = self
            .vm(k.worker)
            .and_then(|vm| vm.failed.clone())
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
    pub fn failed_vm_stream(
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

    /// Creates the stream's context in the guest (`proxy_on_context_create`), as Envoy does when
    /// a stream starts. False when the guest cannot filter it: the VM failed earlier (no
    /// context is created) or trapped now (the failure policy is applied to the stream).
    pub fn create_context(&mut self, k: StreamKey) -> bool {
        if self.vm_failed(k.worker) {
            return false;
        }
        let args = [k.context as i64, ROOT_CONTEXT_ID as i64];
        if self
            .call(k.worker, k.context, "proxy_on_context_create", &args)
            .is_err()
        {
            self.trapped(k, "proxy_on_context_create");
            return false;
        }
        true
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

    pub fn on_headers(&mut self, k: StreamKey, d: Dir, headers: Headers, eos: bool) -> Result<()> {
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

    pub fn on_data(&mut self, k: StreamKey, d: Dir, chunk: &[u8], eos: bool) -> Result<()> {
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

    pub fn on_trailers(&mut self, k: StreamKey, d: Dir, trailers: Headers) -> Result<()> {
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
    pub fn continue_dir(&mut self, k: StreamKey, d: Dir) -> Result<()> {
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
    pub fn deliver_local_reply(&mut self, k: StreamKey) -> Result<()> {
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
    pub fn finish_stream(&mut self, k: StreamKey, client_reset: bool) -> Result<()> {
        let result = self.end_stream(k, client_reset);
        self.remove_stream(k);
        result
    }

    /// [`Self::finish_stream`], returning the stream's properties whose path starts with
    /// `prefix` as they are once the module's end callbacks ran (what a proxy's tracer reads
    /// when the request's span ends): path segments joined by `.`, value bytes.
    pub fn finish_stream_published(
        &mut self,
        k: StreamKey,
        client_reset: bool,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let result = self.end_stream(k, client_reset);
        let mut published: Vec<(String, Vec<u8>)> = self
            .stream(k)
            .map(|s| {
                s.properties
                    .iter()
                    .filter(|(path, _)| path.starts_with(prefix.as_bytes()))
                    .map(|(path, v)| (String::from_utf8_lossy(path).replace('\0', "."), v.encode()))
                    .collect()
            })
            .unwrap_or_default();
        published.sort();
        self.remove_stream(k);
        result.map(|()| published)
    }

    fn end_stream(&mut self, k: StreamKey, client_reset: bool) -> Result<()> {
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
