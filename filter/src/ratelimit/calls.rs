//! The quota service's messages for a tenant's leases: Redis names, the buckets of a tenant
//! and the items of a call (requests first, then tokens; unlimited buckets have no item).

use super::tenants::Tenant;
use crate::config::{BucketLimit, Limits};
use crate::quota::{self, AmountItem, AmountRequest, TakeItem, TakeRequest};

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
pub fn from_items(limits: &Limits, values: &[i64]) -> Option<(i64, i64)> {
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
