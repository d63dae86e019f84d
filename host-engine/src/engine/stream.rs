//! A stream pinned to one worker's VM: each call runs the callback on that worker's thread and
//! waits for its [`Step`].

use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;

use super::inner::Inner;
use super::step::{trapped, Cmd, HeaderPairs, Op, Step, StreamProps};
use crate::types::Headers;

/// One HTTP stream through the filter. `Send`; dropping it without [`Stream::finish`] ends it
/// the same way (without waiting).
pub struct Stream {
    inner: Arc<Inner>,
    worker: usize,
    id: u64,
    replies: Receiver<Step>,
    finished: bool,
}

fn headers(pairs: HeaderPairs) -> Headers {
    Headers::from_pairs(&pairs)
}

impl Stream {
    pub(super) fn open(inner: Arc<Inner>, worker: usize, id: u64, props: StreamProps) -> Stream {
        let (tx, rx) = mpsc::channel();
        if let Some(s) = inner.senders.get(worker) {
            let _ = s.send(Cmd::Open {
                id,
                props,
                reply: tx,
            });
        }
        Stream {
            inner,
            worker,
            id,
            replies: rx,
            finished: false,
        }
    }

    /// The worker (VM) this stream is pinned to.
    pub fn worker(&self) -> usize {
        self.worker
    }

    fn call(&mut self, op: Op) -> Step {
        let sent = match self.inner.senders.get(self.worker) {
            Some(s) => s.send(Cmd::Op { id: self.id, op }).is_ok(),
            None => false,
        };
        if !sent {
            return trapped(self.inner.fail_open, "the worker thread is gone".into());
        }
        match self.replies.recv() {
            Ok(step) => step,
            Err(_) => trapped(self.inner.fail_open, "the worker thread is gone".into()),
        }
    }

    pub fn request_headers(&mut self, h: HeaderPairs, end_of_stream: bool) -> Step {
        self.call(Op::RequestHeaders(headers(h), end_of_stream))
    }

    pub fn request_body(&mut self, chunk: Vec<u8>, end_of_stream: bool) -> Step {
        self.call(Op::RequestBody(chunk, end_of_stream))
    }

    pub fn request_trailers(&mut self, trailers: HeaderPairs) -> Step {
        self.call(Op::RequestTrailers(headers(trailers)))
    }

    pub fn response_headers(&mut self, h: HeaderPairs, end_of_stream: bool) -> Step {
        self.call(Op::ResponseHeaders(headers(h), end_of_stream))
    }

    pub fn response_body(&mut self, chunk: Vec<u8>, end_of_stream: bool) -> Step {
        self.call(Op::ResponseBody(chunk, end_of_stream))
    }

    pub fn response_trailers(&mut self, trailers: HeaderPairs) -> Step {
        self.call(Op::ResponseTrailers(headers(trailers)))
    }

    /// Ends the stream (client cancel or normal end): `proxy_on_log`, `proxy_on_done`,
    /// `proxy_on_delete`. Returns once they ran.
    pub fn finish(mut self) {
        self.finished = true;
        if let Some(s) = self.inner.senders.get(self.worker) {
            if s.send(Cmd::Finish {
                id: self.id,
                ack: true,
            })
            .is_ok()
            {
                let _ = self.replies.recv();
            }
        }
    }
}

impl Stream {
    /// [`Stream::finish`], returning the stream's properties whose path starts with `prefix`
    /// as the filter left them (segments joined by `.`): what it published for the trace.
    /// Empty when the stream's VM trapped.
    pub fn finish_published(mut self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        self.finished = true;
        let (tx, rx) = mpsc::channel();
        let Some(s) = self.inner.senders.get(self.worker) else {
            return Vec::new();
        };
        let cmd = Cmd::FinishPublished {
            id: self.id,
            prefix: prefix.to_string(),
            reply: tx,
        };
        if s.send(cmd).is_err() {
            return Vec::new();
        }
        rx.recv().unwrap_or_default()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !self.finished {
            if let Some(s) = self.inner.senders.get(self.worker) {
                let _ = s.send(Cmd::Finish {
                    id: self.id,
                    ack: false,
                });
            }
        }
    }
}
