//! `host-sim cost`: prints the cost report; `--check FILE` compares it with a budget (exit 1
//! past it), `--write-budget FILE` writes the budget that matches it, `--json` prints it raw.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};

use super::budget::Budget;
use super::{measure, render};

const USAGE: &str =
    "usage: host-sim cost [--wasm FILE] [--check BUDGET.json] [--write-budget BUDGET.json]";

/// Runs the subcommand; returns the process exit code.
pub fn main(args: &[String]) -> Result<i32> {
    let mut wasm = PathBuf::from("dist/llm_router.wasm");
    let mut check = None;
    let mut write = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--wasm" => wasm = PathBuf::from(value()?),
            "--check" => check = Some(PathBuf::from(value()?)),
            "--write-budget" => write = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(0);
            }
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    let report = measure(&wasm)?;
    print!("{}", render(&report));
    if let Some(path) = write {
        std::fs::write(&path, Budget::from_report(&report).to_json())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = check {
        let problems = Budget::read(&path)?.check(&report);
        if !problems.is_empty() {
            println!("past the budget in {}:", path.display());
            for p in &problems {
                println!("  {p}");
            }
            return Ok(1);
        }
        println!("within the budget in {}", path.display());
    }
    Ok(0)
}
