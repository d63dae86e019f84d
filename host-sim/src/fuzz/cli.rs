//! `host-sim fuzz`: long runs with a time budget, single seeds, corpus replay.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};

use super::{generate, load_corpus, replay, run_seed, save_failure, shrink, Failure, Target};

pub const USAGE: &str = "usage: host-sim fuzz [--wasm FILE] [--config PLUGIN.json] \
[--seed N] [--cases N] [--seconds S] [--corpus DIR] [--max-failures N] [--no-shrink]
       [--text-headers-only]
       host-sim fuzz --replay FILE_OR_DIR [--wasm FILE] [--config PLUGIN.json]
       host-sim fuzz --show N --seed S [--config PLUGIN.json]   (print case N of seed S)
Without --seed: seeds from a random start (printed) until --seconds (default 600) pass.
With --seed: that seed only (reproduces a reported failure). Failures are minimised and,
with --corpus, written there as JSON regression cases. --text-headers-only makes every
generated header valid UTF-8 (to look past a known non-UTF-8 header bug).";

struct Opts {
    wasm: PathBuf,
    config: PathBuf,
    seed: Option<u64>,
    cases: u64,
    seconds: u64,
    corpus: Option<PathBuf>,
    max_failures: usize,
    shrink: bool,
    replay: Option<PathBuf>,
    show: Option<u64>,
    text_headers_only: bool,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        wasm: "dist/llm_router.wasm".into(),
        config: "host-sim/examples/plugin.json".into(),
        seed: None,
        cases: 500,
        seconds: 600,
        corpus: None,
        max_failures: 5,
        shrink: true,
        replay: None,
        show: None,
        text_headers_only: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--wasm" => o.wasm = value()?.into(),
            "--config" => o.config = value()?.into(),
            "--seed" => o.seed = Some(value()?.parse().context("--seed")?),
            "--cases" => o.cases = value()?.parse().context("--cases")?,
            "--seconds" => o.seconds = value()?.parse().context("--seconds")?,
            "--corpus" => o.corpus = Some(value()?.into()),
            "--max-failures" => o.max_failures = value()?.parse().context("--max-failures")?,
            "--no-shrink" => o.shrink = false,
            "--replay" => o.replay = Some(value()?.into()),
            "--show" => o.show = Some(value()?.parse().context("--show")?),
            "--text-headers-only" => o.text_headers_only = true,
            "-h" | "--help" => bail!("{USAGE}"),
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    Ok(o)
}

fn random_seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ (u64::from(std::process::id()) << 32)) % 1_000_000_000
}

/// Runs the command; returns the process exit code (1 when a property failed).
pub fn main(args: &[String]) -> Result<i32> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(0);
    }
    let o = parse(args)?;
    if let (Some(n), Some(seed)) = (o.show, o.seed) {
        let config = std::fs::read_to_string(&o.config)?;
        let target = Target {
            wasm: o.wasm.clone(),
            facts: super::Facts::from_config(&config)?,
            config,
            workers: 2,
            text_headers_only: o.text_headers_only,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&generate(&target, seed, n))?
        );
        return Ok(0);
    }
    let mut target = Target::load(&o.wasm, &o.config)?;
    target.text_headers_only = o.text_headers_only;
    if let Some(path) = &o.replay {
        return replay_files(&target, path);
    }
    let started = Instant::now();
    let (first, deadline) = match o.seed {
        Some(s) => (s, None),
        None => {
            let s = random_seed();
            println!(
                "fuzz: random start seed {s}, {} s budget, {} cases per seed",
                o.seconds, o.cases
            );
            (s, Some(started + Duration::from_secs(o.seconds)))
        }
    };
    let mut executed = 0u64;
    let mut failures: Vec<Failure> = Vec::new();
    let mut outcomes: std::collections::BTreeMap<String, u64> = Default::default();
    let mut seed = first;
    loop {
        let report = run_seed(&target, seed, o.cases, deadline)?;
        executed += report.executed;
        for (k, v) in &report.outcomes {
            *outcomes.entry(k.clone()).or_insert(0) += v;
        }
        if let Some(f) = report.failure {
            println!("fuzz: seed {seed} case {} FAILED: {}", f.index, f.found);
            println!(
                "fuzz: reproduce with `host-sim fuzz --seed {seed} --cases {}`",
                f.index + 1
            );
            let f = if o.shrink {
                shrink(&target, &f, 400, Duration::from_secs(120))?
            } else {
                f
            };
            let json = serde_json::to_string_pretty(&f.case)?;
            let shown: String = json.chars().take(4000).collect();
            let more = if shown.len() < json.len() {
                "\n  ... (cut; the whole case is in the corpus file)"
            } else {
                ""
            };
            println!(
                "fuzz: minimised to {} earlier case(s) and: {}\n{shown}{more}",
                f.history.len(),
                f.case.summary()
            );
            if let Some(dir) = &o.corpus {
                if failures
                    .iter()
                    .any(|g| g.kind == f.kind && g.case == f.case)
                {
                    println!("fuzz: same minimised case as an earlier failure; not saved again");
                } else {
                    println!("fuzz: saved {}", save_failure(dir, &f)?.display());
                }
            }
            failures.push(f);
        }
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let out_of_time = deadline.is_none_or(|d| Instant::now() >= d);
        if out_of_time || failures.len() >= o.max_failures {
            let summary: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            println!("fuzz: outcomes (as sent): {}", summary.join(", "));
            println!(
                "fuzz: {executed} cases (each run twice: as sent and canonical) in {secs:.1} s = {:.0} cases/s, seeds {first}..={seed}, {} failure(s)",
                executed as f64 / secs,
                failures.len()
            );
            return Ok(i32::from(!failures.is_empty()));
        }
        seed += 1;
    }
}

fn replay_files(target: &Target, path: &PathBuf) -> Result<i32> {
    let files = if path.is_dir() {
        load_corpus(path)?
    } else {
        let text = std::fs::read_to_string(path)?;
        vec![(path.clone(), serde_json::from_str(&text)?)]
    };
    let mut bad = 0;
    for (p, f) in &files {
        match replay(target, f)? {
            Ok(()) => println!("ok    {}", p.display()),
            Err(v) => {
                bad += 1;
                println!("FAIL  {}: {v}", p.display());
            }
        }
    }
    println!("{} corpus case(s), {bad} failing", files.len());
    Ok(i32::from(bad > 0))
}
