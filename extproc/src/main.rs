//! `llm-router-extproc`: see the crate documentation and `--help`.

use std::process::ExitCode;
use std::time::Duration;

use llm_router_extproc::cli::{self, CliError, Options};
use llm_router_extproc::engine::EngineSettings;
use llm_router_extproc::server::{Bound, ServeOptions};
use llm_router_extproc::{host, logger, tls};

fn read(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

/// `--env NAME` values as Envoy's `host_env_keys` gives them: unset variables are left out.
fn env_values(names: &[String]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|n| match std::env::var(n) {
            Ok(v) => Some((n.clone(), v)),
            Err(_) => {
                log::warn!("--env {n}: not set in this environment; the module will not see it");
                None
            }
        })
        .collect()
}

/// The standard OpenTelemetry variables, when `--otlp-endpoint` is not given.
fn otlp_from_env() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .filter_map(|n| std::env::var(n).ok())
    .find(|v| !v.trim().is_empty())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            log::info!("shutting down: draining open streams");
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn run(opts: Options) -> Result<(), String> {
    let wasm = read("--wasm", &opts.wasm)?;
    let plugin_config = read("--plugin-config", &opts.plugin_config)?;
    let tls = tls::material(&opts.tls).map_err(|e| e.to_string())?;
    let settings = EngineSettings {
        wasm,
        plugin_config: plugin_config.clone(),
        env: env_values(&opts.env),
        workers: opts.workers,
        memory_limit_bytes: opts.memory_limit_mb * 1024 * 1024,
        fail_open: opts.fail_open,
    };
    let bound = Bound::bind(ServeOptions {
        grpc_addr: opts.grpc_addr,
        health_addr: opts.health_addr,
        metrics_addr: opts.metrics_addr,
        tls,
        plugin_config_path: opts.plugin_config.clone(),
        plugin_config,
        drain: Duration::from_secs(opts.drain_seconds),
        reload_period: Duration::from_secs(1),
        otlp_endpoint: opts.otlp_endpoint.clone().or_else(otlp_from_env),
    })
    .await
    .map_err(|e| e.to_string())?;
    bound
        .run(move || host::start(settings), shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    logger::init();
    let opts = match cli::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(CliError::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("llm-router-extproc: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("llm-router-extproc: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llm-router-extproc: {e}");
            ExitCode::FAILURE
        }
    }
}
