//! [`HostBuilder`]: the options of a simulated host (module, workers, configuration,
//! environment, seed, clock, Envoy options) and building it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _, Result};
use host_engine::state::{Rng, Shared, SharedRef};
use host_engine::vm::VmFactory;
use host_engine::{Core, LogLevel, PropValue};

use crate::host::{prop_path, Host};

/// Default wall clock at host creation: 2023-11-14T22:13:20Z.
const DEFAULT_START_MS: u64 = 1_700_000_000_000;

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
    grpc_upstreams: Option<Vec<String>>,
    grpc_clusters: Option<grpc_call::Clusters>,
    echo_logs: bool,
    metered: bool,
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
            grpc_upstreams: None,
            grpc_clusters: None,
            echo_logs: false,
            metered: false,
        }
    }
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

    /// Upstream names `proxy_grpc_call` may name (others fail with ParseFailure, as Envoy's
    /// unknown cluster); the calls wait for the test ([`Host::answer_grpc_call`]). Default:
    /// any name.
    pub fn grpc_upstreams(mut self, names: &[&str]) -> Self {
        self.grpc_upstreams = Some(names.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Performs gRPC calls for real (`--grpc-cluster NAME=URL`): only these names are known,
    /// and each call is made, blocking, on a runtime the host owns, right after the guest
    /// callback that made it ([`Host::perform_grpc_calls`]).
    pub fn grpc_clusters(mut self, clusters: grpc_call::Clusters) -> Self {
        self.grpc_clusters = Some(clusters);
        self
    }

    /// Also print every guest log line to stderr as it happens.
    pub fn echo_logs(mut self, echo: bool) -> Self {
        self.echo_logs = echo;
        self
    }

    /// Meter every guest call: instructions (wasmtime fuel) and host calls by name, read with
    /// [`Host::take_costs`]. Off by default (the imports are not wrapped).
    pub fn metered(mut self, on: bool) -> Self {
        self.metered = on;
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
        let mut factory = VmFactory::new(&bytes)?;
        factory.metered = self.metered;
        let mut shared = Shared::new(self.start_ms, &self.vm_id, &self.root_id, &self.plugin_name);
        shared.rng = Rng::new(self.seed);
        shared.env = self.env.clone();
        shared.log_level = self.log_level;
        shared.properties = self.properties.iter().cloned().collect();
        shared.known_clusters = self.known_clusters.clone();
        shared.grpc_clusters = match &self.grpc_clusters {
            Some(c) => Some(c.names()),
            None => self.grpc_upstreams.clone(),
        };
        let grpc = match self.grpc_clusters.clone() {
            Some(c) => {
                Some(grpc_call::GrpcClient::with_own_runtime(c).map_err(anyhow::Error::msg)?)
            }
            None => None,
        };
        shared.echo_logs = self.echo_logs;
        let shared: SharedRef = Arc::new(Mutex::new(shared));
        let mut vms = Vec::new();
        for worker in 0..self.workers {
            let vm = factory.instantiate(
                worker,
                shared.clone(),
                self.plugin_config.clone(),
                self.vm_config.clone(),
            )?;
            vms.push(vm);
        }
        Ok(Host {
            core: Core {
                vms,
                shared,
                factory,
                allow_on_headers_stop_iteration: self.allow_on_headers_stop_iteration,
                fail_open: self.fail_open,
            },
            grpc,
        })
    }
}

impl Host {
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }
}
