//! What the quota service accepts, decided before Redis is asked: bucket names, Redis keys, and
//! the bounds that keep the Lua script's double arithmetic exact.
//!
//! The script counts in units of 1/60000 and its levels range from -4 x capacity to capacity,
//! so 5 x capacity x 60000 must stay below 2^53. With capacity and per_minute at most 2^33
//! (8,589,934,592) it stays below 2^52. Amounts are clamped to what they can change: a take
//! never grants more than the capacity, a give or a charge never moves a level by more than
//! 5 x capacity, so larger figures are cut to those without changing the outcome.

use std::fmt;

/// Units of one whole request or token in Redis (`per_minute` units refill per millisecond).
pub const UNITS_PER_WHOLE: u64 = 60_000;
/// Largest `per_minute` and `capacity` the service accepts.
pub const MAX_RATE: u64 = 1 << 33;
/// Largest `want`, `min` and `amount`: anything above is a client bug, not a request size.
pub const MAX_AMOUNT: i64 = 1 << 53;
/// Longest tenant name, in bytes (the filter's ids are at most 128 bytes, plus `u/`).
pub const MAX_TENANT_BYTES: usize = 256;
/// The Redis key prefix; `{tenant}` is the Redis Cluster hash tag.
pub const KEY_PREFIX: &str = "llm_router:q:";

/// `requests` or `tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Requests,
    Tokens,
}

impl Limit {
    pub fn parse(name: &str) -> Option<Limit> {
        match name {
            "requests" => Some(Limit::Requests),
            "tokens" => Some(Limit::Tokens),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Requests => "requests",
            Limit::Tokens => "tokens",
        }
    }
}

/// A validated bucket: tenant, limit, rate and capacity within bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub tenant: String,
    pub limit: Limit,
    pub per_minute: u64,
    pub capacity: u64,
}

impl Bucket {
    /// `llm_router:q:{<tenant>}:<limit>`. The tenant may hold any bytes, braces included (but
    /// not a leading `}`): the key still ends in `}:requests` or `}:tokens`, so two buckets
    /// never share a key, and both keys of one tenant have the same, non-empty hash tag (the
    /// text up to the first `}`).
    pub fn key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(KEY_PREFIX.len() + self.tenant.len() + 12);
        k.extend_from_slice(KEY_PREFIX.as_bytes());
        k.push(b'{');
        k.extend_from_slice(self.tenant.as_bytes());
        k.extend_from_slice(b"}:");
        k.extend_from_slice(self.limit.as_str().as_bytes());
        k
    }
}

/// A request the service refuses (`INVALID_ARGUMENT`); the message names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

fn invalid<T>(why: String) -> Result<T, Invalid> {
    Err(Invalid(why))
}

/// Checks one bucket as a client sent it (`at` names the item, e.g. `items[1]`).
pub fn bucket(
    at: &str,
    tenant: &str,
    limit: &str,
    per_minute: u64,
    capacity: u64,
) -> Result<Bucket, Invalid> {
    if tenant.is_empty() || tenant.len() > MAX_TENANT_BYTES {
        return invalid(format!(
            "{at}.bucket.tenant: must be 1 to {MAX_TENANT_BYTES} bytes"
        ));
    }
    if tenant.starts_with('}') {
        // `{}` is an empty hash tag: Redis Cluster would hash the whole key, and a tenant's
        // two buckets could land in different slots.
        return invalid(format!(
            "{at}.bucket.tenant: must not start with `}}` (Redis Cluster hash tag)"
        ));
    }
    let Some(limit) = Limit::parse(limit) else {
        return invalid(format!("{at}.bucket.limit: must be `requests` or `tokens`"));
    };
    for (name, v) in [("per_minute", per_minute), ("capacity", capacity)] {
        if v == 0 || v > MAX_RATE {
            return invalid(format!("{at}.bucket.{name}: must be 1 to {MAX_RATE}"));
        }
    }
    Ok(Bucket {
        tenant: tenant.to_string(),
        limit,
        per_minute,
        capacity,
    })
}

fn amount(at: &str, name: &str, v: i64) -> Result<u64, Invalid> {
    if !(0..=MAX_AMOUNT).contains(&v) {
        return invalid(format!("{at}.{name}: must be 0 to {MAX_AMOUNT}"));
    }
    Ok(v.unsigned_abs())
}

/// A take item ready for the script: `want` at most the capacity (no grant exceeds it),
/// `min` at most capacity + 1 (above the capacity it never fits, whatever its size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    pub bucket: Bucket,
    pub want: u64,
    pub min: u64,
}

pub fn take(at: &str, bucket: Bucket, want: i64, min: i64) -> Result<Take, Invalid> {
    let want = amount(at, "want", want)?.min(bucket.capacity);
    let min = amount(at, "min", min)?.min(bucket.capacity + 1);
    Ok(Take { bucket, want, min })
}

/// A give or charge item: `amount` at most 5 x capacity (the distance from the debt floor to
/// the capacity; a larger figure ends at the same bound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub bucket: Bucket,
    pub amount: u64,
}

pub fn movement(at: &str, bucket: Bucket, value: i64) -> Result<Move, Invalid> {
    let amount = amount(at, "amount", value)?.min(5 * bucket.capacity);
    Ok(Move { bucket, amount })
}

/// Most items in one call: a tenant has two buckets.
pub const MAX_ITEMS: usize = 2;

/// The items of one call: at least one, all of one tenant, no bucket twice.
pub fn same_tenant<'a>(buckets: impl Iterator<Item = &'a Bucket>) -> Result<(), Invalid> {
    let mut seen: Vec<&Bucket> = Vec::new();
    for b in buckets {
        if let Some(first) = seen.first() {
            if first.tenant != b.tenant {
                return invalid(format!(
                    "items[{}].bucket.tenant: all items must name the same tenant",
                    seen.len()
                ));
            }
        }
        if seen.iter().any(|s| s.limit == b.limit) {
            return invalid(format!(
                "items[{}].bucket.limit: `{}` appears twice",
                seen.len(),
                b.limit.as_str()
            ));
        }
        seen.push(b);
    }
    if seen.is_empty() {
        return invalid("items: at least one item is required".into());
    }
    Ok(())
}

/// Checks the item count before anything else is looked at.
pub fn item_count(n: usize) -> Result<(), Invalid> {
    if n == 0 {
        return invalid("items: at least one item is required".into());
    }
    if n > MAX_ITEMS {
        return invalid(format!(
            "items: at most {MAX_ITEMS} (one tenant's `requests` and `tokens`)"
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
