//! `llm-router-extproc`: see the crate documentation and `--help`.

use std::process::ExitCode;
use std::time::Duration;

use llm_router_extproc::cli::{self, CliError, Options};
use llm_router_extproc::engine::EngineSettings;
use llm_router_extproc::quota::{
    self, cli::QuotaOptions, script::Store, server::QuotaBound, server::QuotaServe,
};
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
        grpc_clusters: opts.grpc_clusters.clone(),
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

async fn run_quota(opts: QuotaOptions) -> Result<(), String> {
    let limits = match &opts.plugin_config {
        Some(path) => {
            let json = read("--plugin-config", path)?;
            let limits = quota::config::parse(&json)
                .map_err(|e| format!("--plugin-config {}: {e}", path.display()))?;
            Some(limits)
        }
        None => {
            log::warn!("no --plugin-config: ShouldRateLimit answers FAILED_PRECONDITION");
            None
        }
    };
    let tls = tls::material(&opts.tls).map_err(|e| e.to_string())?;
    let store = Store::new(&opts.redis, opts.redis_timeout)?;
    let bound = QuotaBound::bind(opts.grpc_addr, opts.health_addr, opts.metrics_addr)
        .await
        .map_err(|e| e.to_string())?;
    log::info!(
        "quota service on {} (health {}, metrics {}), Redis {}",
        opts.grpc_addr,
        opts.health_addr,
        opts.metrics_addr,
        opts.redis
    );
    let serve = QuotaServe {
        store,
        limits,
        tls,
        drain: Duration::from_secs(5),
    };
    bound
        .run(serve, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("llm-router-extproc: tokio runtime: {e}");
            ExitCode::FAILURE
        })
}

fn finish(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llm-router-extproc: {e}");
            ExitCode::FAILURE
        }
    }
}

fn quota_main(args: impl Iterator<Item = String>) -> ExitCode {
    let opts = match quota::cli::parse(args) {
        Ok(o) => o,
        Err(CliError::Help) => {
            use std::io::Write as _;
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = writeln!(std::io::stdout(), "{}", quota::cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("llm-router-extproc quota: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime() {
        Ok(rt) => finish(rt.block_on(run_quota(opts))),
        Err(code) => code,
    }
}

fn main() -> ExitCode {
    logger::init();
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("quota") {
        return quota_main(args.skip(1));
    }
    let opts = match cli::parse(args) {
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
    match runtime() {
        Ok(rt) => finish(rt.block_on(run(opts))),
        Err(code) => code,
    }
}
