//! Property tests of the buckets and tenants: random traffic, random clocks, random
//! corrections and hostile values; `make fuzz` runs them long (LLM_ROUTER_FUZZ_ITERS).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::config::Config;
use crate::testutil::{iters, Rng};
use std::cell::RefCell;
use std::collections::HashMap;

/// Shared data with Envoy's CAS rules.
#[derive(Default)]
struct Mem {
    map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
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

fn tenants(rng: &mut Rng) -> Tenants {
    let rpm = 1 + rng.below(120);
    let tpm = 1 + rng.below(50_000);
    let slots = rng.below(12);
    let cfg = format!(
        r#"{{"tiers": {{"s": {{}}}}, "tenants": {{"header": "x-t",
            "max_tracked_tenants": {slots},
            "default": {{"requests_per_minute": {rpm}, "tokens_per_minute": {tpm}}},
            "limits": {{"acme": {{"requests_per_minute": {rpm}}}}}}}}}"#
    );
    Config::parse(cfg.as_bytes()).unwrap().tenants.unwrap()
}

fn id(rng: &mut Rng) -> Option<String> {
    match rng.below(6) {
        0 => None,
        1 => Some("acme".into()),
        2 => Some(format!("user-{}", rng.below(40))),
        3 => Some("x".repeat(rng.below(300))),
        4 => Some(String::from_utf8_lossy(&[rng.below(256) as u8; 3]).into_owned()),
        _ => Some(format!("t{}", rng.below(5))),
    }
}

/// Over any traffic, a tenant's admitted requests never exceed its capacity plus what the
/// clock refilled, and the gate never panics (hostile ids, huge costs, corrections).
#[test]
fn prop_no_tenant_is_admitted_more_than_capacity_plus_refill() {
    let mut rng = Rng::new(0x5eed_0001);
    for iter in 0..iters(300) {
        let t = tenants(&mut rng);
        let rpm = t.default.requests.map_or(0, |l| l.per_minute);
        let m = Mem::default();
        let mut now = rng.below(1_000_000) as u64;
        let start = now;
        let mut admitted: HashMap<String, u64> = HashMap::new();
        for _ in 0..rng.below(200) {
            now += [0, 0, 1, 10, 1000][rng.below(5)];
            let who = id(&mut rng);
            let cost = [0, 1, 500, u64::MAX][rng.below(4)];
            match gate(&t, who.as_deref(), cost, &m, now) {
                Gate::Pass {
                    tenant,
                    charged_tokens,
                    ..
                } => {
                    *admitted.entry(tenant.key.clone()).or_default() += 1;
                    let delta = [-(charged_tokens as i64), 0, 7, i64::MAX][rng.below(4)];
                    let owner = tenant.owner.as_deref();
                    adjust_tenant(&m, &tenant.key, &tenant.limits, owner, 0, delta, now).unwrap();
                }
                Gate::Refuse { reply, .. } => assert_eq!(reply.status, 429, "iter {iter}"),
                Gate::Unavailable { why, .. } => panic!("iter {iter}: unavailable: {why}"),
                Gate::Take { .. } => panic!("iter {iter}: a take without global limits"),
            }
        }
        // A slot may serve several ids one after another, each starting from a full bucket:
        // bound per key by capacity x (ids that can have held it) + refill.
        let refill = (now - start) * rpm / 60_000 + 1;
        for (key, n) in admitted {
            let holders = if key.contains("/u/") { 40 + 5 } else { 1 };
            assert!(
                n <= holders * rpm + refill,
                "iter {iter}: {key} admitted {n}, capacity {rpm}, refill {refill}"
            );
        }
        // Memory is bounded: configured + anonymous + overflow + the slots.
        let slots = t.max_tracked_tenants as usize;
        assert!(m.map.borrow().len() <= 3 + slots, "iter {iter}");
    }
}

/// Random corrections keep every stored level within [-4 x capacity, capacity].
#[test]
fn prop_levels_stay_bounded_under_random_corrections() {
    let mut rng = Rng::new(0x5eed_0002);
    for iter in 0..iters(2000) {
        let t = tenants(&mut rng);
        let m = Mem::default();
        let tn = match resolve(&t, Some("acme"), &m, 0).unwrap() {
            Resolved::Tenant(tn) => tn,
            Resolved::Rejected => panic!(),
        };
        let _ = admit(&m, &tn.key, &tn.limits, rng.next_u64(), 0).unwrap();
        for _ in 0..rng.below(10) {
            let dr = rng.next_u64() as i64;
            let dt = rng.next_u64() as i64;
            adjust(&m, &tn.key, &tn.limits, dr, dt, rng.below(100_000) as u64).unwrap();
        }
        let (bytes, _) = m.get(&tn.key).unwrap().unwrap();
        let s = State::decode(&bytes).unwrap();
        for (level, l) in [
            (s.requests, tn.limits.requests),
            (s.tokens, tn.limits.tokens),
        ] {
            if let Some(l) = l {
                let cap = bucket::capacity(&l);
                assert!(
                    level <= cap && level >= -4 * cap,
                    "iter {iter}: {level} vs {cap}"
                );
            }
        }
    }
}
