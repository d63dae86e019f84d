//! One simulated vLLM-like model server: continuous batching with chunked prefill, a waiting
//! queue, and a KV cache of fixed-size token blocks shared by prefix (vLLM's automatic prefix
//! caching: a block is named by the hash chain of the tokens up to its end), evicted least
//! recently used once no running sequence holds it.
//!
//! Time is the caller's: [`Server::start_step`] says how long the next forward pass takes and
//! [`Server::end_step`] applies it. Nothing here reads a clock.

use std::collections::{BTreeSet, HashMap, VecDeque};

use anyhow::{bail, Result};

/// The GPU speed and memory model (defaults: roughly an A100 40 GB serving a 7-8B model).
#[derive(Debug, Clone, PartialEq)]
pub struct Speed {
    /// Prefill throughput, tokens per second (uncached prompt tokens only).
    pub prefill_tps: f64,
    /// Fixed cost of one forward pass, ms.
    pub step_base_ms: f64,
    /// Added per sequence in the batch (decode grows mildly with batch size), ms.
    pub step_per_seq_ms: f64,
    /// Most sequences running at once (vLLM's max_num_seqs).
    pub max_running: usize,
    /// Most prompt tokens prefilled in one step (vLLM's max_num_batched_tokens, chunked prefill).
    pub max_step_tokens: u32,
    /// KV cache capacity in blocks.
    pub kv_blocks: usize,
    /// Tokens per KV block.
    pub block_tokens: u32,
}

impl Default for Speed {
    fn default() -> Self {
        Speed {
            prefill_tps: 10_000.0,
            step_base_ms: 18.0,
            step_per_seq_ms: 0.25,
            max_running: 48,
            max_step_tokens: 4096,
            kv_blocks: 8192,
            block_tokens: 16,
        }
    }
}

impl Speed {
    pub fn validate(&self) -> Result<()> {
        if !(self.prefill_tps.is_finite() && self.prefill_tps > 0.0) {
            bail!("prefill tokens/s must be > 0");
        }
        if !(self.step_base_ms.is_finite() && self.step_base_ms > 0.0) {
            bail!("step base ms must be > 0");
        }
        if !(self.step_per_seq_ms.is_finite() && self.step_per_seq_ms >= 0.0) {
            bail!("step ms per sequence must be >= 0");
        }
        if self.max_running == 0 || self.max_step_tokens == 0 || self.block_tokens == 0 {
            bail!("max running, max step tokens and block tokens must be > 0");
        }
        if self.kv_blocks < 64 {
            bail!("KV cache must hold at least 64 blocks");
        }
        Ok(())
    }

    /// Duration of one step in microseconds.
    pub fn step_us(&self, sequences: usize, prefill_tokens: u32) -> u64 {
        let ms = self.step_base_ms
            + self.step_per_seq_ms * sequences as f64
            + f64::from(prefill_tokens) * 1000.0 / self.prefill_tps;
        (ms * 1000.0).round().max(1.0) as u64
    }
}

/// A request as the server sees it.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: usize,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    /// Block hashes of the full blocks of prompt ++ output, in order.
    pub chain: std::sync::Arc<[u64]>,
}

impl Job {
    fn prompt_blocks(&self, bt: u32) -> usize {
        ((self.prompt_tokens / bt) as usize).min(self.chain.len())
    }

    /// Blocks the whole sequence (prompt and output) occupies.
    fn total_blocks(&self, bt: u32) -> usize {
        (self.prompt_tokens + self.output_tokens).div_ceil(bt) as usize
    }
}

#[derive(Debug, Clone)]
struct Running {
    job: Job,
    prefill_left: u32,
    decoded: u32,
    /// Blocks of its own beyond the shared prompt blocks (tail and output), reserved at admission.
    private: usize,
    /// What the current step does for it: prefill tokens, or a decode (u32::MAX).
    this_step: u32,
}

const DECODE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Slot {
    refs: u32,
    stamp: u64,
    /// Its tokens were computed (a block being prefilled is not a hit yet).
    ready: bool,
}

/// What happened to a request in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Admitted from the queue: `cached_tokens` of its prompt were found in the cache.
    Admitted { id: usize, cached_tokens: u32 },
    /// Its first output token is out (end of its prefill).
    FirstToken { id: usize },
    /// Its last output token is out.
    Finished { id: usize },
}

/// One server's load as a sidecar would scrape it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub waiting: usize,
    pub running: usize,
    /// Fraction of KV blocks held by running sequences (cached-but-free blocks count as free,
    /// as in vLLM's `kv_cache_usage_perc`).
    pub kv_cache: f64,
}

#[derive(Debug, Clone)]
pub struct Server {
    speed: Speed,
    cache: HashMap<u64, Slot>,
    /// (stamp, hash) of the blocks no running sequence holds: the eviction order.
    free: BTreeSet<(u64, u64)>,
    private: usize,
    stamp: u64,
    waiting: VecDeque<Job>,
    running: Vec<Running>,
    stepping: bool,
    /// Blocks evicted so far.
    pub evictions: u64,
}

impl Server {
    pub fn new(speed: Speed) -> Server {
        Server {
            speed,
            cache: HashMap::new(),
            free: BTreeSet::new(),
            private: 0,
            stamp: 0,
            waiting: VecDeque::new(),
            running: Vec::new(),
            stepping: false,
            evictions: 0,
        }
    }

    pub fn enqueue(&mut self, job: Job) -> Result<()> {
        if job.output_tokens == 0 || job.prompt_tokens == 0 {
            bail!("request {}: empty prompt or no output", job.id);
        }
        if job.total_blocks(self.speed.block_tokens) > self.speed.kv_blocks {
            bail!("request {} needs more KV blocks than a server has", job.id);
        }
        self.waiting.push_back(job);
        Ok(())
    }

    pub fn load(&self) -> Load {
        Load {
            waiting: self.waiting.len(),
            running: self.running.len(),
            kv_cache: self.pinned() as f64 / self.speed.kv_blocks as f64,
        }
    }

    pub fn is_stepping(&self) -> bool {
        self.stepping
    }

    /// Blocks held by running sequences.
    pub fn pinned(&self) -> usize {
        self.cache.len() - self.free.len() + self.private
    }

    /// Blocks in use, held or cached.
    pub fn used_blocks(&self) -> usize {
        self.cache.len() + self.private
    }

    /// Leading prompt tokens of `job` whose blocks are cached and computed here.
    pub fn cached_prefix_tokens(&self, job: &Job) -> u32 {
        let n = job.chain[..job.prompt_blocks(self.speed.block_tokens)]
            .iter()
            .take_while(|h| self.cache.get(h).is_some_and(|s| s.ready))
            .count();
        n as u32 * self.speed.block_tokens
    }

    fn touch(&mut self) -> u64 {
        self.stamp += 1;
        self.stamp
    }

    /// Makes room for `n` more blocks by evicting free cached blocks, oldest first.
    fn make_room(&mut self, n: usize) -> bool {
        while self.used_blocks() + n > self.speed.kv_blocks {
            let Some(&(stamp, h)) = self.free.iter().next() else {
                return false;
            };
            self.free.remove(&(stamp, h));
            self.cache.remove(&h);
            self.evictions += 1;
        }
        true
    }

    /// Admits the head of the queue if a sequence slot and its blocks are free.
    fn admit_one(&mut self) -> Option<Progress> {
        if self.running.len() >= self.speed.max_running {
            return None;
        }
        let bt = self.speed.block_tokens;
        let job = self.waiting.front()?.clone();
        let pb = job.prompt_blocks(bt);
        let cached = self.cached_prefix_tokens(&job);
        let private = job.total_blocks(bt).saturating_sub(pb);
        // New blocks: prompt blocks not in the cache at all, and the private ones.
        let absent = job.chain[..pb]
            .iter()
            .filter(|h| !self.cache.contains_key(h))
            .count();
        let unpinned_present = job.chain[..pb]
            .iter()
            .filter(|h| self.cache.get(h).is_some_and(|s| s.refs == 0))
            .count();
        if self.pinned() + unpinned_present + absent + private > self.speed.kv_blocks {
            return None;
        }
        self.waiting.pop_front();
        // Pin what is there first, so that making room cannot evict it.
        for h in &job.chain[..pb] {
            if let Some(s) = self.cache.get_mut(h) {
                if s.refs == 0 {
                    self.free.remove(&(s.stamp, *h));
                }
                s.refs += 1;
            }
        }
        if !self.make_room(absent + private) {
            return None; // unreachable: checked above
        }
        for h in &job.chain[..pb] {
            self.cache.entry(*h).or_insert(Slot {
                refs: 1,
                stamp: 0,
                ready: false,
            });
        }
        self.private += private;
        // vLLM computes at least the last prompt token even on a full hit.
        let cached = cached.min(job.prompt_tokens - 1);
        let id = job.id;
        self.running.push(Running {
            prefill_left: job.prompt_tokens - cached,
            job,
            decoded: 0,
            private,
            this_step: 0,
        });
        Some(Progress::Admitted {
            id,
            cached_tokens: cached,
        })
    }

    /// Admits what fits and plans the next step; returns its duration in microseconds, or None
    /// when there is nothing to run (the server idles until the next enqueue).
    pub fn start_step(&mut self, out: &mut Vec<Progress>) -> Option<u64> {
        if self.stepping {
            return None;
        }
        while let Some(p) = self.admit_one() {
            out.push(p);
        }
        if self.running.is_empty() {
            return None;
        }
        let mut budget = self.speed.max_step_tokens;
        let mut prefill = 0;
        let mut seqs = 0;
        for r in &mut self.running {
            if r.prefill_left > 0 {
                let take = r.prefill_left.min(budget);
                budget -= take;
                prefill += take;
                r.this_step = take;
                if take > 0 {
                    seqs += 1;
                }
            } else {
                r.this_step = DECODE;
                seqs += 1;
            }
        }
        self.stepping = true;
        Some(self.speed.step_us(seqs, prefill))
    }

    /// Applies the step planned by [`Server::start_step`].
    pub fn end_step(&mut self, out: &mut Vec<Progress>) {
        if !self.stepping {
            return;
        }
        self.stepping = false;
        let bt = self.speed.block_tokens;
        let mut done = Vec::new();
        for (i, r) in self.running.iter_mut().enumerate() {
            match r.this_step {
                0 => {}
                DECODE => r.decoded += 1,
                take => {
                    r.prefill_left -= take;
                    if r.prefill_left == 0 {
                        r.decoded = 1;
                        out.push(Progress::FirstToken { id: r.job.id });
                        let pb = r.job.prompt_blocks(bt);
                        for h in &r.job.chain[..pb] {
                            if let Some(s) = self.cache.get_mut(h) {
                                s.ready = true;
                            }
                        }
                    }
                }
            }
            r.this_step = 0;
            if r.decoded >= r.job.output_tokens && r.prefill_left == 0 {
                done.push(i);
            }
        }
        for i in done.into_iter().rev() {
            let r = self.running.remove(i);
            out.push(Progress::Finished { id: r.job.id });
            self.release(r);
        }
    }

    /// A finished sequence: its prompt blocks become free cached blocks (the chain's tail older
    /// than its head, so a chain is evicted from its end), its private blocks are released
    /// and its full output blocks cached (the next turn of a conversation starts with them).
    fn release(&mut self, r: Running) {
        let bt = self.speed.block_tokens;
        let pb = r.job.prompt_blocks(bt);
        self.private -= r.private;
        let chain = r.job.chain.clone();
        for (i, h) in chain.iter().enumerate().rev() {
            let stamp = self.touch();
            if i < pb {
                if let Some(s) = self.cache.get_mut(h) {
                    s.refs = s.refs.saturating_sub(1);
                    if s.refs == 0 {
                        self.free.remove(&(s.stamp, *h));
                        s.stamp = stamp;
                        self.free.insert((stamp, *h));
                    }
                }
            } else if !self.cache.contains_key(h) && self.make_room(1) {
                self.cache.insert(
                    *h,
                    Slot {
                        refs: 0,
                        stamp,
                        ready: true,
                    },
                );
                self.free.insert((stamp, *h));
            }
        }
    }

    /// Checks the bookkeeping (tests and the smoke run call it): capacity, batch bound, refs.
    pub fn check(&self) -> Result<()> {
        if self.used_blocks() > self.speed.kv_blocks {
            bail!(
                "{} blocks used of {}",
                self.used_blocks(),
                self.speed.kv_blocks
            );
        }
        if self.running.len() > self.speed.max_running {
            bail!(
                "{} running > max {}",
                self.running.len(),
                self.speed.max_running
            );
        }
        let free = self.cache.values().filter(|s| s.refs == 0).count();
        if free != self.free.len() {
            bail!(
                "{free} unreferenced blocks but {} in the LRU",
                self.free.len()
            );
        }
        let held: usize = self.running.iter().map(|r| r.private).sum();
        if held != self.private {
            bail!("private blocks {} != {held}", self.private);
        }
        Ok(())
    }

    pub fn speed(&self) -> &Speed {
        &self.speed
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
