//! A short run of the fleet simulator on the real filter (`host-sim fleet`): its own
//! invariants, not the goals (those are printed by `make bench`). Every request
//! completes exactly once, time never goes back, batch / queue / KV bounds hold after every
//! event, a seed reproduces its run, and a pure-repeat workload is served from the prefix
//! cache under prefix affinity.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use host_sim::fleet::driver::Run;
use host_sim::fleet::policy::PolicyKind;
use host_sim::fleet::report::Acc;
use host_sim::fleet::workload::{generate, Request, Workload};
use host_sim::fleet::{run_one, Options};

/// The filter with prefix affinity (`endpoints.prefix: {}`, its defaults).
const AFFINITY: PolicyKind = PolicyKind::Affinity;

fn opts() -> Options {
    let mut o = Options {
        wasm: common::wasm_path(),
        servers: 4,
        duration_s: 30.0,
        warmup_s: 0.0,
        check: true,
        ..Options::default()
    };
    // A smaller cache than the default, so that eviction happens in a short run.
    o.speed.kv_blocks = 4096;
    o
}

fn run(o: &Options, w: Workload, qps: f64, kind: PolicyKind, seed: u64) -> (Vec<Request>, Run) {
    let reqs = generate(&o.spec(w, qps, seed)).unwrap();
    assert!(reqs.len() > 50, "{} requests", reqs.len());
    let run = run_one(o, kind, &reqs, seed)
        .unwrap_or_else(|e| panic!("{} {}: {e:#}", w.name(), kind.name()));
    (reqs, run)
}

fn check_outcomes(reqs: &[Request], run: &Run, servers: usize) {
    assert_eq!(run.outcomes.len(), reqs.len());
    for (r, o) in reqs.iter().zip(&run.outcomes) {
        let first = o.first_us.expect("first token");
        let done = o.done_us.expect("completed");
        assert!(
            r.arrival_us < first && first <= done && done <= run.end_us,
            "{r:?} {o:?}"
        );
        assert!(o.server < servers);
        assert!(o.cached_tokens < r.prompt_tokens);
    }
}

#[test]
fn every_policy_completes_every_request_once_within_the_bounds() {
    let o = opts();
    for kind in [
        PolicyKind::RoundRobin,
        PolicyKind::LeastQueue,
        PolicyKind::Router,
        AFFINITY,
    ] {
        // Enough load that queues form and the cache evicts.
        let (reqs, run) = run(&o, Workload::Chat, 14.0, kind, 3);
        check_outcomes(&reqs, &run, o.servers);
        assert!(
            run.evictions > 0,
            "{}: the KV cache never filled",
            kind.name()
        );
        if kind == PolicyKind::Router {
            // The pushed snapshots steered every pick (none left to the gateway) and the
            // filter spread the requests.
            assert_eq!(run.fallbacks, 0);
            let mut per = vec![0usize; o.servers];
            run.outcomes.iter().for_each(|x| per[x.server] += 1);
            assert!(
                per.iter().all(|n| *n * o.servers * 2 > reqs.len()),
                "{per:?}"
            );
        }
    }
}

#[test]
fn a_seed_reproduces_its_run_and_another_seed_does_not() {
    let o = opts();
    let (_, a) = run(&o, Workload::Rag, 8.0, PolicyKind::Router, 5);
    let (_, b) = run(&o, Workload::Rag, 8.0, PolicyKind::Router, 5);
    assert_eq!(a, b);
    let (_, c) = run(&o, Workload::Rag, 8.0, PolicyKind::Router, 6);
    assert_ne!(a.outcomes, c.outcomes);
}

#[test]
fn a_repeated_prompt_is_served_from_the_cache_under_affinity() {
    let o = opts();
    let hit = |kind| {
        let (reqs, run) = run(&o, Workload::Repeat, 5.0, kind, 1);
        check_outcomes(&reqs, &run, o.servers);
        let mut acc = Acc::default();
        acc.add(&reqs, &run.outcomes, 0, run.fallbacks);
        acc.summary("repeat", 5.0, "x").hit_rate
    };
    let affinity = hit(AFFINITY);
    assert!(affinity > 0.9, "hit rate {affinity}");
    // Round robin sends each prompt to every server once before it hits: lower.
    assert!(hit(PolicyKind::RoundRobin) < affinity);
}
