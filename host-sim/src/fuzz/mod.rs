//! Seeded, bounded fuzzing of the real filter inside host-sim.
//!
//! A run is a seed: two twin hosts (same module, configuration, host seed, 2 worker VMs) get the
//! same sequence of generated cases. Host "as sent" receives each request and response exactly
//! as generated (random chunking, every header the client sent, spoofed routing headers and
//! all); host "canonical" receives the same bytes in one chunk each and without client values
//! of the filter's own headers. After every case:
//!
//! - no VM trapped and no fully sent request hangs;
//! - the filter's own headers upstream are absent or hold exactly one value the filter can
//!   compute (a configured tier or model, a pushed endpoint, a number), never on a request the
//!   filter does not inspect;
//! - both hosts decided the same (forwarded or not, routing headers, upstream body, local reply,
//!   client status, rate-limit headers) and hold the same metrics: chunking never changes a
//!   parse, and a client's routing headers never change a decision;
//! - a POST whose path a server reads as an API path (percent-decoded, dots resolved...) is
//!   inspected (routed or answered), and a routed JSON body's last top-level `model` is the
//!   model header's value (a rewrite is never defeated, e.g. by `"model": null` twice);
//! - no tenant got more requests admitted than its bucket capacity plus refill over the
//!   simulated time so far.
//!
//! A failing case is minimised ([`shrink`]) and can be stored in the corpus directory
//! (`host-sim/fuzz-corpus/*.json`), whose files are replayed as regression cases.

mod case;
mod check;
pub mod cli;
mod exec;
mod facts;
mod gen;
mod gen_body;
mod gen_wire;
mod oracle;
mod rng;
mod shrink;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

pub use case::{escape, split_at, unescape, Bytes, Cancel, Case, GrpcPlan, Response};
pub use check::Violation;
pub use exec::{Delivery, Observed};
pub use facts::Facts;
pub use rng::Rng;
pub use shrink::shrink;

use crate::Host;

/// The token the fuzzer's load pushes authenticate with.
pub const PUSH_TOKEN: &str = "fuzz-push-token";

/// The module and configuration under test.
#[derive(Debug, Clone)]
pub struct Target {
    pub wasm: PathBuf,
    pub config: String,
    pub facts: Facts,
    pub workers: usize,
    /// Generate only UTF-8 header names and values (to look past a known non-UTF-8 header
    /// bug; off by default and in every test).
    pub text_headers_only: bool,
}

impl Target {
    pub fn load(wasm: &Path, config: &Path) -> Result<Target> {
        if !wasm.exists() {
            anyhow::bail!("{} does not exist: run `make build` first", wasm.display());
        }
        let config_text = std::fs::read_to_string(config)
            .with_context(|| format!("reading {}", config.display()))?;
        let facts = Facts::from_config(&config_text)?;
        Ok(Target {
            wasm: wasm.to_path_buf(),
            config: config_text,
            facts,
            workers: 2,
            text_headers_only: false,
        })
    }

    fn host(&self, seed: u64) -> Result<Host> {
        let mut b = Host::builder()
            .wasm_file(&self.wasm)
            .workers(self.workers)
            .plugin_config(self.config.as_bytes())
            .seed(seed);
        if let Some(env) = &self.facts.push_token_env {
            b = b.env(env, PUSH_TOKEN);
        }
        let mut host = b.build()?;
        host.start()?;
        Ok(host)
    }
}

/// Two twin hosts fed the same cases, and what the checks remember between cases.
pub struct Session<'t> {
    target: &'t Target,
    as_sent: Host,
    canonical: Host,
    admissions: check::Admissions,
    endpoints: BTreeSet<Vec<u8>>,
    owned: Vec<String>,
    start_ms: u64,
    outcomes: BTreeMap<String, u64>,
}

impl<'t> Session<'t> {
    pub fn new(target: &'t Target, seed: u64) -> Result<Session<'t>> {
        let as_sent = target.host(seed)?;
        let canonical = target.host(seed)?;
        let start_ms = as_sent.now_ms();
        Ok(Session {
            target,
            as_sent,
            canonical,
            admissions: check::Admissions::default(),
            endpoints: BTreeSet::new(),
            owned: target.facts.owned(),
            start_ms,
            outcomes: BTreeMap::new(),
        })
    }

    /// Runs one case on both hosts and checks every property.
    pub fn step(&mut self, case: &Case) -> Result<(), Violation> {
        let facts = &self.target.facts;
        let host_err = |label: &str, e: anyhow::Error| Violation {
            kind: "host",
            detail: format!("{label}: {e:#}"),
        };
        let a = exec::run(&mut self.as_sent, case, Delivery::AsSent, &self.owned)
            .map_err(|e| host_err("as sent", e))?;
        check::health("as sent", &a)?;
        self.note_push(case, &a);
        let b = exec::run(&mut self.canonical, case, Delivery::Canonical, &self.owned)
            .map_err(|e| host_err("canonical", e))?;
        check::health("canonical", &b)?;
        check::owned_headers("as sent", facts, &self.endpoints, case, &a)?;
        check::owned_headers("canonical", facts, &self.endpoints, case, &b)?;
        check::inspected("as sent", facts, case, &a)?;
        check::model_in_body("as sent", facts, case, &a)?;
        check::same_decision(&a, &b)?;
        check::same_metrics(&self.as_sent.metrics(), &self.canonical.metrics())?;
        let elapsed = self.as_sent.now_ms().saturating_sub(self.start_ms);
        self.admissions.record(facts, case, &a, elapsed)?;
        self.tally(&a);
        Ok(())
    }

    /// What happened to each case, for the run summary (shows what the generator reaches).
    fn tally(&mut self, a: &Observed) {
        let facts = &self.target.facts;
        let has = |name: &str| a.owned_raw.iter().any(|(n, v)| n == name && !v.is_empty());
        let key = match (&a.decision.local, has(&facts.tier_header)) {
            (Some((status, _)), _) => format!("local reply {status}"),
            (None, true) if has(&facts.endpoint_header) => "routed, endpoint picked".into(),
            (None, true) => "routed".into(),
            (None, false) if a.decision.forwarded => "passed through".into(),
            (None, false) => "not forwarded (cancelled)".into(),
        };
        *self.outcomes.entry(key).or_insert(0) += 1;
    }

    /// Outcome counts so far.
    pub fn outcomes(&self) -> &BTreeMap<String, u64> {
        &self.outcomes
    }

    /// Endpoint addresses of a load push the filter accepted (answered 204) become values the
    /// filter may write.
    fn note_push(&mut self, case: &Case, a: &Observed) {
        if a.decision
            .local
            .as_ref()
            .is_none_or(|(status, _)| *status != 204)
        {
            return;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&case.body.0) else {
            return;
        };
        let pools = v.get("pools").and_then(|p| p.as_object());
        for list in pools.into_iter().flat_map(|p| p.values()) {
            for e in list.as_array().into_iter().flatten() {
                if let Some(a) = e.get("address").and_then(|a| a.as_str()) {
                    self.endpoints.insert(a.as_bytes().to_vec());
                }
            }
        }
    }
}

/// A failure: the run's seed, the index of the failing case, the cases before it that are
/// needed to reproduce it, and the case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    /// `<kind>: <detail>` of the violated property.
    pub found: String,
    pub kind: String,
    pub seed: u64,
    pub index: u64,
    #[serde(default)]
    pub history: Vec<Case>,
    pub case: Case,
}

/// Outcome of one seed.
#[derive(Debug)]
pub struct RunReport {
    pub seed: u64,
    pub executed: u64,
    pub failure: Option<Failure>,
    /// What happened to the cases (`routed`, `local reply 429`, ...).
    pub outcomes: BTreeMap<String, u64>,
}

/// Generates and runs `cases` cases of `seed` (stops early at `deadline` or on a failure).
pub fn run_seed(
    target: &Target,
    seed: u64,
    cases: u64,
    deadline: Option<Instant>,
) -> Result<RunReport> {
    let mut session = Session::new(target, seed)?;
    let mut history: Vec<Case> = Vec::new();
    for index in 0..cases {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let outcomes = session.outcomes().clone();
            return Ok(RunReport {
                seed,
                executed: index,
                failure: None,
                outcomes,
            });
        }
        let case = generate(target, seed, index);
        if let Err(v) = session.step(&case) {
            let failure = Failure {
                found: v.to_string(),
                kind: v.kind.to_string(),
                seed,
                index,
                history,
                case,
            };
            let outcomes = session.outcomes().clone();
            return Ok(RunReport {
                seed,
                executed: index + 1,
                failure: Some(failure),
                outcomes,
            });
        }
        history.push(case);
    }
    let outcomes = session.outcomes().clone();
    Ok(RunReport {
        seed,
        executed: cases,
        failure: None,
        outcomes,
    })
}

/// Generates case `index` of `seed` (what a run would have sent).
pub fn generate(target: &Target, seed: u64, index: u64) -> Case {
    let mut case = gen::case(&mut Rng::for_case(seed, index), &target.facts, seed % 3);
    if target.text_headers_only {
        case.text_headers_only();
    }
    case
}

/// Replays a stored failure on fresh hosts: `Ok` when every property holds for the history and
/// the case.
pub fn replay(target: &Target, f: &Failure) -> Result<Result<(), Violation>> {
    let mut session = Session::new(target, f.seed)?;
    for c in f.history.iter().chain(std::iter::once(&f.case)) {
        if let Err(v) = session.step(c) {
            return Ok(Err(v));
        }
    }
    Ok(Ok(()))
}

/// Reads every `*.json` failure in `dir`, sorted by name.
pub fn load_corpus(dir: &Path) -> Result<Vec<(PathBuf, Failure)>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    for p in paths {
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let f: Failure =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
        out.push((p, f));
    }
    Ok(out)
}

/// Writes a failure to `dir` as `<kind>-seed<seed>-<index>.json`; returns the path.
pub fn save_failure(dir: &Path, f: &Failure) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}-seed{}-{}.json", f.kind, f.seed, f.index));
    let text = serde_json::to_string_pretty(f)?;
    std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
