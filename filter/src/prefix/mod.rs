//! Prefix-cache affinity: a chain of block hashes over a request's canonical prompt prefix, and
//! a bounded index in shared data of which endpoint recent prefixes were sent to.
//!
//! A model server keeps the KV cache of the prompts it served; a request whose prompt starts
//! like an earlier one is cheaper (no prefill for the cached part) on the server that served
//! the earlier one. The canonical prefix is the text the body reader already decoded (one
//! parse, no second pass over the body): the chat messages in order, each as its role and its
//! text segments, or the `prompt`/`input` text. It is cut into blocks of `block_bytes`; `h_i`
//! is the digest of one running hash (`hash.rs`, started from the seed and the pool) after the
//! first `i` whole blocks, at most `max_blocks`. Two requests share `h_i` exactly when (up to
//! a 64-bit collision) their first `i` blocks are equal, whatever the body's chunking, JSON
//! whitespace, key order in a message or worker. The text is hashed as the body reader's
//! segments are walked, in place, and only the `h_i` the index uses are computed: the grid
//! `i = 1, 2, 4, ...` and the blocks where a message ends (`index.rs`).

mod hash;
mod index;

pub use hash::hash_block;
use hash::K2;
use hash::{all_blocks, Blocks};

pub use index::{
    grid, key, lookup, points, positions, record, shard_count, Hit, Lookup, Shard, ShardEntry,
    View, MAX_HOST_CALLS, SHARD_SLOTS,
};

use crate::body::RequestInfo;
use crate::config::Prefix;

/// Separates a message's role from its text, and the text segments of one message.
const UNIT_SEP: u8 = 0x1f;
/// Ends a message.
const RECORD_SEP: u8 = 0x1e;

/// `h_0` of a pool's chains: pools never share an index entry.
pub fn chain_start(seed: u64, pool: &str) -> u64 {
    hash_block(seed, pool.as_bytes())
}

/// A request's prefix: how many whole blocks it has, and the hashes the index uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// Whole blocks of the canonical prefix (at most `max_blocks`).
    pub blocks: usize,
    /// `(p, h_p)` for the block counts `p` the index keeps and probes, ascending: the grid
    /// 1, 2, 4, ... up to `blocks`, and the `marks`.
    pub points: Vec<(usize, u64)>,
    /// Block counts at which a message of the request ends (the whole blocks before the end of
    /// message 1, 2, ...): ascending, deduplicated, in `1..=blocks`. The previous turn of a
    /// conversation ended at one of them, so the index also keeps and probes these positions
    /// (a grid alone rounds a turn's match down to a power of two, often to the shared system
    /// prompt only).
    pub marks: Vec<usize>,
    /// Whole blocks of the leading system (or developer) messages: a prompt that many
    /// conversations share and every server soon caches. They do not count toward a match
    /// (a new conversation is placed by load, not drawn to whichever endpoint served the same
    /// system prompt last).
    pub shared: usize,
}

impl Chain {
    pub fn is_empty(&self) -> bool {
        self.blocks == 0
    }

    pub fn len(&self) -> usize {
        self.blocks
    }
}

/// Where the canonical prefix goes as it is produced.
trait Sink {
    /// Takes `bytes` (as much as the limit leaves room for); `false` once the limit is reached.
    fn put(&mut self, bytes: &[u8]) -> bool;
    /// A message ended (its record separator was taken).
    fn message_end(&mut self);
    /// The leading system messages end here (or were cut by the limit).
    fn shared_end(&mut self);
}

/// Roles whose leading messages are a shared prompt (raw JSON text, as the body reader keeps
/// it).
fn is_shared_role(role: &str) -> bool {
    matches!(role, "\"system\"" | "\"developer\"")
}

/// The canonical prefix as bytes, at most `limit` of them.
struct Text {
    out: Vec<u8>,
    limit: usize,
}

impl Sink for Text {
    fn put(&mut self, bytes: &[u8]) -> bool {
        let room = self.limit.saturating_sub(self.out.len());
        let take = bytes.get(..room.min(bytes.len())).unwrap_or_default();
        self.out.extend_from_slice(take);
        self.out.len() < self.limit
    }

    fn message_end(&mut self) {}

    fn shared_end(&mut self) {}
}

impl Sink for Blocks {
    fn put(&mut self, bytes: &[u8]) -> bool {
        Blocks::put(self, bytes)
    }

    fn message_end(&mut self) {
        Blocks::message_end(self);
    }

    fn shared_end(&mut self) {
        Blocks::shared_end(self);
    }
}

/// The canonical prompt prefix of a request, at most `limit` bytes (the bytes [`chain`]
/// hashes, for tests and tools: the chain itself is hashed as the text is produced).
pub fn canonical(info: &RequestInfo, limit: usize) -> Vec<u8> {
    let mut text = Text {
        out: Vec::new(),
        limit,
    };
    canonical_into(info, &mut text);
    text.out
}

/// Produces the canonical prefix of `info` into `sink` (until it is full), telling it where
/// each message ends (a message cut by the limit has no end).
fn canonical_into(info: &RequestInfo, sink: &mut dyn Sink) {
    let end = info.conversation_end.min(info.segments.len());
    let conversation = info.segments.get(..end).unwrap_or_default();
    // Text before the first message (none for a chat request) and `prompt`/`input`.
    let first_turn = info.turns.first().map_or(end, |t| t.first.min(end));
    if first_turn > 0 {
        let text = conversation.get(..first_turn).unwrap_or_default();
        if !piece(sink, None, text) {
            return;
        }
    }
    // Leading system messages: only when nothing comes before them.
    let mut leading = first_turn == 0;
    for (i, turn) in info.turns.iter().enumerate() {
        let next = info.turns.get(i + 1).map_or(end, |t| t.first.min(end));
        let text = conversation
            .get(turn.first.min(next)..next)
            .unwrap_or_default();
        let shared = leading && is_shared_role(turn.role);
        if leading && !shared {
            leading = false;
            sink.shared_end();
        }
        if !piece(sink, Some(turn.role), text) {
            if shared {
                sink.shared_end();
            }
            return;
        }
    }
    if leading {
        sink.shared_end();
    }
}

/// One message (its role and text segments) or the text before the first one; `false` once
/// the sink is full.
fn piece(sink: &mut dyn Sink, role: Option<&str>, text: &[std::borrow::Cow<str>]) -> bool {
    if let Some(role) = role {
        if !sink.put(role.as_bytes()) || !sink.put(&[UNIT_SEP]) {
            return false;
        }
    }
    for segment in text {
        if !sink.put(segment.as_bytes()) || !sink.put(&[UNIT_SEP]) {
            return false;
        }
    }
    // A full sink takes nothing more: the separator was taken exactly when it was not full.
    let full_before = !sink.put(&[]);
    let complete = sink.put(&[RECORD_SEP]);
    if role.is_some() && !full_before {
        sink.message_end();
    }
    complete
}

/// The block hash chain of a request for `pool`: its whole blocks of the canonical prefix (at
/// most `max_blocks`) and the hashes of its points, computed as the prefix is produced (no
/// copy of it, no hash the index does not use).
pub fn chain(info: &RequestInfo, cfg: &Prefix, pool: &str) -> Chain {
    let mut blocks = Blocks::new(chain_start(cfg.seed, pool), cfg.block_bytes, cfg.max_blocks);
    canonical_into(info, &mut blocks);
    let (blocks, points, marks, shared) = blocks.finish();
    Chain {
        blocks,
        points,
        marks,
        shared,
    }
}

/// Every block hash `h_1..h_n` of canonical bytes (whole blocks, at most `max_blocks`): the
/// chain [`chain`]'s points are taken from.
pub fn chain_of(canonical: &[u8], cfg: &Prefix, pool: &str) -> Vec<u64> {
    all_blocks(
        chain_start(cfg.seed, pool),
        canonical,
        cfg.block_bytes,
        cfg.max_blocks,
    )
}

/// The pool's tag in index entries (entries of other pools are never forgotten for it).
pub fn pool_tag(seed: u64, pool: &str) -> u32 {
    chain_start(seed, pool) as u32
}

/// The endpoint identity kept in the index: a hash of its canonical `ip:port`.
pub fn endpoint_tag(seed: u64, address: &str) -> u64 {
    hash_block(seed ^ K2.rotate_left(32), address.as_bytes())
}

/// Estimated tokens of `blocks` blocks (4 bytes a token), for the match-length histogram.
pub fn tokens_of(blocks: usize, cfg: &Prefix) -> u64 {
    (blocks as u64).saturating_mul(cfg.block_bytes as u64) / 4
}

/// Per endpoint of a pool of `pool_len` (same order), the fraction of the request's blocks
/// past its `shared` ones ([`Chain::shared`]) matched there: its longest hit, when at least
/// `min_match` blocks and longer than the shared ones (`chain_len` blocks in all).
pub fn matched_fractions(
    hits: &[Hit],
    pool_len: usize,
    chain_len: usize,
    shared: usize,
    min_match: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; pool_len];
    if chain_len <= shared {
        return out;
    }
    let own = (chain_len - shared) as f64;
    for h in hits
        .iter()
        .filter(|h| h.blocks >= min_match.max(1) && h.blocks > shared)
    {
        if let Some(slot) = out.get_mut(h.endpoint) {
            let f = (h.blocks.min(chain_len) - shared) as f64 / own;
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
