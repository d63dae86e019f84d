//! `host-sim` command line: replay JSONL traffic through the filter in the simulated host, or
//! fuzz it (`host-sim fuzz`, see `host_sim::fuzz`), measure it (`host-sim cost`), or route a
//! simulated GPU fleet with it (`host-sim fleet`, see `host_sim::fleet`).

use anyhow::{bail, Context as _, Result};
use host_sim::replay::{run, ReplayOptions};

const USAGE: &str =
    "usage: host-sim replay --wasm FILE --config PLUGIN.json --requests TRAFFIC.jsonl \
[--workers N] [--seed S] [--env KEY=VALUE]... [--no-stop-iteration] [--grpc-cluster NAME=URL]...
       host-sim fuzz --help
       host-sim cost [--wasm FILE] [--check BUDGET.json] [--write-budget BUDGET.json]
       host-sim fleet --help";

fn main() {
    match real_main() {
        Ok(()) => {}
        Err(e) => {
            eprintln!("host-sim: {e:#}");
            std::process::exit(1);
        }
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("replay") => {}
        Some("fuzz") => {
            let code = host_sim::fuzz::cli::main(&args[1..])?;
            if code != 0 {
                std::process::exit(code);
            }
            return Ok(());
        }
        Some("cost") => {
            let code = host_sim::cost::cli::main(&args[1..])?;
            if code != 0 {
                std::process::exit(code);
            }
            return Ok(());
        }
        Some("fleet") => {
            let code = host_sim::fleet::cli::main(&args[1..])?;
            if code != 0 {
                std::process::exit(code);
            }
            return Ok(());
        }
        Some("-h") | Some("--help") | None => {
            println!("{USAGE}");
            return Ok(());
        }
        Some(other) => bail!("unknown command {other}\n{USAGE}"),
    }
    let mut opts = ReplayOptions {
        wasm: "dist/llm_router.wasm".into(),
        config: String::new(),
        requests: String::new(),
        workers: 1,
        seed: 0,
        env: Vec::new(),
        allow_on_headers_stop_iteration: true,
        grpc_clusters: Default::default(),
    };
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--wasm" => opts.wasm = value()?,
            "--config" => opts.config = value()?,
            "--requests" => opts.requests = value()?,
            "--workers" => opts.workers = value()?.parse().context("--workers")?,
            "--seed" => opts.seed = value()?.parse().context("--seed")?,
            "--env" => {
                let kv = value()?;
                let (k, v) = kv.split_once('=').context("--env wants KEY=VALUE")?;
                opts.env.push((k.to_string(), v.to_string()));
            }
            "--no-stop-iteration" => opts.allow_on_headers_stop_iteration = false,
            // The target of the module's gRPC calls to upstream NAME (repeatable): calls are
            // made for real, blocking, right after the callback that made them.
            "--grpc-cluster" => {
                let arg = value()?;
                let named = |why: String| anyhow::anyhow!("--grpc-cluster {arg:?}: {why}");
                let cluster = grpc_call::parse_cluster(&arg).map_err(named)?;
                opts.grpc_clusters.add(cluster).map_err(named)?;
            }
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    if opts.config.is_empty() || opts.requests.is_empty() {
        bail!("--config and --requests are required\n{USAGE}");
    }
    print!("{}", run(&opts)?);
    Ok(())
}
