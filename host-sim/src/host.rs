//! The host: loads the module into one VM per simulated worker thread, drives contexts the way
//! Envoy's Wasm filter (proxy-wasm-cpp-host) does, and owns the simulated clock.

use std::collections::{hash_map::DefaultHasher, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{anyhow, bail, Context as _, Result};
use wasmtime::{Config, Engine, Instance, Linker, Module, Store, Val, ValType};

use crate::abi::LogLevel;
use crate::exchange::{Dir, Exchange, RequestBuilder, StreamKey};
use crate::hostcalls::{self, ProcExit};
use crate::metrics::{Metric, MetricStore};
use crate::state::{lock, Access, CallResponse, Rng, Shared, SharedRef, StreamState, VmState};
use crate::types::{ForeignCall, Headers, HttpCallInfo, LogLine, PropValue, TrapRecord};

/// Fuel per guest call: a runaway loop ends as a trap instead of hanging the test.
const FUEL_PER_CALL: u64 = 20_000_000_000;
/// Context id of each VM's root context (Envoy gives the VM context 0 and the root context 1).
pub(crate) const ROOT_CONTEXT_ID: u32 = 1;
/// Default wall clock at host creation: 2023-11-14T22:13:20Z.
const DEFAULT_START_MS: u64 = 1_700_000_000_000;

fn engine() -> Result<Engine> {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    if let Some(e) = ENGINE.get() {
        return Ok(e.clone());
    }
    let mut config = Config::new();
    config.consume_fuel(true);
    let e = Engine::new(&config)?;
    Ok(ENGINE.get_or_init(|| e).clone())
}

/// Compiles a module once per process (tests build many hosts from the same `.wasm`).
fn compile(engine: &Engine, bytes: &[u8]) -> Result<Module> {
    static CACHE: OnceLock<Mutex<HashMap<u64, Module>>> = OnceLock::new();
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    let key = h.finish();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    // Held while compiling, so parallel tests compile a module once instead of racing.
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = cache.get(&key) {
        return Ok(m.clone());
    }
    let module = Module::new(engine, bytes)?;
    cache.insert(key, module.clone());
    Ok(module)
}

/// The error `Host::start` returns when `proxy_on_configure` (or `proxy_on_vm_start`) returns
/// false: the worker and the guest's log lines.
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

/// Builds a [`Host`]. Every option has an Envoy-like default.
#[derive(Debug, Clone)]
pub struct HostBuilder {
    wasm: Option<Vec<u8>>,
    wasm_path: Option<PathBuf>,
    workers: usize,
    plugin_config: Vec<u8>,
    vm_config: Vec<u8>,
    env: Vec<(String, String)>,
    seed: u64,
    start_ms: u64,
    vm_id: String,
    root_id: String,
    plugin_name: String,
    allow_on_headers_stop_iteration: bool,
    fail_open: bool,
    log_level: LogLevel,
    properties: Vec<(Vec<u8>, PropValue)>,
    known_clusters: Option<Vec<String>>,
    echo_logs: bool,
}

impl Default for HostBuilder {
    fn default() -> Self {
        HostBuilder {
            wasm: None,
            wasm_path: None,
            workers: 1,
            plugin_config: Vec::new(),
            vm_config: Vec::new(),
            env: Vec::new(),
            seed: 0,
            start_ms: DEFAULT_START_MS,
            vm_id: "llm_router".into(),
            root_id: "llm_router".into(),
            plugin_name: "llm_router".into(),
            allow_on_headers_stop_iteration: true,
            fail_open: false,
            log_level: LogLevel::Info,
            properties: Vec::new(),
            known_clusters: None,
            echo_logs: false,
        }
    }
}

pub(crate) fn prop_path(dotted: &str) -> Vec<u8> {
    dotted.replace('.', "\0").into_bytes()
}

impl HostBuilder {
    /// The module to load from a file (`.wasm`, or `.wat` text).
    pub fn wasm_file(mut self, path: impl AsRef<Path>) -> Self {
        self.wasm_path = Some(path.as_ref().to_path_buf());
        self
    }

    /// The module as bytes (binary or `.wat` text).
    pub fn wasm_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.wasm = Some(bytes.into());
        self
    }

    /// The module as `.wat` text.
    pub fn wat(self, text: &str) -> Self {
        self.wasm_bytes(text.as_bytes().to_vec())
    }

    /// Number of worker VMs (Envoy `--concurrency`). Default 1.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Plugin configuration bytes (`PluginConfig.configuration`).
    pub fn plugin_config(mut self, config: impl AsRef<[u8]>) -> Self {
        self.plugin_config = config.as_ref().to_vec();
        self
    }

    /// Plugin configuration from JSON.
    pub fn plugin_config_json(self, config: &serde_json::Value) -> Self {
        self.plugin_config(config.to_string())
    }

    /// VM configuration bytes (`VmConfig.configuration`).
    pub fn vm_config(mut self, config: impl AsRef<[u8]>) -> Self {
        self.vm_config = config.as_ref().to_vec();
        self
    }

    /// An environment variable the guest sees through WASI (`VmConfig.environment_variables`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Seed of `random_get`. Default 0.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Wall clock at start, ms since the Unix epoch.
    pub fn start_time_ms(mut self, ms: u64) -> Self {
        self.start_ms = ms;
        self
    }

    /// `vm_id` (the shared-data and queue namespace). Default `llm_router`.
    pub fn vm_id(mut self, id: &str) -> Self {
        self.vm_id = id.to_string();
        self
    }

    /// `root_id` (property `plugin_root_id`). Default `llm_router`.
    pub fn root_id(mut self, id: &str) -> Self {
        self.root_id = id.to_string();
        self
    }

    /// Plugin name (property `plugin_name`). Default `llm_router`.
    pub fn plugin_name(mut self, name: &str) -> Self {
        self.plugin_name = name.to_string();
        self
    }

    /// Envoy's `allow_on_headers_stop_iteration`. Default true, like the shipped config.
    pub fn allow_on_headers_stop_iteration(mut self, allow: bool) -> Self {
        self.allow_on_headers_stop_iteration = allow;
        self
    }

    /// Envoy's `fail_open`: after a VM failure, streams pass through instead of getting 503.
    pub fn fail_open(mut self, open: bool) -> Self {
        self.fail_open = open;
        self
    }

    /// Level `proxy_get_log_level` reports. Default info. All lines are recorded regardless.
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    /// A host-wide property (dotted path: `node.id`).
    pub fn property(mut self, dotted: &str, value: impl Into<PropValue>) -> Self {
        self.properties.push((prop_path(dotted), value.into()));
        self
    }

    /// Clusters `proxy_http_call` may name; others fail with BadArgument. Default: any.
    pub fn clusters(mut self, names: &[&str]) -> Self {
        self.known_clusters = Some(names.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Also print every guest log line to stderr as it happens.
    pub fn echo_logs(mut self, echo: bool) -> Self {
        self.echo_logs = echo;
        self
    }

    /// Compiles the module and instantiates one VM per worker (running `_initialize` or
    /// `_start`). Call [`Host::start`] next.
    pub fn build(self) -> Result<Host> {
        let bytes = match (&self.wasm, &self.wasm_path) {
            (Some(b), _) => b.clone(),
            (None, Some(p)) => {
                std::fs::read(p).with_context(|| format!("reading {}", p.display()))?
            }
            (None, None) => bail!("HostBuilder: no module (use wasm_file, wasm_bytes or wat)"),
        };
        let engine = engine()?;
        let module = compile(&engine, &bytes).context("compiling the module")?;
        let exports: Vec<String> = module.exports().map(|e| e.name().to_string()).collect();
        let has = |n: &str| exports.iter().any(|e| e == n);
        if has("proxy_abi_version_0_1_0") && !has("proxy_abi_version_0_2_1") {
            bail!("module targets Proxy-Wasm ABI 0.1.0; host-sim emulates 0.2.1");
        }
        if !has("proxy_abi_version_0_2_1") && !has("proxy_abi_version_0_2_0") {
            bail!("module exports no proxy_abi_version_0_2_x function: not a Proxy-Wasm module");
        }
        let shared: SharedRef = Arc::new(Mutex::new(Shared {
            now_ns: self.start_ms * 1_000_000,
            start_ns: self.start_ms * 1_000_000,
            rng: Rng::new(self.seed),
            vm_id: self.vm_id.clone(),
            root_id: self.root_id.clone(),
            plugin_name: self.plugin_name.clone(),
            env: self.env.clone(),
            log_level: self.log_level,
            shared_data: HashMap::new(),
            next_cas: 1,
            queue_tokens: HashMap::new(),
            queues: Default::default(),
            next_queue_token: 1,
            queue_ready: Default::default(),
            metrics: MetricStore::default(),
            logs: Vec::new(),
            traps: Vec::new(),
            properties: self.properties.iter().cloned().collect(),
            known_clusters: self.known_clusters.clone(),
            echo_logs: self.echo_logs,
        }));
        let mut linker: Linker<VmState> = Linker::new(&engine);
        hostcalls::add_to_linker(&mut linker)?;
        linker.define_unknown_imports_as_traps(&module)?;
        let mut vms = Vec::new();
        for worker in 0..self.workers {
            let state = VmState {
                shared: shared.clone(),
                worker,
                memory: None,
                alloc: None,
                plugin_config: self.plugin_config.clone(),
                vm_config: self.vm_config.clone(),
                root_context: ROOT_CONTEXT_ID,
                current_context: 0,
                effective_context: None,
                streams: Default::default(),
                call_response: None,
                http_calls: Default::default(),
                next_token: 1,
                tick_period_ms: 0,
                next_tick_ms: None,
                metric_ids: HashMap::new(),
                next_metric_seq: 0,
                stdout: Vec::new(),
                stderr: Vec::new(),
                grpc_to_close: Vec::new(),
                grpc_status: None,
                next_grpc_token: 1,
                done_called: false,
                foreign_calls: Vec::new(),
            };
            let mut store = Store::new(&engine, state);
            store.set_fuel(FUEL_PER_CALL)?;
            let instance = linker
                .instantiate(&mut store, &module)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("instantiating worker {worker}"))?;
            let memory = instance.get_memory(&mut store, "memory");
            let alloc = instance
                .get_typed_func::<i32, i32>(&mut store, "malloc")
                .or_else(|_| {
                    instance.get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
                })
                .ok();
            if alloc.is_none() {
                bail!("module exports neither malloc nor proxy_on_memory_allocate");
            }
            store.data_mut().memory = memory;
            store.data_mut().alloc = alloc;
            let mut vm = Vm {
                store,
                instance,
                failed: None,
                next_context: ROOT_CONTEXT_ID + 1,
                started: false,
            };
            let init = if has("_initialize") {
                Some("_initialize")
            } else if has("_start") {
                Some("_start")
            } else {
                None
            };
            if let Some(init) = init {
                if let Err(e) = vm.raw_call(init, &[]) {
                    bail!("worker {worker}: {init} failed: {}", describe(&e));
                }
            }
            vms.push(vm);
        }
        Ok(Host {
            vms,
            shared,
            allow_on_headers_stop_iteration: self.allow_on_headers_stop_iteration,
            fail_open: self.fail_open,
        })
    }
}

pub(crate) fn describe(e: &wasmtime::Error) -> String {
    if let Some(p) = e.downcast_ref::<ProcExit>() {
        return p.to_string();
    }
    let mut s = format!("{e}");
    if let Some(t) = e.downcast_ref::<wasmtime::Trap>() {
        s = format!("{s} ({t})");
    }
    // The root cause (e.g. "wasm trap: unreachable") is more useful than the backtrace head.
    let chain: Vec<String> = e.chain().skip(1).map(|c| c.to_string()).collect();
    if !chain.is_empty() {
        s = format!("{s}: {}", chain.join(": "));
    }
    s
}

pub(crate) struct Vm {
    pub(crate) store: Store<VmState>,
    instance: Instance,
    pub(crate) failed: Option<String>,
    pub(crate) next_context: u32,
    pub(crate) started: bool,
}

impl Vm {
    /// Calls an export with i32 arguments (i64 where the signature says so). `Ok(None)` when the
    /// module does not export it or it returns nothing.
    fn raw_call(
        &mut self,
        name: &str,
        args: &[i64],
    ) -> std::result::Result<Option<i64>, wasmtime::Error> {
        let Some(func) = self.instance.get_func(&mut self.store, name) else {
            return Ok(None);
        };
        let ty = func.ty(&self.store);
        let params: Vec<Val> = ty
            .params()
            .zip(args.iter().chain(std::iter::repeat(&0)))
            .map(|(t, a)| match t {
                ValType::I64 => Val::I64(*a),
                _ => Val::I32(*a as i32),
            })
            .collect();
        let mut results: Vec<Val> = ty.results().map(|_| Val::I32(0)).collect();
        self.store.set_fuel(FUEL_PER_CALL)?;
        func.call(&mut self.store, &params, &mut results)?;
        Ok(results.first().and_then(|v| match v {
            Val::I32(x) => Some(*x as i64),
            Val::I64(x) => Some(*x),
            _ => None,
        }))
    }
}

/// A Proxy-Wasm host with several worker VMs of one module.
pub struct Host {
    pub(crate) vms: Vec<Vm>,
    pub(crate) shared: SharedRef,
    pub(crate) allow_on_headers_stop_iteration: bool,
    pub(crate) fail_open: bool,
}

/// Work the host owes the guest after a call returns (Envoy runs these after the VM call).
enum Work {
    GrpcClose(usize, u32, u32),
    QueueReady(usize, u32, u32),
    LocalReply(StreamKey),
    Continue(StreamKey, Dir),
}

impl Host {
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// Number of worker VMs.
    pub fn worker_count(&self) -> usize {
        self.vms.len()
    }

    /// Creates the root context on every VM, then `proxy_on_vm_start` and `proxy_on_configure`.
    /// A false return is a [`ConfigureError`] carrying the guest's log lines of that VM.
    pub fn start(&mut self) -> Result<()> {
        for w in 0..self.vms.len() {
            self.start_worker(w)?;
        }
        Ok(())
    }

    /// Delivers a new plugin configuration to the running VMs, as Envoy does when a listener's
    /// Wasm `PluginConfig` changes without a VM change: each started worker's root context gets
    /// `proxy_on_configure` again (no new VM, no `proxy_on_vm_start`; shared data, metrics and
    /// open streams stay). A false return is a [`ConfigureError`] (the VMs keep the new bytes,
    /// the guest decides whether its previous configuration stays in force).
    pub fn reconfigure(&mut self, config: impl AsRef<[u8]>) -> Result<()> {
        let config = config.as_ref().to_vec();
        for w in 0..self.vms.len() {
            if !self.vms[w].started || self.vms[w].failed.is_some() {
                continue;
            }
            self.vms[w].store.data_mut().plugin_config = config.clone();
            let first_log = lock(&self.shared).logs.len();
            let root = ROOT_CONTEXT_ID as i64;
            let r = self.call(
                w,
                ROOT_CONTEXT_ID,
                "proxy_on_configure",
                &[root, config.len() as i64],
            )?;
            self.settle();
            if r == Some(0) {
                let logs = lock(&self.shared).logs[first_log..]
                    .iter()
                    .filter(|l| l.worker == w)
                    .map(|l| l.message.clone())
                    .collect();
                return Err(ConfigureError {
                    worker: w,
                    phase: "proxy_on_configure",
                    logs,
                }
                .into());
            }
        }
        Ok(())
    }

    fn start_worker(&mut self, w: usize) -> Result<()> {
        let (vm_len, plugin_len) = {
            let d = self.vms[w].store.data();
            (d.vm_config.len() as i64, d.plugin_config.len() as i64)
        };
        let root = ROOT_CONTEXT_ID as i64;
        self.call(w, ROOT_CONTEXT_ID, "proxy_on_context_create", &[root, 0])?;
        for (phase, size) in [
            ("proxy_on_vm_start", vm_len),
            ("proxy_on_configure", plugin_len),
        ] {
            let first_log = lock(&self.shared).logs.len();
            let r = self.call(w, ROOT_CONTEXT_ID, phase, &[root, size])?;
            self.settle();
            if r == Some(0) {
                let logs = lock(&self.shared).logs[first_log..]
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
        }
        self.vms[w].started = true;
        Ok(())
    }

    /// Calls a guest export on worker `w` with `ctx` as the current context. A trap marks the VM
    /// failed, is recorded in [`Host::traps`], and comes back as the error.
    pub(crate) fn call(
        &mut self,
        w: usize,
        ctx: u32,
        name: &str,
        args: &[i64],
    ) -> Result<Option<i64>> {
        let vm = self
            .vms
            .get_mut(w)
            .ok_or_else(|| anyhow!("no worker {w}"))?;
        if let Some(f) = &vm.failed {
            bail!("worker {w} failed earlier: {f}");
        }
        {
            let d = vm.store.data_mut();
            d.current_context = ctx;
            d.effective_context = None;
        }
        let r = vm.raw_call(name, args);
        vm.store.data_mut().effective_context = None;
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
    pub(crate) fn settle(&mut self) {
        for _ in 0..100_000 {
            let Some(work) = self.next_work() else {
                return;
            };
            let _ = self.do_work(work);
        }
    }

    fn next_work(&mut self) -> Option<Work> {
        for (w, vm) in self.vms.iter_mut().enumerate() {
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
        if let Some((w, ctx, token)) = lock(&self.shared).queue_ready.pop_front() {
            return Some(Work::QueueReady(w, ctx, token));
        }
        for (w, vm) in self.vms.iter_mut().enumerate() {
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
                self.vms[w].store.data_mut().grpc_status =
                    Some((12, "gRPC is not implemented in host-sim".to_string()));
                let r = self.call(
                    w,
                    ctx,
                    "proxy_on_grpc_close",
                    &[ctx as i64, token as i64, 12],
                );
                self.vms[w].store.data_mut().grpc_status = None;
                r.map(|_| ())
            }
            Work::QueueReady(w, ctx, token) => {
                if w < self.vms.len() && self.vms[w].failed.is_none() {
                    self.call(w, ctx, "proxy_on_queue_ready", &[ctx as i64, token as i64])?;
                }
                Ok(())
            }
            Work::LocalReply(key) => self.deliver_local_reply(key),
            Work::Continue(key, dir) => self.continue_dir(key, dir),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Workers, clock, events

    /// A handle on one worker (VM).
    pub fn worker(&mut self, index: usize) -> Worker<'_> {
        Worker { host: self, index }
    }

    /// Milliseconds since host creation on the simulated clock.
    pub fn now_ms(&self) -> u64 {
        let s = lock(&self.shared);
        (s.now_ns - s.start_ns) / 1_000_000
    }

    /// Wall clock (ms since the Unix epoch) the guest sees.
    pub fn wall_clock_ms(&self) -> u64 {
        lock(&self.shared).now_ns / 1_000_000
    }

    fn set_now_ms(&mut self, ms: u64) {
        let mut s = lock(&self.shared);
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
        let traps_before = lock(&self.shared).traps.len();
        loop {
            let mut next: Option<(u64, usize, Option<u32>)> = None;
            for (w, vm) in self.vms.iter().enumerate() {
                if vm.failed.is_some() || !vm.started {
                    continue;
                }
                let d = vm.store.data();
                if let Some(t) = d.next_tick_ms {
                    if t <= target && next.is_none_or(|n| t < n.0) {
                        next = Some((t, w, None));
                    }
                }
                for (token, call) in &d.http_calls {
                    if let Some(t) = call.deadline_ms {
                        if t <= target && next.is_none_or(|n| t < n.0) {
                            next = Some((t, w, Some(*token)));
                        }
                    }
                }
            }
            let Some((t, w, what)) = next else { break };
            if t > self.now_ms() {
                self.set_now_ms(t);
            }
            match what {
                None => {
                    let d = self.vms[w].store.data_mut();
                    d.next_tick_ms = Some(t + d.tick_period_ms.max(1) as u64);
                    let root = ROOT_CONTEXT_ID;
                    let _ = self.call(w, root, "proxy_on_tick", &[root as i64]);
                }
                Some(token) => {
                    let _ = self.fail_http_call(w, token);
                }
            }
            self.settle();
        }
        if target > self.now_ms() {
            self.set_now_ms(target);
        }
        let traps = lock(&self.shared).traps[traps_before..].to_vec();
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
        self.vms
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
        let mut h = Headers::new();
        h.add(":status", status.to_string());
        for (k, v) in headers {
            h.add(k, v);
        }
        self.answer_http_call(
            worker,
            token,
            Some(CallResponse {
                headers: h,
                body: body.to_vec(),
                trailers: Headers::new(),
            }),
        )
    }

    /// Fails an http call (reset or timeout): `proxy_on_http_call_response` with no headers.
    pub fn fail_http_call(&mut self, worker: usize, token: u32) -> Result<()> {
        self.answer_http_call(worker, token, None)
    }

    fn answer_http_call(&mut self, w: usize, token: u32, resp: Option<CallResponse>) -> Result<()> {
        let vm = self
            .vms
            .get_mut(w)
            .ok_or_else(|| anyhow!("no worker {w}"))?;
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
        let r = self.call(
            w,
            ctx,
            "proxy_on_http_call_response",
            &[ctx as i64, token as i64, nh as i64, nb as i64, nt as i64],
        );
        if let Some(vm) = self.vms.get_mut(w) {
            hostcalls::set_call_response(vm.store.data_mut(), None);
        }
        self.settle();
        r.map(|_| ())
    }

    // -----------------------------------------------------------------------------------------
    // Observations

    /// A metric by the exact name the guest defined.
    pub fn metric(&self, name: &str) -> Option<Metric> {
        lock(&self.shared).metrics.metrics.get(name).cloned()
    }

    /// Value of a counter or gauge (sample count of a histogram); 0 when undefined.
    pub fn metric_value(&self, name: &str) -> i64 {
        self.metric(name).map(|m| m.value).unwrap_or(0)
    }

    /// All metrics, sorted by name.
    pub fn metrics(&self) -> Vec<Metric> {
        lock(&self.shared)
            .metrics
            .metrics
            .values()
            .cloned()
            .collect()
    }

    /// Sum of the values of every metric whose base name (before `;` tags) is `base` and whose
    /// tags include all of `tags`.
    pub fn metric_sum(&self, base: &str, tags: &[(&str, &str)]) -> i64 {
        self.metrics()
            .iter()
            .filter(|m| m.base_name() == base)
            .filter(|m| {
                let mt = m.tags();
                tags.iter()
                    .all(|(k, v)| mt.iter().any(|(mk, mv)| mk == k && mv == v))
            })
            .map(|m| m.value)
            .sum()
    }

    /// How many times the guests (all VMs) called `proxy_define_metric`.
    pub fn metric_define_calls(&self) -> u64 {
        lock(&self.shared).metrics.define_calls
    }

    /// Envoy `/stats` text (with the `wasmcustom.` prefix when `prefix` is true).
    pub fn render_stats(&self, prefix: bool) -> String {
        lock(&self.shared).metrics.render_envoy(prefix)
    }

    /// Prometheus text after Istio-style tag extraction.
    pub fn render_prometheus(&self) -> String {
        lock(&self.shared).metrics.render_prometheus()
    }

    /// Every log line so far (all workers, `proxy_log` and WASI stdout/stderr).
    pub fn logs(&self) -> Vec<LogLine> {
        lock(&self.shared).logs.clone()
    }

    /// Log messages containing `needle`.
    pub fn logs_containing(&self, needle: &str) -> Vec<String> {
        lock(&self.shared)
            .logs
            .iter()
            .filter(|l| l.message.contains(needle))
            .map(|l| l.message.clone())
            .collect()
    }

    pub fn clear_logs(&mut self) {
        lock(&self.shared).logs.clear();
    }

    /// Every trap so far.
    pub fn traps(&self) -> Vec<TrapRecord> {
        lock(&self.shared).traps.clone()
    }

    /// Why worker `w` failed, if it did.
    pub fn worker_failed(&self, w: usize) -> Option<String> {
        self.vms.get(w).and_then(|vm| vm.failed.clone())
    }

    /// Shared data of this host's vm_id: (value, cas).
    pub fn shared_data_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let s = lock(&self.shared);
        s.shared_data
            .get(&(s.vm_id.clone(), key.to_string()))
            .cloned()
    }

    /// Shared data as UTF-8 text.
    pub fn shared_data_str(&self, key: &str) -> Option<String> {
        self.shared_data_get(key)
            .map(|(v, _)| String::from_utf8_lossy(&v).into_owned())
    }

    /// Writes shared data unconditionally (as another proxy component would).
    pub fn shared_data_set(&mut self, key: &str, value: &[u8]) {
        let mut s = lock(&self.shared);
        let cas = s.next_cas();
        let k = (s.vm_id.clone(), key.to_string());
        s.shared_data.insert(k, (value.to_vec(), cas));
    }

    /// All shared-data keys of this vm_id, sorted.
    pub fn shared_data_keys(&self) -> Vec<String> {
        let s = lock(&self.shared);
        let mut keys: Vec<String> = s
            .shared_data
            .keys()
            .filter(|(vm, _)| *vm == s.vm_id)
            .map(|(_, k)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Enqueues onto a registered shared queue of this vm_id and delivers `proxy_on_queue_ready`.
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

    /// Items waiting in a shared queue of this vm_id.
    pub fn queue_items(&self, queue: &str) -> Vec<Vec<u8>> {
        let s = lock(&self.shared);
        s.queue_tokens
            .get(&(s.vm_id.clone(), queue.to_string()))
            .and_then(|t| s.queues.get(t))
            .map(|q| q.items.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Foreign calls made outside any stream (root contexts).
    pub fn root_foreign_calls(&self) -> Vec<ForeignCall> {
        self.vms
            .iter()
            .flat_map(|vm| vm.store.data().foreign_calls.clone())
            .collect()
    }

    /// Re-attaches to a detached exchange.
    pub fn exchange(&mut self, key: StreamKey) -> Exchange<'_> {
        Exchange::new(self, key)
    }

    /// Live stream contexts on worker `w`.
    pub fn open_streams(&self, w: usize) -> Vec<u32> {
        self.vms
            .get(w)
            .map(|vm| vm.store.data().streams.keys().copied().collect())
            .unwrap_or_default()
    }

    // -----------------------------------------------------------------------------------------
    // Streams (used by exchange.rs)

    pub(crate) fn stream(&self, k: StreamKey) -> Option<&StreamState> {
        self.vms.get(k.worker)?.store.data().streams.get(&k.context)
    }

    pub(crate) fn stream_mut(&mut self, k: StreamKey) -> Option<&mut StreamState> {
        self.vms
            .get_mut(k.worker)?
            .store
            .data_mut()
            .streams
            .get_mut(&k.context)
    }

    pub(crate) fn new_stream(&mut self, w: usize, s: StreamState) -> Result<StreamKey> {
        let vm = self
            .vms
            .get_mut(w)
            .ok_or_else(|| anyhow!("no worker {w}"))?;
        if !vm.started && vm.failed.is_none() {
            bail!("worker {w} is not started: call Host::start first");
        }
        let ctx = vm.next_context;
        vm.next_context += 1;
        vm.store.data_mut().streams.insert(ctx, s);
        Ok(StreamKey {
            worker: w,
            context: ctx,
        })
    }

    pub(crate) fn remove_stream(&mut self, k: StreamKey) {
        if let Some(vm) = self.vms.get_mut(k.worker) {
            let d = vm.store.data_mut();
            d.streams.remove(&k.context);
            // Envoy cancels a stream's outstanding http calls when the stream goes away.
            d.http_calls.retain(|_, c| c.info.context_id != k.context);
        }
    }

    pub(crate) fn vm_failed(&self, w: usize) -> bool {
        self.vms.get(w).is_none_or(|vm| vm.failed.is_some())
    }

    pub(crate) fn set_access(&mut self, k: StreamKey, f: impl FnOnce(&mut StreamState)) {
        if let Some(s) = self.stream_mut(k) {
            f(s);
        }
    }

    #[allow(dead_code)]
    pub(crate) fn access_of(&self, k: StreamKey) -> Option<Access> {
        self.stream(k).map(|s| s.request.headers_access)
    }
}

/// One worker (VM) of a host.
pub struct Worker<'h> {
    pub(crate) host: &'h mut Host,
    pub(crate) index: usize,
}

impl<'h> Worker<'h> {
    /// Starts describing a request to send through this worker's filter.
    pub fn request(self) -> RequestBuilder<'h> {
        RequestBuilder::new(self.host, self.index)
    }

    /// Fires `proxy_on_tick` now, regardless of the period.
    pub fn tick(self) -> Result<()> {
        let root = ROOT_CONTEXT_ID;
        let r = self
            .host
            .call(self.index, root, "proxy_on_tick", &[root as i64]);
        self.host.settle();
        r.map(|_| ())
    }

    /// The tick period the guest set (0 = none).
    pub fn tick_period_ms(&self) -> u32 {
        self.host.vms[self.index].store.data().tick_period_ms
    }

    /// Why this VM failed, if it did.
    pub fn failed(&self) -> Option<String> {
        self.host.vms[self.index].failed.clone()
    }

    /// Whether the guest called `proxy_done`.
    pub fn done_called(&self) -> bool {
        self.host.vms[self.index].store.data().done_called
    }

    /// Calls any export directly with the root context current (for ABI tests).
    pub fn call_export(self, name: &str, args: &[i64]) -> Result<Option<i64>> {
        let r = self.host.call(self.index, ROOT_CONTEXT_ID, name, args);
        self.host.settle();
        r
    }

    /// Calls any export with `context` as the current context.
    pub fn call_export_in(self, context: u32, name: &str, args: &[i64]) -> Result<Option<i64>> {
        let r = self.host.call(self.index, context, name, args);
        self.host.settle();
        r
    }

    /// Shuts the root context down: `proxy_on_done` (then `proxy_on_delete`). Returns what
    /// `proxy_on_done` returned (false = the plugin will call `proxy_done` later).
    pub fn shutdown(self) -> Result<bool> {
        let root = ROOT_CONTEXT_ID as i64;
        let done = self
            .host
            .call(self.index, ROOT_CONTEXT_ID, "proxy_on_done", &[root])?;
        self.host.settle();
        self.host
            .call(self.index, ROOT_CONTEXT_ID, "proxy_on_delete", &[root])?;
        Ok(done != Some(0))
    }
}
