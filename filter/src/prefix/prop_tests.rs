#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::index::View;
use super::tests::{cfg, Mem};
use super::*;
use crate::testutil::{iters, Rng};

/// Arbitrary bytes never trap the shard decoder, and what decodes re-encodes to itself.
#[test]
fn shard_decoding_never_panics() {
    let mut rng = Rng::new(0x5eed_0012);
    for iter in 0..iters(20_000) {
        let len = match rng.below(3) {
            0 => rng.below(8),
            1 => 1 + 24 * rng.below(SHARD_SLOTS + 3),
            _ => rng.below(600),
        };
        let mut bytes = rng.bytes(len);
        if rng.chance(70) {
            if let Some(b) = bytes.first_mut() {
                *b = 1;
            }
        }
        if let Some(shard) = Shard::decode(&bytes) {
            assert!(shard.len() <= SHARD_SLOTS, "iter {iter}");
            assert_eq!(shard.encode(), bytes, "iter {iter}");
        }
    }
}

/// Arbitrary stores (corrupted values included), chains and pools: lookups and writes never
/// panic, spend at most the budget, keep every value decodable and within `SHARD_SLOTS`,
/// and never write more keys than the shard count.
#[test]
fn index_under_arbitrary_traffic_stays_bounded() {
    let mut rng = Rng::new(0x5eed_0013);
    let store = Mem::default();
    let shards = 8;
    for iter in 0..iters(3000) {
        if rng.chance(5) {
            let k = key(rng.below(shards));
            let n = rng.below(100);
            let junk = rng.bytes(n);
            store.map.borrow_mut().insert(k, (junk, 1));
        }
        let tags: Vec<u64> = (0..rng.below(5)).map(|_| rng.below(8) as u64).collect();
        let chain: Vec<u64> = (0..rng.below(300)).map(|_| rng.below(64) as u64).collect();
        // Message ends anywhere, out of range, unsorted, repeated: probed positions stay valid.
        let marks: Vec<usize> = (0..rng.below(40)).map(|_| rng.below(400)).collect();
        let v = View {
            shards,
            pool: rng.below(3) as u32,
            endpoints: &tags,
        };
        let before = store.calls.get();
        let look = lookup(&store, &v, &points(&chain, &marks));
        for h in &look.hits {
            assert!(h.endpoint < tags.len(), "iter {iter}");
            assert!(h.blocks <= chain.len(), "iter {iter}");
        }
        if let Some(&picked) = tags.first() {
            let calls = record(
                &store,
                &v,
                &points(&chain, &marks),
                look,
                picked,
                rng.below(100) as u32,
            );
            assert!(calls <= MAX_HOST_CALLS, "iter {iter}");
            assert_eq!(store.calls.get() - before, calls, "iter {iter}");
        }
        let map = store.map.borrow();
        assert!(map.len() <= shards, "iter {iter}");
    }
    for (k, (v, _)) in store.map.borrow().iter() {
        if let Some(s) = Shard::decode(v) {
            assert!(s.len() <= SHARD_SLOTS, "{k}");
        }
    }
}

/// Any body the reader accepts hashes without panicking, within the cap, and the same body
/// cut and re-joined (the filter only ever sees the whole body) hashes the same.
#[test]
fn hashing_arbitrary_bodies_never_panics() {
    let mut rng = Rng::new(0x5eed_0014);
    let pieces = [
        r#"{"role":"user","content":"#,
        r#""hello \u00e9 world""#,
        r#"[{"type":"text","text":"part"},{"type":"image_url"}]"#,
        r#"}"#,
        r#","#,
        r#"{"role":1,"content":null}"#,
        r#"{"content":"x","role":"system","name":"n"}"#,
    ];
    for iter in 0..iters(3000) {
        let mut body = String::from(r#"{"messages":["#);
        for _ in 0..rng.below(12) {
            body.push_str(pieces[rng.below(pieces.len())]);
        }
        body.push_str("]}");
        if rng.chance(30) {
            body = format!(r#"{{"prompt":{}}}"#, serde_json::to_string(&body).unwrap());
        }
        let Ok(info) = crate::body::inspect(body.as_bytes()) else {
            continue;
        };
        let c = cfg(1 + rng.below(40), 1 + rng.below(20));
        let chain = chain(&info, &c, "p");
        assert!(chain.len() <= c.max_blocks, "iter {iter}");
        let limit = c.block_bytes * c.max_blocks;
        let text = canonical(&info, limit);
        assert!(text.len() <= limit, "iter {iter}");
        // Hashed as produced, piece by piece, or all at once: the same chain.
        let all = chain_of(&text, &c, "p");
        assert_eq!(chain.blocks, all.len(), "iter {iter}");
        assert_eq!(chain.points, points(&all, &chain.marks), "iter {iter}");
    }
}

/// The shard kept as bytes behaves as a list of entries: upserts (dead endpoints forgotten,
/// same block replaced, a full table losing its oldest entry, the earliest added among equal
/// stamps) leave the same entries in the same order as a plain list.
#[test]
fn shard_upserts_match_a_plain_table() {
    let mut rng = Rng::new(0x5eed_0015);
    for iter in 0..iters(2000) {
        let mut shard = Shard::default();
        let mut model: Vec<ShardEntry> = Vec::new();
        let dead = rng.below(4) as u64;
        for step in 0..rng.below(60) {
            let entry = ShardEntry {
                hash: rng.below(40) as u64,
                endpoint: rng.below(4) as u64,
                pool: rng.below(2) as u32,
                // Many equal stamps (requests within the same second).
                stamp: (iter as u32)
                    .wrapping_mul(100)
                    .wrapping_add(step as u32 / 8),
            };
            let live = |t: u64| t != dead || step % 7 != 0;
            shard.upsert(entry, &live);
            model.retain(|e| e.pool != entry.pool || live(e.endpoint));
            if let Some(e) = model
                .iter_mut()
                .find(|e| e.hash == entry.hash && e.pool == entry.pool)
            {
                *e = entry;
            } else {
                if model.len() >= SHARD_SLOTS {
                    let oldest = model
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, e)| e.stamp)
                        .map(|(i, _)| i)
                        .unwrap();
                    model.remove(oldest);
                }
                model.push(entry);
            }
            assert_eq!(shard.entries(), model, "iter {iter} step {step}");
            assert_eq!(Shard::decode(&shard.encode()), Some(shard.clone()));
            assert_eq!(shard.find(entry.hash, entry.pool), Some(entry));
        }
    }
}

#[test]
fn shard_keys_are_decimal() {
    assert_eq!(key(0), "llm_router/prefix/0");
    assert_eq!(key(1023), "llm_router/prefix/1023");
    assert_eq!(key(usize::MAX), format!("llm_router/prefix/{}", usize::MAX));
}
