//! Global limits, natively: the lease arithmetic, the tick's plans, the exact sequence of
//! takes / grants / charges of one and of several worker VMs sharing one lease (a fake shared
//! data store and a fake quota service with Redis's semantics), outages and their debt, and
//! bounds under many tenants.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::global::{self, Answer, Job};
use super::lease::{self, Call, Lease, Plan, Sizes, Source};
use super::*;
use crate::config::{Config, Global};
use crate::quota::{wire, Grant, Method, TakeRequest, TakeResponse};
use crate::testutil::{iters, Rng};
use std::cell::RefCell;
use std::collections::HashMap;

/// Shared data with Envoy's CAS rules.
#[derive(Default)]
pub(super) struct Mem {
    pub(super) map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next: RefCell<u32>,
}

impl Store for Mem {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self.map.borrow().get(key).cloned())
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let mut map = self.map.borrow_mut();
        if let Some((_, cur)) = map.get(key) {
            if cas != 0 && cas != *cur {
                return Err(StoreError::CasMismatch);
            }
        }
        *self.next.borrow_mut() += 1;
        map.insert(key.to_string(), (value.to_vec(), *self.next.borrow()));
        Ok(())
    }
}

/// The quota service over one Redis bucket per (tenant, limit), without refill (the clock of
/// these tests does not move Redis): take / give / charge as the proto says.
#[derive(Default)]
pub(super) struct FakeQuota {
    levels: HashMap<(String, String), i64>,
}

impl FakeQuota {
    fn level(&mut self, b: &crate::quota::Bucket) -> &mut i64 {
        let cap = b.capacity as i64;
        self.levels
            .entry((b.tenant.clone(), b.limit.clone()))
            .or_insert(cap)
    }

    pub(super) fn take(&mut self, r: &TakeRequest) -> TakeResponse {
        let fits = r.items.iter().all(|i| *self.level(&i.bucket) >= i.min);
        if !fits {
            return TakeResponse {
                grants: Vec::new(),
                retry_after_ms: 1500,
            };
        }
        let grants = r
            .items
            .iter()
            .map(|i| {
                let level = self.level(&i.bucket);
                let granted = i.want.max(i.min).min((*level).max(0));
                *level -= granted;
                Grant {
                    granted,
                    level: *level,
                }
            })
            .collect();
        TakeResponse {
            grants,
            retry_after_ms: 0,
        }
    }

    fn amount(&mut self, bytes: &[u8], sign: i64) {
        let r = wire::decode_amount_request(bytes).unwrap();
        for i in r.items {
            let cap = i.bucket.capacity as i64;
            let level = self.level(&i.bucket);
            *level = (*level + sign * i.amount).min(cap);
        }
    }

    /// Runs a tick's job against the service; the answer as the glue would pass it.
    pub(super) fn serve(&mut self, job: &Job) -> Answer {
        match job.call.method {
            Method::Take => {
                let r = wire::decode_take_request(&job.message).unwrap();
                Answer::Granted(self.take(&r).grants)
            }
            Method::Give => {
                self.amount(&job.message, 1);
                Answer::Done
            }
            Method::Charge => {
                self.amount(&job.message, -1);
                Answer::Done
            }
        }
    }

    pub(super) fn get(&self, tenant: &str, limit: &str) -> Option<i64> {
        self.levels
            .get(&(tenant.to_string(), limit.to_string()))
            .copied()
    }
}

pub(super) fn tenants(global: &str, limits: &str) -> Tenants {
    let cfg = format!(
        r#"{{"tiers": {{"s": {{}}}}, "tenants": {{"header": "x-t", "max_tracked_tenants": 16,
            "default": {limits}, "limits": {{"acme": {limits}}},
            "global": {global}}}}}"#
    );
    Config::parse(cfg.as_bytes()).unwrap().tenants.unwrap()
}

pub(super) fn g(t: &Tenants) -> &Global {
    t.global.as_ref().unwrap()
}

pub(super) const REQS: &str = r#"{"requests_per_minute": 60, "burst_requests": 100}"#;

pub(super) fn lease_of(m: &Mem, key: &str) -> Lease {
    Lease::decode(&m.get(key).unwrap().unwrap().0).unwrap().0
}

fn sizes(t: &Tenants) -> Sizes {
    Sizes::of(g(t), &t.default)
}

// ---- configuration ----------------------------------------------------------------------

#[test]
fn global_configuration_defaults_and_errors() {
    let t = tenants(r#"{"cluster": "q", "replicas": 5}"#, REQS);
    let gl = g(&t);
    assert_eq!(gl.cluster, "q");
    assert_eq!(gl.on_outage, crate::config::OnOutage::StaticShare);
    assert_eq!(
        (gl.timeout_ms, gl.refill_interval_ms, gl.idle_ms),
        (500, 200, 60_000)
    );
    // burst 100 over 5 replicas, each holding at most twice its lease: 100 / 10.
    assert_eq!(gl.lease_requests(&t.default.requests.unwrap()), 10);
    let t = tenants(r#"{"cluster": "q", "lease_requests": 1000}"#, REQS);
    assert_eq!(g(&t).lease_requests(&t.default.requests.unwrap()), 100);
    for (global, field) in [
        (r#"{}"#, "tenants.global.cluster"),
        (r#"{"cluster": ""}"#, "tenants.global.cluster"),
        (
            r#"{"cluster": "q", "replicas": 0}"#,
            "tenants.global.replicas",
        ),
        (
            r#"{"cluster": "q", "timeout_ms": 0}"#,
            "tenants.global.timeout_ms",
        ),
        (
            r#"{"cluster": "q", "lease_tokens": 0}"#,
            "tenants.global.lease_tokens",
        ),
        (
            r#"{"cluster": "q", "idle_ms": 1000, "refill_interval_ms": 1000}"#,
            "tenants.global.idle_ms",
        ),
        (
            r#"{"cluster": "q", "on_outage": "panic"}"#,
            "tenants.global.on_outage",
        ),
        (r#"{"cluster": "q", "clusterr": "x"}"#, "tenants.global"),
        (
            r#"{"cluster": "ccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"}"#,
            "tenants.global.cluster",
        ),
    ] {
        let cfg = format!(
            r#"{{"tiers": {{"s": {{}}}}, "tenants": {{"header": "x-t", "global": {global}}}}}"#
        );
        let e = Config::parse(cfg.as_bytes()).unwrap_err();
        assert!(e.field.starts_with(field), "{global}: {e}");
    }
}

#[test]
fn global_limits_stay_within_the_quota_services_bounds() {
    let t = tenants(r#"{"cluster": "pa"}"#, REQS);
    // The upstream is the serialized GrpcService, never the bare (protobuf-looking) name.
    assert_eq!(g(&t).upstream.as_bytes(), b"\x0a\x04\x0a\x02pa");
    for (at, default, acme) in [
        (
            "tenants.default",
            r#"{"tokens_per_minute": 8589934593}"#,
            "{}",
        ),
        (
            "tenants.limits.acme",
            "{}",
            r#"{"requests_per_minute": 1, "burst_requests": 8589934593}"#,
        ),
    ] {
        let cfg = format!(
            r#"{{"tiers": {{"s": {{}}}}, "tenants": {{"header": "x-t", "default": {default},
                "limits": {{"acme": {acme}}}, "global": {{"cluster": "q"}}}}}}"#
        );
        let e = Config::parse(cfg.as_bytes()).unwrap_err();
        assert!(e.field.starts_with(at), "{e}");
        // The same limits without `global` are fine (per-proxy buckets go to 2^40).
        let cfg = cfg.replace(r#", "global": {"cluster": "q"}"#, "");
        assert!(Config::parse(cfg.as_bytes()).is_ok(), "{cfg}");
    }
}

// ---- the lease record and its arithmetic ------------------------------------------------

#[test]
fn lease_records_round_trip_and_refuse_short_bytes() {
    let l = Lease {
        requests: -3,
        tokens: 1 << 40,
        last_use_ms: 7,
        debt_requests: 2,
        debt_tokens: -9,
        claim_until_ms: 99,
    };
    let bytes = l.encode(Some("bob"));
    assert_eq!(Lease::decode(&bytes), Some((l, &b"bob"[..])));
    assert_eq!(Lease::decode(&bytes[..47]), None);
    // A per-proxy bucket record (24 bytes) is no lease.
    assert_eq!(Lease::decode(&[0u8; 24]), None);
}

#[test]
fn charge_takes_both_or_says_what_lacks() {
    let l = Lease {
        requests: 2,
        tokens: 100,
        ..Lease::default()
    };
    let next = l.charge((1, 60), 5).unwrap();
    assert_eq!((next.requests, next.tokens, next.last_use_ms), (1, 40, 5));
    assert_eq!(next.charge((1, 60), 6), Err((0, 20)));
    assert_eq!(Lease::default().charge((1, 0), 0), Err((1, 0)));
}

#[test]
fn calls_revert_exactly() {
    let mut rng = Rng::new(0x1ea5e);
    let s = Sizes {
        requests: Some(10),
        tokens: Some(1000),
    };
    for _ in 0..iters(5000) {
        let n = |rng: &mut Rng| rng.below(400) as i64 - 200;
        let l = Lease {
            requests: n(&mut rng),
            tokens: n(&mut rng) * 10,
            debt_requests: n(&mut rng),
            debt_tokens: n(&mut rng),
            ..Lease::default()
        };
        let call = Call {
            method: *rng.pick(&[Method::Take, Method::Give, Method::Charge]),
            requests: rng.below(100) as i64,
            tokens: rng.below(1000) as i64,
            source: *rng.pick(&[Source::Levels, Source::Debt]),
        };
        assert_eq!(call.revert(&call.start(&l, &s), &s), l, "{call:?} on {l:?}");
    }
}

fn call(method: Method, r: i64, t: i64, source: Source) -> Plan {
    Plan::Call(Call {
        method,
        requests: r,
        tokens: t,
        source,
    })
}

#[test]
fn the_tick_refills_returns_expires_and_pays_debt() {
    let t = tenants(
        r#"{"cluster": "q", "lease_requests": 10, "lease_tokens": 1000, "idle_ms": 5000}"#,
        r#"{"requests_per_minute": 60, "burst_requests": 100, "tokens_per_minute": 60000, "burst_tokens": 100000}"#,
    );
    let (gl, s) = (g(&t), sizes(&t));
    let at = |r, tk| Lease {
        requests: r,
        tokens: tk,
        last_use_ms: 1000,
        ..Lease::default()
    };
    let plan = |l: &Lease, now, outage| lease::plan(l, &s, gl, now, outage);
    // Half a lease or more: nothing; below half: top up to a whole lease.
    assert_eq!(plan(&at(5, 500), 1000, false), Plan::Nothing);
    assert_eq!(
        plan(&at(4, 500), 1000, false),
        call(Method::Take, 6, 0, Source::Levels)
    );
    assert_eq!(
        plan(&at(-2, 0), 1000, false),
        call(Method::Take, 12, 1000, Source::Levels)
    );
    // Above twice a lease: back down to one.
    assert_eq!(
        plan(&at(21, 2000), 1000, false),
        call(Method::Give, 11, 0, Source::Levels)
    );
    // Idle: everything held goes back, a negative level is charged, then forgotten.
    assert_eq!(
        plan(&at(7, 300), 6000, false),
        call(Method::Give, 7, 300, Source::Levels)
    );
    assert_eq!(
        plan(&at(-1, -50), 6000, false),
        call(Method::Charge, 1, 50, Source::Levels)
    );
    assert_eq!(plan(&at(0, 0), 6000, false), Plan::Forget);
    // Debt first (once the service answers); a negative debt is given back.
    let owing = Lease {
        debt_requests: 3,
        debt_tokens: -40,
        ..at(10, 1000)
    };
    assert_eq!(
        plan(&owing, 1000, false),
        call(Method::Charge, 3, 0, Source::Debt)
    );
    let settled = call(Method::Charge, 3, 0, Source::Debt);
    let Plan::Call(c) = settled else { panic!() };
    let paid = c.start(&owing, &s);
    assert_eq!(
        plan(&paid, 1000, false),
        call(Method::Give, 0, 40, Source::Debt)
    );
    // In an outage: only refills (the probe); no debt, no returns, no expiry.
    assert_eq!(plan(&owing, 1000, true), Plan::Nothing);
    assert_eq!(
        plan(&at(1, 1000), 1000, true),
        call(Method::Take, 9, 0, Source::Levels)
    );
    // ... idle ones too (else an outage with only idle leases would never end).
    assert_eq!(
        plan(&at(0, 0), 6000, true),
        call(Method::Take, 10, 1000, Source::Levels)
    );
    assert_eq!(plan(&at(9, 900), 6000, true), Plan::Nothing);
    // A claimed lease is left alone until the claim expires.
    let claimed = Lease {
        claim_until_ms: 2000,
        ..at(0, 0)
    };
    assert_eq!(plan(&claimed, 1999, false), Plan::Nothing);
    assert_ne!(plan(&claimed, 2000, false), Plan::Nothing);
}

// ---- admission: the exact sequence ------------------------------------------------------

pub(super) fn take_of(d: &global::Decision) -> (Tenant, TakeRequest, u64, Bucket) {
    match &d.gate {
        Gate::Take {
            tenant,
            request,
            tokens,
            lacking,
        } => (tenant.clone(), request.clone(), *tokens, *lacking),
        other => panic!("expected a take, got {other:?}"),
    }
}

pub(super) fn passed(d: &global::Decision) -> Booked {
    match &d.gate {
        Gate::Pass { booked, .. } => *booked,
        other => panic!("expected a pass, got {other:?}"),
    }
}

#[test]
fn an_empty_lease_takes_once_then_requests_spend_the_lease() {
    let t = tenants(r#"{"cluster": "q", "lease_requests": 10}"#, REQS);
    let (m, mut q) = (Mem::default(), FakeQuota::default());
    let d = global::gate(&t, g(&t), Some("acme"), 0, &m, 1000);
    let (tenant, req, tokens, lacking) = take_of(&d);
    assert_eq!(tenant.key, "llm_router/gl/l/t/acme");
    // want = lease (10) + lack (1), min = lack; requests only (no token limit).
    assert_eq!(req.items.len(), 1);
    let item = &req.items[0];
    assert_eq!((item.want, item.min), (11, 1));
    assert_eq!(item.bucket.tenant, "acme");
    assert_eq!(item.bucket.limit, "requests");
    assert_eq!((item.bucket.per_minute, item.bucket.capacity), (60, 100));
    let answer = q.take(&req);
    assert_eq!(answer.grants[0].granted, 11);
    let d =
        global::after_take(&t, g(&t), &tenant, tokens, lacking, Some(&answer), &m, 1001).unwrap();
    assert_eq!(passed(&d), Booked::Lease);
    assert_eq!(lease_of(&m, &tenant.key).requests, 10);
    // The lease is in the index for the tick.
    assert_eq!(global::index(&m).unwrap(), vec![tenant.key.clone()]);
    // Ten more pass on the lease without a call; the eleventh asks again.
    for i in 0..10 {
        let d = global::gate(&t, g(&t), Some("acme"), 0, &m, 1002 + i);
        assert_eq!(passed(&d), Booked::Lease);
    }
    assert_eq!(lease_of(&m, &tenant.key).requests, 0);
    take_of(&global::gate(&t, g(&t), Some("acme"), 0, &m, 1100));
    assert_eq!(q.get("acme", "requests"), Some(89));
}

#[test]
fn no_grant_is_a_429_with_the_services_retry_after() {
    let t = tenants(r#"{"cluster": "q"}"#, REQS);
    let m = Mem::default();
    let d = global::gate(&t, g(&t), Some("acme"), 0, &m, 0);
    let (tenant, _, tokens, lacking) = take_of(&d);
    let answer = TakeResponse {
        grants: Vec::new(),
        retry_after_ms: 2500,
    };
    let d = global::after_take(&t, g(&t), &tenant, tokens, lacking, Some(&answer), &m, 1).unwrap();
    let Gate::Refuse { reply, bucket, .. } = d.gate else {
        panic!("{:?}", d.gate)
    };
    assert_eq!(reply.status, 429);
    assert_eq!(reply.code, "rate_limit_exceeded");
    assert_eq!(bucket, Some(Bucket::Requests));
    let retry = reply.headers.iter().find(|(k, _)| k == "retry-after");
    assert_eq!(retry.map(|(_, v)| v.as_str()), Some("3"));
    // A grant count that does not match the items is no grant either.
    let odd = TakeResponse {
        grants: vec![Grant::default(); 3],
        retry_after_ms: 0,
    };
    let d = global::after_take(&t, g(&t), &tenant, tokens, lacking, Some(&odd), &m, 1).unwrap();
    assert!(matches!(d.gate, Gate::Refuse { .. }));
}

#[test]
fn tokens_are_charged_as_the_buckets_charge_them_and_reconciled_on_the_lease() {
    let t = tenants(
        r#"{"cluster": "q", "lease_requests": 5, "lease_tokens": 1000}"#,
        r#"{"requests_per_minute": 60, "tokens_per_minute": 6000, "burst_tokens": 5000}"#,
    );
    let (m, mut q) = (Mem::default(), FakeQuota::default());
    // 9000 tokens: charged at most the burst (5000), as the per-proxy buckets do.
    let d = global::gate(&t, g(&t), Some("bob"), 9000, &m, 0);
    let (tenant, req, tokens, lacking) = take_of(&d);
    assert!(
        tenant.key.starts_with("llm_router/gl/l/u/"),
        "{}",
        tenant.key
    );
    assert_eq!(req.items[0].bucket.tenant, "u/bob");
    assert_eq!((req.items[1].want, req.items[1].min), (6000, 5000));
    let answer = q.take(&req);
    let d = global::after_take(&t, g(&t), &tenant, tokens, lacking, Some(&answer), &m, 1).unwrap();
    let Gate::Pass { charged_tokens, .. } = d.gate else {
        panic!()
    };
    assert_eq!(charged_tokens, 5000);
    // Granted 5000 (all Redis had), charged 5000: the lease is empty, Redis too.
    assert_eq!(lease_of(&m, &tenant.key).tokens, 0);
    assert_eq!(q.get("u/bob", "tokens"), Some(0));
    // The response used 5200: 200 more go on the lease (debt there), a refund the other way.
    global::reconcile(g(&t), &tenant, Booked::Lease, (0, 200), &m, 2).unwrap();
    assert_eq!(lease_of(&m, &tenant.key).tokens, -200);
    global::reconcile(g(&t), &tenant, Booked::Lease, (-1, -300), &m, 3).unwrap();
    let l = lease_of(&m, &tenant.key);
    // 6 requests granted (lease 5 + the 1 lacking), 1 charged then refunded.
    assert_eq!((l.requests, l.tokens), (6, 100));
}

// ---- outages ----------------------------------------------------------------------------

fn outage_run(on_outage: &str) -> (Tenants, Mem, Vec<global::Decision>) {
    let t = tenants(
        &format!(r#"{{"cluster": "q", "replicas": 4, "on_outage": "{on_outage}"}}"#),
        REQS,
    );
    let m = Mem::default();
    assert!(global::set_outage(&m, true, 0).unwrap());
    assert!(!global::set_outage(&m, true, 1).unwrap(), "changed once");
    let out = (0..30)
        .map(|i| global::gate(&t, g(&t), Some("acme"), 0, &m, 10 + i))
        .collect();
    (t, m, out)
}

#[test]
fn outage_reject_is_a_503() {
    let (_, m, out) = outage_run("reject");
    for d in &out {
        assert!(d.fallback);
        let Gate::Unavailable { reply, .. } = &d.gate else {
            panic!("{:?}", d.gate)
        };
        assert_eq!(reply.status, 503);
        assert!(String::from_utf8_lossy(&reply.body).contains("rate_limiter_unavailable"));
    }
    // Nothing booked; the empty lease is indexed so the tick's refill probes the service.
    let l = lease_of(&m, "llm_router/gl/l/t/acme");
    assert_eq!((l.requests, l.debt_requests), (0, 0));
    assert_eq!(
        global::index(&m).unwrap(),
        vec!["llm_router/gl/l/t/acme".to_string()]
    );
}

pub(super) fn lease_of_opt(m: &Mem, key: &str) -> Option<Lease> {
    m.get(key)
        .unwrap()
        .and_then(|(v, _)| Lease::decode(&v).map(|x| x.0))
}

#[test]
fn outage_static_share_admits_a_replicas_share_and_books_it_as_debt() {
    let (t, m, out) = outage_run("static_share");
    // burst 100 over 4 replicas: 25 pass, then 429s from the static bucket.
    let admitted = out
        .iter()
        .filter(|d| matches!(d.gate, Gate::Pass { .. }))
        .count();
    assert_eq!(admitted, 25);
    assert!(out.iter().all(|d| d.fallback));
    assert!(out
        .iter()
        .skip(25)
        .all(|d| matches!(&d.gate, Gate::Refuse { reply, .. } if reply.status == 429)));
    let l = lease_of(&m, "llm_router/gl/l/t/acme");
    assert_eq!(l.debt_requests, 25);
    // The service is back: the tick charges the debt, exactly once.
    let mut q = FakeQuota::default();
    global::set_outage(&m, false, 50).unwrap();
    let (jobs, _) = global::tick(&t, g(&t), &m, 60, 0).unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].call.method, Method::Charge);
    assert_eq!(jobs[0].call.requests, 25);
    assert!(
        global::tick(&t, g(&t), &m, 61, 0).unwrap().0.is_empty(),
        "claimed"
    );
    let answer = q.serve(&jobs[0]);
    global::finish(g(&t), &jobs[0], &answer, &m, 62).unwrap();
    assert_eq!(q.get("acme", "requests"), Some(75));
    assert_eq!(lease_of(&m, "llm_router/gl/l/t/acme").debt_requests, 0);
}

#[test]
fn outage_admit_books_everything_and_a_failed_charge_keeps_the_debt() {
    let (t, m, out) = outage_run("admit");
    assert!(out.iter().all(|d| passed(d) == Booked::Debt));
    // A refund of a debt-booked request goes to the debt.
    let acme = match &out[0].gate {
        Gate::Pass { tenant, .. } => tenant.clone(),
        _ => panic!(),
    };
    global::reconcile(g(&t), &acme, Booked::Debt, (-1, 0), &m, 45).unwrap();
    assert_eq!(lease_of(&m, &acme.key).debt_requests, 29);
    global::set_outage(&m, false, 50).unwrap();
    let (jobs, _) = global::tick(&t, g(&t), &m, 60, 0).unwrap();
    assert_eq!(
        lease_of(&m, &acme.key).debt_requests,
        0,
        "left the lease with the call"
    );
    global::finish(g(&t), &jobs[0], &Answer::Failed, &m, 61).unwrap();
    let l = lease_of(&m, &acme.key);
    assert_eq!(
        (l.debt_requests, l.claim_until_ms),
        (29, 0),
        "reverted, claim released"
    );
}

#[test]
fn in_an_outage_the_lease_is_spent_first() {
    let t = tenants(
        r#"{"cluster": "q", "lease_requests": 10, "on_outage": "reject"}"#,
        REQS,
    );
    let (m, mut q) = (Mem::default(), FakeQuota::default());
    let (tenant, req, tokens, lacking) = take_of(&global::gate(&t, g(&t), Some("acme"), 0, &m, 0));
    let answer = q.take(&req);
    global::after_take(&t, g(&t), &tenant, tokens, lacking, Some(&answer), &m, 1).unwrap();
    global::set_outage(&m, true, 2).unwrap();
    for i in 0..10 {
        assert_eq!(
            passed(&global::gate(&t, g(&t), Some("acme"), 0, &m, 3 + i)),
            Booked::Lease
        );
    }
    let d = global::gate(&t, g(&t), Some("acme"), 0, &m, 20);
    assert!(d.fallback && matches!(d.gate, Gate::Unavailable { .. }));
    // A take that fails goes the same way.
    let d = global::after_take(&t, g(&t), &tenant, tokens, lacking, None, &m, 21).unwrap();
    assert!(d.fallback);
}
