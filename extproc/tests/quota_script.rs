//! bucket.lua against a real redis-server: refill, grants, all or nothing, give, charge and
//! debt, expiry, clock skew, the numeric bounds, NOSCRIPT.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod quota_common;

use std::time::{Duration, Instant};

use llm_router_extproc::quota::limits::{self, Bucket, Move, Take, MAX_RATE};
use llm_router_extproc::quota::script::{Granted, Store};
use quota_common::Redis;
use redis::Commands;

const U: i64 = 60_000;

fn bucket(tenant: &str, limit: &str, per_minute: u64, capacity: u64) -> Bucket {
    limits::bucket("t", tenant, limit, per_minute, capacity).unwrap()
}

fn take(b: &Bucket, want: i64, min: i64) -> Take {
    limits::take("t", b.clone(), want, min).unwrap()
}

fn amount(b: &Bucket, n: i64) -> Move {
    limits::movement("t", b.clone(), n).unwrap()
}

fn store(r: &Redis) -> Store {
    Store::new(&r.url(), Duration::from_secs(2)).unwrap()
}

fn lvl(r: &Redis, b: &Bucket) -> Option<String> {
    r.conn().hget(b.key(), "lvl").unwrap()
}

#[tokio::test]
async fn unknown_key_is_full_and_expires_when_full_again() {
    let r = Redis::start();
    let s = store(&r);
    let b = bucket("acme", "requests", 60, 10);
    let o = s.take(&[take(&b, 3, 0)]).await.unwrap();
    assert_eq!(o.retry_after_ms, 0);
    assert_eq!(
        o.grants,
        vec![Granted {
            granted: 3,
            level: 7
        }]
    );
    assert_eq!(lvl(&r, &b).as_deref(), Some("420000"));
    let ts: i64 = r.conn().hget(b.key(), "ts").unwrap();
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query(&mut r.conn()).unwrap();
    let now = secs * 1000 + micros / 1000;
    assert!((0..=2000).contains(&(now - ts)), "ts {ts} now {now}");
    // Full again in 3 s (one a second), plus a minute.
    let ttl: i64 = r.conn().pttl(b.key()).unwrap();
    assert!((60_000..=63_000).contains(&ttl), "pttl {ttl}");
}

#[tokio::test]
async fn grants_up_to_the_level_then_refuses_with_retry() {
    let r = Redis::start();
    let s = store(&r);
    let b = bucket("acme", "tokens", 60, 5);
    let o = s.take(&[take(&b, 8, 1)]).await.unwrap();
    assert_eq!(
        o.grants,
        vec![Granted {
            granted: 5,
            level: 0
        }]
    );
    // Empty: min 0 fits and grants nothing; min 1 does not fit for about a second.
    let o = s.take(&[take(&b, 4, 0)]).await.unwrap();
    assert_eq!((o.retry_after_ms, o.grants[0].granted), (0, 0));
    let o = s.take(&[take(&b, 1, 1)]).await.unwrap();
    assert!((1..=1000).contains(&o.retry_after_ms), "{o:?}");
    assert_eq!(o.grants[0].granted, 0);
    // A min above want is granted in full (max(want, min)).
    let b2 = bucket("acme2", "tokens", 60, 5);
    let o = s.take(&[take(&b2, 1, 3)]).await.unwrap();
    assert_eq!(
        o.grants,
        vec![Granted {
            granted: 3,
            level: 2
        }]
    );
}

#[tokio::test]
async fn refills_with_the_time_that_passed() {
    let r = Redis::start();
    let s = store(&r);
    // 600000 a minute = 10 a millisecond.
    let b = bucket("fast", "tokens", 600_000, 1_000_000);
    let start = Instant::now();
    let o = s.take(&[take(&b, 1_000_000, 0)]).await.unwrap();
    assert_eq!(o.grants[0].level, 0);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let o = s.take(&[take(&b, 1_000_000, 0)]).await.unwrap();
    let bound = start.elapsed().as_millis() as i64 * 10 + 10;
    let got = o.grants[0].granted;
    assert!(got >= 590 && got <= bound, "refilled {got}, bound {bound}");
    assert_eq!(o.grants[0].level, 0);
}

#[tokio::test]
async fn all_or_nothing_on_min_across_two_buckets() {
    let r = Redis::start();
    let s = store(&r);
    let req = bucket("acme", "requests", 60, 10);
    let tok = bucket("acme", "tokens", 60, 100);
    s.take(&[take(&tok, 95, 95)]).await.unwrap();
    let o = s
        .take(&[take(&req, 1, 1), take(&tok, 10, 10)])
        .await
        .unwrap();
    // Tokens hold 5 of the 10 needed: nothing taken from either bucket.
    assert!((4000..=5000).contains(&o.retry_after_ms), "{o:?}");
    assert_eq!(
        o.grants,
        vec![
            Granted {
                granted: 0,
                level: 10
            },
            Granted {
                granted: 0,
                level: 5
            }
        ]
    );
    assert_eq!(lvl(&r, &req), None, "the requests bucket was written");
    // Both fit: both are debited in the same call.
    let o = s.take(&[take(&req, 1, 1), take(&tok, 5, 5)]).await.unwrap();
    assert_eq!(o.retry_after_ms, 0);
    assert_eq!(
        o.grants[0],
        Granted {
            granted: 1,
            level: 9
        }
    );
    assert_eq!(o.grants[1].granted, 5);
    assert!(o.grants[1].level <= 1);
}

#[tokio::test]
async fn give_is_capped_at_capacity() {
    let r = Redis::start();
    let s = store(&r);
    let b = bucket("acme", "requests", 60, 10);
    s.take(&[take(&b, 5, 5)]).await.unwrap();
    assert_eq!(s.give(&[amount(&b, 2)]).await.unwrap(), vec![7]);
    assert_eq!(s.give(&[amount(&b, 100)]).await.unwrap(), vec![10]);
    assert_eq!(lvl(&r, &b).as_deref(), Some("600000"));
}

#[tokio::test]
async fn charge_goes_into_debt_down_to_the_floor() {
    let r = Redis::start();
    let s = store(&r);
    let b = bucket("acme", "tokens", 60, 10);
    assert_eq!(s.charge(&[amount(&b, 25)]).await.unwrap(), vec![-15]);
    assert_eq!(s.charge(&[amount(&b, 1000)]).await.unwrap(), vec![-40]);
    assert_eq!(lvl(&r, &b).as_deref(), Some("-2400000"));
    // In debt even min 0 waits until the level is back at zero (40 s at one a second).
    let o = s.take(&[take(&b, 1, 0)]).await.unwrap();
    assert!((39_000..=40_000).contains(&o.retry_after_ms), "{o:?}");
    // The key lives until full again (50 s) plus a minute.
    let ttl: i64 = r.conn().pttl(b.key()).unwrap();
    assert!((108_000..=110_000).contains(&ttl), "pttl {ttl}");
}

#[tokio::test]
async fn a_clock_that_went_backwards_refills_nothing() {
    let r = Redis::start();
    let s = store(&r);
    let b = bucket("skew", "tokens", 600_000, 1_000_000);
    let (secs, _): (i64, i64) = redis::cmd("TIME").query(&mut r.conn()).unwrap();
    let future = (secs + 3600) * 1000;
    let _: () = r
        .conn()
        .hset_multiple(
            b.key(),
            &[("lvl", "0".to_string()), ("ts", future.to_string())],
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let o = s.take(&[take(&b, 10, 0)]).await.unwrap();
    assert_eq!(
        o.grants,
        vec![Granted {
            granted: 0,
            level: 0
        }]
    );
    // The clock is taken as it is now: refill resumes from here, nothing breaks.
    let ts: i64 = r.conn().hget(b.key(), "ts").unwrap();
    assert!(ts < future - 3_000_000, "ts stayed in the future: {ts}");
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let o = s.take(&[take(&b, 1_000_000, 0)]).await.unwrap();
    let bound = start.elapsed().as_millis() as i64 * 10 + 400;
    assert!(
        o.grants[0].granted >= 290 && o.grants[0].granted <= bound,
        "{o:?}"
    );
    // Garbage in the hash is a full bucket, not an error.
    let _: () = r
        .conn()
        .hset_multiple(b.key(), &[("lvl", "x"), ("ts", "y")])
        .unwrap();
    let o = s.take(&[take(&b, 1, 1)]).await.unwrap();
    assert_eq!(
        o.grants,
        vec![Granted {
            granted: 1,
            level: 999_999
        }]
    );
}

#[tokio::test]
async fn figures_at_the_bounds_stay_exact() {
    let r = Redis::start();
    let s = store(&r);
    let max = MAX_RATE as i64;
    let b = bucket("big", "tokens", MAX_RATE, MAX_RATE);
    let o = s.take(&[take(&b, max, max)]).await.unwrap();
    assert_eq!(o.grants[0].granted, max);
    assert!(o.grants[0].level < 1_000_000, "{o:?}");
    assert_eq!(
        s.charge(&[amount(&b, 5 * max)]).await.unwrap(),
        vec![-4 * max]
    );
    assert_eq!(lvl(&r, &b), Some((-4 * max * U).to_string()));
    assert_eq!(s.give(&[amount(&b, 5 * max)]).await.unwrap(), vec![max]);
    assert_eq!(lvl(&r, &b), Some((max * U).to_string()));
    // One unit off the capacity: floored to a whole level below it.
    let _: () = r
        .conn()
        .hset(b.key(), "lvl", (max * U - 1).to_string())
        .unwrap();
    let got = s.charge(&[amount(&b, 0)]).await.unwrap();
    assert!(got == vec![max - 1] || got == vec![max], "{got:?}");
    // The smallest bucket: one a minute.
    let small = bucket("small", "requests", 1, 1);
    let o = s.take(&[take(&small, 1, 1)]).await.unwrap();
    assert_eq!(
        o.grants,
        vec![Granted {
            granted: 1,
            level: 0
        }]
    );
    let o = s.take(&[take(&small, 1, 1)]).await.unwrap();
    assert!((59_000..=60_000).contains(&o.retry_after_ms), "{o:?}");
    // A min above the capacity never fits: the answer is when the bucket is full plus a whole
    // refill (a minute each here), even when it is full now.
    let o = s.take(&[take(&small, 5, 5)]).await.unwrap();
    assert!((119_000..=120_000).contains(&o.retry_after_ms), "{o:?}");
    let full = bucket("full", "requests", 1, 1);
    let o = s.take(&[take(&full, 2, 2)]).await.unwrap();
    assert_eq!(o.retry_after_ms, 60_000, "{o:?}");
    assert_eq!(
        o.grants,
        vec![Granted {
            granted: 0,
            level: 1
        }]
    );
}

#[tokio::test]
async fn a_flushed_script_is_loaded_again() {
    let r = Redis::start();
    let s = store(&r);
    let b = bucket("acme", "requests", 60, 10);
    s.take(&[take(&b, 1, 1)]).await.unwrap();
    r.cmd(&["SCRIPT", "FLUSH"]).unwrap();
    let o = s.take(&[take(&b, 1, 1)]).await.unwrap();
    assert_eq!(
        o.grants,
        vec![Granted {
            granted: 1,
            level: 8
        }]
    );
}
