//! Helpers of the crate's property tests: a small seeded generator, so every run tries the
//! same cases and a failure names the seed and iteration that reproduce it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// Iterations of one property test: `default` in `make test`, `LLM_ROUTER_FUZZ_ITERS` in the
/// long runs of `make fuzz`.
pub fn iters(default: u64) -> u64 {
    std::env::var("LLM_ROUTER_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// splitmix64: tiny, fast, good enough for test-case generation.
#[derive(Debug, Clone)]
pub struct Rng(crate::splitmix::SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(crate::splitmix::SplitMix64::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// Cuts `data` into random pieces (some empty, some single bytes, some long).
    pub fn split<'a>(&mut self, data: &'a [u8]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let n = match self.below(4) {
                0 => 0,
                1 => 1,
                2 => self.below(8),
                _ => self.below(rest.len() + 1),
            };
            let (a, b) = rest.split_at(n.min(rest.len()));
            out.push(a);
            rest = b;
        }
        out
    }
}
