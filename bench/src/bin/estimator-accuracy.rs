//! Prints the prompt token estimator's error against tiktoken (cl100k_base, o200k_base) per
//! corpus category, next to the flat bytes/4 rule it replaces.
//!
//! Usage: estimator-accuracy [--samples] [CORPUS_DIR]
//!   CORPUS_DIR  defaults to this crate's corpus/ (one sample per <category>/*.txt file)
//!   --samples   also list every sample with its counts, worst first

use std::path::PathBuf;
use std::process::ExitCode;

use llm_router_bench::{abs_pct_error, default_corpus_dir, load_samples, render_table, reports};

fn main() -> ExitCode {
    let mut dir = default_corpus_dir();
    let mut per_sample = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--samples" => per_sample = true,
            "-h" | "--help" => {
                println!("usage: estimator-accuracy [--samples] [CORPUS_DIR]");
                return ExitCode::SUCCESS;
            }
            other => dir = PathBuf::from(other),
        }
    }
    let samples = match load_samples(&dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("estimator-accuracy: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("corpus: {} ({} samples)\n", dir.display(), samples.len());
    print!("{}", render_table(&reports(&samples)));
    if per_sample {
        let mut sorted: Vec<_> = samples.iter().collect();
        sorted.sort_by(|a, b| {
            abs_pct_error(b.estimate, b.cl100k).total_cmp(&abs_pct_error(a.estimate, a.cl100k))
        });
        println!(
            "\n{:>7} {:>7} {:>7} {:>7} {:>7}  sample",
            "chars", "cl100k", "o200k", "ours", "bytes/4"
        );
        for s in sorted {
            let name = s
                .path
                .strip_prefix(&dir)
                .unwrap_or(&s.path)
                .display()
                .to_string();
            println!(
                "{:>7} {:>7} {:>7} {:>7} {:>7}  {name}",
                s.chars, s.cl100k, s.o200k, s.estimate, s.bytes4
            );
        }
    }
    ExitCode::SUCCESS
}
