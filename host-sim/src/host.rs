//! The simulated host: one VM per simulated worker in one [`Core`], driven on the test's
//! thread with a simulated clock (ticks and http-call timeouts fire as the test moves it).

use anyhow::{bail, Result};
use host_engine::abi::ROOT_CONTEXT_ID;
use host_engine::state::{lock, StreamState};
use host_engine::{Core, GrpcAnswer, GrpcCallInfo, HttpCallInfo, StreamKey};

pub(crate) fn prop_path(dotted: &str) -> Vec<u8> {
    dotted.replace('.', "\0").into_bytes()
}

/// A Proxy-Wasm host with several worker VMs of one module.
pub struct Host {
    pub(crate) core: Core,
    /// Performs gRPC calls for real ([`crate::HostBuilder::grpc_clusters`]).
    pub(crate) grpc: Option<grpc_call::GrpcClient>,
}

impl Host {
    /// Number of worker VMs.
    pub fn worker_count(&self) -> usize {
        self.core.vms.len()
    }

    /// Creates the root context on every VM, then `proxy_on_vm_start` and `proxy_on_configure`.
    /// A false return is a [`host_engine::ConfigureError`] carrying the guest's log lines of
    /// that VM.
    pub fn start(&mut self) -> Result<()> {
        for w in 0..self.worker_count() {
            self.core.start_worker(w)?;
        }
        self.perform_grpc_calls();
        Ok(())
    }

    /// Delivers a new plugin configuration to the running VMs, as Envoy does when a listener's
    /// Wasm `PluginConfig` changes without a VM change: each started worker's root context gets
    /// `proxy_on_configure` again (no new VM, no `proxy_on_vm_start`; shared data, metrics and
    /// open streams stay). A false return is a [`host_engine::ConfigureError`] (the VMs keep
    /// the new bytes, the guest decides whether its previous configuration stays in force).
    pub fn reconfigure(&mut self, config: impl AsRef<[u8]>) -> Result<()> {
        for w in 0..self.worker_count() {
            self.core.reconfigure_worker(w, config.as_ref())?;
        }
        Ok(())
    }

    /// The guest calls metered on worker `w` since the last take, oldest first (empty unless
    /// the host was built with [`crate::HostBuilder::metered`]).
    pub fn take_costs(&mut self, w: usize) -> Vec<host_engine::meter::CallCost> {
        self.core
            .vm_mut(w)
            .and_then(|vm| vm.store.data_mut().meter.as_mut())
            .map(|m| std::mem::take(&mut m.calls))
            .unwrap_or_default()
    }

    /// A handle on one worker (VM).
    pub fn worker(&mut self, index: usize) -> Worker<'_> {
        Worker { host: self, index }
    }

    /// Milliseconds since host creation on the simulated clock.
    pub fn now_ms(&self) -> u64 {
        lock(&self.core.shared).elapsed_ms()
    }

    /// Wall clock (ms since the Unix epoch) the guest sees.
    pub fn wall_clock_ms(&self) -> u64 {
        lock(&self.core.shared).wall_ns() / 1_000_000
    }

    fn set_now_ms(&mut self, ms: u64) {
        let mut s = lock(&self.core.shared);
        s.now_ns = s.start_ns + ms * 1_000_000;
    }

    /// Advances the clock by `ms`, firing due ticks (`proxy_on_tick`) and http-call timeouts in
    /// time order, each at its own instant. Returns an error if a VM trapped meanwhile.
    pub fn advance_ms(&mut self, ms: u64) -> Result<()> {
        let target = self.now_ms() + ms;
        self.advance_to(target)
    }

    /// Advances the clock to `ms` since host creation (no-op if that is in the past).
    pub fn advance_to(&mut self, target: u64) -> Result<()> {
        let traps_before = lock(&self.core.shared).traps.len();
        while let Some((t, w, timer)) = self.core.next_timer(target) {
            if t > self.now_ms() {
                self.set_now_ms(t);
            }
            self.core.fire_timer(t, w, timer);
            self.perform_grpc_calls();
        }
        if target > self.now_ms() {
            self.set_now_ms(target);
        }
        let traps = lock(&self.core.shared).traps[traps_before..].to_vec();
        if let Some(t) = traps.first() {
            bail!(
                "worker {} trapped in {}: {}",
                t.worker,
                t.function,
                t.message
            );
        }
        Ok(())
    }

    /// Outgoing `proxy_http_call`s not answered yet, on every worker.
    pub fn pending_http_calls(&self) -> Vec<HttpCallInfo> {
        self.core
            .vms
            .iter()
            .flat_map(|vm| vm.store.data().http_calls.values().map(|c| c.info.clone()))
            .collect()
    }

    /// Answers an http call: `proxy_on_http_call_response` runs on the context that made it.
    pub fn respond_http_call(
        &mut self,
        worker: usize,
        token: u32,
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<()> {
        let resp = Core::call_response(status, headers, body);
        self.core.answer_http_call(worker, token, Some(resp))
    }

    /// Fails an http call (reset or timeout): `proxy_on_http_call_response` with no headers.
    pub fn fail_http_call(&mut self, worker: usize, token: u32) -> Result<()> {
        self.core.answer_http_call(worker, token, None)
    }

    /// Outgoing `proxy_grpc_call`s not answered yet (nor cancelled), on every worker.
    pub fn pending_grpc_calls(&self) -> Vec<GrpcCallInfo> {
        self.core.pending_grpc_calls()
    }

    /// Answers a gRPC call as Envoy does: `GrpcAnswer::Ok(message)` runs
    /// `proxy_on_grpc_receive` on the context that made it, `GrpcAnswer::Err` runs
    /// `proxy_on_grpc_close` (with `proxy_get_status`); a paused stream continues if the guest
    /// says so. An error when the call is not pending (answered, cancelled, timed out, its
    /// stream gone) or the callback trapped (recorded as for any callback).
    pub fn answer_grpc_call(
        &mut self,
        worker: usize,
        token: u32,
        answer: GrpcAnswer,
    ) -> Result<()> {
        self.core.answer_grpc_call(worker, token, answer)
    }

    /// [`Host::answer_grpc_call`] with status OK and `message`.
    pub fn respond_grpc_call(&mut self, worker: usize, token: u32, message: &[u8]) -> Result<()> {
        self.answer_grpc_call(worker, token, GrpcAnswer::Ok(message.to_vec()))
    }

    /// [`Host::answer_grpc_call`] with a non-OK status.
    pub fn fail_grpc_call(
        &mut self,
        worker: usize,
        token: u32,
        code: u32,
        message: &str,
    ) -> Result<()> {
        self.answer_grpc_call(worker, token, GrpcAnswer::err(code, message))
    }

    /// On a host built with [`crate::HostBuilder::grpc_clusters`]: makes every gRPC call the
    /// guest made and that is not performed yet, for real and blocking, and delivers each
    /// answer (answers that make new calls are followed). Returns how many calls were made
    /// (0 on a host whose calls the test answers). The request and exchange drivers call it
    /// after each guest callback, and the clock after each timer.
    pub fn perform_grpc_calls(&mut self) -> usize {
        let Some(client) = self.grpc.clone() else {
            return 0;
        };
        let mut made = 0;
        for _ in 0..1000 {
            let calls = self.core.take_new_grpc_calls();
            if calls.is_empty() {
                break;
            }
            for call in calls {
                let answer = client.call_blocking(&call);
                // Err: the answer found the call gone or the callback trapped (recorded).
                let _ = self.core.answer_grpc_call(call.worker, call.token, answer);
                made += 1;
            }
        }
        made
    }

    /// Live stream contexts on worker `w`.
    pub fn open_streams(&self, w: usize) -> Vec<u32> {
        self.core
            .vm(w)
            .map(|vm| vm.store.data().streams.keys().copied().collect())
            .unwrap_or_default()
    }

    pub(crate) fn stream(&self, k: StreamKey) -> Option<&StreamState> {
        self.core.stream(k)
    }
}

/// One worker (VM) of a host.
pub struct Worker<'h> {
    pub(crate) host: &'h mut Host,
    pub(crate) index: usize,
}

impl<'h> Worker<'h> {
    /// Fires `proxy_on_tick` now, regardless of the period.
    pub fn tick(self) -> Result<()> {
        let root = ROOT_CONTEXT_ID;
        let r = self
            .host
            .core
            .call(self.index, root, "proxy_on_tick", &[root as i64]);
        self.host.core.settle();
        self.host.perform_grpc_calls();
        r.map(|_| ())
    }

    /// The tick period the guest set (0 = none).
    pub fn tick_period_ms(&self) -> u32 {
        self.host
            .core
            .vm(self.index)
            .map_or(0, |vm| vm.store.data().tick_period_ms)
    }

    /// Why this VM failed, if it did.
    pub fn failed(&self) -> Option<String> {
        self.host
            .core
            .vm(self.index)
            .and_then(|vm| vm.failed.clone())
    }

    /// Whether the guest called `proxy_done`.
    pub fn done_called(&self) -> bool {
        self.host
            .core
            .vm(self.index)
            .is_some_and(|vm| vm.store.data().done_called)
    }

    /// Calls any export directly with the root context current (for ABI tests).
    pub fn call_export(self, name: &str, args: &[i64]) -> Result<Option<i64>> {
        let r = self.host.core.call(self.index, ROOT_CONTEXT_ID, name, args);
        self.host.core.settle();
        r
    }

    /// Calls any export with `context` as the current context.
    pub fn call_export_in(self, context: u32, name: &str, args: &[i64]) -> Result<Option<i64>> {
        let r = self.host.core.call(self.index, context, name, args);
        self.host.core.settle();
        r
    }

    /// Shuts the root context down: `proxy_on_done` (then `proxy_on_delete`). Returns what
    /// `proxy_on_done` returned (false = the plugin will call `proxy_done` later).
    pub fn shutdown(self) -> Result<bool> {
        let root = ROOT_CONTEXT_ID as i64;
        let done = self
            .host
            .core
            .call(self.index, ROOT_CONTEXT_ID, "proxy_on_done", &[root])?;
        self.host.core.settle();
        self.host
            .core
            .call(self.index, ROOT_CONTEXT_ID, "proxy_on_delete", &[root])?;
        Ok(done != Some(0))
    }
}
