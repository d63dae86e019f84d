//! The production engine: one OS thread per worker, each owning its VM; streams pinned to one
//! VM; shared data, queues and metrics shared by all VMs; real clock and OS randomness; memory
//! limit per VM; a trap fails its stream and the VM is recreated (fail-reload).

mod grpc;
mod inner;
mod step;
mod stream;
mod worker;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub use grpc::{GrpcReply, GrpcTransport, GrpcTransportRef};
pub use step::{HeaderPairs, Step, StreamProps};
pub use stream::Stream;

use crate::state::{lock, Clock, LogSink, Rng, Shared, SharedRef};
use crate::vm::VmFactory;
use inner::{Counters, Inner};
use step::Cmd;
use worker::Worker;

/// Fuel per guest callback in production: far more than any request of the filter needs (a
/// multi-megabyte body costs well under a tenth of it), small enough that a runaway callback
/// traps within seconds instead of hanging its worker.
pub const PRODUCTION_FUEL_PER_CALL: u64 = 2_000_000_000;
/// Guest log lines the engine keeps in memory (all of them go to the `log` crate).
const KEPT_LOG_LINES: usize = 1000;

/// How to start an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The unchanged `dist/llm_router.wasm` (or any Proxy-Wasm 0.2.1 module).
    pub wasm: Vec<u8>,
    pub plugin_config: Vec<u8>,
    /// Environment variables the module sees (like Envoy's `host_env_keys`).
    pub env: Vec<(String, String)>,
    /// One VM per worker thread (at least 1).
    pub workers: usize,
    /// Per VM (0: no limit beyond the module's own maximum).
    pub memory_limit_bytes: usize,
    /// A trapped stream passes through (true) or gets 503 (false).
    pub fail_open: bool,
    pub vm_id: String,
    pub root_id: String,
    pub plugin_name: String,
    /// Performs the filter's `proxy_grpc_call`s (None: no upstream is known, every call gets
    /// ParseFailure as for an unknown cluster in Envoy).
    pub grpc: Option<GrpcTransportRef>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            wasm: Vec::new(),
            plugin_config: Vec::new(),
            env: Vec::new(),
            workers: 1,
            memory_limit_bytes: 256 << 20,
            fail_open: false,
            vm_id: "llm_router".into(),
            root_id: "llm_router".into(),
            plugin_name: "llm_router".into(),
            grpc: None,
        }
    }
}

/// An engine error, as text the operator can act on (it names the guest's log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineError(pub String);

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EngineError {}

/// Counters the engine keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Streams opened.
    pub streams: u64,
    /// Guest traps (each fails its VM, which is then recreated).
    pub traps: u64,
    /// VMs recreated after a trap.
    pub vm_reloads: u64,
    /// Successful `reconfigure` calls.
    pub config_reloads: u64,
    /// Rejected `reconfigure` calls (the old configuration stayed).
    pub config_reload_failures: u64,
}

/// The running filter: worker threads with their VMs, shared data, metrics. `Send + Sync`;
/// clones share the same engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

fn shared_state(opts: &EngineOptions) -> Shared {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut s = Shared::new(now_ms, &opts.vm_id, &opts.root_id, &opts.plugin_name);
    s.clock = Clock::Real {
        origin: Instant::now(),
    };
    s.rng = Rng::Os;
    s.env = opts.env.clone();
    s.log_sink = LogSink::Forward {
        keep: KEPT_LOG_LINES,
    };
    s.grpc_clusters = Some(opts.grpc.as_ref().map_or(Vec::new(), |g| g.0.clusters()));
    s
}

impl Engine {
    /// Compiles the module, then on every worker thread creates its VM, `proxy_on_vm_start`
    /// and `proxy_on_configure`. A configuration the filter rejects is an error naming the
    /// guest's log line.
    pub fn start(opts: EngineOptions) -> Result<Engine, EngineError> {
        let mut factory = VmFactory::new(&opts.wasm).map_err(|e| EngineError(format!("{e:#}")))?;
        factory.memory_limit = (opts.memory_limit_bytes > 0).then_some(opts.memory_limit_bytes);
        factory.fuel_per_call = PRODUCTION_FUEL_PER_CALL;
        let shared: SharedRef = Arc::new(Mutex::new(shared_state(&opts)));
        let counters = Arc::new(Counters::default());
        let (mut senders, mut threads, mut started) = (Vec::new(), Vec::new(), Vec::new());
        for w in 0..opts.workers.max(1) {
            let (tx, rx) = mpsc::channel::<Cmd>();
            let (init_tx, init_rx) = mpsc::channel::<Result<(), String>>();
            let (f, sh, c) = (factory.clone(), shared.clone(), counters.clone());
            let (config, fail_open) = (opts.plugin_config.clone(), opts.fail_open);
            let grpc = opts.grpc.clone().map(|g| (g, tx.clone()));
            let spawned = std::thread::Builder::new()
                .name(format!("llm-router-vm-{w}"))
                .spawn(
                    move || match Worker::start(w, f, sh, config, fail_open, c) {
                        Ok(mut worker) => {
                            worker.grpc = grpc;
                            let _ = init_tx.send(Ok(()));
                            worker.run(rx);
                        }
                        Err(e) => {
                            let _ = init_tx.send(Err(format!("{e:#}")));
                        }
                    },
                )
                .map_err(|e| EngineError(format!("spawning worker thread {w}: {e}")))?;
            senders.push(tx);
            threads.push(spawned);
            started.push(init_rx);
        }
        let inner = Inner {
            senders,
            threads: Mutex::new(threads),
            shared,
            counters,
            next_worker: AtomicUsize::new(0),
            next_stream: AtomicU64::new(1),
            fail_open: opts.fail_open,
            config: Mutex::new(opts.plugin_config),
        };
        for (w, rx) in started.into_iter().enumerate() {
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(EngineError(e)),
                Err(_) => return Err(EngineError(format!("worker thread {w} ended"))),
            }
        }
        Ok(Engine {
            inner: Arc::new(inner),
        })
    }

    /// `proxy_on_configure` with a new plugin configuration on every VM (shared data, metrics
    /// and open streams stay). Worker 0 checks it first; when the filter rejects it, no VM
    /// changes and the error names the guest's log line (logged too).
    pub fn reconfigure(&self, plugin_config: Vec<u8>) -> Result<(), EngineError> {
        let mut current = self.inner.config.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.configure_all(&plugin_config, &current);
        let c = &self.inner.counters;
        match &result {
            Ok(()) => {
                *current = plugin_config;
                c.config_reloads.fetch_add(1, Ordering::Relaxed);
                log::info!("plugin configuration reloaded");
            }
            Err(e) => {
                c.config_reload_failures.fetch_add(1, Ordering::Relaxed);
                log::error!("plugin configuration rejected, the previous one stays: {e}");
            }
        }
        result
    }

    fn configure_on(&self, w: usize, config: &[u8]) -> mpsc::Receiver<Result<(), String>> {
        let (tx, rx) = mpsc::channel();
        let cmd = Cmd::Configure {
            config: config.to_vec(),
            reply: tx,
        };
        if let Some(s) = self.inner.senders.get(w) {
            let _ = s.send(cmd);
        }
        rx
    }

    fn configure_all(&self, new: &[u8], old: &[u8]) -> Result<(), EngineError> {
        let answer = |rx: mpsc::Receiver<Result<(), String>>, w: usize| match rx.recv() {
            Ok(r) => r,
            Err(_) => Err(format!("worker thread {w} ended")),
        };
        answer(self.configure_on(0, new), 0).map_err(EngineError)?;
        let n = self.inner.senders.len();
        let pending: Vec<_> = (1..n).map(|w| (w, self.configure_on(w, new))).collect();
        let failed: Vec<(usize, String)> = pending
            .into_iter()
            .filter_map(|(w, rx)| answer(rx, w).err().map(|e| (w, e)))
            .collect();
        let Some((_, first)) = failed.first() else {
            return Ok(());
        };
        // Some worker refused what worker 0 took: put the old configuration back everywhere.
        for w in 0..n {
            if !failed.iter().any(|(f, _)| *f == w) {
                let _ = answer(self.configure_on(w, old), w);
            }
        }
        Err(EngineError(first.clone()))
    }

    /// A new stream, pinned to one worker's VM (round robin).
    pub fn open_stream(&self, props: StreamProps) -> Stream {
        let n = self.inner.senders.len().max(1);
        let w = self.inner.next_worker.fetch_add(1, Ordering::Relaxed) % n;
        let id = self.inner.next_stream.fetch_add(1, Ordering::Relaxed);
        Stream::open(self.inner.clone(), w, id, props)
    }

    /// The filter's metrics as Prometheus text, after Envoy-style tag extraction
    /// (`name;label=.=value;.;` becomes `name{label="value"}`).
    pub fn prometheus(&self) -> String {
        lock(&self.inner.shared).metrics.render_prometheus()
    }

    /// A metric's value by the exact name the guest defined (0 when undefined).
    pub fn metric_value(&self, name: &str) -> i64 {
        lock(&self.inner.shared)
            .metrics
            .metrics
            .get(name)
            .map_or(0, |m| m.value)
    }

    /// Shared data of this engine's vm_id: (value, cas).
    pub fn shared_data_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let s = lock(&self.inner.shared);
        s.shared_data
            .get(&(s.vm_id.clone(), key.to_string()))
            .cloned()
    }

    pub fn stats(&self) -> EngineStats {
        let c = &self.inner.counters;
        EngineStats {
            streams: c.streams.load(Ordering::Relaxed),
            traps: c.traps.load(Ordering::Relaxed),
            vm_reloads: c.vm_reloads.load(Ordering::Relaxed),
            config_reloads: c.config_reloads.load(Ordering::Relaxed),
            config_reload_failures: c.config_reload_failures.load(Ordering::Relaxed),
        }
    }

    /// Number of worker threads (VMs).
    pub fn workers(&self) -> usize {
        self.inner.senders.len()
    }
}
