#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use super::*;
use crate::fleet::workload::block_chain;

fn speed() -> Speed {
    Speed {
        prefill_tps: 10_000.0,
        step_base_ms: 10.0,
        step_per_seq_ms: 1.0,
        max_running: 4,
        max_step_tokens: 100_000,
        kv_blocks: 64,
        block_tokens: 16,
    }
}

fn job(id: usize, prompt: &[u32], output: u32) -> Job {
    let mut all = prompt.to_vec();
    all.extend((0..output).map(|i| 1_000_000 + id as u32 * 1000 + i));
    Job {
        id,
        prompt_tokens: prompt.len() as u32,
        output_tokens: output,
        chain: Arc::from(block_chain(&all, 16)),
    }
}

/// Steps until idle; returns (step durations, progress).
fn run(s: &mut Server) -> (Vec<u64>, Vec<Progress>) {
    let mut out = Vec::new();
    let mut steps = Vec::new();
    while let Some(d) = s.start_step(&mut out) {
        steps.push(d);
        s.end_step(&mut out);
        s.check().unwrap();
    }
    (steps, out)
}

#[test]
fn prefill_costs_only_the_uncached_tokens() {
    let prompt: Vec<u32> = (0..320).collect();
    let mut s = Server::new(speed());
    s.enqueue(job(0, &prompt, 1)).unwrap();
    let (steps, out) = run(&mut s);
    // One step: 320 prompt tokens at 10k/s = 32 ms, + 10 ms base + 1 ms for one sequence.
    assert_eq!(steps, vec![43_000]);
    assert_eq!(
        out,
        vec![
            Progress::Admitted {
                id: 0,
                cached_tokens: 0
            },
            Progress::FirstToken { id: 0 },
            Progress::Finished { id: 0 }
        ]
    );
    // The same prompt again: every block cached; the last token is still computed.
    s.enqueue(job(1, &prompt, 1)).unwrap();
    let (steps, out) = run(&mut s);
    assert_eq!(
        out[0],
        Progress::Admitted {
            id: 1,
            cached_tokens: 319
        }
    );
    assert_eq!(steps, vec![11_000 + 100]);
    // A prompt sharing the first 160 tokens: 10 blocks hit.
    let mut other = prompt[..160].to_vec();
    other.extend(500..660);
    s.enqueue(job(2, &other, 1)).unwrap();
    let (_, out) = run(&mut s);
    assert_eq!(
        out[0],
        Progress::Admitted {
            id: 2,
            cached_tokens: 160
        }
    );
}

#[test]
fn a_changed_first_token_shares_nothing() {
    let a: Vec<u32> = (0..160).collect();
    let mut b = a.clone();
    b[0] = 99_999;
    let mut s = Server::new(speed());
    s.enqueue(job(0, &a, 1)).unwrap();
    run(&mut s);
    assert_eq!(s.cached_prefix_tokens(&job(1, &b, 1)), 0);
    assert_eq!(s.cached_prefix_tokens(&job(1, &a, 1)), 160);
}

#[test]
fn the_least_recently_used_blocks_are_evicted_first() {
    // 50 blocks: three prompts of 20 blocks (+1 output block each) do not all fit.
    let p = |k: u32| -> Vec<u32> { (0..320).map(|i| k * 10_000 + i).collect() };
    let mut sp = speed();
    sp.kv_blocks = 50;
    let mut s = Server::new(sp);
    for k in 0..2 {
        s.enqueue(job(k as usize, &p(k), 1)).unwrap();
        run(&mut s);
    }
    // Use prompt 0 again: prompt 1 is now the least recently used.
    s.enqueue(job(10, &p(0), 1)).unwrap();
    run(&mut s);
    s.enqueue(job(11, &p(2), 1)).unwrap();
    run(&mut s);
    assert!(s.evictions > 0);
    assert!(s.used_blocks() <= 50);
    assert_eq!(
        s.cached_prefix_tokens(&job(0, &p(0), 1)),
        320,
        "recently used: kept"
    );
    assert_eq!(
        s.cached_prefix_tokens(&job(2, &p(2), 1)),
        320,
        "newest: kept"
    );
    assert!(
        s.cached_prefix_tokens(&job(1, &p(1), 1)) < 320,
        "oldest: evicted"
    );
    // The tail of a chain goes before its head.
    let left = s.cached_prefix_tokens(&job(1, &p(1), 1));
    assert!(
        left > 0,
        "prompt 1 lost its tail first, its head is still there"
    );
}

#[test]
fn batching_respects_max_running_and_decodes_one_token_per_step() {
    let mut s = Server::new(speed());
    for i in 0..6 {
        let prompt: Vec<u32> = (0..32).map(|t| i * 100 + t).collect();
        s.enqueue(job(i as usize, &prompt, 3)).unwrap();
    }
    let mut out = Vec::new();
    let d = s.start_step(&mut out).unwrap();
    assert_eq!(s.load().running, 4, "max_running");
    assert_eq!(s.load().waiting, 2);
    // 4 sequences prefilling 32 tokens each.
    assert_eq!(d, 10_000 + 4_000 + 12_800);
    s.end_step(&mut out);
    let firsts = out
        .iter()
        .filter(|p| matches!(p, Progress::FirstToken { .. }))
        .count();
    assert_eq!(firsts, 4);
    // Two decode steps finish the first four (3 output tokens: 1 at prefill + 2 decodes).
    out.clear();
    let d = s.start_step(&mut out).unwrap();
    assert_eq!(d, 10_000 + 4_000, "decode: base + per sequence");
    s.end_step(&mut out);
    assert!(out.is_empty());
    s.start_step(&mut out).unwrap();
    s.end_step(&mut out);
    let finished = out
        .iter()
        .filter(|p| matches!(p, Progress::Finished { .. }))
        .count();
    assert_eq!(finished, 4);
    assert_eq!(s.load().running, 0);
    let (_, rest) = run(&mut s);
    assert_eq!(
        rest.iter()
            .filter(|p| matches!(p, Progress::Finished { .. }))
            .count(),
        2
    );
    assert_eq!(s.load().kv_cache, 0.0, "nothing held once idle");
}

#[test]
fn chunked_prefill_spreads_a_long_prompt_over_steps() {
    let mut sp = speed();
    sp.max_step_tokens = 100;
    let mut s = Server::new(sp);
    let prompt: Vec<u32> = (0..250).collect();
    s.enqueue(job(0, &prompt, 1)).unwrap();
    let (steps, out) = run(&mut s);
    assert_eq!(steps, vec![21_000, 21_000, 16_000]);
    assert_eq!(out.len(), 3);
}

#[test]
fn a_queue_waits_for_kv_blocks() {
    let mut sp = speed();
    sp.max_running = 16;
    let mut s = Server::new(sp);
    // 30 blocks each (480 prompt + 0 extra blocks... + output): two fit in 64, a third waits.
    for i in 0..3 {
        let prompt: Vec<u32> = (0..470).map(|t| i * 1000 + t).collect();
        s.enqueue(job(i as usize, &prompt, 20)).unwrap();
    }
    let mut out = Vec::new();
    s.start_step(&mut out).unwrap();
    assert_eq!((s.load().running, s.load().waiting), (2, 1));
    assert!(s.load().kv_cache > 0.9);
    s.end_step(&mut out);
    let (_, rest) = run(&mut s);
    assert!(rest.contains(&Progress::Finished { id: 2 }));
    assert!(
        s.enqueue(job(9, &(0..2000).collect::<Vec<_>>(), 1))
            .is_err(),
        "larger than the cache"
    );
}
