//! One worker thread: owns its VM (wasmtime store and instance) in a [`Core`], runs the
//! callbacks of the streams pinned to it, fires its timers, reconfigures, and recreates the VM
//! after a trap (fail-reload).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::grpc::{GrpcReply, GrpcTransportRef};
use super::inner::Counters;
use super::step::{self, Cmd, Op, Pinned, Step, StreamProps};
use crate::core::Core;
use crate::state::{lock, Dir, SharedRef, StreamState};
use crate::types::{grpc_code, GrpcAnswer, PropValue, StreamKey};
use crate::vm::VmFactory;

/// How long an idle worker sleeps before looking for queue notifications from other workers.
const IDLE_POLL: Duration = Duration::from_millis(50);

pub(super) struct Worker {
    pub w: usize,
    pub core: Core,
    /// The plugin configuration in force (a recreated VM is configured with it).
    pub config: Vec<u8>,
    pub vm_config: Vec<u8>,
    pub generation: u64,
    pub streams: HashMap<u64, Pinned>,
    pub counters: Arc<Counters>,
    /// After a failed VM recreation: when to try again.
    pub retry_at: Option<Instant>,
    /// Performs gRPC calls, answering on this worker's channel.
    pub grpc: Option<(GrpcTransportRef, Sender<Cmd>)>,
}

impl Worker {
    /// Creates and starts this worker's VM.
    pub fn start(
        w: usize,
        factory: VmFactory,
        shared: SharedRef,
        config: Vec<u8>,
        fail_open: bool,
        counters: Arc<Counters>,
    ) -> Result<Worker> {
        let vm = factory.instantiate(w, shared.clone(), config.clone(), Vec::new())?;
        let mut core = Core {
            vms: vec![vm],
            shared,
            factory,
            allow_on_headers_stop_iteration: true,
            fail_open,
        };
        core.start_worker(w)?;
        Ok(Worker {
            w,
            core,
            config,
            vm_config: Vec::new(),
            generation: 0,
            streams: HashMap::new(),
            counters,
            retry_at: None,
            grpc: None,
        })
    }

    pub fn run(mut self, rx: Receiver<Cmd>) {
        loop {
            match rx.recv_timeout(self.wait()) {
                Ok(Cmd::Shutdown) => break,
                Ok(cmd) => self.handle(cmd),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.fire_timers();
            self.core.settle();
            self.dispatch_grpc();
            self.release_waiting();
            self.reload_if_failed();
        }
        // Envoy ends every stream when a worker goes away.
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        for id in ids {
            self.finish(id, false);
        }
    }

    fn now_ms(&self) -> u64 {
        lock(&self.core.shared).elapsed_ms()
    }

    /// Until the next timer, at most [`IDLE_POLL`].
    fn wait(&self) -> Duration {
        match self.core.next_timer(u64::MAX) {
            Some((t, _, _)) => {
                Duration::from_millis(t.saturating_sub(self.now_ms())).min(IDLE_POLL)
            }
            None => IDLE_POLL,
        }
    }

    fn fire_timers(&mut self) {
        let now = self.now_ms();
        for _ in 0..1000 {
            let Some((t, w, timer)) = self.core.next_timer(now) else {
                return;
            };
            self.core.fire_timer(t, w, timer);
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Open { id, props, reply } => self.open(id, props, reply),
            Cmd::Op { id, op } => self.op(id, op),
            Cmd::Finish { id, ack } => {
                let reply = self.finish(id, ack);
                if let Some(r) = reply {
                    let _ = r.send(Step::Hold);
                }
            }
            Cmd::FinishPublished { id, prefix, reply } => {
                let _ = reply.send(self.finish_published(id, &prefix));
            }
            Cmd::Configure { config, reply } => {
                let _ = reply.send(self.configure(config));
            }
            Cmd::GrpcAnswer {
                generation,
                token,
                answer,
            } => {
                if generation == self.generation {
                    // Err: cancelled, timed out or its context ended meanwhile; or a trap
                    // (recorded, the VM is recreated).
                    let _ = self.core.answer_grpc_call(self.w, token, answer);
                }
            }
            Cmd::Shutdown => {}
        }
    }

    /// Hands the gRPC calls the guest made since the last time to the transport.
    fn dispatch_grpc(&mut self) {
        let calls = self.core.take_new_grpc_calls();
        for call in calls {
            match &self.grpc {
                Some((transport, sender)) => {
                    let reply = GrpcReply {
                        sender: sender.clone(),
                        generation: self.generation,
                        token: call.token,
                    };
                    transport.0.start(call, reply);
                }
                None => {
                    let answer = GrpcAnswer::err(grpc_code::UNAVAILABLE, "no gRPC transport");
                    let _ = self.core.answer_grpc_call(self.w, call.token, answer);
                }
            }
        }
    }

    /// Sends the step of every stream held on gRPC answers that are all in (or whose VM is
    /// gone, or that the filter answered locally meanwhile).
    fn release_waiting(&mut self) {
        let fail_open = self.core.fail_open;
        for p in self.streams.values_mut() {
            let Some((d, body_step)) = p.waiting else {
                continue;
            };
            if p.generation == self.generation {
                let decided = self
                    .core
                    .stream(p.key)
                    .is_none_or(|s| s.trap.is_some() || s.local_reply.is_some() || s.reset);
                if !decided && self.core.has_grpc_calls(self.w, p.key.context) {
                    continue;
                }
            } else {
                p.trap.get_or_insert_with(|| {
                    "the filter's VM was recreated after a trap while the stream waited".into()
                });
            }
            p.waiting = None;
            let step = step::after(&mut self.core, p, d, body_step, fail_open);
            let _ = p.reply.send(step);
        }
    }

    fn open(&mut self, id: u64, props: StreamProps, reply: Sender<Step>) {
        self.counters.streams.fetch_add(1, Ordering::Relaxed);
        self.reload_if_failed();
        let mut p = Pinned {
            key: StreamKey {
                worker: self.w,
                context: 0,
            },
            reply,
            generation: self.generation,
            headers_sent: [false; 2],
            complete_sent: [false; 2],
            replied: None,
            trap: None,
            waiting: None,
        };
        match self.core.new_stream(self.w, stream_state(props)) {
            Ok(key) => {
                p.key = key;
                if !self.core.create_context(key) {
                    p.trap = Some(
                        self.core
                            .stream(key)
                            .and_then(|s| s.trap.clone())
                            .unwrap_or_else(|| {
                                "the filter's VM is not running (recreating it failed)".to_string()
                            }),
                    );
                }
                self.core.settle();
            }
            Err(e) => p.trap = Some(format!("{e:#}")),
        }
        self.streams.insert(id, p);
        self.reload_if_failed();
    }

    fn op(&mut self, id: u64, op: Op) {
        let fail_open = self.core.fail_open;
        let Some(p) = self.streams.get_mut(&id) else {
            return;
        };
        let step = if p.generation != self.generation {
            p.trap.get_or_insert_with(|| {
                "the filter's VM was recreated after a trap in another stream".to_string()
            });
            step::after(&mut self.core, p, Dir::Request, false, fail_open)
        } else {
            let k = p.key;
            let (d, body_step) = run_op(&mut self.core, k, op);
            self.core.settle();
            let step = step::after(&mut self.core, p, d, body_step, fail_open);
            if step == Step::Hold && self.core.has_grpc_calls(self.w, k.context) {
                // Paused on a gRPC call: the step goes out when the answer is in.
                p.waiting = Some((d, body_step));
                return;
            }
            step
        };
        let _ = p.reply.send(step);
        self.reload_if_failed();
    }

    /// Ends a stream (log, done, delete); returns its reply channel when `ack` is asked.
    fn finish(&mut self, id: u64, ack: bool) -> Option<Sender<Step>> {
        let p = self.streams.remove(&id)?;
        if p.generation == self.generation && self.core.stream(p.key).is_some() {
            let _ = self.core.finish_stream(p.key, false);
        }
        self.reload_if_failed();
        ack.then_some(p.reply)
    }

    fn finish_published(&mut self, id: u64, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let Some(p) = self.streams.remove(&id) else {
            return Vec::new();
        };
        let mut published = Vec::new();
        if p.generation == self.generation && self.core.stream(p.key).is_some() {
            published = self
                .core
                .finish_stream_published(p.key, false, prefix)
                .unwrap_or_default();
        }
        self.reload_if_failed();
        published
    }

    /// `proxy_on_configure` with `config`; on failure the VM gets the old bytes back (the
    /// filter keeps its old configuration when `on_configure` returns false).
    fn configure(&mut self, config: Vec<u8>) -> Result<(), String> {
        self.reload_if_failed();
        match self.core.reconfigure_worker(self.w, &config) {
            Ok(()) => {
                self.config = config;
                Ok(())
            }
            Err(e) => {
                if let Some(vm) = self.core.vm_mut(self.w) {
                    vm.store.data_mut().plugin_config = self.config.clone();
                }
                self.reload_if_failed();
                Err(format!("{e:#}"))
            }
        }
    }

    /// Fail-reload: a VM that trapped is replaced by a new instance (vm start and configure
    /// again with the configuration in force). Streams of the old VM are lost. A VM that
    /// cannot be recreated is retried at most once a second.
    fn reload_if_failed(&mut self) {
        if !self.core.vm_failed(self.w) {
            return;
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        if let Some(old) = self.core.vms.pop() {
            if old.failed.is_some() {
                self.counters.traps.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.generation += 1;
        let vm = self.core.factory.instantiate(
            self.w,
            self.core.shared.clone(),
            self.config.clone(),
            self.vm_config.clone(),
        );
        let started = vm.and_then(|vm| {
            self.core.vms = vec![vm];
            self.core.start_worker(self.w)
        });
        match started {
            Ok(()) => {
                self.retry_at = None;
                self.counters.vm_reloads.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "worker {}: the filter's VM was recreated after a trap",
                    self.w
                );
            }
            Err(e) => {
                self.core.vms.clear();
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                log::error!(
                    "worker {}: recreating the filter's VM failed: {e:#}",
                    self.w
                );
            }
        }
    }
}

/// Feeds one callback; returns the direction and whether a body chunk was fed.
fn run_op(core: &mut Core, k: StreamKey, op: Op) -> (Dir, bool) {
    let r = match op {
        Op::RequestHeaders(h, eos) => {
            core.set_access(k, |s| s.original_request_headers = h.clone());
            (
                Dir::Request,
                false,
                core.on_headers(k, Dir::Request, h, eos),
            )
        }
        Op::RequestBody(b, eos) => (Dir::Request, true, core.on_data(k, Dir::Request, &b, eos)),
        Op::RequestTrailers(t) => (Dir::Request, false, core.on_trailers(k, Dir::Request, t)),
        Op::ResponseHeaders(h, eos) => {
            let code = h.get(":status").and_then(|v| v.parse().ok());
            core.set_access(k, |s| s.response_code = code);
            (
                Dir::Response,
                false,
                core.on_headers(k, Dir::Response, h, eos),
            )
        }
        Op::ResponseBody(b, eos) => (Dir::Response, true, core.on_data(k, Dir::Response, &b, eos)),
        Op::ResponseTrailers(t) => (Dir::Response, false, core.on_trailers(k, Dir::Response, t)),
    };
    let (d, body_step, result) = r;
    if let Err(e) = result {
        core.set_access(k, |s| {
            s.trap.get_or_insert_with(|| format!("{e:#}"));
        });
    }
    (d, body_step)
}

fn stream_state(props: StreamProps) -> StreamState {
    let mut s = StreamState::default();
    let mut set = |path: &str, v: PropValue| {
        s.properties.insert(path.replace('.', "\0").into_bytes(), v);
    };
    for (name, addr) in [
        ("source", props.source_address),
        ("destination", props.destination_address),
    ] {
        if let Some(a) = addr {
            let port = a.rsplit_once(':').and_then(|(_, p)| p.parse::<i64>().ok());
            set(&format!("{name}.address"), PropValue::Str(a));
            if let Some(p) = port {
                set(&format!("{name}.port"), PropValue::Int(p));
            }
        }
    }
    for (segments, value) in props.properties {
        s.properties
            .insert(segments.join("\0").into_bytes(), PropValue::Bytes(value));
    }
    s
}
