//! The process: set-up, then scrape -> snapshot -> push every interval (thin I/O around the
//! pure modules).

use crate::cli::{self, Command, Options};
use crate::config::{self, Config, ConfigError, PushTarget};
use crate::http::{self, HttpError, Request};
use crate::logging::{self, now_ms};
use crate::pools::Pool;
use crate::signal;
use crate::snapshot::{endpoint_load, HealthTracker, PushFailure, PushLog, ScrapeResult, Snapshot};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

/// How often a persisting push failure is logged again.
const PUSH_FAILURE_REMINDER: Duration = Duration::from_secs(30);
/// Granularity of the sleep between cycles (how fast a signal is noticed).
const SLEEP_STEP: Duration = Duration::from_millis(50);
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
    let (cfg, pools, token) = match set_up(&opts) {
        Ok(parts) => parts,
        Err(e) => {
            logging::error(&format!(
                "configuration error in {}: {e}",
                opts.config.display()
            ));
            return 2;
        }
    };
    if !signal::install() {
        logging::warn("could not install SIGTERM/SIGINT handlers; stop with SIGKILL");
    }
    logging::info(&start_line(&cfg, &pools, &opts));
    run_loop(&cfg, pools, token.as_deref(), &opts)
}

fn set_up(opts: &Options) -> Result<(Config, Vec<Pool>, Option<String>), ConfigError> {
    let text = std::fs::read_to_string(&opts.config)
        .map_err(|e| ConfigError::new("(file)", format!("cannot read the file: {e}")))?;
    let base_dir = match opts.config.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let cfg = config::parse_config(&text, base_dir)?;
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

fn start_line(cfg: &Config, pools: &[Pool], opts: &Options) -> String {
    let pools_text: Vec<String> = pools.iter().map(Pool::describe).collect();
    let push_text = if opts.push {
        format!("pushing to {} (token from {})", cfg.push.url, cfg.token)
    } else {
        "not pushing (--no-push)".to_string()
    };
    format!(
        "llm-router-sidecar {} starting: pools [{}], interval {} ms, scrape timeout {} ms, \
         metrics path {} (waiting: {}; running: {}; kv_cache: {}), {}{}{}",
        env!("CARGO_PKG_VERSION"),
        pools_text.join("; "),
        cfg.interval.as_millis(),
        cfg.scrape_timeout.as_millis(),
        cfg.metrics_path,
        cfg.metrics.waiting.join(" | "),
        cfg.metrics.running.join(" | "),
        if cfg.metrics.kv_cache.is_empty() {
            "none, reported as 0".to_string()
        } else {
            cfg.metrics.kv_cache.join(" | ")
        },
        push_text,
        if opts.print {
            ", printing snapshots"
        } else {
            ""
        },
        if opts.once { ", once" } else { "" },
    )
}

fn run_loop(cfg: &Config, mut pools: Vec<Pool>, token: Option<&str>, opts: &Options) -> i32 {
    let mut seq: u64 = 0;
    let mut health = HealthTracker::default();
    let mut push_log = PushLog::new(PUSH_FAILURE_REMINDER);
    let push_timeout = cfg.scrape_timeout.max(Duration::from_secs(1));
    loop {
        let cycle_start = Instant::now();
        for pool in &mut pools {
            for line in pool.refresh() {
                logging::warn(&line);
            }
        }

        let targets: Vec<&str> = pools
            .iter()
            .flat_map(|p| p.endpoints.iter().map(String::as_str))
            .collect();
        let mut results = scrape_all(&targets, &cfg.metrics_path, cfg.scrape_timeout).into_iter();

        let mut snapshot_pools = BTreeMap::new();
        let mut present = HashSet::new();
        for pool in &pools {
            let mut entries = Vec::with_capacity(pool.endpoints.len());
            for address in &pool.endpoints {
                let scraped = results
                    .next()
                    .unwrap_or_else(|| Err("not scraped".to_string()));
                let (load, outcome) = endpoint_load(address, &scraped, &cfg.metrics);
                if let Some(line) = health.observe(&pool.name, &load, &outcome) {
                    if outcome.is_ok() {
                        logging::info(&line);
                    } else {
                        logging::warn(&line);
                    }
                }
                present.insert((pool.name.clone(), address.clone()));
                entries.push(load);
            }
            snapshot_pools.insert(pool.name.clone(), entries);
        }
        health.retain(&present);

        seq += 1;
        let snapshot = Snapshot {
            pools: snapshot_pools,
            generated_at_ms: now_ms(),
            seq,
        };
        let body = snapshot.to_json();

        if opts.print {
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{body}").and_then(|()| out.flush()).is_err() {
                logging::warn("stdout is closed; stopping");
                return if opts.once { 1 } else { 0 };
            }
        }

        let pushed = token.map(|token| push(&cfg.push, token, &body, push_timeout));
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

        let next = cycle_start + cfg.interval;
        loop {
            if signal::stop_requested() {
                logging::info("received SIGTERM/SIGINT; exiting");
                return 0;
            }
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            thread::sleep(left.min(SLEEP_STEP));
        }
    }
}

/// Scrapes every address concurrently (one short-lived thread each); results keep the order of
/// `addresses`. Every scrape ends within `timeout`.
fn scrape_all(addresses: &[&str], path: &str, timeout: Duration) -> Vec<ScrapeResult> {
    thread::scope(|scope| {
        let handles: Vec<_> = addresses
            .iter()
            .map(|address| {
                thread::Builder::new()
                    .name("scrape".into())
                    .stack_size(256 * 1024)
                    .spawn_scoped(scope, move || scrape_one(address, path, timeout))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| match handle {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err("the scrape thread panicked".to_string())),
                Err(e) => Err(format!("cannot start a scrape thread: {e}")),
            })
            .collect()
    })
}

fn scrape_one(address: &str, path: &str, timeout: Duration) -> ScrapeResult {
    let socket: SocketAddr = address
        .parse()
        .map_err(|_| format!("bad address {address:?}"))?;
    let request = Request {
        method: "GET",
        host: address,
        path,
        headers: &[("Accept", ACCEPT)],
        body: b"",
    };
    match http::send(&[socket], &request, timeout) {
        Ok(r) if r.status == 200 => Ok(String::from_utf8_lossy(&r.body).into_owned()),
        Ok(r) => Err(format!("GET {path} answered HTTP {}", r.status)),
        Err(HttpError::Timeout) => Err(format!(
            "GET {path} got no complete answer within {} ms",
            timeout.as_millis()
        )),
        Err(e) => Err(format!("GET {path}: {e}")),
    }
}

fn push(
    target: &PushTarget,
    token: &str,
    body: &str,
    timeout: Duration,
) -> Result<(), PushFailure> {
    let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| PushFailure::Unreachable(format!("cannot resolve {}: {e}", target.host)))?
        .collect();
    let authorization = format!("Bearer {token}");
    let request = Request {
        method: "POST",
        host: &target.authority,
        path: &target.path,
        headers: &[
            ("authorization", &authorization),
            ("content-type", "application/json"),
        ],
        body: body.as_bytes(),
    };
    match http::send(&addrs, &request, timeout) {
        Ok(r) if (200..300).contains(&r.status) => Ok(()),
        Ok(r) => Err(PushFailure::Status(
            r.status,
            String::from_utf8_lossy(&r.body).into_owned(),
        )),
        Err(HttpError::Connect(e)) => Err(PushFailure::Unreachable(e.to_string())),
        Err(HttpError::Timeout) => Err(PushFailure::Transport(format!(
            "no answer within {} ms",
            timeout.as_millis()
        ))),
        Err(e) => Err(PushFailure::Transport(e.to_string())),
    }
}
