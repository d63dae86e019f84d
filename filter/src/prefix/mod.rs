//! Prefix-cache affinity: a chain of block hashes over a request's canonical prompt prefix, and
//! a bounded index in shared data of which endpoint recent prefixes were sent to.
//!
//! A model server keeps the KV cache of the prompts it served; a request whose prompt starts
//! like an earlier one is cheaper (no prefill for the cached part) on the server that served
//! the earlier one. The canonical prefix is the text the body reader already decoded (one
//! parse, no second pass over the body): the chat messages in order, each as its role and its
//! text segments, or the `prompt`/`input` text. It is cut into blocks of `block_bytes`; block
//! `i`'s hash covers block `i` and, through the previous hash, everything before it:
//! `h_i = H(h_{i-1}, block_i)`, `h_0` = H(seed, pool). Only whole blocks are hashed, at most
//! `max_blocks`. Two requests share hash `h_i` exactly when (up to a 64-bit collision) their
//! first `i` blocks are equal, whatever the body's chunking, JSON whitespace, key order in a
//! message or worker.

mod index;

pub use index::{
    grid, key, lookup, record, shard_count, Hit, Lookup, Shard, ShardEntry, View, MAX_HOST_CALLS,
    SHARD_SLOTS,
};

use crate::body::RequestInfo;
use crate::config::Prefix;

/// Separates a message's role from its text, and the text segments of one message.
const UNIT_SEP: u8 = 0x1f;
/// Ends a message.
const RECORD_SEP: u8 = 0x1e;

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;

/// Final mix (murmur3's fmix64): every input bit affects every output bit.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

/// A fast non-cryptographic 64-bit hash of `bytes`, chained on `prev` (8 bytes per step).
pub fn hash_block(prev: u64, bytes: &[u8]) -> u64 {
    let mut h = mix(prev ^ K2);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let word = w.try_into().map_or(0, u64::from_le_bytes);
        h = (h.rotate_left(27) ^ word).wrapping_mul(K1);
    }
    let mut tail = [0u8; 8];
    for (t, b) in tail.iter_mut().zip(words.remainder()) {
        *t = *b;
    }
    h = (h.rotate_left(27) ^ u64::from_le_bytes(tail)).wrapping_mul(K1);
    mix(h ^ bytes.len() as u64)
}

/// `h_0` of a pool's chains: pools never share an index entry.
pub fn chain_start(seed: u64, pool: &str) -> u64 {
    hash_block(seed, pool.as_bytes())
}

/// The canonical prompt prefix of a request, at most `limit` bytes.
pub fn canonical(info: &RequestInfo, limit: usize) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(limit.min(64 * 1024));
    let put = |bytes: &[u8], out: &mut Vec<u8>| -> bool {
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
        out.len() < limit
    };
    let end = info.conversation_end.min(info.segments.len());
    let conversation = info.segments.get(..end).unwrap_or_default();
    // Text before the first message (none for a chat request) and `prompt`/`input`.
    let first_turn = info.turns.first().map_or(end, |t| t.first.min(end));
    let mut pieces: Vec<(Option<&str>, &[std::borrow::Cow<str>])> = Vec::new();
    if first_turn > 0 {
        pieces.push((None, conversation.get(..first_turn).unwrap_or_default()));
    }
    for (i, turn) in info.turns.iter().enumerate() {
        let next = info.turns.get(i + 1).map_or(end, |t| t.first.min(end));
        let text = conversation
            .get(turn.first.min(next)..next)
            .unwrap_or_default();
        pieces.push((Some(turn.role), text));
    }
    for (role, text) in pieces {
        if let Some(role) = role {
            if !put(role.as_bytes(), &mut out) || !put(&[UNIT_SEP], &mut out) {
                return out;
            }
        }
        for segment in text {
            if !put(segment.as_bytes(), &mut out) || !put(&[UNIT_SEP], &mut out) {
                return out;
            }
        }
        if !put(&[RECORD_SEP], &mut out) {
            return out;
        }
    }
    out
}

/// The block hash chain of a request for `pool`: `h_1..h_n`, one per whole block of the
/// canonical prefix, at most `max_blocks`.
pub fn chain(info: &RequestInfo, cfg: &Prefix, pool: &str) -> Vec<u64> {
    let limit = cfg.block_bytes.saturating_mul(cfg.max_blocks);
    chain_of(&canonical(info, limit), cfg, pool)
}

/// The chain of canonical bytes (see [`chain`]).
pub fn chain_of(canonical: &[u8], cfg: &Prefix, pool: &str) -> Vec<u64> {
    let size = cfg.block_bytes.max(1);
    let mut h = chain_start(cfg.seed, pool);
    canonical
        .chunks_exact(size)
        .take(cfg.max_blocks)
        .map(|block| {
            h = hash_block(h, block);
            h
        })
        .collect()
}

/// The pool's tag in index entries (entries of other pools are never forgotten for it).
pub fn pool_tag(seed: u64, pool: &str) -> u32 {
    chain_start(seed, pool) as u32
}

/// The endpoint identity kept in the index: a hash of its canonical `ip:port`.
pub fn endpoint_tag(seed: u64, address: &str) -> u64 {
    hash_block(seed ^ K1, address.as_bytes())
}

/// Estimated tokens of `blocks` blocks (4 bytes a token), for the match-length histogram.
pub fn tokens_of(blocks: usize, cfg: &Prefix) -> u64 {
    (blocks as u64).saturating_mul(cfg.block_bytes as u64) / 4
}

/// Per endpoint of a pool of `pool_len` (same order), the fraction of the request's
/// `chain_len` blocks matched there: its longest hit, when at least `min_match` blocks.
pub fn matched_fractions(
    hits: &[Hit],
    pool_len: usize,
    chain_len: usize,
    min_match: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; pool_len];
    if chain_len == 0 {
        return out;
    }
    for h in hits.iter().filter(|h| h.blocks >= min_match.max(1)) {
        if let Some(slot) = out.get_mut(h.endpoint) {
            let f = (h.blocks.min(chain_len) as f64) / chain_len as f64;
            if f > *slot {
                *slot = f;
            }
        }
    }
    out
}

/// Blocks matched at endpoint `endpoint` (its longest hit; 0 when none).
pub fn matched_blocks(hits: &[Hit], endpoint: usize) -> usize {
    hits.iter()
        .filter(|h| h.endpoint == endpoint)
        .map(|h| h.blocks)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
