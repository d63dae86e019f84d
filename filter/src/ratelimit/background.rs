//! Global limits in the background: the outage state, the bounded index of active leases,
//! and the root context's tick over them (claims, the calls to start, their answers applied).
//! Pure, like `global`: shared data is a [`Store`], answers come in decoded.

use super::calls::{amount_request, from_items, redis_tenant, take_request};
use super::lease::{self, Call, Lease, Plan, Sizes};
use super::lease_store::{owned, with_lease};
use super::tenants::{configured, overflow, Tenant};
use super::GLOBAL_PREFIX;
use crate::config::{Global, Tenants};
use crate::quota::{self, Grant, Method};
use crate::store::{update, Step, Store, StoreError};

/// Leases the tick of one VM looks at per tick (the rest on the next ticks).
pub const WALK_PER_TICK: usize = 64;
/// Shared-data key of the index of active leases (their keys, one a line).
pub const INDEX_KEY: &str = "llm_router/gl/index";
/// Shared-data key of the outage state (all workers of the proxy see it).
pub const OUTAGE_KEY: &str = "llm_router/gl/outage";

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
