//! A set of VMs of one module sharing one [`Shared`]: starting and configuring them, calling
//! the guest (a trap fails the VM and is recorded), the work Envoy does after a guest call
//! (local replies, continuations, queue notifications, gRPC stream closes), timers, http calls
//! and gRPC calls.
//!
//! The simulated host (host-sim) keeps every worker's VM in one `Core`, on one thread; the
//! production [`crate::Engine`] gives each worker thread a `Core` holding that worker's VM only.
//! Both share state through [`Shared`] the same way.

use anyhow::{anyhow, bail, Result};

use crate::abi::{LogLevel, ROOT_CONTEXT_ID};
use crate::hostcalls;
use crate::state::{lock, CallResponse, Dir, SharedRef, StreamState};
use crate::types::{grpc_code, GrpcAnswer, GrpcCallInfo, Headers, LogLine, StreamKey, TrapRecord};
use crate::vm::{describe, Vm, VmFactory};

/// The error when `proxy_on_configure` (or `proxy_on_vm_start`) returns false: the worker and
/// the guest's log lines.
#[derive(Debug, Clone)]
pub struct ConfigureError {
    pub worker: usize,
    pub phase: &'static str,
    pub logs: Vec<String>,
}

impl std::fmt::Display for ConfigureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} returned false on worker {}; guest logs: [{}]",
            self.phase,
            self.worker,
            self.logs.join(" | ")
        )
    }
}

impl std::error::Error for ConfigureError {}

/// A timer that is due: a tick of a worker's root context, an http call's or a gRPC call's
/// timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    Tick,
    HttpTimeout(u32),
    GrpcTimeout(u32),
}

/// Work the host owes the guest after a call returns (Envoy runs these after the VM call).
enum Work {
    GrpcClose(usize, u32, u32),
    QueueReady(usize, u32, u32),
    LocalReply(StreamKey),
    Continue(StreamKey, Dir),
}

/// VMs of one module and what they share.
pub struct Core {
    pub vms: Vec<Vm>,
    pub shared: SharedRef,
    pub factory: VmFactory,
    /// Envoy's `allow_on_headers_stop_iteration`.
    pub allow_on_headers_stop_iteration: bool,
    /// Envoy's `fail_open`: after a VM failure, streams pass through instead of getting 503.
    pub fail_open: bool,
}

impl Core {
    /// The VM of worker `w`.
    pub fn vm(&self, w: usize) -> Option<&Vm> {
        match self.vms.get(w) {
            Some(vm) if vm.worker == w => Some(vm),
            _ => self.vms.iter().find(|vm| vm.worker == w),
        }
    }

    pub fn vm_mut(&mut self, w: usize) -> Option<&mut Vm> {
        let at = match self.vms.get(w) {
            Some(vm) if vm.worker == w => Some(w),
            _ => self.vms.iter().position(|vm| vm.worker == w),
        };
        at.and_then(move |i| self.vms.get_mut(i))
    }

    fn has_worker(&self, w: usize) -> bool {
        self.vm(w).is_some()
    }

    /// Creates the root context of worker `w`, then `proxy_on_vm_start` and
    /// `proxy_on_configure`. A false return is a [`ConfigureError`] with the guest's log lines.
    pub fn start_worker(&mut self, w: usize) -> Result<()> {
        let (vm_len, plugin_len) = {
            let vm = self.vm(w).ok_or_else(|| anyhow!("no worker {w}"))?;
            let d = vm.store.data();
            (d.vm_config.len() as i64, d.plugin_config.len() as i64)
        };
        let root = ROOT_CONTEXT_ID as i64;
        self.call(w, ROOT_CONTEXT_ID, "proxy_on_context_create", &[root, 0])?;
        for (phase, size) in [
            ("proxy_on_vm_start", vm_len),
            ("proxy_on_configure", plugin_len),
        ] {
            self.configure_phase(w, phase, size)?;
        }
        if let Some(vm) = self.vm_mut(w) {
            vm.started = true;
        }
        Ok(())
    }

    /// Runs one start-up phase on the root context of `w`; false is a [`ConfigureError`].
    fn configure_phase(&mut self, w: usize, phase: &'static str, size: i64) -> Result<()> {
        let mark = lock(&self.shared).log_mark();
        let root = ROOT_CONTEXT_ID as i64;
        let r = self.call(w, ROOT_CONTEXT_ID, phase, &[root, size])?;
        self.settle();
        if r == Some(0) {
            let logs = lock(&self.shared)
                .logs_since(mark)
                .iter()
                .filter(|l| l.worker == w)
                .map(|l| l.message.clone())
                .collect();
            return Err(ConfigureError {
                worker: w,
                phase,
                logs,
            }
            .into());
        }
        Ok(())
    }

    /// `proxy_on_configure` again on worker `w` with `config`, as Envoy does when a listener's
    /// `PluginConfig` changes without a VM change (no new VM, shared data and streams stay).
    /// Skips a worker that is not started or failed. The VM keeps the new bytes either way.
    pub fn reconfigure_worker(&mut self, w: usize, config: &[u8]) -> Result<()> {
        let Some(vm) = self.vm_mut(w) else {
            bail!("no worker {w}");
        };
        if !vm.started || vm.failed.is_some() {
            return Ok(());
        }
        vm.store.data_mut().plugin_config = config.to_vec();
        self.configure_phase(w, "proxy_on_configure", config.len() as i64)
    }

    /// Calls a guest export on worker `w` with `ctx` as the current context. A trap marks the VM
    /// failed, is recorded in `Shared::traps`, and comes back as the error.
    pub fn call(&mut self, w: usize, ctx: u32, name: &str, args: &[i64]) -> Result<Option<i64>> {
        let vm = self.vm_mut(w).ok_or_else(|| anyhow!("no worker {w}"))?;
        if let Some(f) = &vm.failed {
            bail!("worker {w} failed earlier: {f}");
        }
        {
            let d = vm.store.data_mut();
            d.current_context = ctx;
            d.effective_context = None;
        }
        let r = vm.raw_call(name, args);
        let fuel = vm.last_fuel;
        let d = vm.store.data_mut();
        d.effective_context = None;
        if let (Some(meter), Ok(_)) = (d.meter.as_mut(), &r) {
            meter.finish(name, ctx, fuel);
        }
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                let message = describe(&e);
                vm.failed = Some(format!("{name}: {message}"));
                let mut s = lock(&self.shared);
                s.traps.push(TrapRecord {
                    worker: w,
                    function: name.to_string(),
                    message: message.clone(),
                });
                s.log(LogLine {
                    worker: w,
                    level: LogLevel::Critical,
                    source: "host",
                    context_id: ctx,
                    message: format!("{name} trapped: {message}"),
                });
                Err(anyhow!("worker {w}: {name} trapped: {message}"))
            }
        }
    }

    /// Runs what the guest asked for during earlier calls: gRPC closes, queue notifications,
    /// local replies and stream continuations. Traps here are recorded, not returned.
    pub fn settle(&mut self) {
        for _ in 0..100_000 {
            let Some(work) = self.next_work() else {
                return;
            };
            let _ = self.do_work(work);
        }
    }

    fn next_work(&mut self) -> Option<Work> {
        for vm in self.vms.iter_mut() {
            let w = vm.worker;
            if vm.failed.is_some() {
                vm.store.data_mut().grpc_to_close.clear();
                continue;
            }
            let d = vm.store.data_mut();
            if !d.grpc_to_close.is_empty() {
                let (ctx, token) = d.grpc_to_close.remove(0);
                return Some(Work::GrpcClose(w, ctx, token));
            }
        }
        {
            let mut s = lock(&self.shared);
            // Notifications for workers of another Core wait for that Core.
            let mine = s
                .queue_ready
                .iter()
                .position(|(w, _, _)| self.has_worker(*w));
            if let Some((w, ctx, token)) = mine.and_then(|i| s.queue_ready.remove(i)) {
                return Some(Work::QueueReady(w, ctx, token));
            }
        }
        for vm in self.vms.iter_mut() {
            let w = vm.worker;
            for (ctx, s) in vm.store.data_mut().streams.iter_mut() {
                let key = StreamKey {
                    worker: w,
                    context: *ctx,
                };
                if s.local_reply_pending.is_some() {
                    return Some(Work::LocalReply(key));
                }
                if s.request.continue_requested {
                    s.request.continue_requested = false;
                    return Some(Work::Continue(key, Dir::Request));
                }
                if s.response.continue_requested {
                    s.response.continue_requested = false;
                    return Some(Work::Continue(key, Dir::Response));
                }
            }
        }
        None
    }

    fn do_work(&mut self, work: Work) -> Result<()> {
        match work {
            Work::GrpcClose(w, ctx, token) => {
                let message = "gRPC streams are not implemented by this host";
                self.grpc_close(w, ctx, token, grpc_code::UNIMPLEMENTED, message)
            }
            Work::QueueReady(w, ctx, token) => {
                if self.vm(w).is_some_and(|vm| vm.failed.is_none()) {
                    self.call(w, ctx, "proxy_on_queue_ready", &[ctx as i64, token as i64])?;
                }
                Ok(())
            }
            Work::LocalReply(key) => self.deliver_local_reply(key),
            Work::Continue(key, dir) => self.continue_dir(key, dir),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Timers and http calls

    /// The earliest timer due at or before `target_ms` (ms since start), over every started VM.
    pub fn next_timer(&self, target_ms: u64) -> Option<(u64, usize, Timer)> {
        let mut next: Option<(u64, usize, Timer)> = None;
        for vm in &self.vms {
            if vm.failed.is_some() || !vm.started {
                continue;
            }
            let d = vm.store.data();
            if let Some(t) = d.next_tick_ms {
                if t <= target_ms && next.is_none_or(|n| t < n.0) {
                    next = Some((t, vm.worker, Timer::Tick));
                }
            }
            for (token, call) in &d.http_calls {
                if let Some(t) = call.deadline_ms {
                    if t <= target_ms && next.is_none_or(|n| t < n.0) {
                        next = Some((t, vm.worker, Timer::HttpTimeout(*token)));
                    }
                }
            }
            for (token, call) in &d.grpc_calls {
                if let Some(t) = call.deadline_ms {
                    if t <= target_ms && next.is_none_or(|n| t < n.0) {
                        next = Some((t, vm.worker, Timer::GrpcTimeout(*token)));
                    }
                }
            }
        }
        next
    }

    /// Fires a timer that [`Core::next_timer`] returned as due at `t`.
    pub fn fire_timer(&mut self, t: u64, w: usize, timer: Timer) {
        match timer {
            Timer::Tick => {
                if let Some(vm) = self.vm_mut(w) {
                    let d = vm.store.data_mut();
                    d.next_tick_ms = Some(t + d.tick_period_ms.max(1) as u64);
                }
                let root = ROOT_CONTEXT_ID;
                let _ = self.call(w, root, "proxy_on_tick", &[root as i64]);
            }
            Timer::HttpTimeout(token) => {
                let _ = self.answer_http_call(w, token, None);
            }
            Timer::GrpcTimeout(token) => {
                let timeout = GrpcAnswer::err(grpc_code::DEADLINE_EXCEEDED, "deadline exceeded");
                let _ = self.answer_grpc_call(w, token, timeout);
            }
        }
        self.settle();
    }

    /// Answers an http call (`None`: reset or timeout): `proxy_on_http_call_response` runs on
    /// the context that made it.
    pub fn answer_http_call(
        &mut self,
        w: usize,
        token: u32,
        resp: Option<CallResponse>,
    ) -> Result<()> {
        let vm = self.vm_mut(w).ok_or_else(|| anyhow!("no worker {w}"))?;
        let call = vm
            .store
            .data_mut()
            .http_calls
            .remove(&token)
            .ok_or_else(|| anyhow!("worker {w} has no pending http call {token}"))?;
        let (nh, nb, nt) = match &resp {
            Some(r) => (r.headers.len(), r.body.len(), r.trailers.len()),
            None => (0, 0, 0),
        };
        hostcalls::set_call_response(vm.store.data_mut(), resp);
        let ctx = call.info.context_id;
        let args = [ctx as i64, token as i64, nh as i64, nb as i64, nt as i64];
        let r = self.call(w, ctx, "proxy_on_http_call_response", &args);
        if let Some(vm) = self.vm_mut(w) {
            hostcalls::set_call_response(vm.store.data_mut(), None);
        }
        self.settle();
        r.map(|_| ())
    }

    /// A response for [`Core::answer_http_call`].
    pub fn call_response(status: u32, headers: &[(&str, &str)], body: &[u8]) -> CallResponse {
        let mut h = Headers::new();
        h.add(":status", status.to_string());
        for (k, v) in headers {
            h.add(k, v);
        }
        CallResponse {
            headers: h,
            body: body.to_vec(),
            trailers: Headers::new(),
        }
    }

    // -----------------------------------------------------------------------------------------
    // gRPC calls

    /// Outstanding `proxy_grpc_call`s on every VM of this Core (cancelled ones are gone).
    pub fn pending_grpc_calls(&self) -> Vec<GrpcCallInfo> {
        self.vms
            .iter()
            .flat_map(|vm| vm.store.data().grpc_calls.values().map(|c| c.info.clone()))
            .collect()
    }

    /// Outstanding calls not handed to a transport yet; marks them handed over. A host that
    /// performs calls for real takes them after every guest call and answers each with
    /// [`Core::answer_grpc_call`] (which ignores calls cancelled meanwhile).
    pub fn take_new_grpc_calls(&mut self) -> Vec<GrpcCallInfo> {
        let mut out = Vec::new();
        for vm in self.vms.iter_mut() {
            if vm.failed.is_some() {
                continue;
            }
            for call in vm.store.data_mut().grpc_calls.values_mut() {
                if !call.dispatched {
                    call.dispatched = true;
                    out.push(call.info.clone());
                }
            }
        }
        out
    }

    /// Whether context `ctx` of worker `w` has gRPC calls outstanding.
    pub fn has_grpc_calls(&self, w: usize, ctx: u32) -> bool {
        self.vm(w).is_some_and(|vm| {
            vm.store
                .data()
                .grpc_calls
                .values()
                .any(|c| c.info.context_id == ctx)
        })
    }

    /// Delivers the answer of gRPC call `token` of worker `w` to the context that made it, as
    /// Envoy does for a unary call: `Ok` runs `proxy_on_grpc_receive(ctx, token, len)` with the
    /// message in the GrpcReceiveBuffer; `Err` runs `proxy_on_grpc_close(ctx, token, code)` with
    /// `proxy_get_status` giving code and message. Then the work the guest caused runs
    /// (continuing a paused stream...). An error when the call is not outstanding (answered,
    /// cancelled, its context gone) or the callback trapped (recorded; a stream context gets
    /// the trap too).
    pub fn answer_grpc_call(&mut self, w: usize, token: u32, answer: GrpcAnswer) -> Result<()> {
        let vm = self.vm_mut(w).ok_or_else(|| anyhow!("no worker {w}"))?;
        if vm.failed.is_some() {
            bail!("worker {w} failed earlier");
        }
        let call = vm
            .store
            .data_mut()
            .grpc_calls
            .remove(&token)
            .ok_or_else(|| anyhow!("worker {w} has no pending gRPC call {token}"))?;
        let ctx = call.info.context_id;
        let r = match answer {
            GrpcAnswer::Ok(message) => {
                let args = [ctx as i64, token as i64, message.len() as i64];
                vm.store.data_mut().grpc_receive = Some(message);
                let r = self.call(w, ctx, "proxy_on_grpc_receive", &args);
                if let Some(vm) = self.vm_mut(w) {
                    vm.store.data_mut().grpc_receive = None;
                }
                r.map(|_| ())
            }
            GrpcAnswer::Err { code, message } => self.grpc_close(w, ctx, token, code, &message),
        };
        if let Err(e) = &r {
            self.set_access(
                StreamKey {
                    worker: w,
                    context: ctx,
                },
                |s| {
                    s.trap.get_or_insert_with(|| format!("{e:#}"));
                },
            );
        }
        self.settle();
        r
    }

    /// `proxy_on_grpc_close` with `proxy_get_status` answering (code, message) meanwhile.
    fn grpc_close(
        &mut self,
        w: usize,
        ctx: u32,
        token: u32,
        code: u32,
        message: &str,
    ) -> Result<()> {
        if let Some(vm) = self.vm_mut(w) {
            vm.store.data_mut().grpc_status = Some((code, message.to_string()));
        }
        let args = [ctx as i64, token as i64, code as i64];
        let r = self.call(w, ctx, "proxy_on_grpc_close", &args);
        if let Some(vm) = self.vm_mut(w) {
            vm.store.data_mut().grpc_status = None;
        }
        r.map(|_| ())
    }

    /// Enqueues onto a registered shared queue of this vm_id; the notification is delivered
    /// at the next [`Core::settle`] of the Core holding the queue's owner.
    pub fn enqueue(&mut self, queue: &str, value: &[u8]) -> Result<()> {
        {
            let mut s = lock(&self.shared);
            let token = *s
                .queue_tokens
                .get(&(s.vm_id.clone(), queue.to_string()))
                .ok_or_else(|| anyhow!("no shared queue named {queue}"))?;
            let q = s
                .queues
                .get_mut(&token)
                .ok_or_else(|| anyhow!("queue {queue} vanished"))?;
            q.items.push_back(value.to_vec());
            let (w, ctx) = (q.owner_worker, q.owner_context);
            s.queue_ready.push_back((w, ctx, token));
        }
        self.settle();
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Streams

    pub fn stream(&self, k: StreamKey) -> Option<&StreamState> {
        self.vm(k.worker)?.store.data().streams.get(&k.context)
    }

    pub fn stream_mut(&mut self, k: StreamKey) -> Option<&mut StreamState> {
        self.vm_mut(k.worker)?
            .store
            .data_mut()
            .streams
            .get_mut(&k.context)
    }

    /// Registers a stream on worker `w` (no guest call yet; see [`Core::create_context`]).
    pub fn new_stream(&mut self, w: usize, s: StreamState) -> Result<StreamKey> {
        let vm = self.vm_mut(w).ok_or_else(|| anyhow!("no worker {w}"))?;
        if !vm.started && vm.failed.is_none() {
            bail!("worker {w} is not started: call start first");
        }
        let ctx = vm.next_context;
        vm.next_context += 1;
        vm.store.data_mut().streams.insert(ctx, s);
        Ok(StreamKey {
            worker: w,
            context: ctx,
        })
    }

    pub fn remove_stream(&mut self, k: StreamKey) {
        if let Some(vm) = self.vm_mut(k.worker) {
            let d = vm.store.data_mut();
            d.streams.remove(&k.context);
            // Envoy cancels a stream's outstanding http and gRPC calls when the stream goes away.
            d.http_calls.retain(|_, c| c.info.context_id != k.context);
            d.grpc_calls.retain(|_, c| c.info.context_id != k.context);
        }
    }

    pub fn vm_failed(&self, w: usize) -> bool {
        self.vm(w).is_none_or(|vm| vm.failed.is_some())
    }

    pub fn set_access(&mut self, k: StreamKey, f: impl FnOnce(&mut StreamState)) {
        if let Some(s) = self.stream_mut(k) {
            f(s);
        }
    }
}
