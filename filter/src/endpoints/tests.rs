#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn cfg() -> Endpoints {
    Endpoints {
        push_path: "/.well-known/llm-router/load".into(),
        push_token_env: "T".into(),
        stale_after_ms: 2000,
        max_queue: 5,
        max_kv_cache: 0.8,
        criticality_header: None,
        prefix: None,
    }
}

fn ep(addr: &str, waiting: u64, kv: f64) -> Endpoint {
    Endpoint {
        address: addr.into(),
        waiting,
        running: 0,
        kv_cache: kv,
        healthy: true,
    }
}

fn none(_: usize) -> u64 {
    0
}

#[test]
fn parses_the_sidecar_format() {
    let s = Snapshot::parse(
        br#"{"pools":{"small":[{"address":"10.0.0.1:8000","waiting":2,"running":3,"kv_cache":0.5,"healthy":true},
                              {"address":"10.0.0.2:8000","waiting":0,"running":0,"kv_cache":0.0,"healthy":false}],
                     "large":[]},
            "generated_at_ms":1700000000000,"seq":4}"#,
    )
    .unwrap();
    let small = s.pool("small").unwrap();
    assert_eq!(small.len(), 2);
    assert_eq!(small[0].waiting, 2);
    assert!(!small[1].healthy);
    assert_eq!(s.pool("large").unwrap().len(), 0);
    assert!(s.pool("xl").is_none());
    // the SPEC's original format: no `healthy`
    let s = Snapshot::parse(
        br#"{"pools":{"p":[{"address":"[::1]:80","waiting":1,"running":1,"kv_cache":0.1}]}}"#,
    )
    .unwrap();
    assert!(s.pool("p").unwrap()[0].healthy);
}

#[test]
fn malformed_snapshots_are_refused() {
    for bad in [
        &b"nope"[..],
        br#"{}"#,
        br#"{"pools":[]}"#,
        br#"{"pools":{"p":[{"address":"host-name:80"}]}}"#,
        br#"{"pools":{"p":[{"address":"10.0.0.1"}]}}"#,
        br#"{"pools":{"p":[{"address":"10.0.0.1:80","waiting":-1}]}}"#,
        br#"{"pools":{"p":[{"address":"10.0.0.1:80","kv_cache":-0.5}]}}"#,
        br#"{"pools":{"p":[{"waiting":1}]}}"#,
        br#"{"pools":{"p":[{"address":"10.0.0.1:80","waiting":1e400}]}}"#,
        br#"{"pools":{"p":[{"address":"10.0.0.1:80","waiting":18446744073709551616}]}}"#,
        br#"{"pools":{"p":[{"address":"10.0.0.1:80","kv_cache":1e400}]}}"#,
        br#"{"pools":{"p":[{"address":"10.0.0.1:80","healthy":"yes"}]}}"#,
    ] {
        assert!(
            Snapshot::parse(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn addresses_are_canonical_and_listed_once() {
    let s = Snapshot::parse(
        br#"{"pools":{"p":[{"address":"[0:0::1]:80","waiting":1},{"address":"[::1]:80","waiting":0},
                           {"address":"10.0.0.1:8000"}],"q":[]}}"#,
    )
    .unwrap();
    let p = s.pool("p").unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!((p[0].address.as_str(), p[0].waiting), ("[::1]:80", 1));
    assert_eq!(p[1].address, "10.0.0.1:8000");
    // an empty pool picks nothing
    assert_eq!(
        pick(
            s.pool("q").unwrap(),
            none,
            &cfg(),
            Criticality::Standard,
            None,
            0
        ),
        Pick::NoEndpoint
    );
    // error messages do not echo a huge name
    let long = "x".repeat(100_000);
    let body = format!(r#"{{"pools":{{"{long}":[{{"address":"{long}"}}]}}}}"#);
    let e = Snapshot::parse(body.as_bytes()).unwrap_err();
    assert!(e.len() < 300, "{}", e.len());
}

#[test]
fn scores_stay_finite_on_extreme_snapshots() {
    let mut e = ep("10.0.0.1:80", u64::MAX, f64::MAX);
    e.running = u64::MAX;
    let s = score(&e, u64::MAX, &cfg());
    assert!(s.is_finite());
    let pool = [e.clone(), ep("10.0.0.2:80", 0, 0.0)];
    assert_eq!(
        pick(&pool, |_| u64::MAX, &cfg(), Criticality::Standard, None, 9),
        Pick::Endpoint(1)
    );
}

#[test]
fn push_needs_loopback_and_the_token() {
    let t = Some("s3cret");
    assert_eq!(
        authorize(Some("127.0.0.1:5555"), Some("Bearer s3cret"), t),
        Ok(())
    );
    assert_eq!(
        authorize(Some("[::1]:5555"), Some("bearer s3cret"), t),
        Ok(())
    );
    assert_eq!(
        authorize(Some("10.1.2.3:5555"), Some("Bearer s3cret"), t),
        Err(Refusal::NotLoopback)
    );
    assert_eq!(
        authorize(None, Some("Bearer s3cret"), t),
        Err(Refusal::NotLoopback)
    );
    assert_eq!(
        authorize(Some("127.0.0.1:1"), Some("Bearer wrong"), t),
        Err(Refusal::BadToken)
    );
    assert_eq!(
        authorize(Some("127.0.0.1:1"), None, t),
        Err(Refusal::BadToken)
    );
    assert_eq!(
        authorize(Some("127.0.0.1:1"), Some("Basic s3cret"), t),
        Err(Refusal::BadToken)
    );
    // no token configured: every push is refused
    assert_eq!(
        authorize(Some("127.0.0.1:1"), Some("Bearer "), None),
        Err(Refusal::BadToken)
    );
    assert_eq!(
        authorize(Some("127.0.0.1:1"), Some("Bearer x"), Some("")),
        Err(Refusal::BadToken)
    );
}

#[test]
fn least_loaded_wins() {
    let pool = [ep("a:1", 3, 0.2), ep("b:1", 0, 0.1), ep("c:1", 1, 0.1)];
    assert_eq!(
        pick(&pool, none, &cfg(), Criticality::Standard, None, 0),
        Pick::Endpoint(1)
    );
}

#[test]
fn kv_cache_counts() {
    let pool = [ep("a:1", 1, 0.05), ep("b:1", 1, 0.7)];
    assert_eq!(
        pick(&pool, none, &cfg(), Criticality::Standard, None, 0),
        Pick::Endpoint(0)
    );
}

#[test]
fn requests_sent_since_the_snapshot_count_as_queue() {
    let pool = [ep("a:1", 0, 0.1), ep("b:1", 1, 0.1)];
    assert_eq!(
        pick(&pool, |i| [2, 0][i], &cfg(), Criticality::Standard, None, 0),
        Pick::Endpoint(1)
    );
}

#[test]
fn saturated_and_unhealthy_are_skipped() {
    let mut down = ep("d:1", 0, 0.0);
    down.healthy = false;
    let pool = [
        ep("a:1", 5, 0.1),
        ep("b:1", 0, 0.85),
        down,
        ep("c:1", 4, 0.7),
    ];
    assert_eq!(
        pick(&pool, none, &cfg(), Criticality::Standard, None, 0),
        Pick::Endpoint(3)
    );
}

#[test]
fn all_saturated_sheds_only_sheddable() {
    let pool = [ep("a:1", 9, 0.1), ep("b:1", 6, 0.1)];
    assert_eq!(
        pick(&pool, none, &cfg(), Criticality::Sheddable, None, 0),
        Pick::Shed
    );
    assert_eq!(
        pick(&pool, none, &cfg(), Criticality::Standard, None, 0),
        Pick::Endpoint(1)
    );
    assert_eq!(
        pick(&pool, none, &cfg(), Criticality::Critical, None, 0),
        Pick::Endpoint(1)
    );
}

#[test]
fn no_healthy_endpoint_falls_back() {
    let mut a = ep("a:1", 0, 0.0);
    a.healthy = false;
    assert_eq!(
        pick(&[a], none, &cfg(), Criticality::Standard, None, 0),
        Pick::NoEndpoint
    );
    assert_eq!(
        pick(&[], none, &cfg(), Criticality::Sheddable, None, 0),
        Pick::NoEndpoint
    );
}

#[test]
fn ties_are_broken_at_random() {
    let pool = [ep("a:1", 0, 0.0), ep("b:1", 2, 0.0), ep("c:1", 0, 0.0)];
    let mut seen = [0; 3];
    for roll in 0..100 {
        if let Pick::Endpoint(i) = pick(&pool, none, &cfg(), Criticality::Standard, None, roll) {
            seen[i] += 1;
        }
    }
    assert_eq!(seen[1], 0);
    assert_eq!(seen[0], 50);
    assert_eq!(seen[2], 50);
}

#[test]
fn criticality_header_only_lowers() {
    use Criticality::*;
    assert_eq!(criticality(Standard, Some("sheddable")), Sheddable);
    assert_eq!(criticality(Standard, Some("critical")), Standard);
    assert_eq!(criticality(Critical, Some("Standard")), Standard);
    assert_eq!(criticality(Sheddable, None), Sheddable);
    assert_eq!(criticality(Standard, Some("bogus")), Standard);
}

#[test]
fn in_flight_counts_follow_the_snapshot_version() {
    let pool = [ep("10.0.0.1:80", 0, 0.0), ep("10.0.0.2:80", 0, 0.0)];
    let f = PoolInFlight::default()
        .plus_one(7, "10.0.0.1:80", &pool)
        .plus_one(7, "10.0.0.1:80", &pool)
        .plus_one(7, "10.0.0.2:80", &pool);
    assert_eq!(f.per_endpoint(7, &pool), vec![2, 1]);
    assert_eq!(
        f.per_endpoint(8, &pool),
        vec![0, 0],
        "a new snapshot includes them"
    );
    let newer = f.plus_one(8, "10.0.0.2:80", &pool);
    assert_eq!(newer.counts, vec![("10.0.0.2:80".to_string(), 1)]);
    assert_eq!(
        newer.minus_one(7, "10.0.0.2:80"),
        None,
        "ends of older requests do not touch newer counts"
    );
    let one_less = f.minus_one(7, "10.0.0.1:80").unwrap();
    assert_eq!(one_less.per_endpoint(7, &pool), vec![1, 1]);
    // a count that reaches zero leaves the record
    let gone = one_less.minus_one(7, "10.0.0.2:80").unwrap();
    assert_eq!(gone.counts, vec![("10.0.0.1:80".to_string(), 1)]);
    assert_eq!(gone.minus_one(7, "10.0.0.9:80"), None);
    assert_eq!(PoolInFlight::decode(&f.encode()), Some(f));
}

#[test]
fn endpoints_that_left_the_pool_are_forgotten() {
    let before = [ep("10.0.0.1:80", 0, 0.0), ep("10.0.0.2:80", 0, 0.0)];
    let after = [ep("10.0.0.2:80", 0, 0.0), ep("10.0.0.3:80", 0, 0.0)];
    let f = PoolInFlight::default()
        .plus_one(1, "10.0.0.1:80", &before)
        .plus_one(1, "10.0.0.2:80", &before);
    // same version, but the pool no longer lists .1 (defensive: a snapshot changes the
    // version, which starts a new record anyway)
    let g = f.plus_one(1, "10.0.0.3:80", &after);
    assert!(g.counts.iter().all(|(a, _)| a != "10.0.0.1:80"), "{g:?}");
    // many snapshots with ever new addresses: the record stays as small as one pool
    let mut rec = PoolInFlight::default();
    for v in 0..5000u64 {
        let addr = format!("10.{}.{}.{}:80", v / 65536, (v / 256) % 256, v % 256);
        let pool = [ep(&addr, 0, 0.0)];
        rec = rec.plus_one(v, &addr, &pool);
        assert_eq!(rec.counts.len(), 1);
    }
    assert!(rec.encode().len() < 64);
}

#[test]
fn malformed_in_flight_records_read_as_none() {
    assert_eq!(PoolInFlight::decode(b""), None);
    assert_eq!(PoolInFlight::decode(&[0; 7]), None);
    let mut b = 5u64.to_le_bytes().to_vec();
    assert_eq!(
        PoolInFlight::decode(&b),
        Some(PoolInFlight {
            version: 5,
            counts: vec![]
        })
    );
    b.extend_from_slice(&[200, b'x']); // says 200 bytes of address, has 1
    assert_eq!(PoolInFlight::decode(&b), None);
    let mut b = 5u64.to_le_bytes().to_vec();
    b.extend_from_slice(&[2, 0xff, 0xfe, 1, 0, 0, 0]); // not UTF-8
    assert_eq!(PoolInFlight::decode(&b), None);
}

#[test]
fn staleness_is_by_arrival_time() {
    let m = Meta {
        version: 3,
        received_ms: 10_000,
    };
    assert_eq!(Meta::decode(&m.encode()), Some(m));
    assert!(!m.is_stale(12_000, &cfg()));
    assert!(m.is_stale(12_001, &cfg()));
    assert!(
        !m.is_stale(5_000, &cfg()),
        "clock going backwards is not staleness"
    );
}

#[test]
fn the_gateways_subset_limits_the_pick() {
    let a = ep("10.0.0.1:8000", 0, 0.0);
    let b = ep("10.0.0.2:8000", 9, 0.0);
    let c = ep("10.0.0.3:8000", 9, 0.0);
    let pool = [a, b, c];
    let none = |_| 0;
    // The least loaded (a) is outside the subset: the best inside it wins.
    let subset = parse_subset("10.0.0.2:8000, 10.0.0.9:1,not-an-address");
    assert_eq!(subset.len(), 2);
    assert_eq!(
        pick(&pool, none, &cfg(), Criticality::Standard, Some(&subset), 0),
        Pick::Endpoint(1)
    );
    // Nothing of the pool in the subset: 503, never an endpoint outside it.
    let elsewhere = parse_subset("192.0.2.1:80");
    assert_eq!(
        pick(
            &pool,
            none,
            &cfg(),
            Criticality::Standard,
            Some(&elsewhere),
            0
        ),
        Pick::NotInSubset
    );
    assert_eq!(
        pick(&pool, none, &cfg(), Criticality::Standard, Some(&[]), 0),
        Pick::NotInSubset
    );
    assert_eq!(
        pick(&pool, none, &cfg(), Criticality::Standard, None, 0),
        Pick::Endpoint(0)
    );
}

fn affinity(matched: &[f64], weight: f64) -> Affinity<'_> {
    Affinity {
        matched,
        weight,
        load_weight: 1.0,
    }
}

#[test]
fn affinity_outweighs_a_small_load_difference_only() {
    let pool = [ep("10.0.0.1:1", 1, 0.1), ep("10.0.0.2:1", 0, 0.0)];
    let c = cfg();
    // Load alone: the idle one.
    let d = pick_with(&pool, none, &c, Criticality::Standard, None, 0, None);
    assert_eq!(d.pick, Pick::Endpoint(1));
    assert!(!d.affinity_changed);
    // A full match at the busier one wins with weight 2 (load difference 0.2 + 0.125).
    let m = [1.0, 0.0];
    let d = pick_with(
        &pool,
        none,
        &c,
        Criticality::Standard,
        None,
        0,
        Some(&affinity(&m, 2.0)),
    );
    assert_eq!(d.pick, Pick::Endpoint(0));
    assert!(d.affinity_changed);
    // A small match does not.
    let m = [0.1, 0.0];
    let d = pick_with(
        &pool,
        none,
        &c,
        Criticality::Standard,
        None,
        0,
        Some(&affinity(&m, 2.0)),
    );
    assert_eq!(d.pick, Pick::Endpoint(1));
    assert!(!d.affinity_changed);
    // Weight 0: affinity is ignored.
    let m = [1.0, 0.0];
    let d = pick_with(
        &pool,
        none,
        &c,
        Criticality::Standard,
        None,
        0,
        Some(&affinity(&m, 0.0)),
    );
    assert_eq!(d.pick, Pick::Endpoint(1));
}

#[test]
fn a_saturated_endpoint_never_wins_on_affinity() {
    let c = cfg();
    let m = [1.0, 0.0];
    // Queue at max_queue.
    let pool = [ep("10.0.0.1:1", 5, 0.0), ep("10.0.0.2:1", 4, 0.7)];
    let d = pick_with(
        &pool,
        none,
        &c,
        Criticality::Standard,
        None,
        0,
        Some(&affinity(&m, 100.0)),
    );
    assert_eq!(d.pick, Pick::Endpoint(1));
    // KV cache at max_kv_cache.
    let pool = [ep("10.0.0.1:1", 0, 0.8), ep("10.0.0.2:1", 4, 0.7)];
    let d = pick_with(
        &pool,
        none,
        &c,
        Criticality::Standard,
        None,
        0,
        Some(&affinity(&m, 100.0)),
    );
    assert_eq!(d.pick, Pick::Endpoint(1));
    // Saturated by requests sent since the snapshot.
    let pool = [ep("10.0.0.1:1", 3, 0.0), ep("10.0.0.2:1", 4, 0.7)];
    let extra = |i: usize| if i == 0 { 2 } else { 0 };
    let d = pick_with(
        &pool,
        extra,
        &c,
        Criticality::Standard,
        None,
        0,
        Some(&affinity(&m, 100.0)),
    );
    assert_eq!(d.pick, Pick::Endpoint(1));
    // Every endpoint saturated (a standard request still goes): load alone decides.
    let pool = [ep("10.0.0.1:1", 9, 0.0), ep("10.0.0.2:1", 5, 0.0)];
    for roll in 0..8 {
        let d = pick_with(
            &pool,
            none,
            &c,
            Criticality::Standard,
            None,
            roll,
            Some(&affinity(&m, 100.0)),
        );
        assert_eq!(d.pick, Pick::Endpoint(1));
        assert!(!d.affinity_changed);
    }
    // An unhealthy endpoint is not a candidate either.
    let mut sick = ep("10.0.0.1:1", 0, 0.0);
    sick.healthy = false;
    let pool = [sick, ep("10.0.0.2:1", 4, 0.7)];
    let d = pick_with(
        &pool,
        none,
        &c,
        Criticality::Standard,
        None,
        0,
        Some(&affinity(&m, 100.0)),
    );
    assert_eq!(d.pick, Pick::Endpoint(1));
}

#[test]
fn affinity_ties_are_broken_at_random_and_bad_fractions_are_ignored() {
    let c = cfg();
    let pool = [
        ep("10.0.0.1:1", 0, 0.0),
        ep("10.0.0.2:1", 0, 0.0),
        ep("10.0.0.3:1", 0, 0.0),
    ];
    let m = [0.5, 0.5, 0.0];
    let mut seen = std::collections::HashSet::new();
    for roll in 0..16 {
        let d = pick_with(
            &pool,
            none,
            &c,
            Criticality::Standard,
            None,
            roll,
            Some(&affinity(&m, 1.0)),
        );
        let Pick::Endpoint(i) = d.pick else { panic!() };
        assert!(i < 2);
        seen.insert(i);
    }
    assert_eq!(seen.len(), 2);
    // NaN, infinite or negative fractions count as no match; a short slice is fine.
    let m = [f64::NAN, f64::INFINITY];
    let d = pick_with(
        &pool,
        none,
        &c,
        Criticality::Standard,
        None,
        2,
        Some(&affinity(&m, 1.0)),
    );
    assert_eq!(d.pick, Pick::Endpoint(2));
    assert!(!d.affinity_changed);
    // The load weight scales the load score.
    let pool = [ep("10.0.0.1:1", 4, 0.0), ep("10.0.0.2:1", 0, 0.0)];
    let m = [0.5, 0.0];
    let a = Affinity {
        matched: &m,
        weight: 1.0,
        load_weight: 0.1,
    };
    let d = pick_with(&pool, none, &c, Criticality::Standard, None, 0, Some(&a));
    assert_eq!(d.pick, Pick::Endpoint(0));
}
