//! Building the load snapshot from scrape results, and deciding what to log (pure).

use crate::config::MetricNames;
use crate::prom::{self, Aggregate};
use llm_router_snapshot::{Endpoint, LoadSnapshot};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Queue lengths above this are reported as this (keeps the JSON within u32 for any reader).
pub const MAX_COUNT: u64 = u32::MAX as u64;

/// One endpoint's entry in the snapshot (the wire type shared with the filter).
pub type EndpointLoad = Endpoint;

/// The snapshot as one line of JSON (the push body).
pub fn to_json(snapshot: &LoadSnapshot) -> String {
    // Serializing plain strings, integers and finite floats cannot fail.
    serde_json::to_string(snapshot).unwrap_or_default()
}

/// The outcome of scraping one endpoint: the /metrics body, or why there is none.
pub type ScrapeResult = Result<String, String>;

/// Turns a scrape result into the endpoint's snapshot entry; `Err` carries why it is unhealthy.
pub fn endpoint_load(
    address: &str,
    scraped: &ScrapeResult,
    names: &MetricNames,
) -> (EndpointLoad, Result<(), String>) {
    match measure(scraped, names) {
        Ok((waiting, running, kv_cache)) => (
            EndpointLoad {
                address: address.to_string(),
                waiting,
                running,
                kv_cache,
                healthy: true,
            },
            Ok(()),
        ),
        Err(reason) => (
            EndpointLoad {
                address: address.to_string(),
                waiting: 0,
                running: 0,
                kv_cache: 0.0,
                healthy: false,
            },
            Err(reason),
        ),
    }
}

fn measure(scraped: &ScrapeResult, names: &MetricNames) -> Result<(u64, u64, f64), String> {
    let body = scraped.as_ref().map_err(Clone::clone)?;
    let page = prom::parse(body);
    let missing = |what: &str, list: &[String]| {
        format!(
            "no {what} metric in the scrape (looked for {})",
            list.join(", ")
        )
    };
    let waiting = page
        .first_present(&names.waiting, Aggregate::Sum)
        .ok_or_else(|| missing("waiting", &names.waiting))?
        .1;
    let running = page
        .first_present(&names.running, Aggregate::Sum)
        .ok_or_else(|| missing("running", &names.running))?
        .1;
    let kv_cache = if names.kv_cache.is_empty() {
        0.0
    } else {
        page.first_present(&names.kv_cache, Aggregate::Max)
            .ok_or_else(|| missing("kv_cache", &names.kv_cache))?
            .1
    };
    Ok((to_count(waiting), to_count(running), to_fraction(kv_cache)))
}

/// Gauges are floats; counts are rounded, negative becomes 0, +Inf becomes [`MAX_COUNT`].
fn to_count(v: f64) -> u64 {
    if v.is_nan() || v <= 0.0 {
        0
    } else if v >= MAX_COUNT as f64 {
        MAX_COUNT
    } else {
        v.round() as u64
    }
}

fn to_fraction(v: f64) -> f64 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(0.0, 1.0)
    }
}

/// Remembers each endpoint's health to log only state changes (and each endpoint's first state).
#[derive(Debug, Default)]
pub struct HealthTracker {
    last: HashMap<(String, String), bool>,
}

impl HealthTracker {
    /// Records one observation; returns a log line when the state changed.
    pub fn observe(
        &mut self,
        pool: &str,
        load: &EndpointLoad,
        outcome: &Result<(), String>,
    ) -> Option<String> {
        let key = (pool.to_string(), load.address.clone());
        let healthy = outcome.is_ok();
        let previous = self.last.insert(key, healthy);
        if previous == Some(healthy) {
            return None;
        }
        let who = format!("endpoint {pool}/{}", load.address);
        Some(match (outcome, previous) {
            (Ok(()), None) => format!(
                "{who} is healthy (waiting={} running={} kv_cache={:.3})",
                load.waiting, load.running, load.kv_cache
            ),
            (Ok(()), Some(_)) => format!(
                "{who} is healthy again (waiting={} running={} kv_cache={:.3})",
                load.waiting, load.running, load.kv_cache
            ),
            (Err(reason), _) => format!("{who} is UNHEALTHY: {reason}"),
        })
    }

    /// Forgets endpoints that are no longer in any pool.
    pub fn retain(&mut self, current: &HashSet<(String, String)>) {
        self.last.retain(|k, _| current.contains(k));
    }
}

/// Why a push failed, classified for logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushFailure {
    /// Could not connect (refused, unreachable): the gateway is down or not listening there.
    Unreachable(String),
    /// Connected but no complete answer in time, or a broken connection.
    Transport(String),
    /// The gateway answered with a non-2xx status.
    Status(u16, String),
}

impl PushFailure {
    fn kind(&self) -> String {
        match self {
            PushFailure::Unreachable(_) => "unreachable".into(),
            PushFailure::Transport(_) => "transport".into(),
            PushFailure::Status(code, _) => format!("status {code}"),
        }
    }

    pub fn describe(&self, url: &str) -> String {
        match self {
            PushFailure::Unreachable(e) => {
                format!("cannot reach the gateway at {url} ({e}); is Envoy running? retrying every interval")
            }
            PushFailure::Transport(e) => format!("push to {url} failed: {e}"),
            PushFailure::Status(403, _) => format!(
                "push to {url} was REJECTED with 403: the token does not match the filter's push token \
                 (endpoints.push_token_env in the filter configuration), or the sidecar is not on loopback"
            ),
            PushFailure::Status(404, body) => format!(
                "push to {url} got 404: the filter did not take the request; check that endpoints.push_path \
                 in the filter configuration matches the push_url path{}",
                snippet(body)
            ),
            PushFailure::Status(code, body) => {
                format!("push to {url} got HTTP {code}{}", snippet(body))
            }
        }
    }
}

fn snippet(body: &str) -> String {
    let trimmed = body.trim();
    if trimmed.is_empty() {
        String::new()
    } else {
        let cut: String = trimmed.chars().take(200).collect();
        format!(": {cut}")
    }
}

/// Decides which push results are logged: the first success, each new kind of failure, a
/// reminder while failing (every `repeat_every`), and the recovery.
#[derive(Debug)]
pub struct PushLog {
    repeat_every: Duration,
    ever_ok: bool,
    failing: Option<FailingState>,
}

#[derive(Debug)]
struct FailingState {
    kind: String,
    count: u64,
    last_logged: Instant,
}

impl PushLog {
    pub fn new(repeat_every: Duration) -> Self {
        PushLog {
            repeat_every,
            ever_ok: false,
            failing: None,
        }
    }

    pub fn on_result(
        &mut self,
        now: Instant,
        url: &str,
        seq: u64,
        result: &Result<(), PushFailure>,
    ) -> Option<String> {
        match result {
            Ok(()) => {
                let first = !self.ever_ok;
                self.ever_ok = true;
                match self.failing.take() {
                    Some(f) => Some(format!(
                        "push to {url} works again after {} failed attempt(s) (seq={seq})",
                        f.count
                    )),
                    None if first => Some(format!("first snapshot pushed to {url} (seq={seq})")),
                    None => None,
                }
            }
            Err(failure) => {
                let kind = failure.kind();
                let message = failure.describe(url);
                match &mut self.failing {
                    Some(f) if f.kind == kind => {
                        f.count += 1;
                        if now.duration_since(f.last_logged) >= self.repeat_every {
                            f.last_logged = now;
                            Some(format!("{message} (still failing: {} attempts)", f.count))
                        } else {
                            None
                        }
                    }
                    _ => {
                        let count = self.failing.as_ref().map_or(0, |f| f.count) + 1;
                        self.failing = Some(FailingState {
                            kind,
                            count,
                            last_logged: now,
                        });
                        Some(message)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const PAGE: &str = "# TYPE vllm:num_requests_waiting gauge\n\
        vllm:num_requests_waiting{model_name=\"a\"} 2.0\n\
        vllm:num_requests_waiting{model_name=\"b\"} 1.0\n\
        vllm:num_requests_running{model_name=\"a\"} 4.0\n\
        vllm:gpu_cache_usage_perc{model_name=\"a\"} 0.3\n";

    #[test]
    fn healthy_endpoint() {
        let (load, outcome) = endpoint_load(
            "10.0.0.1:8000",
            &Ok(PAGE.to_string()),
            &MetricNames::default(),
        );
        assert!(outcome.is_ok());
        assert_eq!(
            load,
            EndpointLoad {
                address: "10.0.0.1:8000".into(),
                waiting: 3,
                running: 4,
                kv_cache: 0.3,
                healthy: true
            }
        );
    }

    #[test]
    fn unhealthy_endpoints_are_kept_and_marked() {
        let names = MetricNames::default();
        let (load, outcome) = endpoint_load("10.0.0.2:8000", &Err("HTTP 500".into()), &names);
        assert_eq!(outcome, Err("HTTP 500".to_string()));
        assert!(!load.healthy);
        assert_eq!((load.waiting, load.running, load.kv_cache), (0, 0, 0.0));

        let (load, outcome) = endpoint_load(
            "10.0.0.3:8000",
            &Ok("vllm:num_requests_waiting 1\n".into()),
            &names,
        );
        assert!(!load.healthy);
        let reason = outcome.unwrap_err();
        assert!(reason.contains("vllm:num_requests_running"), "{reason}");

        let no_kv = "vllm:num_requests_waiting 1\nvllm:num_requests_running 1\n";
        let (load, outcome) = endpoint_load("10.0.0.4:8000", &Ok(no_kv.into()), &names);
        assert!(!load.healthy);
        assert!(outcome.unwrap_err().contains("kv_cache"));

        // A server without a KV-cache gauge, configured with an empty kv_cache list.
        let tgi = MetricNames {
            waiting: vec!["tgi_queue_size".into()],
            running: vec!["tgi_batch_current_size".into()],
            kv_cache: vec![],
        };
        let (load, outcome) = endpoint_load(
            "10.0.0.5:8000",
            &Ok("tgi_queue_size 6\ntgi_batch_current_size 2\n".into()),
            &tgi,
        );
        assert!(outcome.is_ok());
        assert_eq!((load.waiting, load.running, load.kv_cache), (6, 2, 0.0));
    }

    #[test]
    fn values_are_clamped() {
        let page = "vllm:num_requests_waiting +Inf\nvllm:num_requests_running -3\nvllm:kv_cache_usage_perc 1.7\n";
        let (load, _) = endpoint_load("a:1", &Ok(page.into()), &MetricNames::default());
        assert_eq!(
            (load.waiting, load.running, load.kv_cache),
            (MAX_COUNT, 0, 1.0)
        );
        let page = "vllm:num_requests_waiting 2.6\nvllm:num_requests_running 0.4\nvllm:kv_cache_usage_perc -0.1\n";
        let (load, _) = endpoint_load("a:1", &Ok(page.into()), &MetricNames::default());
        assert_eq!((load.waiting, load.running, load.kv_cache), (3, 0, 0.0));
    }

    #[test]
    fn snapshot_json_format() {
        let names = MetricNames::default();
        let mut pools = BTreeMap::new();
        pools.insert(
            "small".to_string(),
            vec![
                endpoint_load("127.0.0.1:8101", &Ok(PAGE.into()), &names).0,
                endpoint_load("127.0.0.1:8102", &Err("timeout".into()), &names).0,
            ],
        );
        pools.insert("large".to_string(), vec![]);
        let snap = LoadSnapshot {
            pools,
            generated_at_ms: 1_700_000_000_123,
            seq: 7,
        };
        assert_eq!(
            to_json(&snap),
            r#"{"pools":{"large":[],"small":[{"address":"127.0.0.1:8101","waiting":3,"running":4,"kv_cache":0.3,"healthy":true},{"address":"127.0.0.1:8102","waiting":0,"running":0,"kv_cache":0.0,"healthy":false}]},"generated_at_ms":1700000000123,"seq":7}"#
        );
    }

    #[test]
    fn health_changes_are_logged_once() {
        let names = MetricNames::default();
        let mut t = HealthTracker::default();
        let ok = endpoint_load("a:1", &Ok(PAGE.into()), &names);
        let bad = endpoint_load("a:1", &Err("timeout after 300 ms".into()), &names);
        let bad2 = endpoint_load("a:1", &Err("HTTP 500".into()), &names);
        assert!(t
            .observe("small", &ok.0, &ok.1)
            .unwrap()
            .contains("is healthy"));
        assert_eq!(t.observe("small", &ok.0, &ok.1), None);
        let line = t.observe("small", &bad.0, &bad.1).unwrap();
        assert!(
            line.contains("small/a:1 is UNHEALTHY: timeout after 300 ms"),
            "{line}"
        );
        assert_eq!(t.observe("small", &bad.0, &bad.1), None);
        assert_eq!(
            t.observe("small", &bad2.0, &bad2.1),
            None,
            "still unhealthy"
        );
        assert!(t
            .observe("small", &ok.0, &ok.1)
            .unwrap()
            .contains("healthy again"));
        // The same address in another pool is tracked separately; first state unhealthy is logged.
        assert!(t
            .observe("large", &bad.0, &bad.1)
            .unwrap()
            .contains("large/a:1"));
        // Forgotten endpoints log their first state again when they come back.
        t.retain(&HashSet::new());
        assert!(t.observe("small", &ok.0, &ok.1).is_some());
    }

    #[test]
    fn push_log_throttles() {
        let mut log = PushLog::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let url = "http://127.0.0.1:10000/load";
        let refused = Err(PushFailure::Unreachable("connection refused".into()));
        let forbidden = Err(PushFailure::Status(403, String::new()));
        let first = log.on_result(t0, url, 1, &refused).unwrap();
        assert!(first.contains("cannot reach the gateway"), "{first}");
        assert_eq!(
            log.on_result(t0 + Duration::from_secs(1), url, 2, &refused),
            None
        );
        let again = log
            .on_result(t0 + Duration::from_secs(31), url, 3, &refused)
            .unwrap();
        assert!(again.contains("still failing: 3 attempts"), "{again}");
        let line = log
            .on_result(t0 + Duration::from_secs(32), url, 4, &forbidden)
            .unwrap();
        assert!(line.contains("403") && line.contains("token"), "{line}");
        let back = log
            .on_result(t0 + Duration::from_secs(33), url, 5, &Ok(()))
            .unwrap();
        assert!(back.contains("works again after 4"), "{back}");
        assert_eq!(
            log.on_result(t0 + Duration::from_secs(34), url, 6, &Ok(())),
            None
        );

        let mut fresh = PushLog::new(Duration::from_secs(30));
        assert!(fresh
            .on_result(t0, url, 1, &Ok(()))
            .unwrap()
            .contains("first snapshot"));
        assert_eq!(fresh.on_result(t0, url, 2, &Ok(())), None);
    }
}
