//! The shared index: which endpoint recent prefix blocks were sent to.
//!
//! Shared data has no delete, so the key space is fixed: `shard_count(index_entries)` keys
//! (`llm_router/prefix/<n>`), a block hash living in shard `hash % shards`. Each value is a
//! small table of at most `SHARD_SLOTS` entries (full 64-bit hash, endpoint tag, pool tag,
//! time stamp); a full table evicts its oldest entry, so memory is bounded by the
//! configuration whatever the traffic. A value that cannot be read is treated as empty (and
//! overwritten by the next write); a full hash is compared on every read.
//!
//! Per request only a grid of the chain's blocks is indexed (block counts 1, 2, 4, 8, ...), so
//! the longest indexed match is found by binary search over the grid (at most 4 reads for
//! 1024 blocks) and a request writes at most a handful of shards. Reads and writes together
//! stay within `MAX_HOST_CALLS`; a write that loses a compare-and-swap race is retried once
//! if the budget allows, and otherwise the rest of the writes are dropped (the index is a
//! hint: the next request of the conversation writes again).

use crate::store::{Store, StoreError, CREATE_CAS};

/// Entries per shard value (24 bytes each).
pub const SHARD_SLOTS: usize = 16;
/// Most shared-data calls (reads and writes) one request spends on affinity.
pub const MAX_HOST_CALLS: usize = 16;
const VERSION: u8 = 1;
const ENTRY_BYTES: usize = 24;
/// An entry that already names the picked endpoint is rewritten (its time stamp refreshed,
/// so that it is not evicted as old) only when it is older than this.
const REFRESH_S: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardEntry {
    /// The block's full chain hash.
    pub hash: u64,
    /// The endpoint's tag (`super::endpoint_tag`).
    pub endpoint: u64,
    /// The pool's tag (low bits of the pool's chain start).
    pub pool: u32,
    /// Seconds (proxy clock) when last written.
    pub stamp: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shard {
    pub entries: Vec<ShardEntry>,
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl Shard {
    /// Version byte, then 24 bytes per entry: hash, endpoint (u64 LE), pool, stamp (u32 LE).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.entries.len() * ENTRY_BYTES);
        out.push(VERSION);
        for e in self.entries.iter().take(SHARD_SLOTS) {
            out.extend_from_slice(&e.hash.to_le_bytes());
            out.extend_from_slice(&e.endpoint.to_le_bytes());
            out.extend_from_slice(&e.pool.to_le_bytes());
            out.extend_from_slice(&e.stamp.to_le_bytes());
        }
        out
    }

    /// Reads a value; `None` when it is not one this version wrote (wrong version, length or
    /// more than `SHARD_SLOTS` entries).
    pub fn decode(bytes: &[u8]) -> Option<Shard> {
        let (&version, rest) = bytes.split_first()?;
        if version != VERSION || rest.len() % ENTRY_BYTES != 0 {
            return None;
        }
        if rest.len() / ENTRY_BYTES > SHARD_SLOTS {
            return None;
        }
        let mut entries = Vec::with_capacity(rest.len() / ENTRY_BYTES);
        for e in rest.chunks_exact(ENTRY_BYTES) {
            entries.push(ShardEntry {
                hash: u64_at(e, 0)?,
                endpoint: u64_at(e, 8)?,
                pool: u32_at(e, 16)?,
                stamp: u32_at(e, 20)?,
            });
        }
        Some(Shard { entries })
    }

    pub fn find(&self, hash: u64, pool: u32) -> Option<&ShardEntry> {
        self.entries
            .iter()
            .find(|e| e.hash == hash && e.pool == pool)
    }

    /// Remembers `entry` (replacing the entry of the same block). Entries of the same pool
    /// whose endpoint is not `live` any more are forgotten first; a full table then evicts its
    /// oldest entry.
    pub fn upsert(&mut self, entry: ShardEntry, live: &dyn Fn(u64) -> bool) {
        self.entries
            .retain(|e| e.pool != entry.pool || live(e.endpoint));
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.hash == entry.hash && e.pool == entry.pool)
        {
            *e = entry;
            return;
        }
        if self.entries.len() >= SHARD_SLOTS {
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.stamp)
                .map(|(i, _)| i);
            if let Some(i) = oldest {
                self.entries.remove(i);
            }
        }
        self.entries.truncate(SHARD_SLOTS.saturating_sub(1));
        self.entries.push(entry);
    }
}

/// Number of shard keys for an index of `entries` entries.
pub fn shard_count(entries: usize) -> usize {
    entries.div_ceil(SHARD_SLOTS).max(1)
}

fn shard_of(hash: u64, shards: usize) -> usize {
    usize::try_from(hash % shards.max(1) as u64).unwrap_or(0)
}

pub fn key(shard: usize) -> String {
    format!("llm_router/prefix/{shard}")
}

/// Indexed block counts of a chain of `n` blocks: 1, 2, 4, ... up to `n`.
pub fn grid(n: usize) -> Vec<usize> {
    std::iter::successors(Some(1usize), |p| p.checked_mul(2))
        .take_while(|p| *p <= n)
        .collect()
}

/// A matched block: the request's first `blocks` blocks went to endpoint `endpoint` (an
/// index into the pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub blocks: usize,
    pub endpoint: usize,
}

/// What a lookup found, with the shards it read (the writes reuse them).
#[derive(Debug, Default)]
pub struct Lookup {
    /// Every probe that matched an endpoint of the pool.
    pub hits: Vec<Hit>,
    /// Shared-data calls spent so far.
    pub calls: usize,
    read: Vec<(usize, Shard, u32)>,
}

impl Lookup {
    /// The longest match (blocks, endpoint index), if any.
    pub fn longest(&self) -> Option<Hit> {
        self.hits.iter().copied().max_by_key(|h| h.blocks)
    }

    fn cached(&self, shard: usize) -> Option<&(usize, Shard, u32)> {
        self.read.iter().find(|(s, _, _)| *s == shard)
    }
}

/// The index as one request sees it: the shard count, the pool's tag and its endpoints'
/// tags (an entry naming any other endpoint is ignored: that endpoint left the pool).
pub struct View<'a> {
    pub shards: usize,
    pub pool: u32,
    pub endpoints: &'a [u64],
}

fn read(store: &dyn Store, shard: usize) -> Result<(Shard, u32), StoreError> {
    Ok(match store.get(&key(shard))? {
        Some((bytes, cas)) => (Shard::decode(&bytes).unwrap_or_default(), cas),
        None => (Shard::default(), CREATE_CAS),
    })
}

/// Finds the longest indexed prefix of `chain` by binary search over its grid.
pub fn lookup(store: &dyn Store, view: &View, chain: &[u64]) -> Lookup {
    let mut out = Lookup::default();
    let positions = grid(chain.len());
    // Invariant: grid index `lo - 1` matched (or lo = 0), everything from `hi` on did not.
    let (mut lo, mut hi) = (0usize, positions.len());
    while lo < hi && out.calls < MAX_HOST_CALLS {
        let mid = lo + (hi - lo) / 2;
        let Some(hash) = positions.get(mid).and_then(|p| chain.get(p - 1)).copied() else {
            break;
        };
        let shard = shard_of(hash, view.shards);
        if out.cached(shard).is_none() {
            out.calls += 1;
            let Ok((table, cas)) = read(store, shard) else {
                break;
            };
            out.read.push((shard, table, cas));
        }
        let endpoint = out
            .cached(shard)
            .and_then(|(_, t, _)| t.find(hash, view.pool))
            .and_then(|e| view.endpoints.iter().position(|x| *x == e.endpoint));
        match endpoint {
            Some(endpoint) => {
                let blocks = positions.get(mid).copied().unwrap_or(0);
                out.hits.push(Hit { blocks, endpoint });
                lo = mid + 1;
            }
            None => hi = mid,
        }
    }
    out
}

/// Remembers that the request with `chain` went to endpoint `picked` (its tag): its grid
/// blocks, shortest first, grouped by shard, within the call budget. Returns the calls spent
/// in all (lookup included).
pub fn record(
    store: &dyn Store,
    view: &View,
    chain: &[u64],
    mut look: Lookup,
    picked: u64,
    now_s: u32,
) -> usize {
    let fresh = |hash: u64| {
        let shard = shard_of(hash, view.shards);
        look.cached(shard).is_some_and(|(_, t, _)| {
            t.find(hash, view.pool)
                .is_some_and(|e| e.endpoint == picked && now_s.saturating_sub(e.stamp) < REFRESH_S)
        })
    };
    // Blocks below a fresh longest match at the picked endpoint were written with it.
    let covered = look
        .longest()
        .filter(|h| view.endpoints.get(h.endpoint) == Some(&picked))
        .filter(|h| {
            chain
                .get(h.blocks.wrapping_sub(1))
                .is_some_and(|&hash| fresh(hash))
        })
        .map_or(0, |h| h.blocks);
    let mut groups: Vec<(usize, Vec<u64>)> = Vec::new();
    for p in grid(chain.len()) {
        let Some(&hash) = chain.get(p - 1) else {
            continue;
        };
        if p <= covered || fresh(hash) {
            continue;
        }
        let shard = shard_of(hash, view.shards);
        match groups.iter_mut().find(|(s, _)| *s == shard) {
            Some((_, hashes)) => hashes.push(hash),
            None => groups.push((shard, vec![hash])),
        }
    }
    let live = |tag: u64| view.endpoints.contains(&tag);
    for (shard, hashes) in groups {
        let mut attempt = 0;
        let written = loop {
            let cached = look
                .read
                .iter()
                .position(|(s, _, _)| *s == shard)
                .map(|i| look.read.swap_remove(i));
            let (mut table, cas) = match cached {
                Some((_, t, cas)) => (t, cas),
                None => {
                    if look.calls + 2 > MAX_HOST_CALLS {
                        break false;
                    }
                    look.calls += 1;
                    match read(store, shard) {
                        Ok(read) => read,
                        Err(_) => break false,
                    }
                }
            };
            if look.calls + 1 > MAX_HOST_CALLS {
                break false;
            }
            for &hash in &hashes {
                let entry = ShardEntry {
                    hash,
                    endpoint: picked,
                    pool: view.pool,
                    stamp: now_s,
                };
                table.upsert(entry, &live);
            }
            look.calls += 1;
            match store.set(&key(shard), &table.encode(), cas) {
                Ok(()) => break true,
                Err(StoreError::CasMismatch) if attempt == 0 => attempt += 1,
                Err(_) => break false,
            }
        };
        if !written {
            break;
        }
    }
    look.calls
}
