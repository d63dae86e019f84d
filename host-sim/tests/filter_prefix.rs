//! Prefix-cache affinity (`endpoints.prefix`) on the real filter: a conversation's turns go
//! to the endpoint that served its earlier turns, from any worker; a saturated affinity target
//! is avoided; the shared index stays within its bounds under a spray of distinct prompts and
//! corrupted values; the shared-data calls affinity adds per request stay within 16.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use anyhow::Result;
use common::*;
use host_sim::Host;
use serde_json::{json, Value};

const A: &str = "10.1.0.1:8000";
const B: &str = "10.1.0.2:8000";
const C: &str = "10.1.0.3:8000";
const EP: &str = "x-gateway-destination-endpoint";
const MATCH: &str = "llm_router_prefix_match_tokens";
const CHANGED: &str = "llm_router_prefix_affinity_changed_total";
const INDEX: &str = "llm_router/prefix/";

fn config(prefix: Option<Value>) -> Value {
    let mut c = json!({
        "tiers": {"small": {"model": "s"}},
        "endpoints": {
            "push_path": PUSH_PATH,
            "push_token_env": "LLM_ROUTER_PUSH_TOKEN",
            "stale_after_ms": 2000,
            "max_queue": 5,
            "max_kv_cache": 0.8
        }
    });
    if let Some(p) = prefix {
        c["endpoints"]["prefix"] = p;
    }
    c
}

fn ep(addr: &str, waiting: u64) -> Value {
    json!({"address": addr, "waiting": waiting, "running": 0, "kv_cache": 0.1})
}

fn load(host: &mut Host, waiting: [u64; 3]) {
    let snap =
        json!({"pools": {"small": [ep(A, waiting[0]), ep(B, waiting[1]), ep(C, waiting[2])]}});
    assert_eq!(push(host, 0, &snap), (false, Some(204)));
}

/// A conversation of `turns` user turns (and the assistant answers between them).
fn conversation(session: usize, turns: usize) -> Value {
    let mut messages = vec![json!({"role": "system", "content": format!(
        "You are assistant number {session}. Answer briefly and politely, in plain words.")})];
    for t in 0..turns {
        if t > 0 {
            messages.push(json!({"role": "assistant", "content": format!(
                "Answer {t} of session {session}: the invoice was charged twice; a refund is due.")}));
        }
        messages.push(json!({"role": "user", "content": format!(
            "Question {t} of session {session}: why was I charged twice this month? {}",
            "Please explain the prorated amount. ".repeat(3))}));
    }
    json!({"model": "s", "messages": messages})
}

/// One request answered at once; the endpoint it went to.
fn send(host: &mut Host, worker: usize, body: &Value) -> String {
    let mut ex = chat(host, worker, None, body);
    assert!(ex.local_reply().is_none(), "{:?}", ex.local_reply());
    let e = ex
        .upstream()
        .and_then(|u| u.header(EP).map(str::to_string))
        .expect("an endpoint was picked");
    ex.response(200).json(&json!({})).send().unwrap();
    ex.finish().unwrap();
    e
}

#[test]
fn a_conversation_sticks_to_one_endpoint_across_workers() -> Result<()> {
    let mut host = started(&config(Some(json!({"block_bytes": 64}))), 2)?;
    load(&mut host, [0, 0, 0]);
    let mut firsts = std::collections::BTreeSet::new();
    for session in 0..6 {
        let first = send(&mut host, session % 2, &conversation(session, 1));
        firsts.insert(first.clone());
        for turn in 2..=6 {
            let worker = (session + turn) % 2;
            let got = send(&mut host, worker, &conversation(session, turn));
            assert_eq!(
                got, first,
                "session {session} turn {turn} (worker {worker})"
            );
        }
    }
    // Equal load: new conversations spread (random ties), they are not all sent to one.
    assert!(firsts.len() > 1, "{firsts:?}");
    // Every picked request recorded its match; with equal load affinity never overrode load.
    assert_eq!(host.metric_sum(MATCH, &[("pool", "small")]), 36);
    assert_eq!(host.metric_sum(CHANGED, &[("pool", "small")]), 0);
    assert!(host.traps().is_empty());
    Ok(())
}

#[test]
fn affinity_overrides_a_small_load_difference_and_counts_it() -> Result<()> {
    let mut host = started(&config(Some(json!({"block_bytes": 64}))), 2)?;
    load(&mut host, [0, 0, 0]);
    let first = send(&mut host, 0, &conversation(1, 1));
    // The conversation's endpoint now has one request queued, the others none.
    let waiting = [A, B, C].map(|a| u64::from(a == first));
    load(&mut host, waiting);
    let got = send(&mut host, 1, &conversation(1, 2));
    assert_eq!(got, first);
    assert_eq!(host.metric_sum(CHANGED, &[("pool", "small")]), 1);
    // A new conversation goes by load: not to the busier endpoint.
    let other = send(&mut host, 0, &conversation(2, 1));
    assert_ne!(other, first);
    Ok(())
}

#[test]
fn a_saturated_affinity_target_is_avoided() -> Result<()> {
    let mut host = started(&config(Some(json!({"block_bytes": 64, "weight": 100}))), 2)?;
    load(&mut host, [0, 0, 0]);
    let first = send(&mut host, 0, &conversation(1, 1));
    assert_eq!(send(&mut host, 1, &conversation(1, 2)), first);
    // Its endpoint is saturated (queue at max_queue): the conversation moves, whatever the
    // affinity weight.
    let waiting = [A, B, C].map(|a| if a == first { 5 } else { 0 });
    load(&mut host, waiting);
    let moved = send(&mut host, 1, &conversation(1, 3));
    assert_ne!(moved, first);
    // ... and then sticks to where it moved, also once the first endpoint is free again.
    assert_eq!(send(&mut host, 0, &conversation(1, 4)), moved);
    load(&mut host, [0, 0, 0]);
    assert_eq!(send(&mut host, 1, &conversation(1, 5)), moved);
    Ok(())
}

#[test]
fn the_index_stays_bounded_under_a_spray_of_distinct_prompts() -> Result<()> {
    // 256 entries: 16 shard keys of at most 16 entries each.
    let prefix = json!({"block_bytes": 16, "max_blocks": 64, "index_entries": 256});
    let mut host = started(&config(Some(prefix)), 2)?;
    load(&mut host, [0, 0, 0]);
    let keys_before = host.shared_data_keys().len();
    for i in 0..10_000 {
        let body = json!({"model": "s", "messages": [{"role": "user", "content":
            format!("prompt {i} {}", "lorem ipsum dolor sit amet ".repeat(1 + i % 7))}]});
        send(&mut host, i % 2, &body);
    }
    let index: Vec<String> = host
        .shared_data_keys()
        .into_iter()
        .filter(|k| k.starts_with(INDEX))
        .collect();
    assert!(!index.is_empty() && index.len() <= 16, "{index:?}");
    let bytes: usize = index
        .iter()
        .map(|k| host.shared_data_get(k).unwrap().0.len())
        .sum();
    assert!(bytes <= 16 * (1 + 16 * 24), "{bytes} bytes");
    // Besides the index and the pool's one in-flight record, no key appeared.
    let others = host.shared_data_keys().len() - index.len();
    assert!(others <= keys_before + 1, "{:?}", host.shared_data_keys());
    assert!(host.traps().is_empty());
    Ok(())
}

#[test]
fn corrupted_index_values_do_not_trap() -> Result<()> {
    let prefix = json!({"block_bytes": 16, "index_entries": 64});
    let mut host = started(&config(Some(prefix)), 1)?;
    load(&mut host, [0, 0, 0]);
    let junk: [&[u8]; 5] = [b"", b"\x01", b"\x01abc", &[1u8; 1 + 24 * 17], &[0xff; 97]];
    for shard in 0..4 {
        for j in junk {
            host.shared_data_set(&format!("{INDEX}{shard}"), j);
            send(&mut host, 0, &conversation(shard, 2));
        }
    }
    // The conversation is remembered again after the corruption stops.
    let first = send(&mut host, 0, &conversation(9, 1));
    assert_eq!(send(&mut host, 0, &conversation(9, 2)), first);
    assert!(host.traps().is_empty());
    Ok(())
}

/// Shared-data calls of one request on worker 0 (metered host).
fn shared_calls(host: &mut Host, body: &Value) -> u64 {
    host.take_costs(0);
    send(host, 0, body);
    host.take_costs(0)
        .iter()
        .flat_map(|c| c.host_calls.iter())
        .filter(|(name, _)| name.contains("shared_data"))
        .map(|(_, n)| *n)
        .sum()
}

fn metered(config: &Value) -> Result<Host> {
    let mut host = Host::builder()
        .wasm_file(wasm_path())
        .metered(true)
        .plugin_config(config.to_string())
        .env("LLM_ROUTER_PUSH_TOKEN", PUSH_TOKEN)
        .seed(3)
        .build()?;
    host.start()?;
    load(&mut host, [0, 0, 0]);
    Ok(host)
}

#[test]
fn affinity_adds_at_most_16_shared_data_calls_per_request() -> Result<()> {
    // The longest grid: 1024 blocks of 16 bytes (11 indexed blocks), 4096 shards.
    let prefix = json!({"block_bytes": 16, "max_blocks": 1024, "index_entries": 65536});
    let mut with = metered(&config(Some(prefix)))?;
    let mut without = metered(&config(None))?;
    let mut worst = 0;
    for i in 0..40 {
        let body = json!({"model": "s", "messages": [{"role": "user", "content":
            format!("{i} {}", "a new conversation with a long first message ".repeat(400))}]});
        let base = shared_calls(&mut without, &body);
        let extra = shared_calls(&mut with, &body).saturating_sub(base);
        worst = worst.max(extra);
        assert!(extra <= 16, "request {i}: {extra} more shared-data calls");
    }
    // New conversations do write their blocks (the bound is not met by doing nothing).
    assert!(worst >= 8, "{worst}");
    Ok(())
}
