//! Token-bucket arithmetic, exact in integers.
//!
//! A bucket's level is kept in *units* of 1/60000 of a token (or request): a rate of `r` per
//! minute then refills exactly `r` units per millisecond, so fractional rates such as 1 request
//! per minute need no floating point and lose nothing to rounding.

use crate::config::BucketLimit;

/// Units per whole token or request.
pub const UNIT: i64 = 60_000;

/// How far below zero usage reconciliation may push a bucket (in multiples of its capacity),
/// so a grossly wrong estimate delays a tenant for a while but cannot wedge it forever or
/// overflow.
const MAX_DEBT_CAPACITIES: i64 = 4;

/// One bucket's state: its level (units, may be negative after a debit) at `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    pub units: i64,
}

pub fn capacity(limit: &BucketLimit) -> i64 {
    (limit.burst as i64).saturating_mul(UNIT)
}

/// The level after `elapsed_ms` of refill, never above capacity. A level above capacity (the
/// limit was lowered by a new configuration) is clamped down to it.
pub fn refill(level: i64, limit: &BucketLimit, elapsed_ms: u64) -> i64 {
    let cap = capacity(limit);
    let added = i128::from(elapsed_ms) * i128::from(limit.per_minute);
    let next = i128::from(level) + added;
    i64::try_from(next.min(i128::from(cap))).unwrap_or(cap)
}

/// Applies a signed change (positive = take, negative = give back), bounded by
/// `[-MAX_DEBT_CAPACITIES * capacity, capacity]`.
pub fn apply(level: i64, limit: &BucketLimit, take_units: i64) -> i64 {
    let cap = capacity(limit);
    let floor = cap.saturating_mul(-MAX_DEBT_CAPACITIES);
    level.saturating_sub(take_units).clamp(floor, cap)
}

/// Milliseconds until the level reaches `needed` units (0 when it already has).
pub fn ms_until(level: i64, needed: i64, limit: &BucketLimit) -> u64 {
    if level >= needed || limit.per_minute == 0 {
        return 0;
    }
    let missing = (i128::from(needed) - i128::from(level)) as u128;
    let rate = u128::from(limit.per_minute);
    u64::try_from(missing.div_ceil(rate)).unwrap_or(u64::MAX)
}

/// Whole tokens in a level (floor, never negative) — for `x-ratelimit-remaining-*`.
pub fn whole(level: i64) -> u64 {
    u64::try_from(level.max(0) / UNIT).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(per_minute: u64, burst: u64) -> BucketLimit {
        BucketLimit { per_minute, burst }
    }

    #[test]
    fn refill_is_exact_for_fractional_rates() {
        // 1 request per minute: one whole request after exactly 60 s, not before.
        let l = lim(1, 1);
        assert_eq!(refill(0, &l, 59_999), UNIT - 1);
        assert_eq!(refill(0, &l, 60_000), UNIT);
        // 7 per minute: 7 after a minute
        let l = lim(7, 100);
        assert_eq!(whole(refill(0, &l, 60_000)), 7);
        assert_eq!(whole(refill(0, &l, 8_571)), 0);
        assert_eq!(whole(refill(0, &l, 8_572)), 1);
    }

    #[test]
    fn refill_stops_at_burst() {
        let l = lim(600, 10);
        assert_eq!(refill(0, &l, 3_600_000), 10 * UNIT);
        assert_eq!(refill(5 * UNIT, &l, u64::MAX), 10 * UNIT);
    }

    #[test]
    fn lowered_limit_clamps_level() {
        assert_eq!(refill(100 * UNIT, &lim(10, 10), 0), 10 * UNIT);
    }

    #[test]
    fn debt_recovers_at_the_rate() {
        let l = lim(60, 60); // one per second
        let level = apply(0, &l, 30 * UNIT); // debited 30
        assert_eq!(level, -30 * UNIT);
        assert_eq!(ms_until(level, UNIT, &l), 31_000);
        assert_eq!(whole(level), 0);
    }

    #[test]
    fn debt_is_bounded() {
        let l = lim(10, 10);
        assert_eq!(apply(0, &l, i64::MAX), -4 * 10 * UNIT);
        assert_eq!(apply(0, &l, i64::MIN), 10 * UNIT);
    }

    #[test]
    fn huge_numbers_do_not_overflow() {
        let l = lim(1 << 40, 1 << 40);
        let cap = capacity(&l);
        assert!(cap > 0);
        assert_eq!(refill(cap, &l, u64::MAX), cap);
        assert_eq!(refill(i64::MIN, &l, u64::MAX), cap);
        assert_eq!(ms_until(i64::MIN, i64::MAX, &lim(1, 1)), u64::MAX);
    }

    #[test]
    fn ms_until_rounds_up() {
        let l = lim(1, 1);
        assert_eq!(ms_until(0, UNIT, &l), 60_000);
        assert_eq!(ms_until(UNIT - 1, UNIT, &l), 1);
        assert_eq!(ms_until(UNIT, UNIT, &l), 0);
    }
}
