//! The process: set-up, then scrape -> snapshot -> push every interval (thin I/O around the
//! pure modules), on a single-threaded tokio runtime.

use crate::cli::{self, Command, Options};
use crate::config::{self, Config, ConfigError, PushTarget};
use crate::http::{self, HttpClient, HttpError};
use crate::kube_source::KubeSource;
use crate::logging::{self, now_ms};
use crate::pools::{merge, Pool};
use crate::signal::Stop;
use crate::snapshot::{self, endpoint_load, HealthTracker, PushFailure, PushLog, ScrapeResult};
use http_body_util::Full;
use hyper::body::Bytes;
use llm_router_snapshot::LoadSnapshot;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often a persisting push failure is logged again.
const PUSH_FAILURE_REMINDER: Duration = Duration::from_secs(30);
/// How long the first cycle waits for the Kubernetes watches' first lists.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(10);
const ACCEPT: &str = "text/plain;version=0.0.4;q=1, */*;q=0.1";

/// Runs the sidecar with `args` (without the program name); returns the exit status.
pub fn main(args: &[String]) -> i32 {
    let opts = match cli::parse_args(args) {
        Ok(Command::Run(opts)) => opts,
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            return 0;
        }
        Ok(Command::Version) => {
            println!("llm-router-sidecar {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Err(e) => {
            eprintln!("llm-router-sidecar: {e}\n\n{}", cli::USAGE);
            return 2;
        }
    };
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(opts)),
        Err(e) => {
            logging::error(&format!("cannot start the async runtime: {e}"));
            1
        }
    }
}

/// What a cycle reads its endpoints from.
struct Sources {
    files: Vec<Pool>,
    kube: Option<KubeSource>,
}

async fn run(opts: Options) -> i32 {
    let config_error = |e: ConfigError| {
        logging::error(&format!(
            "configuration error in {}: {e}",
            opts.config.display()
        ));
        2
    };
    let (cfg, files, token) = match set_up(&opts) {
        Ok(parts) => parts,
        Err(e) => return config_error(e),
    };
    let kube = match &cfg.kubernetes {
        None => None,
        Some(settings) => match kube::Client::try_default().await {
            Ok(client) => Some(KubeSource::start(client, settings.clone())),
            Err(e) => {
                return config_error(ConfigError::new(
                    "kubernetes",
                    format!("cannot configure a Kubernetes client (in-cluster service account or KUBECONFIG): {e}"),
                ))
            }
        },
    };
    let stop = match Stop::install() {
        Ok(stop) => Some(stop),
        Err(e) => {
            logging::warn(&format!(
                "could not install SIGTERM/SIGINT handlers ({e}); they will kill the process mid-cycle"
            ));
            None
        }
    };
    let sources = Sources { files, kube };
    logging::info(&start_line(&cfg, &sources, &opts));
    if let Some(kube) = &sources.kube {
        if !kube.wait_synced(FIRST_LIST_WAIT).await {
            logging::warn(&format!(
                "no complete list of the InferencePool and its pods within {} s; \
                 starting without (the watches keep trying)",
                FIRST_LIST_WAIT.as_secs()
            ));
        }
    }
    run_loop(&cfg, sources, token.as_deref(), &opts, stop).await
}

fn set_up(opts: &Options) -> Result<(Config, Vec<Pool>, Option<String>), ConfigError> {
    let text = std::fs::read_to_string(&opts.config)
        .map_err(|e| ConfigError::new("(file)", format!("cannot read the file: {e}")))?;
    let base_dir = match opts.config.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let cfg = config::parse_config_with(&text, base_dir, &opts.kube)?;
    let mut pools = Vec::with_capacity(cfg.pools.len());
    for pool_cfg in &cfg.pools {
        let pool = Pool::load(pool_cfg)
            .map_err(|e| ConfigError::new(format!("pools.{}.file", pool_cfg.name), e))?;
        if pool.endpoints.is_empty() {
            logging::warn(&format!(
                "pool {}: the pool file lists no endpoint yet",
                pool.name
            ));
        }
        pools.push(pool);
    }
    let token = if opts.push {
        Some(config::resolve_token(
            &cfg.token,
            |name| std::env::var(name).ok(),
            |path| std::fs::read_to_string(path),
        )?)
    } else {
        None
    };
    Ok((cfg, pools, token))
}

fn start_line(cfg: &Config, sources: &Sources, opts: &Options) -> String {
    let mut pools_text: Vec<String> = sources.files.iter().map(Pool::describe).collect();
    if let Some(kube) = &sources.kube {
        pools_text.push(kube.describe());
    }
    let push_text = if opts.push {
        format!("pushing to {} (token from {})", cfg.push.url, cfg.token)
    } else {
        "not pushing (--no-push)".to_string()
    };
    let kv_text = if cfg.metrics.kv_cache.is_empty() {
        "none, reported as 0".to_string()
    } else {
        cfg.metrics.kv_cache.join(" | ")
    };
    format!(
        "llm-router-sidecar {} starting: pools [{}], interval {} ms, scrape timeout {} ms, \
         metrics path {} (waiting: {}; running: {}; kv_cache: {kv_text}), {push_text}{}{}",
        env!("CARGO_PKG_VERSION"),
        pools_text.join("; "),
        cfg.interval.as_millis(),
        cfg.scrape_timeout.as_millis(),
        cfg.metrics_path,
        cfg.metrics.waiting.join(" | "),
        cfg.metrics.running.join(" | "),
        if opts.print {
            ", printing snapshots"
        } else {
            ""
        },
        if opts.once { ", once" } else { "" },
    )
}

async fn run_loop(
    cfg: &Config,
    mut sources: Sources,
    token: Option<&str>,
    opts: &Options,
    mut stop: Option<Stop>,
) -> i32 {
    let client = http::client();
    let mut seq: u64 = 0;
    let mut health = HealthTracker::default();
    let mut push_log = PushLog::new(PUSH_FAILURE_REMINDER);
    let push_timeout = cfg.scrape_timeout.max(Duration::from_secs(1));
    loop {
        let next = tokio::time::Instant::now() + cfg.interval;
        for pool in &mut sources.files {
            for line in pool.refresh() {
                logging::warn(&line);
            }
        }
        let kube_tiers = sources.kube.as_mut().map(KubeSource::current);
        let pools = merge(&sources.files, kube_tiers.unwrap_or_default());
        seq += 1;
        let snapshot = LoadSnapshot {
            pools: measure(cfg, &client, &pools, &mut health).await,
            generated_at_ms: now_ms(),
            seq,
        };
        let body = snapshot::to_json(&snapshot);

        if opts.print {
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{body}").and_then(|()| out.flush()).is_err() {
                logging::warn("stdout is closed; stopping");
                return if opts.once { 1 } else { 0 };
            }
        }

        let pushed = match token {
            Some(token) => Some(push(&client, &cfg.push, token, body, push_timeout).await),
            None => None,
        };
        if let Some(result) = &pushed {
            if let Some(line) = push_log.on_result(Instant::now(), &cfg.push.url, seq, result) {
                if result.is_ok() {
                    logging::info(&line);
                } else {
                    logging::error(&line);
                }
            }
        }
        if opts.once {
            return match pushed {
                Some(Err(_)) => 1,
                _ => 0,
            };
        }
        let stopped = match stop.as_mut() {
            Some(stop) => tokio::select! {
                () = tokio::time::sleep_until(next) => false,
                () = stop.requested() => true,
            },
            None => {
                tokio::time::sleep_until(next).await;
                false
            }
        };
        if stopped {
            logging::info("received SIGTERM/SIGINT; exiting");
            return 0;
        }
    }
}

/// Scrapes every endpoint of every pool concurrently and turns the results into the
/// snapshot's pools; logs health changes.
async fn measure(
    cfg: &Config,
    client: &HttpClient,
    pools: &[(String, Vec<String>)],
    health: &mut HealthTracker,
) -> BTreeMap<String, Vec<llm_router_snapshot::Endpoint>> {
    let scrapes = pools.iter().flat_map(|(_, endpoints)| {
        endpoints
            .iter()
            .map(|a| scrape(client, a, &cfg.metrics_path, cfg.scrape_timeout))
    });
    let mut results = futures_util::future::join_all(scrapes).await.into_iter();
    let mut out = BTreeMap::new();
    let mut present = HashSet::new();
    for (name, endpoints) in pools {
        let mut entries = Vec::with_capacity(endpoints.len());
        for address in endpoints {
            let scraped = results
                .next()
                .unwrap_or_else(|| Err("not scraped".to_string()));
            let (load, outcome) = endpoint_load(address, &scraped, &cfg.metrics);
            if let Some(line) = health.observe(name, &load, &outcome) {
                if outcome.is_ok() {
                    logging::info(&line);
                } else {
                    logging::warn(&line);
                }
            }
            present.insert((name.clone(), address.clone()));
            entries.push(load);
        }
        out.insert(name.clone(), entries);
    }
    health.retain(&present);
    out
}

async fn scrape(client: &HttpClient, address: &str, path: &str, timeout: Duration) -> ScrapeResult {
    let request = hyper::Request::get(format!("http://{address}{path}"))
        .header(hyper::header::ACCEPT, ACCEPT)
        .body(Full::default())
        .map_err(|e| format!("bad request for {address}: {e}"))?;
    match http::send(client, request, timeout).await {
        Ok(r) if r.status == 200 => Ok(String::from_utf8_lossy(&r.body).into_owned()),
        Ok(r) => Err(format!("GET {path} answered HTTP {}", r.status)),
        Err(HttpError::Timeout) => Err(format!(
            "GET {path} got no complete answer within {} ms",
            timeout.as_millis()
        )),
        Err(e) => Err(format!("GET {path}: {e}")),
    }
}

async fn push(
    client: &HttpClient,
    target: &PushTarget,
    token: &str,
    body: String,
    timeout: Duration,
) -> Result<(), PushFailure> {
    let request = hyper::Request::post(&target.url)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| PushFailure::Transport(format!("bad request: {e}")))?;
    match http::send(client, request, timeout).await {
        Ok(r) if (200..300).contains(&r.status) => Ok(()),
        Ok(r) => Err(PushFailure::Status(
            r.status,
            String::from_utf8_lossy(&r.body).into_owned(),
        )),
        Err(HttpError::Connect(e)) => Err(PushFailure::Unreachable(e)),
        Err(HttpError::Timeout) => Err(PushFailure::Transport(format!(
            "no answer within {} ms",
            timeout.as_millis()
        ))),
        Err(e) => Err(PushFailure::Transport(e.to_string())),
    }
}
