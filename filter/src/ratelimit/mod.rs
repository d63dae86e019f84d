//! Per-tenant token buckets (requests and LLM tokens) kept in the proxy's shared data, so every
//! worker thread of one proxy charges the same buckets.
//!
//! Both buckets of a tenant live under one key (24 bytes: two levels and a timestamp), so a
//! request is admitted against both with a single compare-and-swap. Refill is computed from the
//! clock on access; nothing runs on ticks.

mod background;
pub mod bucket;
pub mod calls;
pub mod global;
pub mod lease;
mod lease_store;
mod reconcile;
mod tenants;

use crate::config::{BucketLimit, Limits, Tenants};
use crate::reply::LocalReply;
use crate::store::{update, update_after, Step};
pub use crate::store::{Store, StoreError};
use bucket::UNIT;
pub use reconcile::{outcome, reconcile, token_cost, Charge, Correction, Cost, End, Outcome};
pub use tenants::{
    jwt_claim_path, overflow, resolve, resolve_and_read, Resolved, SlotRead, Tenant,
    MAX_TENANT_ID_LEN,
};

/// Key prefix of the per-proxy buckets in shared data.
const PREFIX: &str = "llm_router/rl/";
/// Key prefix of the leases of global limits (`tenants.global`).
pub const GLOBAL_PREFIX: &str = "llm_router/gl/l/";

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
        match State::decode_record(bytes) {
            Some((state, [])) => Some(state),
            _ => None,
        }
    }

    /// A stored record: the state, then the id of the slot's owner (empty for keys that
    /// belong to one tenant for good).
    pub fn encode_record(&self, owner: Option<&str>) -> Vec<u8> {
        let mut out = self.encode().to_vec();
        out.extend_from_slice(owner.unwrap_or_default().as_bytes());
        out
    }

    pub fn decode_record(bytes: &[u8]) -> Option<(State, &[u8])> {
        let field = |i: usize| -> Option<[u8; 8]> { bytes.get(i..i + 8)?.try_into().ok() };
        let state = State {
            requests: i64::from_le_bytes(field(0)?),
            tokens: i64::from_le_bytes(field(8)?),
            at_ms: u64::from_le_bytes(field(16)?),
        };
        Some((state, bytes.get(24..)?))
    }

    /// Both buckets are full at `now_ms`: the record carries nothing worth keeping.
    fn is_full(&self, limits: &Limits, now_ms: u64) -> bool {
        let s = self.refilled(limits, now_ms);
        let full = |level: i64, l: &Option<BucketLimit>| {
            l.as_ref().is_none_or(|l| level >= bucket::capacity(l))
        };
        full(s.requests, &limits.requests) && full(s.tokens, &limits.tokens)
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
    /// The slot of an unconfigured id was reclaimed for another id before it was charged:
    /// nothing was charged; resolve the tenant again.
    SlotLost,
}

/// The record under a key, if it belongs to `owner` (`None`: a key of one tenant for good).
/// `Err(())`: the slot now belongs to another id.
fn owned_state(current: Option<&[u8]>, owner: Option<&str>) -> Result<Option<State>, ()> {
    let Some((state, stored)) = current.and_then(State::decode_record) else {
        return Ok(None);
    };
    match owner {
        Some(id) if stored != id.as_bytes() => Err(()),
        None if !stored.is_empty() => Ok(None),
        _ => Ok(Some(state)),
    }
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

/// Charges one request and `tokens` tokens to the buckets under `key` if both have room.
pub fn admit(
    store: &dyn Store,
    key: &str,
    limits: &Limits,
    tokens: u64,
    now_ms: u64,
) -> Result<Admission, StoreError> {
    admit_tenant(store, key, limits, None, tokens, now_ms)
}

/// `admit` for a key that may be a reclaimable slot: it is charged only while it still
/// belongs to `owner`.
pub fn admit_tenant(
    store: &dyn Store,
    key: &str,
    limits: &Limits,
    owner: Option<&str>,
    tokens: u64,
    now_ms: u64,
) -> Result<Admission, StoreError> {
    let read = store.get(key)?;
    admit_tenant_after(store, key, read, limits, owner, tokens, now_ms)
}

/// [`admit_tenant`] starting from what the caller has just read of `key` (`read`, as
/// `store::update_after` takes it): the slot's read while resolving the tenant.
pub fn admit_tenant_after(
    store: &dyn Store,
    key: &str,
    read: Option<(Vec<u8>, u32)>,
    limits: &Limits,
    owner: Option<&str>,
    tokens: u64,
    now_ms: u64,
) -> Result<Admission, StoreError> {
    let need_req = admission_units(1, &limits.requests);
    let need_tok = admission_units(tokens, &limits.tokens);
    update_after(store, key, read, |current| {
        let state = match owned_state(current, owner) {
            Ok(Some(s)) => s.refilled(limits, now_ms),
            Ok(None) => State::full(limits, now_ms),
            Err(()) => return Step::Keep(Admission::SlotLost),
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
            next.encode_record(owner),
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
    adjust_tenant(
        store,
        key,
        limits,
        None,
        delta_requests,
        delta_tokens,
        now_ms,
    )
}

/// `adjust` for a key that may be a reclaimable slot: a slot that now belongs to another id
/// is left alone (it was reclaimed because its buckets were full again: nothing was owed).
pub fn adjust_tenant(
    store: &dyn Store,
    key: &str,
    limits: &Limits,
    owner: Option<&str>,
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
        // Nothing was ever charged under this key (or it changed hands): nothing to correct.
        let Ok(Some(state)) = owned_state(current, owner) else {
            return Step::Keep(());
        };
        let s = state.refilled(limits, now_ms);
        let next = State {
            requests: change(s.requests, &limits.requests, delta_requests),
            tokens: change(s.tokens, &limits.tokens, delta_tokens),
            at_ms: s.at_ms,
        };
        Step::Write(next.encode_record(owner), ())
    })
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

/// Where a request's admission was booked (and so where its reconciliation goes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Booked {
    /// The per-proxy buckets.
    Local,
    /// The lease of global limits.
    Lease,
    /// Beyond the lease during an outage of the quota service: debt, charged to Redis later.
    Debt,
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
        booked: Booked,
    },
    /// Global limits: the lease lacks what the request needs; the request waits for this
    /// synchronous `Take`, then `global::after_take` decides.
    Take {
        tenant: Tenant,
        request: crate::quota::TakeRequest,
        /// The request's token cost (as for `gate`).
        tokens: u64,
        /// The bucket to name in a 429 if nothing is granted.
        lacking: Bucket,
    },
    Refuse {
        reply: LocalReply,
        /// Metric label of the tenant, and the bucket that was empty (`None`: unknown tenant).
        tenant_label: String,
        bucket: Option<Bucket>,
    },
    /// Shared data failed (or stayed contended past every retry): the request cannot be
    /// charged, so it is not admitted (never uncharged). `reply` is a 503 to retry.
    Unavailable { reply: LocalReply, why: String },
}

/// How often a tenant is resolved again when its slot is reclaimed under it.
const RESOLVE_TRIES: usize = 3;

/// Resolves the tenant and charges its buckets.
pub fn gate(cfg: &Tenants, id: Option<&str>, cost: u64, store: &dyn Store, now_ms: u64) -> Gate {
    let mut tenant = None;
    for attempt in 0..=RESOLVE_TRIES {
        let (t, read) = match resolve_and_read(cfg, id, store, now_ms) {
            // Lost the slot every time: the shared bucket takes the charge.
            Ok((Resolved::Tenant(_), _)) if attempt == RESOLVE_TRIES => (overflow(cfg), None),
            Ok((Resolved::Tenant(t), read)) => (t, read),
            Ok((Resolved::Rejected, _)) => return unknown_tenant(),
            Err(e) => return unavailable(format!("{e:?}")),
        };
        let owner = t.owner.as_deref();
        let admitted = match read {
            // The slot as resolving read it: the charge's compare-and-swap starts there.
            Some(read) => {
                admit_tenant_after(store, &t.key, Some(read), &t.limits, owner, cost, now_ms)
            }
            None => admit_tenant(store, &t.key, &t.limits, owner, cost, now_ms),
        };
        match admitted {
            Ok(Admission::SlotLost) => continue,
            Ok(a) => {
                tenant = Some((t, a));
                break;
            }
            Err(e) => return unavailable(format!("{e:?}")),
        }
    }
    let Some((tenant, admission)) = tenant else {
        return unavailable("tenant slot contended".into());
    };
    match admission {
        Admission::Admitted(status) => Gate::Pass {
            charged_tokens: charged(cost, &tenant.limits.tokens),
            tenant,
            status,
            booked: Booked::Local,
        },
        Admission::Limited {
            bucket,
            retry_after_ms,
            status,
        } => limited(tenant, bucket, retry_after_ms, &status),
        Admission::SlotLost => unavailable("tenant slot contended".into()),
    }
}

fn unknown_tenant() -> Gate {
    Gate::Refuse {
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

/// The 503 of a request that cannot be charged (never admitted uncharged).
pub fn unavailable(why: String) -> Gate {
    let reply = LocalReply::error(
        503,
        "server_error",
        "rate_limiter_unavailable",
        "The gateway could not charge this request to its rate limits; retry shortly.",
    )
    .with_header("retry-after", "1".to_string());
    Gate::Unavailable { reply, why }
}

fn limited(tenant: Tenant, bucket: Bucket, retry_after_ms: u64, status: &Status) -> Gate {
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
    for (k, v) in headers(status) {
        reply = reply.with_header(k, v);
    }
    Gate::Refuse {
        reply,
        tenant_label: tenant.label,
        bucket: Some(bucket),
    }
}

#[cfg(test)]
mod global_prop_tests;
#[cfg(test)]
mod global_tests;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
