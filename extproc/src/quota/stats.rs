//! The quota service's metrics (Prometheus text on `/metrics`). Labels come from the fixed
//! sets below only, never from a request.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Take,
    Give,
    Charge,
    ShouldRateLimit,
}

const METHODS: [(Method, &str); 4] = [
    (Method::Take, "take"),
    (Method::Give, "give"),
    (Method::Charge, "charge"),
    (Method::ShouldRateLimit, "should_rate_limit"),
];

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Granted / applied (RLS: OK).
    Ok,
    /// Take not granted (RLS: OVER_LIMIT).
    Denied,
    /// INVALID_ARGUMENT.
    Invalid,
    /// UNAVAILABLE: Redis did not answer in time.
    Unavailable,
    /// INTERNAL: Redis answered something unexpected.
    Error,
}

const OUTCOMES: [(Outcome, &str); 5] = [
    (Outcome::Ok, "ok"),
    (Outcome::Denied, "denied"),
    (Outcome::Invalid, "invalid"),
    (Outcome::Unavailable, "unavailable"),
    (Outcome::Error, "error"),
];

/// Redis failures by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisError {
    Unavailable,
    Reply,
}

#[derive(Debug, Default)]
pub struct QuotaStats {
    calls: [[AtomicU64; 5]; 4],
    redis_unavailable: AtomicU64,
    redis_reply: AtomicU64,
    redis_up: AtomicU64,
}

fn index<T: PartialEq + Copy>(set: &[(T, &str)], v: T) -> usize {
    set.iter().position(|(x, _)| *x == v).unwrap_or(0)
}

impl QuotaStats {
    pub fn call(&self, method: Method, outcome: Outcome) {
        let m = index(&METHODS, method);
        let o = index(&OUTCOMES, outcome);
        self.calls[m][o].fetch_add(1, Ordering::Relaxed);
    }

    pub fn redis_error(&self, kind: RedisError) {
        let c = match kind {
            RedisError::Unavailable => &self.redis_unavailable,
            RedisError::Reply => &self.redis_reply,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_redis_up(&self, up: bool) {
        self.redis_up.store(u64::from(up), Ordering::Relaxed);
    }

    pub fn calls(&self, method: Method, outcome: Outcome) -> u64 {
        self.calls[index(&METHODS, method)][index(&OUTCOMES, outcome)].load(Ordering::Relaxed)
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let name = "llm_router_quota_calls_total";
        let _ = writeln!(
            out,
            "# HELP {name} quota service calls by method and result\n# TYPE {name} counter"
        );
        for (m, (_, method)) in METHODS.iter().enumerate() {
            for (o, (_, result)) in OUTCOMES.iter().enumerate() {
                let v = get(&self.calls[m][o]);
                let _ = writeln!(out, "{name}{{method=\"{method}\",result=\"{result}\"}} {v}");
            }
        }
        let name = "llm_router_quota_redis_errors_total";
        let _ = writeln!(
            out,
            "# HELP {name} failed Redis calls (unavailable: no answer in time; reply: unexpected answer)\n# TYPE {name} counter"
        );
        for (kind, c) in [
            ("unavailable", &self.redis_unavailable),
            ("reply", &self.redis_reply),
        ] {
            let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {}", get(c));
        }
        let name = "llm_router_quota_redis_up";
        let _ = writeln!(
            out,
            "# HELP {name} 1 when the last Redis call (or the 1 s ping) got an answer\n# TYPE {name} gauge\n{name} {}",
            get(&self.redis_up)
        );
        out
    }
}
