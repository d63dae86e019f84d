//! Property tests (seeded, bounded): random and hostile snapshots never make parsing or
//! picking panic, and a pick only ever names an eligible endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;
use crate::testutil::Rng;
use serde_json::{json, Value};

fn gen_address(rng: &mut Rng) -> Value {
    match rng.below(12) {
        0 => json!("not-an-address"),
        1 => json!(format!("[::{:x}]:{}", rng.below(4), rng.below(3))),
        2 => json!(format!("[0:0::{:x}]:{}", rng.below(4), rng.below(3))),
        3 => json!("x".repeat(rng.below(5000))),
        4 => json!(rng.below(100)),
        _ => json!(format!("10.0.0.{}:{}", rng.below(6), 8000 + rng.below(2))),
    }
}

fn gen_number(rng: &mut Rng) -> Value {
    match rng.below(10) {
        0 => json!(u64::MAX),
        1 => json!(-1),
        2 => json!(1.5),
        3 => json!(f64::MAX),
        4 => json!("3"),
        5 => Value::Null,
        _ => json!(rng.below(10)),
    }
}

fn gen_endpoint(rng: &mut Rng) -> Value {
    let mut m = serde_json::Map::new();
    if rng.chance(95) {
        m.insert("address".into(), gen_address(rng));
    }
    for k in ["waiting", "running"] {
        if rng.chance(80) {
            let v = if rng.chance(80) {
                json!(rng.below(8))
            } else {
                gen_number(rng)
            };
            m.insert(k.into(), v);
        }
    }
    if rng.chance(80) {
        let kv = match rng.below(8) {
            0 => json!(f64::MAX),
            1 => json!(-0.1),
            2 => json!(1e-300),
            _ => json!(rng.below(101) as f64 / 100.0),
        };
        m.insert("kv_cache".into(), kv);
    }
    if rng.chance(40) {
        m.insert("healthy".into(), json!(rng.chance(70)));
    }
    Value::Object(m)
}

fn gen_snapshot(rng: &mut Rng) -> Vec<u8> {
    let mut pools = serde_json::Map::new();
    for _ in 0..rng.below(4) {
        let name = match rng.below(4) {
            0 => "x".repeat(rng.below(3000)),
            1 => "large".into(),
            _ => "small".into(),
        };
        let eps: Vec<Value> = (0..rng.below(12)).map(|_| gen_endpoint(rng)).collect();
        pools.insert(name, Value::Array(eps));
    }
    let mut text = json!({"pools": pools, "seq": rng.below(9)})
        .to_string()
        .into_bytes();
    if rng.chance(10) && !text.is_empty() {
        let i = rng.below(text.len());
        text[i] = rng.next_u64() as u8;
    }
    text
}

fn check_pick(pool: &[Endpoint], extra: &[u64], cfg: &Endpoints, crit: Criticality, roll: u64) {
    let x = |i: usize| extra.get(i).copied().unwrap_or(0);
    let healthy: Vec<usize> = (0..pool.len()).filter(|&i| pool[i].healthy).collect();
    let open: Vec<usize> = healthy
        .iter()
        .copied()
        .filter(|&i| !saturated(&pool[i], x(i), cfg))
        .collect();
    match pick(pool, x, cfg, crit, None, roll) {
        Pick::Endpoint(i) => {
            assert!(i < pool.len() && pool[i].healthy, "{i} {pool:?}");
            let candidates = if open.is_empty() { &healthy } else { &open };
            assert!(candidates.contains(&i), "picked an ineligible endpoint");
            let best = candidates
                .iter()
                .map(|&j| score(&pool[j], x(j), cfg))
                .fold(f64::INFINITY, f64::min);
            let s = score(&pool[i], x(i), cfg);
            assert!(s.is_finite() && s <= best + 1e-9, "{s} > {best}");
        }
        Pick::Shed => {
            assert_eq!(crit, Criticality::Sheddable);
            assert!(!healthy.is_empty() && open.is_empty());
        }
        Pick::NoEndpoint => assert!(healthy.is_empty(), "{pool:?}"),
        Pick::NotInSubset => panic!("no subset was given: {pool:?}"),
    }
}

#[test]
fn random_snapshots_parse_and_pick_safely() {
    let mut rng = Rng::new(0x5EED_0020);
    let mut parsed = 0;
    for iter in 0..crate::testutil::iters(3000) {
        let body = gen_snapshot(&mut rng);
        let Ok(snap) = Snapshot::parse(&body) else {
            continue;
        };
        parsed += 1;
        let cfg = Endpoints {
            push_path: "/p".into(),
            push_token_env: "T".into(),
            stale_after_ms: 1,
            max_queue: *rng.pick(&[0, 1, 5, u64::MAX]),
            max_kv_cache: *rng.pick(&[1e-9, 0.8, 1.0]),
            criticality_header: None,
            prefix: None,
        };
        for (name, pool) in &snap.pools {
            let mut seen = std::collections::HashSet::new();
            for e in pool {
                let canonical = e.address.parse::<std::net::SocketAddr>().unwrap();
                assert_eq!(canonical.to_string(), e.address, "iter {iter}");
                assert!(
                    seen.insert(e.address.clone()),
                    "iter {iter}: duplicate in {name}"
                );
                assert!(e.kv_cache.is_finite() && e.kv_cache >= 0.0);
            }
            let extra: Vec<u64> = pool
                .iter()
                .map(|_| *rng.pick(&[0, 1, 3, u64::MAX]))
                .collect();
            for crit in [
                Criticality::Sheddable,
                Criticality::Standard,
                Criticality::Critical,
            ] {
                check_pick(pool, &extra, &cfg, crit, rng.next_u64());
            }
            // the in-flight record never outgrows the pool
            let mut rec = PoolInFlight::default();
            for _ in 0..rng.below(30) {
                let Some(e) = pool.get(rng.below(pool.len())) else {
                    break;
                };
                let v = rng.below(3) as u64;
                rec = if rng.chance(60) {
                    rec.plus_one(v, &e.address, pool)
                } else {
                    rec.minus_one(v, &e.address).unwrap_or(rec)
                };
                assert!(rec.counts.len() <= pool.len());
                assert_eq!(PoolInFlight::decode(&rec.encode()).as_ref(), Some(&rec));
                assert_eq!(rec.per_endpoint(v, pool).len(), pool.len());
            }
        }
    }
    assert!(
        parsed > 300,
        "the generator must produce valid snapshots too: {parsed}"
    );
}

#[test]
fn random_in_flight_records_never_panic() {
    let mut rng = Rng::new(0x5EED_0021);
    let pool = [Endpoint {
        address: "10.0.0.1:80".into(),
        waiting: 0,
        running: 0,
        kv_cache: 0.0,
        healthy: true,
    }];
    for _ in 0..crate::testutil::iters(5000) {
        let n = rng.below(64);
        let bytes = rng.bytes(n);
        if let Some(r) = PoolInFlight::decode(&bytes) {
            assert!(r.counts.len() <= MAX_ENDPOINTS_PER_POOL);
            let _ = r.per_endpoint(r.version, &pool);
            let _ = r.plus_one(r.version, "10.0.0.1:80", &pool);
            let _ = r.minus_one(r.version, "10.0.0.1:80");
        }
    }
}
