//! Global limits (`tenants.global`): each request charges the tenant's lease in shared data,
//! exactly as a per-proxy bucket is charged; an empty lease asks the quota service for one
//! synchronous `Take`; the root context's tick keeps leases topped up, returns surplus,
//! expires idle ones and pays the debt booked during an outage. Pure: shared data is a
//! [`Store`], the service's answers come in as decoded messages, the clock as `now_ms`.

use super::lease::{self, Call, Lease, Plan, Sizes};
use super::tenants::{configured, overflow, resolve, Resolved, Tenant};
use super::{charged, limited, unavailable, unknown_tenant, Bucket, BucketStatus, Gate, Status};
use super::{Booked, GLOBAL_PREFIX};
use crate::config::{BucketLimit, Global, Limits, OnOutage, Tenants};
use crate::quota::{self, AmountItem, AmountRequest, Grant, Method, TakeItem, TakeRequest};
use crate::store::{update, Step, Store, StoreError};

/// Shared-data key of the outage state (all workers of the proxy see it).
pub const OUTAGE_KEY: &str = "llm_router/gl/outage";
/// Shared-data key of the index of active leases (their keys, one a line).
pub const INDEX_KEY: &str = "llm_router/gl/index";
/// Leases the tick of one VM looks at per tick (the rest on the next ticks).
pub const WALK_PER_TICK: usize = 64;
/// Why a request is refused under `on_outage: reject` (logged once per outage, not per
/// request).
pub const OUTAGE_WHY: &str = "quota service unreachable";
/// Suffix of the key of a tenant's static-share bucket (`on_outage: static_share`).
const STATIC_SUFFIX: &str = "/s";

/// Tenant name in Redis: configured name, `anonymous`, `overflow`, or `u/<id>`.
pub fn redis_tenant(t: &Tenant) -> String {
    match &t.owner {
        Some(id) => format!("u/{id}"),
        None => t.label.clone(),
    }
}

fn bucket(tenant: &str, limit: &str, l: &BucketLimit) -> quota::Bucket {
    quota::Bucket {
        tenant: tenant.to_string(),
        limit: limit.to_string(),
        per_minute: l.per_minute,
        capacity: l.burst,
    }
}

/// The Redis buckets of a tenant that are limited, requests first: the order of a call's
/// items (and of its answer's grants / levels).
pub fn buckets(tenant: &str, limits: &Limits) -> Vec<quota::Bucket> {
    let mut out = Vec::with_capacity(2);
    if let Some(l) = &limits.requests {
        out.push(bucket(tenant, "requests", l));
    }
    if let Some(l) = &limits.tokens {
        out.push(bucket(tenant, "tokens", l));
    }
    out
}

/// (requests, tokens) as the items of a call (unlimited buckets have no item).
fn items(limits: &Limits, amount: (i64, i64)) -> Vec<i64> {
    let mut out = Vec::with_capacity(2);
    if limits.requests.is_some() {
        out.push(amount.0);
    }
    if limits.tokens.is_some() {
        out.push(amount.1);
    }
    out
}

/// The items of an answer back to (requests, tokens); `None` when the count is wrong.
fn from_items(limits: &Limits, values: &[i64]) -> Option<(i64, i64)> {
    let mut it = values.iter().copied();
    let requests = if limits.requests.is_some() {
        it.next()?
    } else {
        0
    };
    let tokens = if limits.tokens.is_some() {
        it.next()?
    } else {
        0
    };
    it.next().is_none().then_some((requests, tokens))
}

pub fn take_request(
    tenant: &str,
    limits: &Limits,
    want: (i64, i64),
    min: (i64, i64),
) -> TakeRequest {
    let wants = items(limits, want);
    let mins = items(limits, min);
    TakeRequest {
        items: buckets(tenant, limits)
            .into_iter()
            .zip(wants.into_iter().zip(mins))
            .map(|(bucket, (want, min))| TakeItem { bucket, want, min })
            .collect(),
    }
}

pub fn amount_request(tenant: &str, limits: &Limits, amount: (i64, i64)) -> AmountRequest {
    AmountRequest {
        items: buckets(tenant, limits)
            .into_iter()
            .zip(items(limits, amount))
            .map(|(bucket, amount)| AmountItem { bucket, amount })
            .collect(),
    }
}

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

/// The lease under a key if it belongs to `owner`; `Err(())`: the slot went to another id.
fn owned(current: Option<&[u8]>, owner: Option<&str>) -> Result<Option<Lease>, ()> {
    let Some((lease, stored)) = current.and_then(Lease::decode) else {
        return Ok(None);
    };
    match owner {
        Some(id) if stored != id.as_bytes() => Err(()),
        None if !stored.is_empty() => Ok(None),
        _ => Ok(Some(lease)),
    }
}

/// One read-modify-write of a tenant's lease. `f` gets the lease (empty when there is none)
/// and decides; `Ok(None)`: the slot went to another id. Also says whether the lease was
/// new (absent or free), so the caller can put it into the index.
fn with_lease<T>(
    store: &dyn Store,
    t: &Tenant,
    now_ms: u64,
    idle_ms: u64,
    mut f: impl FnMut(Lease) -> (Option<Lease>, T),
) -> Result<Option<(T, bool)>, StoreError> {
    let owner = t.owner.as_deref();
    update(store, &t.key, |current| {
        let (lease, new) = match owned(current, owner) {
            Ok(Some(l)) => (l, l.is_free(now_ms, idle_ms)),
            Ok(None) => (Lease::empty(now_ms), true),
            Err(()) => return Step::Keep(None),
        };
        match f(lease) {
            (Some(next), out) => Step::Write(next.encode(owner), Some((out, new))),
            (None, out) => Step::Keep(Some((out, new))),
        }
    })
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

// ---- outage state ---------------------------------------------------------------------------

/// Whether the quota service is known to be unreachable (a missing or unreadable state: no).
pub fn outage(store: &dyn Store) -> bool {
    matches!(store.get(OUTAGE_KEY), Ok(Some((v, _))) if v.first() == Some(&1))
}

/// Records whether the service answered; `Ok(true)` when this changed the state (the caller
/// logs and counts the change, once for all workers).
pub fn set_outage(store: &dyn Store, on: bool, now_ms: u64) -> Result<bool, StoreError> {
    update(store, OUTAGE_KEY, |current| {
        let was = current.and_then(|v| v.first()) == Some(&1);
        if was == on {
            return Step::Keep(false);
        }
        let mut v = vec![u8::from(on)];
        v.extend_from_slice(&now_ms.to_le_bytes());
        Step::Write(v, true)
    })
}

// ---- index of active leases -----------------------------------------------------------------

/// Largest index: every key a lease can have (configured tenants, `anonymous`, `overflow`,
/// and the slots of unconfigured ids).
pub fn max_index(cfg: &Tenants) -> usize {
    cfg.limits.len() + 2 + usize::try_from(cfg.max_tracked_tenants).unwrap_or(usize::MAX)
}

pub fn index(store: &dyn Store) -> Result<Vec<String>, StoreError> {
    let Some((bytes, _)) = store.get(INDEX_KEY)? else {
        return Ok(Vec::new());
    };
    Ok(String::from_utf8_lossy(&bytes)
        .split('\n')
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect())
}

fn edit_index(store: &dyn Store, key: &str, add: bool, max: usize) -> Result<bool, StoreError> {
    update(store, INDEX_KEY, |current| {
        let text = String::from_utf8_lossy(current.unwrap_or_default());
        let mut keys: Vec<&str> = text.split('\n').filter(|k| !k.is_empty()).collect();
        let present = keys.contains(&key);
        if present == add || (add && keys.len() >= max) {
            return Step::Keep(present);
        }
        if add {
            keys.push(key);
        } else {
            keys.retain(|k| *k != key);
        }
        Step::Write(keys.join("\n").into_bytes(), add)
    })
}

/// Puts a lease's key into the index (bounded by `max_index`; a no-op when present).
pub fn index_add(cfg: &Tenants, store: &dyn Store, key: &str) -> Result<bool, StoreError> {
    edit_index(store, key, true, max_index(cfg))
}

// ---- the tick -------------------------------------------------------------------------------

/// A background call the tick started for one lease: its claim is taken and its amounts have
/// left the lease; `finish` applies the answer (or reverts on failure).
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub tenant: Tenant,
    pub call: Call,
    /// The encoded request.
    pub message: Vec<u8>,
}

/// The tenant a lease key of the index belongs to (`None`: not a lease key of this
/// configuration, or an unreadable record).
fn tenant_of(cfg: &Tenants, key: &str, record: Option<&[u8]>) -> Option<Tenant> {
    let rest = key.strip_prefix(GLOBAL_PREFIX)?;
    if rest == "overflow" {
        return Some(overflow(cfg));
    }
    if let Some(name) = rest.strip_prefix("t/") {
        let limits = configured(cfg, name).unwrap_or(cfg.default);
        return Some(Tenant {
            key: key.to_string(),
            label: name.to_string(),
            limits,
            owner: None,
        });
    }
    rest.strip_prefix("u/")?;
    let (_, owner) = Lease::decode(record?)?;
    let owner = std::str::from_utf8(owner).ok().filter(|o| !o.is_empty())?;
    Some(Tenant {
        key: key.to_string(),
        label: "default".into(),
        limits: cfg.default,
        owner: Some(owner.to_string()),
    })
}

/// One tick of one worker VM: looks at up to `WALK_PER_TICK` leases of the index from
/// `cursor` on, claims those that need a call and returns the calls to start (and the next
/// cursor). Forgets leases that are idle, empty and settled.
pub fn tick(
    cfg: &Tenants,
    g: &Global,
    store: &dyn Store,
    now_ms: u64,
    cursor: usize,
) -> Result<(Vec<Job>, usize), StoreError> {
    let keys = index(store)?;
    if keys.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let down = outage(store);
    let mut jobs = Vec::new();
    let n = keys.len().min(WALK_PER_TICK);
    for i in 0..n {
        let Some(key) = keys.get((cursor + i) % keys.len()) else {
            continue;
        };
        let record = store.get(key)?.map(|(v, _)| v);
        let Some(t) = tenant_of(cfg, key, record.as_deref()) else {
            edit_index(store, key, false, 0)?;
            continue;
        };
        let sizes = Sizes::of(g, &t.limits);
        let claim = now_ms.saturating_add(g.timeout_ms.saturating_mul(2));
        let planned = with_lease(store, &t, now_ms, g.idle_ms, |l| {
            match lease::plan(&l, &sizes, g, now_ms, down) {
                Plan::Call(c) => {
                    let next = Lease {
                        claim_until_ms: claim,
                        ..c.start(&l, &sizes)
                    };
                    (Some(next), Plan::Call(c))
                }
                p => (None, p),
            }
        })?;
        match planned.map(|(p, _)| p) {
            Some(Plan::Call(call)) => jobs.push(job(t, call)),
            Some(Plan::Forget) => forget(cfg, g, store, &t, now_ms)?,
            _ => {}
        }
    }
    Ok((jobs, (cursor + n) % keys.len().max(1)))
}

fn job(tenant: Tenant, call: Call) -> Job {
    let name = redis_tenant(&tenant);
    let amount = (call.requests, call.tokens);
    let message = match call.method {
        Method::Take => {
            quota::wire::encode_take_request(&take_request(&name, &tenant.limits, amount, (0, 0)))
        }
        Method::Give | Method::Charge => {
            quota::wire::encode_amount_request(&amount_request(&name, &tenant.limits, amount))
        }
    };
    Job {
        tenant,
        call,
        message,
    }
}

/// Drops an idle lease from the index; puts it back if a worker used it meanwhile.
fn forget(
    cfg: &Tenants,
    g: &Global,
    store: &dyn Store,
    t: &Tenant,
    now_ms: u64,
) -> Result<(), StoreError> {
    edit_index(store, &t.key, false, 0)?;
    let still_free = match store.get(&t.key)? {
        Some((v, _)) => owned(Some(&v), t.owner.as_deref())
            .ok()
            .flatten()
            .is_none_or(|l| l.is_free(now_ms, g.idle_ms)),
        None => true,
    };
    if !still_free {
        index_add(cfg, store, &t.key)?;
    }
    Ok(())
}

/// What came back for a tick's call: the grants of a `Take`, or just success.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Granted(Vec<Grant>),
    Done,
    /// Failed, timed out, or unreadable: nothing happened in Redis as far as we know.
    Failed,
}

/// Applies a job's answer to its lease and releases the claim.
pub fn finish(
    g: &Global,
    job: &Job,
    answer: &Answer,
    store: &dyn Store,
    now_ms: u64,
) -> Result<(), StoreError> {
    let sizes = Sizes::of(g, &job.tenant.limits);
    let granted = match answer {
        Answer::Granted(grants) => {
            let values: Vec<i64> = grants.iter().map(|gr| gr.granted.max(0)).collect();
            from_items(&job.tenant.limits, &values).unwrap_or((0, 0))
        }
        _ => (0, 0),
    };
    with_lease(store, &job.tenant, now_ms, g.idle_ms, |l| {
        let next = match answer {
            Answer::Failed => job.call.revert(&l, &sizes),
            Answer::Granted(_) => l.credit(granted, &sizes),
            Answer::Done => l,
        };
        (
            Some(Lease {
                claim_until_ms: 0,
                ..next
            }),
            (),
        )
    })?;
    Ok(())
}
