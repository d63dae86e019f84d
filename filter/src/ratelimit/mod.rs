//! Per-tenant token buckets (requests and LLM tokens) kept in the proxy's shared data, so every
//! worker thread of one proxy charges the same buckets.
//!
//! Both buckets of a tenant live under one key (24 bytes: two levels and a timestamp), so a
//! request is admitted against both with a single compare-and-swap. Refill is computed from the
//! clock on access; nothing runs on ticks.

pub mod bucket;

use crate::config::{BucketLimit, Limits, TenantSource, Tenants, UnknownTenant};
use crate::reply::LocalReply;
use crate::store::{update, Step};
pub use crate::store::{Store, StoreError};
use bucket::UNIT;

/// Key prefix of everything this module stores in shared data.
const PREFIX: &str = "llm_router/rl/";
/// Longest tenant id that gets a bucket of its own; longer or unusual ids share `overflow`.
pub const MAX_TENANT_ID_LEN: usize = 128;

/// Both buckets of one tenant at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    pub requests: i64,
    pub tokens: i64,
    pub at_ms: u64,
}

impl State {
    fn full(limits: &Limits, now_ms: u64) -> State {
        State {
            requests: limits.requests.as_ref().map_or(0, bucket::capacity),
            tokens: limits.tokens.as_ref().map_or(0, bucket::capacity),
            at_ms: now_ms,
        }
    }

    pub fn encode(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        let (a, rest) = out.split_at_mut(8);
        let (b, c) = rest.split_at_mut(8);
        a.copy_from_slice(&self.requests.to_le_bytes());
        b.copy_from_slice(&self.tokens.to_le_bytes());
        c.copy_from_slice(&self.at_ms.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<State> {
        let field = |i: usize| -> Option<[u8; 8]> { bytes.get(i..i + 8)?.try_into().ok() };
        if bytes.len() != 24 {
            return None;
        }
        Some(State {
            requests: i64::from_le_bytes(field(0)?),
            tokens: i64::from_le_bytes(field(8)?),
            at_ms: u64::from_le_bytes(field(16)?),
        })
    }

    /// Brought up to `now_ms` (a clock that went backwards adds nothing).
    fn refilled(&self, limits: &Limits, now_ms: u64) -> State {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        let level = |lvl: i64, l: &Option<BucketLimit>| match l {
            Some(l) => bucket::refill(lvl, l, elapsed),
            None => 0,
        };
        State {
            requests: level(self.requests, &limits.requests),
            tokens: level(self.tokens, &limits.tokens),
            at_ms: self.at_ms.max(now_ms),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Requests,
    Tokens,
}

impl Bucket {
    /// Index into `metrics::BUCKET`.
    pub fn label(self) -> u16 {
        match self {
            Bucket::Requests => 0,
            Bucket::Tokens => 1,
        }
    }
}

/// What `x-ratelimit-*` headers report for one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketStatus {
    pub limit: u64,
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub requests: Option<BucketStatus>,
    pub tokens: Option<BucketStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted(Status),
    Limited {
        bucket: Bucket,
        retry_after_ms: u64,
        status: Status,
    },
}

fn status_of(state: &State, limits: &Limits) -> Status {
    let one = |level: i64, l: &Option<BucketLimit>| {
        l.as_ref().map(|l| BucketStatus {
            limit: l.per_minute,
            remaining: bucket::whole(level),
            reset_ms: bucket::ms_until(level, bucket::capacity(l), l),
        })
    };
    Status {
        requests: one(state.requests, &limits.requests),
        tokens: one(state.tokens, &limits.tokens),
    }
}

/// What admission charges for `amount`: the amount, but at most the bucket's burst, so a
/// request larger than the whole burst can still run when the bucket is full (reconciliation
/// then charges the rest as debt) instead of being refused forever. Reconciliation must start
/// from this figure, not from `amount`.
pub fn charged(amount: u64, limit: &Option<BucketLimit>) -> u64 {
    match limit {
        Some(l) => amount.min(l.burst),
        None => amount,
    }
}

fn admission_units(amount: u64, limit: &Option<BucketLimit>) -> i64 {
    match limit {
        Some(_) => i64::try_from(charged(amount, limit))
            .unwrap_or(i64::MAX)
            .saturating_mul(UNIT),
        None => 0,
    }
}

/// Charges one request and `tokens` tokens to the tenant's buckets if both have room.
pub fn admit(
    store: &dyn Store,
    key: &str,
    limits: &Limits,
    tokens: u64,
    now_ms: u64,
) -> Result<Admission, StoreError> {
    let need_req = admission_units(1, &limits.requests);
    let need_tok = admission_units(tokens, &limits.tokens);
    update(store, key, |current| {
        let state = match current.and_then(State::decode) {
            Some(s) => s.refilled(limits, now_ms),
            None => State::full(limits, now_ms),
        };
        let limited = |bucket, level: i64, need: i64, l: &Option<BucketLimit>| {
            let l = l.as_ref()?;
            (level < need).then(|| Admission::Limited {
                bucket,
                retry_after_ms: bucket::ms_until(level, need, l),
                status: status_of(&state, limits),
            })
        };
        if let Some(a) = limited(Bucket::Requests, state.requests, need_req, &limits.requests) {
            return Step::Keep(a);
        }
        if let Some(a) = limited(Bucket::Tokens, state.tokens, need_tok, &limits.tokens) {
            return Step::Keep(a);
        }
        let next = State {
            requests: state.requests - need_req,
            tokens: state.tokens - need_tok,
            at_ms: state.at_ms,
        };
        Step::Write(
            next.encode().to_vec(),
            Admission::Admitted(status_of(&next, limits)),
        )
    })
}

/// Corrects the buckets after the fact: `delta_tokens > 0` charges more (may go into debt),
/// `< 0` gives back; `delta_requests` likewise for the request bucket.
pub fn adjust(
    store: &dyn Store,
    key: &str,
    limits: &Limits,
    delta_requests: i64,
    delta_tokens: i64,
    now_ms: u64,
) -> Result<(), StoreError> {
    if (delta_requests == 0 || limits.requests.is_none())
        && (delta_tokens == 0 || limits.tokens.is_none())
    {
        return Ok(());
    }
    let change = |level: i64, l: &Option<BucketLimit>, delta: i64| match l {
        Some(l) => bucket::apply(level, l, delta.saturating_mul(UNIT)),
        None => 0,
    };
    update(store, key, |current| {
        // Nothing was ever charged under this key: nothing to correct.
        let Some(state) = current.and_then(State::decode) else {
            return Step::Keep(());
        };
        let s = state.refilled(limits, now_ms);
        let next = State {
            requests: change(s.requests, &limits.requests, delta_requests),
            tokens: change(s.tokens, &limits.tokens, delta_tokens),
            at_ms: s.at_ms,
        };
        Step::Write(next.encode().to_vec(), ())
    })
}

/// Who is charged for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Shared-data key of the buckets.
    pub key: String,
    /// Metric label value (configured tenant, `default`, `anonymous` or `overflow`).
    pub label: String,
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Tenant(Tenant),
    /// `unknown: reject` and the id is not configured.
    Rejected,
}

/// Where the tenant id comes from: a header value or a JWT claim.
pub fn resolve(cfg: &Tenants, id: Option<&str>, store: &dyn Store) -> Result<Resolved, StoreError> {
    let id = id.map(str::trim).filter(|s| !s.is_empty());
    let Some(id) = id else {
        let limits = configured(cfg, "anonymous").unwrap_or(cfg.default);
        return Ok(Resolved::Tenant(Tenant {
            key: format!("{PREFIX}t/anonymous"),
            label: "anonymous".into(),
            limits,
        }));
    };
    if let Some(limits) = configured(cfg, id) {
        return Ok(Resolved::Tenant(Tenant {
            key: format!("{PREFIX}t/{id}"),
            label: id.to_string(),
            limits,
        }));
    }
    if cfg.unknown == UnknownTenant::Reject {
        return Ok(Resolved::Rejected);
    }
    let overflow = Tenant {
        key: format!("{PREFIX}overflow"),
        label: "overflow".into(),
        limits: cfg.default,
    };
    if id.len() > MAX_TENANT_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(Resolved::Tenant(overflow));
    }
    let key = format!("{PREFIX}u/{id}");
    let own = Tenant {
        key: key.clone(),
        label: "default".into(),
        limits: cfg.default,
    };
    if store.get(&key)?.is_some() {
        return Ok(Resolved::Tenant(own));
    }
    // A new id: take one of the `max_tracked_tenants` slots, if any is left.
    if take_slot(store, cfg.max_tracked_tenants)? {
        Ok(Resolved::Tenant(own))
    } else {
        Ok(Resolved::Tenant(overflow))
    }
}

fn configured(cfg: &Tenants, id: &str) -> Option<Limits> {
    cfg.limits.iter().find(|(n, _)| n == id).map(|(_, l)| *l)
}

/// Increments the count of tracked unknown tenants if it is below `max`.
fn take_slot(store: &dyn Store, max: u32) -> Result<bool, StoreError> {
    update(store, &format!("{PREFIX}tracked"), |current| {
        let count = current
            .and_then(|b| b.get(..4))
            .and_then(|s| s.try_into().ok())
            .map_or(0, u32::from_le_bytes);
        if count >= max {
            Step::Keep(false)
        } else {
            Step::Write((count + 1).to_le_bytes().to_vec(), true)
        }
    })
}

/// The shared-data path of a JWT claim, as Envoy's property API takes it (segments).
pub fn jwt_claim_path(source: &TenantSource) -> Option<Vec<String>> {
    match source {
        TenantSource::JwtClaim { claim, payload_key } => Some(vec![
            "metadata".into(),
            "filter_metadata".into(),
            "envoy.filters.http.jwt_authn".into(),
            payload_key.clone(),
            claim.clone(),
        ]),
        TenantSource::Header(_) => None,
    }
}

/// Go-style duration as OpenAI writes it in `x-ratelimit-reset-*` (`250ms`, `6s`, `1m30s`).
pub fn format_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms.div_ceil(1000);
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// `x-ratelimit-*` headers for a status.
pub fn headers(status: &Status) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(6);
    if let Some(r) = &status.requests {
        out.push(("x-ratelimit-limit-requests", r.limit.to_string()));
        out.push(("x-ratelimit-remaining-requests", r.remaining.to_string()));
        out.push(("x-ratelimit-reset-requests", format_duration(r.reset_ms)));
    }
    if let Some(t) = &status.tokens {
        out.push(("x-ratelimit-limit-tokens", t.limit.to_string()));
        out.push(("x-ratelimit-remaining-tokens", t.remaining.to_string()));
        out.push(("x-ratelimit-reset-tokens", format_duration(t.reset_ms)));
    }
    out
}

/// The outcome of rate limiting one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    Pass {
        tenant: Tenant,
        /// Tokens charged at admission (what reconciliation corrects).
        charged_tokens: u64,
        /// For the `x-ratelimit-*` response headers.
        status: Status,
    },
    Refuse {
        reply: LocalReply,
        /// Metric label of the tenant, and the bucket that was empty (`None`: unknown tenant).
        tenant_label: String,
        bucket: Option<Bucket>,
    },
    /// Shared data failed: the request goes through uncharged (fail open), with the reason.
    Degraded(String),
}

/// Tokens charged at admission: the prompt estimate plus the completion reservation
/// `min(max_tokens, cap)` (`cap` when the request sets no `max_tokens`). A request whose
/// body could not be read is charged no tokens.
pub fn token_cost(cfg: &Tenants, prompt_estimate: Option<u64>, max_tokens: Option<u64>) -> u64 {
    match prompt_estimate {
        Some(p) => p.saturating_add(
            max_tokens
                .unwrap_or(cfg.max_tokens_cap)
                .min(cfg.max_tokens_cap),
        ),
        None => 0,
    }
}

/// Resolves the tenant and charges its buckets.
pub fn gate(cfg: &Tenants, id: Option<&str>, cost: u64, store: &dyn Store, now_ms: u64) -> Gate {
    let tenant = match resolve(cfg, id, store) {
        Ok(Resolved::Tenant(t)) => t,
        Ok(Resolved::Rejected) => {
            return Gate::Refuse {
                reply: LocalReply::error(
                    401,
                    "invalid_request_error",
                    "unknown_tenant",
                    "The tenant of this request is not known to the gateway.",
                ),
                tenant_label: "default".into(),
                bucket: None,
            }
        }
        Err(e) => return Gate::Degraded(format!("{e:?}")),
    };
    match admit(store, &tenant.key, &tenant.limits, cost, now_ms) {
        Ok(Admission::Admitted(status)) => Gate::Pass {
            charged_tokens: charged(cost, &tenant.limits.tokens),
            tenant,
            status,
        },
        Ok(Admission::Limited {
            bucket,
            retry_after_ms,
            status,
        }) => {
            let what = match bucket {
                Bucket::Requests => "requests",
                Bucket::Tokens => "tokens",
            };
            let secs = retry_after_ms.div_ceil(1000).max(1);
            // OpenAI's `type` names the exhausted limit: "requests" or "tokens".
            let mut reply = LocalReply::error(
                429,
                what,
                "rate_limit_exceeded",
                &format!(
                    "Rate limit reached for {what} per minute of tenant '{}'. Please try again in {}.",
                    tenant.label,
                    format_duration(retry_after_ms)
                ),
            )
            .with_header("retry-after", secs.to_string());
            for (k, v) in headers(&status) {
                reply = reply.with_header(k, v);
            }
            Gate::Refuse {
                reply,
                tenant_label: tenant.label,
                bucket: Some(bucket),
            }
        }
        Err(e) => Gate::Degraded(format!("{e:?}")),
    }
}

/// How many tokens to give back (negative) or charge on top (positive) once a request is over.
///
/// - Real `usage` known: `usage.total - charged`.
/// - No usage, upstream answered 2xx: the estimate stands (0), except a stream cut short
///   (client cancel mid-stream): only the prompt and the events already streamed are kept.
/// - No usage and no 2xx (upstream 4xx/5xx, a local reply after admission, or a client that
///   went away before any answer): nothing was generated, all charged tokens come back.
pub fn reconcile_delta(charged: u64, usage_total: Option<u64>, outcome: Outcome) -> i64 {
    let charged_i = i64::try_from(charged).unwrap_or(i64::MAX);
    match (usage_total, outcome) {
        (Some(total), _) => i64::try_from(total).unwrap_or(i64::MAX) - charged_i,
        (None, Outcome::Success) => 0,
        (
            None,
            Outcome::StreamCut {
                prompt_estimate,
                events,
            },
        ) => {
            let kept = prompt_estimate.saturating_add(events).min(charged);
            i64::try_from(kept).unwrap_or(i64::MAX) - charged_i
        }
        (None, Outcome::Failed) => -charged_i,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    StreamCut { prompt_estimate: u64, events: u64 },
    Failed,
}

#[cfg(test)]
mod tests;
