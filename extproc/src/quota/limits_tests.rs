//! Property tests of the validation and clamping: whatever a client sends, what reaches the
//! script is within the bounds that keep its arithmetic exact, and clamping never changes the
//! outcome a client sees.

#![allow(clippy::panic)]
use super::*;

/// splitmix64: enough for test-case generation, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Mostly values near interesting bounds, sometimes anything.
    fn u64(&mut self) -> u64 {
        let edges = [0, 1, 2, MAX_RATE - 1, MAX_RATE, MAX_RATE + 1, u64::MAX];
        match self.next() % 4 {
            0 => edges[(self.next() % edges.len() as u64) as usize],
            1 => self.next() % 100,
            2 => self.next() >> (self.next() % 64),
            _ => self.next(),
        }
    }
    fn i64(&mut self) -> i64 {
        let edges = [i64::MIN, -1, 0, 1, MAX_AMOUNT, MAX_AMOUNT + 1, i64::MAX];
        match self.next() % 4 {
            0 => edges[(self.next() % edges.len() as u64) as usize],
            1 => (self.next() % 200) as i64 - 50,
            2 => (self.next() >> (self.next() % 64)) as i64,
            _ => self.next() as i64,
        }
    }
}

const U: i128 = UNITS_PER_WHOLE as i128;
const ITERS: usize = 20_000;

fn floor_whole(level: i128) -> i128 {
    level.div_euclid(U)
}

/// The script's take on one bucket at `level` units, in exact integers: (fits, granted).
fn model_take(level: i128, want: i128, min: i128) -> (bool, i128) {
    if level < min * U {
        return (false, 0);
    }
    (true, want.max(min).min(floor_whole(level)))
}

fn model_move(level: i128, capacity: i128, amount: i128, give: bool) -> i128 {
    if give {
        (level + amount * U).min(capacity * U)
    } else {
        (level - amount * U).max(-4 * capacity * U)
    }
}

#[test]
fn accepted_buckets_keep_the_script_exact() {
    let mut rng = Rng(1);
    for _ in 0..ITERS {
        let (per_minute, capacity) = (rng.u64(), rng.u64());
        let got = bucket("items[0]", "acme", "tokens", per_minute, capacity);
        let in_bounds = (1..=MAX_RATE).contains(&per_minute) && (1..=MAX_RATE).contains(&capacity);
        assert_eq!(got.is_ok(), in_bounds, "{per_minute} {capacity}");
        if let Ok(b) = got {
            // Largest magnitude the script handles: from the debt floor to capacity, plus one
            // millisecond of refill.
            let span = 5 * i128::from(b.capacity) * U + i128::from(b.per_minute);
            assert!(span < 1 << 52);
        }
    }
}

#[test]
fn clamping_never_changes_a_take() {
    let mut rng = Rng(2);
    for _ in 0..ITERS {
        let capacity = 1 + rng.u64() % MAX_RATE;
        let Ok(b) = bucket("items[0]", "t", "requests", 1, capacity) else {
            panic!("capacity {capacity} refused");
        };
        let cap = i128::from(capacity);
        let level = (i128::from(rng.next()) % (5 * cap * U + 1)) - 4 * cap * U;
        let (want, min) = (rng.i64(), rng.i64());
        match take("items[0]", b, want, min) {
            Err(Invalid(why)) => {
                assert!(!(0..=MAX_AMOUNT).contains(&want) || !(0..=MAX_AMOUNT).contains(&min));
                assert!(why.starts_with("items[0]."), "{why}");
            }
            Ok(t) => {
                assert!(t.want <= capacity && t.min <= capacity + 1);
                let exact = model_take(level, want.into(), min.into());
                let clamped = model_take(level, t.want.into(), t.min.into());
                assert_eq!(exact, clamped, "level {level} want {want} min {min}");
            }
        }
    }
}

#[test]
fn clamping_never_changes_a_give_or_charge() {
    let mut rng = Rng(3);
    for _ in 0..ITERS {
        let capacity = 1 + rng.u64() % MAX_RATE;
        let Ok(b) = bucket("items[1]", "t", "tokens", 7, capacity) else {
            panic!("capacity {capacity} refused");
        };
        let cap = i128::from(capacity);
        let level = (i128::from(rng.next()) % (5 * cap * U + 1)) - 4 * cap * U;
        let value = rng.i64();
        match movement("items[1]", b, value) {
            Err(Invalid(why)) => {
                assert!(!(0..=MAX_AMOUNT).contains(&value));
                assert!(why.starts_with("items[1].amount"), "{why}");
            }
            Ok(m) => {
                assert!(m.amount <= 5 * capacity);
                for give in [true, false] {
                    let exact = model_move(level, cap, value.into(), give);
                    let clamped = model_move(level, cap, m.amount.into(), give);
                    assert_eq!(exact, clamped, "level {level} amount {value} give {give}");
                }
            }
        }
    }
}

#[test]
fn keys_are_distinct_and_share_the_tenant_hash_tag() {
    let mut rng = Rng(4);
    let mut seen = std::collections::HashMap::new();
    for _ in 0..ITERS {
        // Short tenants from a small alphabet with braces and colons, so collisions would show.
        let len = 1 + rng.next() % 6;
        let tenant: String = (0..len)
            .map(|_| ['a', '{', '}', ':', 't', 'é'][(rng.next() % 6) as usize])
            .collect();
        let limit = if rng.next().is_multiple_of(2) {
            "requests"
        } else {
            "tokens"
        };
        let got = bucket("items[0]", &tenant, limit, 1, 1);
        assert_eq!(got.is_err(), tenant.starts_with('}'), "{tenant:?}");
        let Ok(b) = got else {
            continue;
        };
        let key = b.key();
        if let Some(prev) = seen.insert(key.clone(), (tenant.clone(), limit)) {
            assert_eq!(prev, (tenant.clone(), limit), "two buckets share {key:?}");
        }
        let other = Bucket {
            limit: if b.limit == Limit::Tokens {
                Limit::Requests
            } else {
                Limit::Tokens
            },
            ..b.clone()
        };
        let tag = hash_tag(&key);
        assert!(tag.len() < key.len(), "no hash tag in {key:?}");
        assert_eq!(tag, hash_tag(&other.key()));
    }
}

/// Redis Cluster's hash tag: between the first `{` and the next `}`, when not empty.
fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&c| c == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&c| c == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

#[test]
fn names_and_counts_are_checked() {
    assert!(bucket("items[0]", "", "tokens", 1, 1).is_err());
    let long = "x".repeat(MAX_TENANT_BYTES);
    assert!(bucket("items[0]", &long, "tokens", 1, 1).is_ok());
    assert!(bucket("items[0]", &format!("{long}x"), "tokens", 1, 1).is_err());
    assert!(bucket("items[0]", "\u{0}\u{7f}\u{fffd}", "tokens", 1, 1).is_ok());
    for bad in ["", "Tokens", "token", "requests ", "cost"] {
        let got = bucket("items[0]", "t", bad, 1, 1);
        assert_eq!(
            got,
            Err(Invalid(
                "items[0].bucket.limit: must be `requests` or `tokens`".into()
            ))
        );
    }
    assert!(item_count(0).is_err() && item_count(3).is_err());
    assert!(item_count(1).is_ok() && item_count(2).is_ok());
    let a = |tenant: &str, limit| bucket("i", tenant, limit, 1, 1);
    let (Ok(r), Ok(t), Ok(other)) = (a("x", "requests"), a("x", "tokens"), a("y", "tokens")) else {
        panic!("valid buckets refused");
    };
    assert!(same_tenant([&r, &t].into_iter()).is_ok());
    assert!(same_tenant([&r, &other].into_iter()).is_err());
    assert!(same_tenant([&t, &t].into_iter()).is_err());
    assert!(same_tenant(std::iter::empty()).is_err());
}
