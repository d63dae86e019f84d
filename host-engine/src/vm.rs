//! One VM: a wasmtime store and instance of the module, and the factory that makes VMs the way
//! Envoy's Wasm runtime (proxy-wasm-cpp-host) does (compile once, instantiate per worker, run
//! `_initialize`, find the allocator).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{anyhow, bail, Context as _, Result};
use wasmtime::{Config, Engine, Instance, Linker, Module, Store, StoreLimitsBuilder, Val, ValType};

use crate::hostcalls::{self, ProcExit};
use crate::state::{SharedRef, VmState};

pub use crate::abi::ROOT_CONTEXT_ID;
/// Default fuel per guest call: a runaway loop ends as a trap instead of hanging.
pub const DEFAULT_FUEL_PER_CALL: u64 = 20_000_000_000;

fn engine() -> Result<Engine> {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    if let Some(e) = ENGINE.get() {
        return Ok(e.clone());
    }
    let mut config = Config::new();
    config.consume_fuel(true);
    // `LLM_ROUTER_PERFMAP=1`: write /tmp/perf-PID.map so `perf record` names the guest's
    // functions (profiling the filter: see bench/README.md).
    if std::env::var_os("LLM_ROUTER_PERFMAP").is_some_and(|v| v == "1") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
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

/// Describes a guest failure: `proc_exit(n)`, or the trap and its root cause.
pub fn describe(e: &wasmtime::Error) -> String {
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

/// What every VM of one module is made from. Cheap to clone (the module is shared).
#[derive(Clone)]
pub struct VmFactory {
    module: Module,
    linker: Arc<Linker<VmState>>,
    init: Option<&'static str>,
    /// Per-VM memory limit in bytes (`None`: wasmtime's default, the module's own maximum).
    pub memory_limit: Option<usize>,
    pub fuel_per_call: u64,
    /// Meter every guest call: instructions (fuel) and host calls by name (`crate::meter`).
    pub metered: bool,
}

impl VmFactory {
    /// Compiles `bytes` (binary or `.wat`) and checks that it is a Proxy-Wasm 0.2.x module.
    pub fn new(bytes: &[u8]) -> Result<VmFactory> {
        let engine = engine()?;
        let module = compile(&engine, bytes).context("compiling the module")?;
        let exports: Vec<String> = module.exports().map(|e| e.name().to_string()).collect();
        let has = |n: &str| exports.iter().any(|e| e == n);
        if has("proxy_abi_version_0_1_0") && !has("proxy_abi_version_0_2_1") {
            bail!("module targets Proxy-Wasm ABI 0.1.0; this host emulates 0.2.1");
        }
        if !has("proxy_abi_version_0_2_1") && !has("proxy_abi_version_0_2_0") {
            bail!("module exports no proxy_abi_version_0_2_x function: not a Proxy-Wasm module");
        }
        let mut linker: Linker<VmState> = Linker::new(&engine);
        hostcalls::add_to_linker(&mut linker)?;
        linker.define_unknown_imports_as_traps(&module)?;
        let init = if has("_initialize") {
            Some("_initialize")
        } else if has("_start") {
            Some("_start")
        } else {
            None
        };
        Ok(VmFactory {
            module,
            linker: Arc::new(linker),
            init,
            memory_limit: None,
            fuel_per_call: DEFAULT_FUEL_PER_CALL,
            metered: false,
        })
    }

    /// Instantiates one VM for `worker` and runs `_initialize` (or `_start`).
    pub fn instantiate(
        &self,
        worker: usize,
        shared: SharedRef,
        plugin_config: Vec<u8>,
        vm_config: Vec<u8>,
    ) -> Result<Vm> {
        let mut limits = StoreLimitsBuilder::new();
        if let Some(bytes) = self.memory_limit {
            limits = limits.memory_size(bytes);
        }
        let state = VmState::new(shared, worker, plugin_config, vm_config, limits.build());
        let mut store = Store::new(self.module.engine(), state);
        store.limiter(|d| &mut d.limits);
        store.set_fuel(self.fuel_per_call)?;
        let metered_linker = if self.metered {
            store.data_mut().meter = Some(crate::meter::Meter::default());
            Some(crate::meter::counting_linker(
                &self.linker,
                &mut store,
                &self.module,
            )?)
        } else {
            None
        };
        let instance = metered_linker
            .as_ref()
            .unwrap_or(&self.linker)
            .instantiate(&mut store, &self.module)
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
            worker,
            failed: None,
            next_context: ROOT_CONTEXT_ID + 1,
            started: false,
            fuel_per_call: self.fuel_per_call,
            last_fuel: 0,
        };
        if let Some(init) = self.init {
            if let Err(e) = vm.raw_call(init, &[]) {
                return Err(anyhow!("worker {worker}: {init} failed: {}", describe(&e)));
            }
        }
        Ok(vm)
    }
}

/// One VM (one Envoy worker thread's instance of the module).
pub struct Vm {
    pub store: Store<VmState>,
    instance: Instance,
    /// The worker this VM belongs to.
    pub worker: usize,
    /// Why the VM failed (a trap); a failed VM runs nothing more.
    pub failed: Option<String>,
    pub next_context: u32,
    /// The root context was created and configured.
    pub started: bool,
    fuel_per_call: u64,
    /// Instructions (fuel) the last completed `raw_call` consumed.
    pub last_fuel: u64,
}

impl Vm {
    /// Calls an export with i32 arguments (i64 where the signature says so). `Ok(None)` when the
    /// module does not export it or it returns nothing.
    pub fn raw_call(
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
        self.store.set_fuel(self.fuel_per_call)?;
        func.call(&mut self.store, &params, &mut results)?;
        self.last_fuel = self
            .fuel_per_call
            .saturating_sub(self.store.get_fuel().unwrap_or(0));
        Ok(results.first().and_then(|v| match v {
            Val::I32(x) => Some(*x as i64),
            Val::I64(x) => Some(*x),
            _ => None,
        }))
    }
}
