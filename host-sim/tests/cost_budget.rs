//! The deterministic cost of a chat request (wasm instructions and host calls, `host-sim
//! cost`) held to the committed budget `bench/cost-budget.json`. A slowdown fails here in
//! review; a deliberate change updates the budget in the same commit (see its `about`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use host_sim::cost::budget::Budget;
use host_sim::cost::{measure, render, Report, Setup, SIZES};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn wasm() -> PathBuf {
    match std::env::var_os("LLM_ROUTER_WASM") {
        Some(p) => PathBuf::from(p),
        None => repo().join("dist/llm_router.wasm"),
    }
}

#[test]
fn request_cost_stays_within_the_committed_budget() {
    let report = measure(&wasm()).expect("measuring dist/llm_router.wasm (run `make build`)");
    let budget =
        Budget::read(&repo().join("bench/cost-budget.json")).expect("bench/cost-budget.json");
    let problems = budget.check(&report);
    assert!(
        problems.is_empty(),
        "{}\nagainst bench/cost-budget.json:\n  {}",
        render(&report),
        problems.join("\n  ")
    );
}

#[test]
fn the_measured_requests_are_forwarded_and_grow_with_the_body() {
    let report = measure(&wasm()).expect("measuring dist/llm_router.wasm (run `make build`)");
    for setup in Setup::ALL {
        let costs: Vec<u64> = SIZES
            .iter()
            .map(|&s| report.get(setup, s).expect("measured").instructions())
            .collect();
        assert!(
            costs.windows(2).all(|w| w[0] < w[1]),
            "{setup:?}: {costs:?}"
        );
        let body = report.get(setup, SIZES[0]).expect("measured");
        assert!(body.callbacks.contains_key("proxy_on_request_body"));
        assert!(body.callbacks.contains_key("proxy_on_log"));
    }
    // The shipped config charges a tenant and picks an endpoint: it reads shared data.
    let shipped = report.get(Setup::Shipped, SIZES[0]).expect("measured");
    let shared: u64 = shipped
        .callbacks
        .values()
        .filter_map(|c| c.host_calls.get("proxy_get_shared_data"))
        .sum();
    assert!(shared > 0, "{}", render(&report));
}

fn scaled(report: &Report, factor: f64) -> Report {
    let mut r = report.clone();
    for req in &mut r.requests {
        for c in req.callbacks.values_mut() {
            c.instructions = (c.instructions as f64 * factor) as u64;
        }
    }
    r
}

#[test]
fn the_budget_check_fails_past_ten_percent_and_on_a_stale_budget() {
    let report = measure(&wasm()).expect("measuring dist/llm_router.wasm (run `make build`)");
    let budget = Budget::from_report(&report);
    assert!(budget.check(&report).is_empty());
    assert!(budget.check(&scaled(&report, 1.05)).is_empty());
    let over = budget.check(&scaled(&report, 1.15));
    assert!(
        over.iter()
            .any(|p| p.contains("per request") && p.contains("over the budget")),
        "{over:?}"
    );
    assert!(over.iter().any(|p| p.contains("per KiB")), "{over:?}");
    let stale = budget.check(&scaled(&report, 0.5));
    assert!(stale.iter().any(|p| p.contains("stale")), "{stale:?}");
    let mut more_calls = report.clone();
    if let Some(c) = more_calls.requests[0].callbacks.get_mut("proxy_on_log") {
        c.host_calls.insert("proxy_get_property".into(), 1);
    }
    assert!(budget
        .check(&more_calls)
        .iter()
        .any(|p| p.contains("host calls")));
}

/// Issue 12's cost goal, held here so that it stays met: prefix affinity (hash chain, index
/// lookup and write) adds at most 10% to the shipped configuration's instructions per request
/// at 32 KB.
#[test]
fn prefix_affinity_adds_at_most_ten_percent_at_32_kb() {
    let report = measure(&wasm()).expect("measuring dist/llm_router.wasm (run `make build`)");
    let added = report
        .affinity_added(host_sim::cost::AFFINITY_GOAL_SIZE)
        .expect("both setups measured at 32 KB");
    assert!(
        added > 0.0 && added <= host_sim::cost::AFFINITY_GOAL,
        "affinity adds {:.1}%\n{}",
        added * 100.0,
        render(&report)
    );
}
