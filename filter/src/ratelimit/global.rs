//! Global limits (`tenants.global`): each request charges the tenant's lease in shared data,
//! exactly as a per-proxy bucket is charged; an empty lease asks the quota service for one
//! synchronous `Take`; the root context's tick keeps leases topped up, returns surplus,
//! expires idle ones and pays the debt booked during an outage. Pure: shared data is a
//! [`Store`], the service's answers come in as decoded messages, the clock as `now_ms`.

pub use super::background::{
    finish, index, index_add, max_index, outage, set_outage, tick, Answer, Job, INDEX_KEY,
    OUTAGE_KEY, WALK_PER_TICK,
};
use super::calls::{from_items, redis_tenant, take_request};
use super::lease::{Lease, Sizes};
use super::lease_store::with_lease;
use super::tenants::{overflow, resolve, Resolved, Tenant};
use super::Booked;
use super::{charged, limited, unavailable, unknown_tenant, Bucket, BucketStatus, Gate, Status};
use crate::config::{BucketLimit, Global, Limits, OnOutage, Tenants};
use crate::quota;
use crate::store::{Store, StoreError};

/// Why a request is refused under `on_outage: reject` (logged once per outage, not per
/// request).
pub const OUTAGE_WHY: &str = "quota service unreachable";
/// Suffix of the key of a tenant's static-share bucket (`on_outage: static_share`).
const STATIC_SUFFIX: &str = "/s";

/// What admission needs of a lease: 1 request, the cost's tokens capped at the burst
/// (`charged`), for the limited buckets only.
fn need(limits: &Limits, tokens: u64) -> (i64, i64) {
    let whole = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    (
        i64::from(limits.requests.is_some()),
        limits
            .tokens
            .as_ref()
            .map_or(0, |_| whole(charged(tokens, &limits.tokens))),
    )
}

fn status(lease: &Lease, limits: &Limits, sizes: &Sizes) -> Status {
    let one = |level: i64, size: Option<i64>, l: &Option<BucketLimit>| {
        l.as_ref().map(|l| BucketStatus {
            limit: l.per_minute,
            remaining: u64::try_from(level.max(0)).unwrap_or(0),
            reset_ms: super::bucket::ms_until(
                level.saturating_mul(super::UNIT),
                size.unwrap_or(0).saturating_mul(super::UNIT),
                l,
            ),
        })
    };
    Status {
        requests: one(lease.requests, sizes.requests, &limits.requests),
        tokens: one(lease.tokens, sizes.tokens, &limits.tokens),
    }
}

/// What global admission decided, and whether `on_outage` decided it (for the metrics).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub gate: Gate,
    pub fallback: bool,
}

impl From<Gate> for Decision {
    fn from(gate: Gate) -> Decision {
        Decision {
            gate,
            fallback: false,
        }
    }
}

/// Admission under `tenants.global`.
pub fn gate(
    cfg: &Tenants,
    g: &Global,
    id: Option<&str>,
    tokens: u64,
    store: &dyn Store,
    now_ms: u64,
) -> Decision {
    for _ in 0..=super::RESOLVE_TRIES {
        let t = match resolve(cfg, id, store, now_ms) {
            Ok(Resolved::Tenant(t)) => t,
            Ok(Resolved::Rejected) => return unknown_tenant().into(),
            Err(e) => return unavailable(format!("{e:?}")).into(),
        };
        match admit(cfg, g, &t, tokens, store, now_ms) {
            Ok(Some(d)) => return d,
            Ok(None) => continue,
            Err(e) => return unavailable(format!("{e:?}")).into(),
        }
    }
    // Lost the slot every time: the shared bucket takes the charge.
    match admit(cfg, g, &overflow(cfg), tokens, store, now_ms) {
        Ok(Some(d)) => d,
        Ok(None) => unavailable("tenant slot contended".into()).into(),
        Err(e) => unavailable(format!("{e:?}")).into(),
    }
}

/// Charges the lease; when it lacks, a `Take` (or, in an outage, the `on_outage` fallback).
/// `Ok(None)`: the slot went to another id (resolve again).
fn admit(
    cfg: &Tenants,
    g: &Global,
    t: &Tenant,
    tokens: u64,
    store: &dyn Store,
    now_ms: u64,
) -> Result<Option<Decision>, StoreError> {
    let sizes = Sizes::of(g, &t.limits);
    let need = need(&t.limits, tokens);
    let charged = with_lease(store, t, now_ms, g.idle_ms, |lease| {
        match lease.charge(need, now_ms) {
            Ok(next) => (Some(next), Ok(next)),
            Err(lack) => (None, Err(lack)),
        }
    })?;
    let Some((result, _)) = charged else {
        return Ok(None);
    };
    let lack = match result {
        Ok(next) => {
            let st = status(&next, &t.limits, &sizes);
            return Ok(Some(pass(t, tokens, st, Booked::Lease).into()));
        }
        Err(lack) => lack,
    };
    if outage(store) {
        return fallback(cfg, g, t, tokens, store, now_ms).map(Some);
    }
    // One synchronous take: a whole lease plus what this request lacks; at least the lack.
    let want = (
        sizes.requests.map_or(0, |s| s.saturating_add(lack.0)),
        sizes.tokens.map_or(0, |s| s.saturating_add(lack.1)),
    );
    let lacking = if lack.0 > 0 {
        Bucket::Requests
    } else {
        Bucket::Tokens
    };
    Ok(Some(
        Gate::Take {
            tenant: t.clone(),
            request: take_request(&redis_tenant(t), &t.limits, want, lack),
            tokens,
            lacking,
        }
        .into(),
    ))
}

fn pass(t: &Tenant, tokens: u64, status: Status, booked: Booked) -> Gate {
    Gate::Pass {
        tenant: t.clone(),
        charged_tokens: charged(tokens, &t.limits.tokens),
        status,
        booked,
    }
}

/// The answer to a request's synchronous `Take` (`None`: the call failed or timed out, or
/// the answer was unreadable: the outage path). A grant is credited to the lease and the
/// request charged in the same step; no grant is a 429 with the service's `retry_after_ms`.
#[allow(clippy::too_many_arguments)]
pub fn after_take(
    cfg: &Tenants,
    g: &Global,
    t: &Tenant,
    tokens: u64,
    lacking: Bucket,
    answer: Option<&quota::TakeResponse>,
    store: &dyn Store,
    now_ms: u64,
) -> Result<Decision, StoreError> {
    let Some(answer) = answer else {
        return fallback(cfg, g, t, tokens, store, now_ms);
    };
    let sizes = Sizes::of(g, &t.limits);
    let grants: Vec<i64> = answer.grants.iter().map(|gr| gr.granted.max(0)).collect();
    let granted = match from_items(&t.limits, &grants) {
        Some(gr) if answer.retry_after_ms == 0 => gr,
        _ => {
            let wait = answer.retry_after_ms.max(1);
            let st = status(&Lease::default(), &t.limits, &sizes);
            return Ok(limited(t.clone(), lacking, wait, &st).into());
        }
    };
    let need = need(&t.limits, tokens);
    let done = with_lease(store, t, now_ms, g.idle_ms, |lease| {
        let credited = lease.credit(granted, &sizes);
        match credited.charge(need, now_ms) {
            Ok(next) => (Some(next), Ok(next)),
            // Other workers spent the grant meanwhile: it stays in the lease.
            Err(_) => (Some(credited), Err(credited)),
        }
    })?;
    if let Some((_, true)) = &done {
        index_add(cfg, store, &t.key)?;
    }
    let gate = match done {
        Some((Ok(next), _)) => pass(t, tokens, status(&next, &t.limits, &sizes), Booked::Lease),
        Some((Err(l), _)) => limited(t.clone(), lacking, 1000, &status(&l, &t.limits, &sizes)),
        // The slot changed hands while the request waited: the grant is not this id's lease.
        None => unavailable("tenant slot reclaimed".into()),
    };
    Ok(gate.into())
}

/// A synchronous `Take` answered after its request was gone: the grant goes into the lease
/// (it was taken from Redis), nothing is charged.
pub fn keep_grant(
    cfg: &Tenants,
    g: &Global,
    t: &Tenant,
    answer: &quota::TakeResponse,
    store: &dyn Store,
    now_ms: u64,
) -> Result<(), StoreError> {
    let grants: Vec<i64> = answer.grants.iter().map(|gr| gr.granted.max(0)).collect();
    let Some(granted) = from_items(&t.limits, &grants) else {
        return Ok(());
    };
    let sizes = Sizes::of(g, &t.limits);
    let done = with_lease(store, t, now_ms, g.idle_ms, |l| {
        (Some(l.credit(granted, &sizes)), ())
    })?;
    if let Some((_, true)) = done {
        index_add(cfg, store, &t.key)?;
    }
    Ok(())
}

/// The lease is empty and the service cannot be reached: `on_outage`.
fn fallback(
    cfg: &Tenants,
    g: &Global,
    t: &Tenant,
    tokens: u64,
    store: &dyn Store,
    now_ms: u64,
) -> Result<Decision, StoreError> {
    let decided = |gate: Gate| {
        Ok(Decision {
            gate,
            fallback: true,
        })
    };
    let admitted = match g.on_outage {
        OnOutage::Reject => {
            // The lease is kept (indexed) so that the tick's refill probes the service.
            let touched = with_lease(store, t, now_ms, g.idle_ms, |l| {
                let last_use_ms = l.last_use_ms.max(now_ms);
                (Some(Lease { last_use_ms, ..l }), ())
            })?;
            if let Some((_, true)) = touched {
                index_add(cfg, store, &t.key)?;
            }
            return decided(unavailable(OUTAGE_WHY.into()));
        }
        OnOutage::Admit => None,
        OnOutage::StaticShare => {
            let share = static_share(&t.limits, g.replicas);
            let key = format!("{}{STATIC_SUFFIX}", t.key);
            match super::admit_tenant(store, &key, &share, t.owner.as_deref(), tokens, now_ms)? {
                super::Admission::Admitted(status) => Some(status),
                super::Admission::Limited {
                    bucket,
                    retry_after_ms,
                    status,
                } => return decided(limited(t.clone(), bucket, retry_after_ms, &status)),
                super::Admission::SlotLost => {
                    return decided(unavailable("tenant slot reclaimed".into()))
                }
            }
        }
    };
    let need = need(&t.limits, tokens);
    let booked = with_lease(store, t, now_ms, g.idle_ms, |l| {
        (Some(l.book_debt(need, now_ms)), ())
    })?;
    match booked {
        None => return decided(unavailable("tenant slot reclaimed".into())),
        Some((_, true)) => {
            index_add(cfg, store, &t.key)?;
        }
        Some(_) => {}
    }
    let st = admitted.unwrap_or(Status {
        requests: None,
        tokens: None,
    });
    decided(pass(t, tokens, st, Booked::Debt))
}

/// A tenant's limits divided by the expected replica count (at least 1 per bucket).
pub fn static_share(limits: &Limits, replicas: u64) -> Limits {
    let share = |l: &BucketLimit| BucketLimit {
        per_minute: (l.per_minute / replicas.max(1)).max(1),
        burst: (l.burst / replicas.max(1)).max(1),
    };
    Limits {
        requests: limits.requests.as_ref().map(share),
        tokens: limits.tokens.as_ref().map(share),
    }
}

/// A request's correction once it is over (positive charges more, negative gives back),
/// applied where its admission was booked: the lease, or the debt of an outage.
pub fn reconcile(
    g: &Global,
    t: &Tenant,
    booked: Booked,
    fix: (i64, i64),
    store: &dyn Store,
    now_ms: u64,
) -> Result<(), StoreError> {
    let limited = |v: i64, l: &Option<BucketLimit>| if l.is_some() { v } else { 0 };
    let fix = (
        limited(fix.0, &t.limits.requests),
        limited(fix.1, &t.limits.tokens),
    );
    if fix == (0, 0) {
        return Ok(());
    }
    let sizes = Sizes::of(g, &t.limits);
    with_lease(store, t, now_ms, g.idle_ms, |l| {
        let next = match booked {
            Booked::Debt => l.book_debt(fix, now_ms),
            _ => l.credit((-fix.0, -fix.1), &sizes),
        };
        (Some(next), ())
    })?;
    Ok(())
}
