//! Global limits under random interleavings and at scale: several worker VMs sharing leases
//! (the budget conserved, never over-admitted), and 1,000 tenant ids kept bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::global::{self, Job};
use super::global_tests::{g, lease_of, lease_of_opt, take_of, tenants, FakeQuota, Mem, REQS};
use super::*;
use crate::quota::{Method, TakeRequest};
use crate::testutil::{iters, Rng};

// ---- several workers, one lease ---------------------------------------------------------

/// Random interleavings of several worker VMs (one store), requests, synchronous takes
/// answered in any order, ticks and their answers, and a clock that moves:
/// requests are never admitted beyond what Redis granted, and nothing is lost or made up:
/// Redis + leases + calls in flight + admitted = capacity (Redis does not refill here).
#[test]
fn prop_workers_sharing_leases_conserve_the_budget() {
    let mut rng = Rng::new(0x0014_1ea5);
    for iter in 0..iters(200) {
        let lease = 1 + rng.below(12);
        let t = tenants(
            &format!(
                r#"{{"cluster": "q", "lease_requests": {lease}, "idle_ms": 2000, "refill_interval_ms": 100}}"#
            ),
            r#"{"requests_per_minute": 1, "burst_requests": 40}"#,
        );
        let gl = g(&t);
        let (m, mut q) = (Mem::default(), FakeQuota::default());
        let mut now = 1_000u64;
        let mut admitted = 0i64;
        let mut waiting: Vec<(Tenant, TakeRequest, u64, Bucket)> = Vec::new();
        let mut jobs: Vec<Job> = Vec::new();
        let mut cursors = [0usize; 3];
        // A configured tenant and the anonymous one (keys t/<name>, Redis names as they are).
        let who = ["acme", "anonymous"];
        for _ in 0..rng.below(300) {
            match rng.below(7) {
                0 | 1 => {
                    let id = *rng.pick(&[Some("acme"), None]);
                    let d = global::gate(&t, gl, id, 0, &m, now);
                    match d.gate {
                        Gate::Pass { .. } => admitted += 1,
                        Gate::Take {
                            tenant,
                            request,
                            tokens,
                            lacking,
                        } => waiting.push((tenant, request, tokens, lacking)),
                        other => panic!("iter {iter}: {other:?}"),
                    }
                }
                2 if !waiting.is_empty() => {
                    let (tenant, req, tokens, lacking) = waiting.remove(rng.below(waiting.len()));
                    let answer = q.take(&req);
                    let d = global::after_take(
                        &t,
                        gl,
                        &tenant,
                        tokens,
                        lacking,
                        Some(&answer),
                        &m,
                        now,
                    )
                    .unwrap();
                    if let Gate::Pass { .. } = d.gate {
                        admitted += 1;
                    }
                }
                3 => {
                    let w = rng.below(3);
                    let (mut new, c) = global::tick(&t, gl, &m, now, cursors[w]).unwrap();
                    cursors[w] = c;
                    jobs.append(&mut new);
                }
                4 if !jobs.is_empty() => {
                    let job = jobs.remove(rng.below(jobs.len()));
                    let answer = q.serve(&job);
                    global::finish(gl, &job, &answer, &m, now).unwrap();
                }
                5 => now += [1, 50, 500, 3000][rng.below(4)],
                _ => {}
            }
            // Conservation over both tenants.
            let redis: i64 = who
                .iter()
                .map(|id| q.get(id, "requests").unwrap_or(40))
                .sum();
            let held: i64 = who
                .iter()
                .filter_map(|id| lease_of_opt(&m, &format!("llm_router/gl/l/t/{id}")))
                .map(|l| l.requests)
                .sum();
            let giving: i64 = jobs
                .iter()
                .filter(|j| j.call.method == Method::Give)
                .map(|j| j.call.requests)
                .sum();
            assert_eq!(redis + held + giving + admitted, 80, "iter {iter}");
            assert!(admitted <= 80, "iter {iter}: over-admitted");
            assert!(
                held >= 0,
                "iter {iter}: a lease went negative without corrections"
            );
        }
    }
}

/// Two workers find the same empty lease at once: both take, both grants land in the one
/// lease, and the next requests spend it (no grant is lost, none counted twice).
#[test]
fn two_workers_with_an_empty_lease_both_take_into_one_lease() {
    let t = tenants(r#"{"cluster": "q", "lease_requests": 4}"#, REQS);
    let (m, mut q) = (Mem::default(), FakeQuota::default());
    let a = take_of(&global::gate(&t, g(&t), Some("acme"), 0, &m, 0));
    let b = take_of(&global::gate(&t, g(&t), Some("acme"), 0, &m, 0));
    assert_eq!(a.1, b.1, "the same take");
    let (ra, rb) = (q.take(&a.1), q.take(&b.1));
    global::after_take(&t, g(&t), &a.0, a.2, a.3, Some(&ra), &m, 1).unwrap();
    global::after_take(&t, g(&t), &b.0, b.2, b.3, Some(&rb), &m, 1).unwrap();
    // 5 + 5 granted, 2 charged: 8 in the lease, 90 in Redis.
    assert_eq!(lease_of(&m, &a.0.key).requests, 8);
    assert_eq!(q.get("acme", "requests"), Some(90));
    // A tick sees a lease above twice its size (8 = 2 x 4: not above) and leaves it.
    assert!(global::tick(&t, g(&t), &m, 2, 0).unwrap().0.is_empty());
}

// ---- bounds -----------------------------------------------------------------------------

/// 1,000 distinct tenant ids: the keys in shared data and the index stay within the slot
/// table, and idle leases are given back and their slots reused.
#[test]
fn a_thousand_tenant_ids_keep_shared_data_bounded() {
    let t = tenants(
        r#"{"cluster": "q", "lease_requests": 2, "idle_ms": 1000}"#,
        REQS,
    );
    let (m, mut q) = (Mem::default(), FakeQuota::default());
    let mut now = 0;
    for i in 0..1000 {
        now += 7;
        let id = format!("user-{i}");
        let d = global::gate(&t, g(&t), Some(&id), 0, &m, now);
        if let Gate::Take {
            tenant,
            request,
            tokens,
            lacking,
        } = d.gate
        {
            let answer = q.take(&request);
            global::after_take(&t, g(&t), &tenant, tokens, lacking, Some(&answer), &m, now)
                .unwrap();
        }
        if i % 10 == 0 {
            let mut cursor = 0;
            for _ in 0..4 {
                let (jobs, c) = global::tick(&t, g(&t), &m, now, cursor).unwrap();
                cursor = c;
                for job in jobs {
                    let a = q.serve(&job);
                    global::finish(g(&t), &job, &a, &m, now).unwrap();
                }
            }
        }
    }
    let max = global::max_index(&t);
    assert!(global::index(&m).unwrap().len() <= max);
    // configured + anonymous + overflow + 16 slots, each with at most a static-share twin,
    // plus the index and the outage state.
    let keys = m.map.borrow().len();
    assert!(keys <= 2 * max + 2, "{keys} keys");
    // Everything given back once idle: what Redis holds plus the leases is what it had,
    // less the admitted requests.
    now += 10_000;
    for _ in 0..20 {
        let (jobs, _) = global::tick(&t, g(&t), &m, now, 0).unwrap();
        for job in jobs {
            let a = q.serve(&job);
            global::finish(g(&t), &job, &a, &m, now).unwrap();
        }
        now += 100;
    }
    assert!(
        global::index(&m).unwrap().is_empty(),
        "{:?}",
        global::index(&m)
    );
}
