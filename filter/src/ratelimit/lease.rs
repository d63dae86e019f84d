//! A replica's lease of one tenant's global buckets (`tenants.global`): the record kept in
//! shared data under the tenant's key, and the pure arithmetic on it. No clock refills a
//! lease: only grants of the quota service (`Take`) do. Amounts are whole requests / tokens.
//!
//! Record layout (little-endian): requests, tokens (levels, may be negative after
//! reconciliation), last use (ms), debt requests, debt tokens (booked beyond the lease while
//! the service was unreachable: positive is owed to Redis, negative is owed back by it),
//! refill claim expiry (ms: while in the future, one worker VM has a call in flight for this
//! lease and no other starts one), then the owner id of an unconfigured tenant's slot.

use crate::config::{Global, Limits};
use crate::quota::Method;

pub const RECORD_BYTES: usize = 48;

/// Bounds of a lease level and of a debt, in multiples of the lease size, so that no
/// correction can overflow or wedge a tenant for good.
const MAX_LEASES_HELD: i64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lease {
    pub requests: i64,
    pub tokens: i64,
    pub last_use_ms: u64,
    pub debt_requests: i64,
    pub debt_tokens: i64,
    pub claim_until_ms: u64,
}

/// Lease sizes of a tenant's two buckets (`None`: that bucket is not limited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub requests: Option<i64>,
    pub tokens: Option<i64>,
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Sizes {
    pub fn of(g: &Global, limits: &Limits) -> Sizes {
        Sizes {
            requests: limits
                .requests
                .as_ref()
                .map(|l| signed(g.lease_requests(l))),
            tokens: limits.tokens.as_ref().map(|l| signed(g.lease_tokens(l))),
        }
    }
}

fn bound(v: i64, size: Option<i64>) -> i64 {
    let cap = size.unwrap_or(0).max(1).saturating_mul(MAX_LEASES_HELD);
    v.clamp(cap.saturating_neg(), cap)
}

impl Lease {
    pub fn empty(now_ms: u64) -> Lease {
        Lease {
            last_use_ms: now_ms,
            ..Lease::default()
        }
    }

    pub fn encode(&self, owner: Option<&str>) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_BYTES + owner.map_or(0, str::len));
        for v in [self.requests, self.tokens] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.last_use_ms.to_le_bytes());
        for v in [self.debt_requests, self.debt_tokens] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.claim_until_ms.to_le_bytes());
        out.extend_from_slice(owner.unwrap_or_default().as_bytes());
        out
    }

    /// The lease and the owner bytes after it; `None` for anything else (e.g. a per-proxy
    /// bucket record left by an earlier configuration: read as no lease).
    pub fn decode(bytes: &[u8]) -> Option<(Lease, &[u8])> {
        let field = |i: usize| -> Option<[u8; 8]> { bytes.get(i * 8..i * 8 + 8)?.try_into().ok() };
        let i = |n: usize| field(n).map(i64::from_le_bytes);
        let u = |n: usize| field(n).map(u64::from_le_bytes);
        let lease = Lease {
            requests: i(0)?,
            tokens: i(1)?,
            last_use_ms: u(2)?,
            debt_requests: i(3)?,
            debt_tokens: i(4)?,
            claim_until_ms: u(5)?,
        };
        Some((lease, bytes.get(RECORD_BYTES..)?))
    }

    /// Nothing held, nothing owed, no call in flight, unused for `idle_ms`: the record carries
    /// nothing worth keeping (its slot may go to another id).
    pub fn is_free(&self, now_ms: u64, idle_ms: u64) -> bool {
        self.requests == 0
            && self.tokens == 0
            && self.debt_requests == 0
            && self.debt_tokens == 0
            && self.claim_until_ms <= now_ms
            && now_ms.saturating_sub(self.last_use_ms) >= idle_ms
    }

    /// Charges `need` to the lease if it holds enough of both; else what each bucket lacks.
    pub fn charge(&self, need: (i64, i64), now_ms: u64) -> Result<Lease, (i64, i64)> {
        let lack = (
            need.0.saturating_sub(self.requests).max(0),
            need.1.saturating_sub(self.tokens).max(0),
        );
        if lack != (0, 0) {
            return Err(lack);
        }
        Ok(Lease {
            requests: self.requests - need.0,
            tokens: self.tokens - need.1,
            last_use_ms: self.last_use_ms.max(now_ms),
            ..*self
        })
    }

    /// Adds to the levels (grants, refunds; negative: charges on top), bounded.
    pub fn credit(&self, amount: (i64, i64), sizes: &Sizes) -> Lease {
        Lease {
            requests: bound(self.requests.saturating_add(amount.0), sizes.requests),
            tokens: bound(self.tokens.saturating_add(amount.1), sizes.tokens),
            ..*self
        }
    }

    /// Books usage beyond the lease (positive) or a refund of it (negative) as debt (Redis
    /// bounds what it accepts: at most 4 x capacity of debt).
    pub fn book_debt(&self, amount: (i64, i64), now_ms: u64) -> Lease {
        Lease {
            debt_requests: self.debt_requests.saturating_add(amount.0),
            debt_tokens: self.debt_tokens.saturating_add(amount.1),
            last_use_ms: self.last_use_ms.max(now_ms),
            ..*self
        }
    }
}

/// Where a background call's amounts come from (and go back to when it fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Levels,
    Debt,
}

/// One call of the quota service for one lease. Amounts are whole units, never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub method: Method,
    pub requests: i64,
    pub tokens: i64,
    pub source: Source,
}

impl Call {
    /// How the lease changes when the call is started (amounts leave the lease before the
    /// call, so no other worker spends or sends them twice); a failed call reverts it. A
    /// `Take` changes nothing until its grant arrives.
    pub fn start(&self, lease: &Lease, sizes: &Sizes) -> Lease {
        let sign = match self.method {
            Method::Take => return *lease,
            Method::Give => -1,
            Method::Charge => 1,
        };
        let amount = (sign * self.requests, sign * self.tokens);
        match self.source {
            Source::Levels => lease.credit(amount, sizes),
            // A debt is paid by Charge (it shrinks) or settled by Give (a negative debt grows
            // back to zero).
            Source::Debt => Lease {
                debt_requests: lease.debt_requests.saturating_sub(amount.0),
                debt_tokens: lease.debt_tokens.saturating_sub(amount.1),
                ..*lease
            },
        }
    }

    /// Reverts `start` (the call failed: nothing happened in Redis).
    pub fn revert(&self, lease: &Lease, sizes: &Sizes) -> Lease {
        let undo = Call {
            method: match self.method {
                Method::Take => Method::Take,
                Method::Give => Method::Charge,
                Method::Charge => Method::Give,
            },
            ..*self
        };
        undo.start(lease, sizes)
    }
}

/// What the background tick does for one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Nothing,
    /// Idle, empty and settled: drop it from the index.
    Forget,
    Call(Call),
}

fn pair(sizes: &Sizes, f: impl Fn(i64, i64) -> i64, lease: &Lease) -> (i64, i64) {
    (
        sizes.requests.map_or(0, |s| f(lease.requests, s)),
        sizes.tokens.map_or(0, |s| f(lease.tokens, s)),
    )
}

fn call(method: Method, amount: (i64, i64), source: Source) -> Option<Plan> {
    (amount.0 > 0 || amount.1 > 0).then_some(Plan::Call(Call {
        method,
        requests: amount.0.max(0),
        tokens: amount.1.max(0),
        source,
    }))
}

/// The tick's decision for one lease. In an outage only refills are tried (they are the
/// probe that notices the service is back); returns and debt wait.
pub fn plan(lease: &Lease, sizes: &Sizes, g: &Global, now_ms: u64, outage: bool) -> Plan {
    if lease.claim_until_ms > now_ms {
        return Plan::Nothing;
    }
    let debt = (lease.debt_requests, lease.debt_tokens);
    let idle = now_ms.saturating_sub(lease.last_use_ms) >= g.idle_ms;
    if !outage {
        let owed = (debt.0.max(0), debt.1.max(0));
        let back = (
            debt.0.min(0).saturating_neg(),
            debt.1.min(0).saturating_neg(),
        );
        if let Some(p) = call(Method::Charge, owed, Source::Debt)
            .or_else(|| call(Method::Give, back, Source::Debt))
        {
            return p;
        }
    }
    // Below half a lease: top it up to a whole one. In an outage this is the probe that
    // notices the service is back, so it runs for idle leases too.
    let want = pair(
        sizes,
        |l, s| if l.saturating_mul(2) < s { s - l } else { 0 },
        lease,
    );
    if outage {
        return call(Method::Take, want, Source::Levels).unwrap_or(Plan::Nothing);
    }
    if idle {
        let held = pair(sizes, |l, _| l.max(0), lease);
        let owed = pair(sizes, |l, _| l.min(0).saturating_neg(), lease);
        return call(Method::Give, held, Source::Levels)
            .or_else(|| call(Method::Charge, owed, Source::Levels))
            .unwrap_or(if debt == (0, 0) {
                Plan::Forget
            } else {
                Plan::Nothing
            });
    }
    if let Some(p) = call(Method::Take, want, Source::Levels) {
        return p;
    }
    // Above twice a lease: give back down to one.
    let surplus = pair(
        sizes,
        |l, s| if l > s.saturating_mul(2) { l - s } else { 0 },
        lease,
    );
    call(Method::Give, surplus, Source::Levels).unwrap_or(Plan::Nothing)
}
