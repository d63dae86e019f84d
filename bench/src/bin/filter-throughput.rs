//! Throughput of the filter's per-request body work, measured natively (run it with `--release`):
//!
//! 1. `tokens::estimate_tokens` per corpus category: the category's samples joined into one
//!    text of about 1 MiB (repeated as needed), estimated in a loop.
//! 2. `body::inspect` + `body::prompt_tokens` on OpenAI chat bodies whose prompt text is about
//!    1 KiB, 32 KiB and 1 MiB, in two shapes: `wrk` is the body of the load benchmark
//!    (`bench/load/chat.lua`: a system message and one user message of English prose with a
//!    JSON-escaped line break now and then), `multi` is a conversation of many short messages
//!    taken from the `chat` and `code` corpus (escapes, Unicode, emoji). Each is also timed as
//!    `inspect` alone, so the estimator's share shows.
//!
//! Figures are MB/s of input (10^6 bytes per second: the text for part 1, the whole body for
//! part 2) and microseconds per call, best of 25 short batches (robust to other load). Machines are shared: compare
//! runs made one after the other on the same machine, not against fixed numbers.
//!
//! Usage: filter-throughput [--ms N] [CORPUS_DIR]
//!   --ms N      measuring time per figure in milliseconds (default 500)
//!   CORPUS_DIR  defaults to this crate's corpus/

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use llm_router::body;
use llm_router::tokens::estimate_tokens;
use llm_router_bench::{default_corpus_dir, BoxError};

const BATCHES: u32 = 25;

fn main() -> ExitCode {
    let mut dir = default_corpus_dir();
    let mut ms: u64 = 500;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ms" => match args.next().and_then(|v| v.parse().ok()) {
                Some(v) => ms = v,
                None => {
                    eprintln!("filter-throughput: --ms needs a number of milliseconds");
                    return ExitCode::FAILURE;
                }
            },
            "-h" | "--help" => {
                println!("usage: filter-throughput [--ms N] [CORPUS_DIR]");
                return ExitCode::SUCCESS;
            }
            other => dir = PathBuf::from(other),
        }
    }
    match run(&dir, Duration::from_millis(ms.max(10))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("filter-throughput: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &Path, budget: Duration) -> Result<(), BoxError> {
    let corpus = load_texts(dir)?;
    if cfg!(debug_assertions) {
        println!("(debug build: figures are not representative; use --release)\n");
    }

    println!("tokens::estimate_tokens, per corpus category (~1 MiB of text each)");
    println!(
        "{:<12} {:>10} {:>10} {:>12} {:>10}",
        "category", "bytes", "MB/s", "us/call", "tokens"
    );
    let mut all = String::new();
    for (category, texts) in &corpus {
        let joined = texts.join("\n\n");
        let text = repeat_to(&joined, 1 << 20);
        all.push_str(&joined);
        all.push_str("\n\n");
        let tokens = estimate_tokens(&text);
        let per_call = time_best(budget, || {
            black_box(estimate_tokens(black_box(&text)));
        });
        print_row(category, text.len(), per_call, tokens);
    }
    let text = repeat_to(&all, 1 << 20);
    let per_call = time_best(budget, || {
        black_box(estimate_tokens(black_box(&text)));
    });
    print_row("all", text.len(), per_call, estimate_tokens(&text));

    println!("\nbody::inspect + body::prompt_tokens, chat bodies (MB/s of body bytes)");
    println!(
        "{:<12} {:>10} {:>10} {:>12} {:>10} {:>14} {:>8}",
        "body", "bytes", "MB/s", "us/call", "tokens", "inspect us", "share"
    );
    let prose = corpus_text(&corpus, &["chat", "code"]);
    for (label, size) in [("1k", 1usize << 10), ("32k", 32 << 10), ("1m", 1 << 20)] {
        for (shape, b) in [("wrk", wrk_body(size)), ("multi", multi_body(&prose, size))] {
            let bytes = b.as_bytes();
            let info = body::inspect(bytes).map_err(|e| format!("{shape} {label}: {e:?}"))?;
            let tokens = body::prompt_tokens(&info);
            drop(info);
            let full = time_best(budget, || {
                if let Ok(info) = body::inspect(black_box(bytes)) {
                    black_box(body::prompt_tokens(&info));
                }
            });
            let parse = time_best(budget, || {
                if let Ok(info) = body::inspect(black_box(bytes)) {
                    black_box(&info);
                }
            });
            let share = 100.0 * (1.0 - parse.as_secs_f64() / full.as_secs_f64().max(1e-12));
            println!(
                "{:<12} {:>10} {:>10.1} {:>12.2} {:>10} {:>14.2} {:>7.0}%",
                format!("{shape} {label}"),
                bytes.len(),
                mb_per_s(bytes.len(), full),
                micros(full),
                tokens,
                micros(parse),
                share.max(0.0),
            );
        }
    }
    println!("\n(share: part of the time spent estimating tokens rather than in inspect)");
    Ok(())
}

fn print_row(name: &str, bytes: usize, per_call: Duration, tokens: u64) {
    println!(
        "{:<12} {:>10} {:>10.1} {:>12.2} {:>10}",
        name,
        bytes,
        mb_per_s(bytes, per_call),
        micros(per_call),
        tokens
    );
}

fn mb_per_s(bytes: usize, per_call: Duration) -> f64 {
    bytes as f64 / per_call.as_secs_f64().max(1e-12) / 1e6
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Best time per call over `BATCHES` batches sized to fill `budget` together.
fn time_best(budget: Duration, mut f: impl FnMut()) -> Duration {
    // Warm up and size the batches.
    let start = Instant::now();
    let mut calls: u32 = 0;
    while calls < 3 || start.elapsed() < budget / 10 {
        f();
        calls = calls.saturating_add(1);
    }
    let one = start.elapsed() / calls.max(1);
    let per_batch = budget / BATCHES;
    let n = (per_batch.as_nanos() / one.as_nanos().max(1)).clamp(1, 1_000_000) as u32;
    let mut best = Duration::MAX;
    for _ in 0..BATCHES {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        best = best.min(t.elapsed() / n);
    }
    best
}

/// The corpus texts grouped by category (in order).
fn load_texts(dir: &Path) -> Result<Vec<(String, Vec<String>)>, BoxError> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for t in llm_router_bench::load_texts(dir)? {
        match out.last_mut() {
            Some((cat, texts)) if *cat == t.category => texts.push(t.text),
            _ => out.push((t.category, vec![t.text])),
        }
    }
    Ok(out)
}

/// The samples of the named categories, in order.
fn corpus_text<'a>(corpus: &'a [(String, Vec<String>)], names: &[&str]) -> Vec<&'a str> {
    corpus
        .iter()
        .filter(|(name, _)| names.contains(&name.as_str()))
        .flat_map(|(_, texts)| texts.iter().map(String::as_str))
        .collect()
}

/// `unit` repeated (joined by a blank line) until it is at least `bytes` long.
fn repeat_to(unit: &str, bytes: usize) -> String {
    let mut out = String::with_capacity(bytes + unit.len() + 2);
    while out.len() < bytes {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(unit);
    }
    out
}

/// The load benchmark's request body (`bench/load/chat.lua`) with `bytes` of prompt text.
fn wrk_body(bytes: usize) -> String {
    const SENTENCES: [&str; 8] = [
        "Customer reports that the monthly invoice was charged twice on the same card.",
        "The first charge went through at the start of the billing cycle and the second one three days later.",
        "Support already confirmed with the payment provider that both transactions settled.",
        "The account is on the team plan with twelve seats, two of which were removed last week.",
        "Please check whether the seat change could have triggered a second, prorated invoice.",
        "If it did, explain the prorated amount in plain words and say whether a refund is due.",
        "The customer asked for a short answer they can forward to their finance department.",
        "Keep the tone polite, avoid internal jargon, and mention the ticket number at the end.",
    ];
    let mut prompt = String::with_capacity(bytes + 128);
    for (i, s) in SENTENCES.iter().cycle().enumerate() {
        if prompt.len() >= bytes {
            break;
        }
        if i > 0 {
            prompt.push(' ');
        }
        prompt.push_str(s);
        if i % 5 == 4 {
            prompt.push_str("\\n");
        }
    }
    format!(
        "{{\"model\":\"gpt-4o-mini\",\"messages\":[\
         {{\"role\":\"system\",\"content\":\"You are a concise assistant for a billing support team.\"}},\
         {{\"role\":\"user\",\"content\":\"{prompt}\"}}],\
         \"max_tokens\":256,\"temperature\":0.2,\"stream\":false}}"
    )
}

/// A conversation of alternating user/assistant messages, each one corpus sample (JSON-escaped),
/// until the contents add up to `bytes`.
fn multi_body(samples: &[&str], bytes: usize) -> String {
    let mut out = String::from("{\"model\":\"gpt-4o\",\"messages\":[");
    let mut total = 0usize;
    for (i, s) in samples.iter().cycle().enumerate() {
        if total >= bytes || samples.is_empty() {
            break;
        }
        if i > 0 {
            out.push(',');
        }
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        let content = serde_json_string(s);
        out.push_str(&format!("{{\"role\":\"{role}\",\"content\":{content}}}"));
        total = total.saturating_add(s.len());
    }
    out.push_str("],\"max_tokens\":512}");
    out
}

/// `s` as a JSON string literal.
fn serde_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
