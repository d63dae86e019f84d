//! The committed cost budget (`bench/cost-budget.json`): instructions and host calls per
//! request at each size, and instructions per KiB, for each setup. `check` fails when a
//! figure grows more than the tolerance past it; a deliberate change updates the file in the
//! same commit, with the reason in the commit message.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::{size_label, Report, Setup, SIZES};

/// Allowed growth over the budget for instructions (per request and per KiB).
pub const TOLERANCE: f64 = 0.10;
/// Below this share of the budget, the budget is stale: lower it to the new figures.
pub const STALE_BELOW: f64 = 0.80;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Budget {
    /// How to update it (kept in the file for whoever opens it).
    pub about: String,
    pub setups: BTreeMap<String, SetupBudget>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SetupBudget {
    /// Instructions per KiB of body (slope between the two largest sizes).
    pub instructions_per_kib: u64,
    /// By size label (`2KB`, ...).
    pub requests: BTreeMap<String, RequestBudget>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestBudget {
    pub instructions: u64,
    /// Host calls per request: any growth fails (they are few and each one is deliberate).
    pub host_calls: u64,
}

const ABOUT: &str = "Deterministic cost of one chat request (host-sim cost). The cost_budget test \
fails when instructions grow more than 10% past these figures, when host calls grow at all, or \
when a figure falls below 80% of its budget (stale: lower it). Regenerate with `cargo run \
--release -p host-sim -- cost --write-budget bench/cost-budget.json` in the commit that changes \
the cost, and say why in its message.";

impl Budget {
    /// The budget that exactly matches `report`.
    pub fn from_report(report: &Report) -> Budget {
        let mut setups = BTreeMap::new();
        for setup in Setup::ALL {
            let mut requests = BTreeMap::new();
            for size in SIZES {
                if let Some(r) = report.get(setup, size) {
                    requests.insert(
                        size_label(size),
                        RequestBudget {
                            instructions: r.instructions(),
                            host_calls: r.host_calls(),
                        },
                    );
                }
            }
            let per_kib = report.per_kib(setup).unwrap_or(0.0).max(0.0).round() as u64;
            setups.insert(
                setup.name().to_string(),
                SetupBudget {
                    instructions_per_kib: per_kib,
                    requests,
                },
            );
        }
        Budget {
            about: ABOUT.to_string(),
            setups,
        }
    }

    pub fn read(path: &std::path::Path) -> Result<Budget> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Every figure of `report` against this budget; empty when it holds.
    pub fn check(&self, report: &Report) -> Vec<String> {
        let mut problems = Vec::new();
        for setup in Setup::ALL {
            let name = setup.name();
            let Some(b) = self.setups.get(name) else {
                problems.push(format!("{name}: not in the budget"));
                continue;
            };
            for size in SIZES {
                let label = size_label(size);
                let (Some(r), Some(rb)) = (report.get(setup, size), b.requests.get(&label)) else {
                    problems.push(format!("{name} {label}: not measured or not in the budget"));
                    continue;
                };
                let what = format!("{name} {label} instructions per request");
                compare(
                    &mut problems,
                    &what,
                    r.instructions() as f64,
                    rb.instructions,
                );
                if r.host_calls() > rb.host_calls {
                    problems.push(format!(
                        "{name} {label} host calls per request: {} > budget {}",
                        r.host_calls(),
                        rb.host_calls
                    ));
                }
            }
            let per_kib = report.per_kib(setup).unwrap_or(f64::INFINITY);
            let what = format!("{name} instructions per KiB");
            compare(&mut problems, &what, per_kib, b.instructions_per_kib);
        }
        problems
    }
}

fn compare(problems: &mut Vec<String>, what: &str, actual: f64, budget: u64) {
    let b = budget as f64;
    if actual > b * (1.0 + TOLERANCE) {
        problems.push(format!(
            "{what}: {actual:.0} is {:+.1}% over the budget {budget} (allowed +{:.0}%)",
            100.0 * (actual / b.max(1.0) - 1.0),
            TOLERANCE * 100.0
        ));
    } else if actual < b * STALE_BELOW {
        problems.push(format!(
            "{what}: {actual:.0} is {:.1}% under the budget {budget}: the budget is stale, lower it",
            100.0 * (1.0 - actual / b.max(1.0))
        ));
    }
}
