//! Bounded fuzzing of the real `dist/llm_router.wasm` (see `host_sim::fuzz` for the
//! properties) with fixed seeds, and every case of the crash corpus (`fuzz-corpus/*.json`)
//! replayed as a regression test. No skip: a missing module fails. `make fuzz` runs the same
//! generator for much longer (`host-sim fuzz`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use host_sim::fuzz::{load_corpus, replay, run_seed, shrink, Target};

/// Seeds and cases per seed of the bounded run: 8 x 400 = 3,200 cases, each delivered twice.
const SEEDS: std::ops::RangeInclusive<u64> = 1..=8;
const CASES_PER_SEED: u64 = 400;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target() -> Result<Target> {
    let wasm = match std::env::var_os("LLM_ROUTER_WASM") {
        Some(p) => PathBuf::from(p),
        None => dir().join("../dist/llm_router.wasm"),
    };
    Target::load(&wasm, &dir().join("examples/plugin.json"))
}

#[test]
fn fixed_seeds_hold_every_property() -> Result<()> {
    let target = target()?;
    let mut total = 0;
    for seed in SEEDS {
        let report = run_seed(&target, seed, CASES_PER_SEED, None)?;
        total += report.executed;
        if let Some(f) = report.failure {
            let min = shrink(&target, &f, 150, Duration::from_secs(40))?;
            bail!(
                "seed {seed} case {} (after {total} cases): {}\nreproduce: cargo run --release -p host-sim -- fuzz --seed {seed} --cases {}\nminimised ({} earlier cases), store it under host-sim/fuzz-corpus/ as a regression case:\n{}",
                f.index,
                f.found,
                f.index + 1,
                min.history.len(),
                serde_json::to_string_pretty(&min)?
            );
        }
    }
    assert_eq!(total, CASES_PER_SEED * (SEEDS.end() - SEEDS.start() + 1));
    Ok(())
}

#[test]
fn crash_corpus_replays_clean() -> Result<()> {
    let target = target()?;
    let corpus = load_corpus(&dir().join("fuzz-corpus"))?;
    assert!(!corpus.is_empty(), "host-sim/fuzz-corpus holds no case");
    let mut failing = Vec::new();
    for (path, f) in &corpus {
        if let Err(v) = replay(&target, f)? {
            failing.push(format!("{}: {v}", path.display()));
        }
    }
    if !failing.is_empty() {
        bail!(
            "{} of {} corpus cases fail:\n{}",
            failing.len(),
            corpus.len(),
            failing.join("\n")
        );
    }
    Ok(())
}

/// The same properties with prefix affinity on (`examples/plugin-prefix.json`: 16-byte blocks,
/// a 4-key index the generator also fills with junk and cut tables): hashing and the index
/// never trap, and chunking never changes a pick.
#[test]
fn prefix_affinity_holds_every_property() -> Result<()> {
    let wasm = match std::env::var_os("LLM_ROUTER_WASM") {
        Some(p) => PathBuf::from(p),
        None => dir().join("../dist/llm_router.wasm"),
    };
    let target = Target::load(&wasm, &dir().join("examples/plugin-prefix.json"))?;
    for seed in 1..=3 {
        let report = run_seed(&target, seed, CASES_PER_SEED, None)?;
        if let Some(f) = report.failure {
            bail!(
                "plugin-prefix.json seed {seed} case {}: {}\nreproduce: cargo run --release -p host-sim -- fuzz --config host-sim/examples/plugin-prefix.json --seed {seed} --cases {}",
                f.index,
                f.found,
                f.index + 1
            );
        }
        assert_eq!(report.executed, CASES_PER_SEED);
        let picked = report.outcomes.get("routed, endpoint picked").copied();
        assert!(
            picked.unwrap_or(0) > 0,
            "seed {seed}: {:?}",
            report.outcomes
        );
    }
    // Failures `make fuzz` found with this configuration (none yet is fine).
    for (path, f) in load_corpus(&dir().join("fuzz-corpus/prefix"))? {
        if let Err(v) = replay(&target, &f)? {
            bail!("{}: {v}", path.display());
        }
    }
    Ok(())
}
