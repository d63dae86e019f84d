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

/// A shard's value, kept as the bytes read and written (no table is decoded or encoded): the
/// version byte, then 24 bytes per entry (at most `SHARD_SLOTS`): hash, endpoint (u64 LE),
/// pool, stamp (u32 LE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    raw: Vec<u8>,
}

impl Default for Shard {
    fn default() -> Shard {
        Shard { raw: vec![VERSION] }
    }
}

impl ShardEntry {
    fn read(b: &[u8; ENTRY_BYTES]) -> ShardEntry {
        let (hash, rest) = b.split_first_chunk::<8>().unwrap_or((&[0; 8], &[]));
        let (endpoint, rest) = rest.split_first_chunk::<8>().unwrap_or((&[0; 8], &[]));
        let (pool, rest) = rest.split_first_chunk::<4>().unwrap_or((&[0; 4], &[]));
        let stamp = rest.first_chunk::<4>().unwrap_or(&[0; 4]);
        ShardEntry {
            hash: u64::from_le_bytes(*hash),
            endpoint: u64::from_le_bytes(*endpoint),
            pool: u32::from_le_bytes(*pool),
            stamp: u32::from_le_bytes(*stamp),
        }
    }

    fn bytes(&self) -> [u8; ENTRY_BYTES] {
        let mut out = [0u8; ENTRY_BYTES];
        let (hash, rest) = out.split_at_mut(8);
        let (endpoint, rest) = rest.split_at_mut(8);
        let (pool, stamp) = rest.split_at_mut(4);
        hash.copy_from_slice(&self.hash.to_le_bytes());
        endpoint.copy_from_slice(&self.endpoint.to_le_bytes());
        pool.copy_from_slice(&self.pool.to_le_bytes());
        stamp.copy_from_slice(&self.stamp.to_le_bytes());
        out
    }
}

impl Shard {
    /// Reads a value; `None` when it is not one this version wrote (wrong version, length or
    /// more than `SHARD_SLOTS` entries).
    pub fn decode(bytes: &[u8]) -> Option<Shard> {
        Shard::from_vec(bytes.to_vec())
    }

    /// [`Shard::decode`], keeping `raw` as the shard's bytes.
    pub fn from_vec(raw: Vec<u8>) -> Option<Shard> {
        let (&version, rest) = raw.split_first()?;
        if version != VERSION
            || rest.len() % ENTRY_BYTES != 0
            || rest.len() / ENTRY_BYTES > SHARD_SLOTS
        {
            return None;
        }
        Some(Shard { raw })
    }

    /// The value to store.
    pub fn encode(&self) -> Vec<u8> {
        self.raw.clone()
    }

    fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    pub fn len(&self) -> usize {
        self.raw.len().saturating_sub(1) / ENTRY_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, i: usize) -> Option<ShardEntry> {
        let at = 1 + i * ENTRY_BYTES;
        self.raw
            .get(at..)?
            .first_chunk::<ENTRY_BYTES>()
            .map(ShardEntry::read)
    }

    fn set_slot(&mut self, i: usize, entry: &ShardEntry) {
        let at = 1 + i * ENTRY_BYTES;
        if let Some(dst) = self.raw.get_mut(at..at + ENTRY_BYTES) {
            dst.copy_from_slice(&entry.bytes());
        }
    }

    /// The entries, in order.
    pub fn entries(&self) -> Vec<ShardEntry> {
        (0..self.len()).filter_map(|i| self.slot(i)).collect()
    }

    fn position(&self, hash: u64, pool: u32) -> Option<usize> {
        let rest = self.raw.get(1..).unwrap_or_default();
        rest.chunks_exact(ENTRY_BYTES).position(|e| {
            e.first_chunk::<8>().map(|h| u64::from_le_bytes(*h)) == Some(hash)
                && e.first_chunk::<ENTRY_BYTES>()
                    .is_some_and(|e| ShardEntry::read(e).pool == pool)
        })
    }

    pub fn find(&self, hash: u64, pool: u32) -> Option<ShardEntry> {
        self.slot(self.position(hash, pool)?)
    }

    /// Remembers `entry` (replacing the entry of the same block). Entries of the same pool
    /// whose endpoint is not `live` any more are forgotten first; a full table then evicts its
    /// oldest entry.
    pub fn upsert(&mut self, entry: ShardEntry, live: &dyn Fn(u64) -> bool) {
        let n = self.len();
        let mut kept = 0;
        for i in 0..n {
            let Some(e) = self.slot(i) else {
                break;
            };
            if e.pool == entry.pool && !live(e.endpoint) {
                continue;
            }
            if kept != i {
                self.set_slot(kept, &e);
            }
            kept += 1;
        }
        self.raw.truncate(1 + kept * ENTRY_BYTES);
        if let Some(i) = self.position(entry.hash, entry.pool) {
            self.set_slot(i, &entry);
            return;
        }
        if kept < SHARD_SLOTS {
            self.raw.extend_from_slice(&entry.bytes());
            return;
        }
        // The first entry with the oldest stamp goes (entries are in the order they were
        // added, so among equal stamps the earliest added), and the new one is added last.
        let oldest = (0..kept)
            .filter_map(|i| Some((i, self.slot(i)?.stamp)))
            .min_by_key(|&(_, stamp)| stamp)
            .map_or(0, |(i, _)| i);
        let at = 1 + oldest * ENTRY_BYTES;
        if at + ENTRY_BYTES <= self.raw.len() {
            self.raw.copy_within(at + ENTRY_BYTES.., at);
            self.raw.truncate(self.raw.len() - ENTRY_BYTES);
        }
        self.raw.extend_from_slice(&entry.bytes());
    }
}

/// Number of shard keys for an index of `entries` entries.
pub fn shard_count(entries: usize) -> usize {
    entries.div_ceil(SHARD_SLOTS).max(1)
}

fn shard_of(hash: u64, shards: usize) -> usize {
    usize::try_from(hash % shards.max(1) as u64).unwrap_or(0)
}

const KEY_PREFIX: &str = "llm_router/prefix/";

/// The shared-data key of a shard (`llm_router/prefix/<n>`).
pub fn key(shard: usize) -> String {
    Key::new(shard).as_str().to_string()
}

/// [`key`], built on the stack (no allocation per shared-data call).
struct Key {
    buf: [u8; KEY_PREFIX.len() + 20],
    len: usize,
}

impl Key {
    fn new(shard: usize) -> Key {
        let mut buf = [0u8; KEY_PREFIX.len() + 20];
        if let Some(dst) = buf.get_mut(..KEY_PREFIX.len()) {
            dst.copy_from_slice(KEY_PREFIX.as_bytes());
        }
        let mut digits = [0u8; 20];
        let mut n = shard;
        let mut start = digits.len();
        loop {
            start -= 1;
            if let Some(d) = digits.get_mut(start) {
                *d = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 || start == 0 {
                break;
            }
        }
        let digits = digits.get(start..).unwrap_or_default();
        let len = KEY_PREFIX.len() + digits.len();
        if let Some(dst) = buf.get_mut(KEY_PREFIX.len()..len) {
            dst.copy_from_slice(digits);
        }
        Key { buf, len }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

/// Indexed block counts of a chain of `n` blocks: 1, 2, 4, ... up to `n`.
pub fn grid(n: usize) -> Vec<usize> {
    std::iter::successors(Some(1usize), |p| p.checked_mul(2))
        .take_while(|p| *p <= n)
        .collect()
}

/// The block counts a chain of `n` blocks is indexed and probed at: the grid (1, 2, 4, ...)
/// and the `marks` (where its messages end), ascending, each once.
pub fn positions(n: usize, marks: &[usize]) -> Vec<usize> {
    let mut all = grid(n);
    all.extend(marks.iter().copied().filter(|&m| m >= 1 && m <= n));
    all.sort_unstable();
    all.dedup();
    all
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
    Ok(match store.get(Key::new(shard).as_str())? {
        Some((bytes, cas)) => (Shard::from_vec(bytes).unwrap_or_default(), cas),
        None => (Shard::default(), CREATE_CAS),
    })
}

/// The points of a whole chain: `(p, chain[p - 1])` for each of its [`positions`] (what
/// [`super::chain`] hashes directly, without the blocks in between).
pub fn points(chain: &[u64], marks: &[usize]) -> Vec<(usize, u64)> {
    positions(chain.len(), marks)
        .into_iter()
        .filter_map(|p| Some((p, *chain.get(p.checked_sub(1)?)?)))
        .collect()
}

/// Finds the longest indexed prefix among `points` (block count and the hash of that many
/// blocks, ascending: [`super::Chain::points`]) by binary search.
pub fn lookup(store: &dyn Store, view: &View, points: &[(usize, u64)]) -> Lookup {
    let mut out = Lookup::default();
    // Invariant: point `lo - 1` matched (or lo = 0), everything from `hi` on did not.
    let (mut lo, mut hi) = (0usize, points.len());
    while lo < hi && out.calls < MAX_HOST_CALLS {
        let mid = lo + (hi - lo) / 2;
        let Some(&(blocks, hash)) = points.get(mid) else {
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
                out.hits.push(Hit { blocks, endpoint });
                lo = mid + 1;
            }
            None => hi = mid,
        }
    }
    out
}

/// Remembers that the request with `points` went to endpoint `picked` (its tag): its points
/// (new ones first), grouped by shard, within the call budget. Returns the calls spent in all
/// (lookup included).
pub fn record(
    store: &dyn Store,
    view: &View,
    points: &[(usize, u64)],
    mut look: Lookup,
    picked: u64,
    now_s: u32,
) -> usize {
    let fresh = |look: &Lookup, hash: u64, shard: usize| {
        look.cached(shard).is_some_and(|(_, t, _)| {
            t.find(hash, view.pool)
                .is_some_and(|e| e.endpoint == picked && now_s.saturating_sub(e.stamp) < REFRESH_S)
        })
    };
    // Points below a fresh longest match at the picked endpoint were written with it.
    let covered = look
        .longest()
        .filter(|h| view.endpoints.get(h.endpoint) == Some(&picked))
        .filter(|h| {
            points
                .iter()
                .any(|&(p, hash)| p == h.blocks && fresh(&look, hash, shard_of(hash, view.shards)))
        })
        .map_or(0, |h| h.blocks);
    // What the index does not know yet comes first: the points past the longest match at the
    // picked endpoint (a conversation's new turn: the next turn looks for them), then the
    // older points again (refreshed so that they are not evicted as old), each shortest first,
    // as far as the call budget goes.
    let matched = look
        .longest()
        .filter(|h| view.endpoints.get(h.endpoint) == Some(&picked))
        .map_or(0, |h| h.blocks);
    let mut todo: Vec<(usize, u64)> = Vec::with_capacity(points.len());
    for new in [true, false] {
        for &(p, hash) in points {
            let shard = shard_of(hash, view.shards);
            if (p > matched) != new || p <= covered || fresh(&look, hash, shard) {
                continue;
            }
            todo.push((shard, hash));
        }
    }
    let live = |tag: u64| view.endpoints.contains(&tag);
    let mut done = 0;
    while let Some(&(shard, _)) = todo.get(done) {
        // Gather this shard's points right after the first one.
        let mut end = done + 1;
        let mut i = end;
        while let Some(&(s, _)) = todo.get(i) {
            if s == shard {
                if let Some(run) = todo.get_mut(end..=i) {
                    run.rotate_right(1);
                }
                end += 1;
            }
            i += 1;
        }
        let hashes = todo.get(done..end).unwrap_or_default();
        if !write(store, view, &mut look, shard, hashes, &live, picked, now_s) {
            break;
        }
        done = end;
    }
    look.calls
}

/// Writes `hashes` (all in `shard`) for `picked` into the shard, reading it first unless the
/// lookup did; one retry after a lost compare-and-swap. `false` when the budget or the store
/// stopped it.
#[allow(clippy::too_many_arguments)]
fn write(
    store: &dyn Store,
    view: &View,
    look: &mut Lookup,
    shard: usize,
    hashes: &[(usize, u64)],
    live: &dyn Fn(u64) -> bool,
    picked: u64,
    now_s: u32,
) -> bool {
    let mut attempt = 0;
    loop {
        let cached = look
            .read
            .iter()
            .position(|(s, _, _)| *s == shard)
            .map(|i| look.read.swap_remove(i));
        let (mut table, cas) = match cached {
            Some((_, t, cas)) => (t, cas),
            None => {
                if look.calls + 2 > MAX_HOST_CALLS {
                    return false;
                }
                look.calls += 1;
                match read(store, shard) {
                    Ok(read) => read,
                    Err(_) => return false,
                }
            }
        };
        if look.calls + 1 > MAX_HOST_CALLS {
            return false;
        }
        for &(_, hash) in hashes {
            let entry = ShardEntry {
                hash,
                endpoint: picked,
                pool: view.pool,
                stamp: now_s,
            };
            table.upsert(entry, live);
        }
        look.calls += 1;
        match store.set(Key::new(shard).as_str(), table.as_bytes(), cas) {
            Ok(()) => return true,
            Err(StoreError::CasMismatch) if attempt == 0 => attempt += 1,
            Err(_) => return false,
        }
    }
}
