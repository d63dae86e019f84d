//! The block hash chain: one running hash over the canonical prefix, read out at each block
//! boundary.
//!
//! The state is four 64-bit lanes; the text is taken 32 bytes per step, word `j` of a step
//! into lane `j`: `lane = (lane.rotate_left(24) ^ word) * K1` (the rotation carries each
//! word's high bits down: a multiply alone only carries bits up, so two flips of a top bit
//! would cancel). Each step is a bijection of the lane for a fixed word, so texts that differ
//! leave different states (up to collisions of a 256-bit state). A digest folds the lanes
//! in order, the words of an unfinished step and its zero-padded tail, and the length, and
//! ends with murmur3's final mix. Block `i`'s hash is the digest after its last byte: it
//! covers blocks `1..=i` (and the chain's start), so two requests share it exactly when
//! their first `i` blocks are equal, whatever pieces the text came in.
//!
//! Under simd128 the lanes run as two `i64x2` vectors (the rotation by 24 bits is one byte
//! shuffle); the scalar code computes the same values (a test compares both on the wasm
//! build). The text is hashed where it lies: only the bytes of a step that straddles two
//! pieces are copied (at most 31).

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
pub(super) const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;
/// Lane start offsets (xor-ed into the mixed seed): distinct constants.
const LANES: [u64; 4] = [
    0x243F_6A88_85A3_08D3,
    0x1319_8A2E_0370_7345,
    0xA409_3822_299F_31D1,
    0x082E_FA98_EC4E_6C89,
];
const STEP: usize = 32;
const ROTATE: u32 = 24;

/// Final mix (murmur3's fmix64): every input bit affects every output bit.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

#[inline(always)]
fn round(h: u64, word: u64) -> u64 {
    (h.rotate_left(ROTATE) ^ word).wrapping_mul(K1)
}

#[inline(always)]
fn word(bytes: &[u8; 8]) -> u64 {
    u64::from_le_bytes(*bytes)
}

/// A fast non-cryptographic 64-bit hash of `bytes`, seeded with `seed`.
pub fn hash_block(seed: u64, bytes: &[u8]) -> u64 {
    let mut s = Stream::new(seed);
    s.feed(bytes);
    s.digest()
}

/// The running hash.
#[derive(Clone)]
pub struct Stream {
    lanes: [u64; 4],
    /// The start of an unfinished step.
    pending: [u8; STEP],
    pending_len: usize,
    len: u64,
}

impl Stream {
    pub fn new(seed: u64) -> Stream {
        let s = mix(seed ^ K2);
        Stream {
            lanes: LANES.map(|c| s ^ c),
            pending: [0; STEP],
            pending_len: 0,
            len: 0,
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        self.len = self.len.wrapping_add(bytes.len() as u64);
        if self.pending_len > 0 {
            let start = self.pending_len.min(STEP);
            let take = (STEP - start).min(bytes.len());
            let (now, later) = bytes.split_at(take);
            if let Some(dst) = self.pending.get_mut(start..start + take) {
                dst.copy_from_slice(now);
            }
            self.pending_len = start + take;
            bytes = later;
            if self.pending_len < STEP {
                return;
            }
            self.lanes = lanes(self.lanes, &self.pending);
            self.pending_len = 0;
        }
        let bulk = bytes.len() - bytes.len() % STEP;
        let (head, tail) = bytes.split_at(bulk);
        if !head.is_empty() {
            self.lanes = lanes(self.lanes, head);
        }
        if let Some(dst) = self.pending.get_mut(..tail.len()) {
            dst.copy_from_slice(tail);
            self.pending_len = tail.len();
        }
    }

    /// The hash of everything fed so far (the stream goes on).
    pub fn digest(&self) -> u64 {
        let mut h = K2 ^ self.len;
        for lane in self.lanes {
            h = round(h, lane);
        }
        let pending = self.pending.get(..self.pending_len).unwrap_or_default();
        let mut words = pending.chunks_exact(8);
        for w in &mut words {
            if let Some(w) = w.first_chunk::<8>() {
                h = round(h, word(w));
            }
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut tail = [0u8; 8];
            for (t, b) in tail.iter_mut().zip(rest) {
                *t = *b;
            }
            h = round(h, word(&tail));
        }
        mix(h)
    }
}

/// The lanes after the steps of `bulk` (a multiple of [`STEP`] bytes; extra bytes are ignored).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn lanes(l: [u64; 4], bulk: &[u8]) -> [u64; 4] {
    lanes_scalar(l, bulk)
}

#[cfg_attr(
    all(target_arch = "wasm32", target_feature = "simd128"),
    allow(dead_code)
)]
fn lanes_scalar(mut l: [u64; 4], bulk: &[u8]) -> [u64; 4] {
    for step in bulk.chunks_exact(STEP) {
        let Some(step) = step.first_chunk::<STEP>() else {
            break;
        };
        let (w0, r) = step.split_first_chunk::<8>().unwrap_or((&[0; 8], &[]));
        let (w1, r) = r.split_first_chunk::<8>().unwrap_or((&[0; 8], &[]));
        let (w2, r) = r.split_first_chunk::<8>().unwrap_or((&[0; 8], &[]));
        let w3 = r.first_chunk::<8>().unwrap_or(&[0; 8]);
        let [a, b, c, d] = l;
        l = [
            round(a, word(w0)),
            round(b, word(w1)),
            round(c, word(w2)),
            round(d, word(w3)),
        ];
    }
    l
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
fn lanes(l: [u64; 4], bulk: &[u8]) -> [u64; 4] {
    lanes_simd(l, bulk)
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn lanes_simd(l: [u64; 4], bulk: &[u8]) -> [u64; 4] {
    use core::arch::wasm32::{
        i64x2_mul, i8x16_shuffle, u64x2, u64x2_extract_lane, u64x2_splat, v128, v128_load, v128_xor,
    };
    let [l0, l1, l2, l3] = l;
    let k = u64x2_splat(K1);
    let mut a = u64x2(l0, l1);
    let mut b = u64x2(l2, l3);
    let load = |bytes: &[u8; 16]| {
        // SAFETY: `bytes` is a reference to 16 readable bytes, and `v128_load` is a 1-aligned
        // load (no alignment requirement on the pointer).
        unsafe { v128_load(bytes.as_ptr().cast::<v128>()) }
    };
    // Each 64-bit lane rotated left by 24 bits (3 bytes), then the round.
    let round2 = |h: v128, w: v128| {
        let r = i8x16_shuffle::<5, 6, 7, 0, 1, 2, 3, 4, 13, 14, 15, 8, 9, 10, 11, 12>(h, h);
        i64x2_mul(v128_xor(r, w), k)
    };
    // Two steps per iteration (fewer loop instructions), then the odd step.
    let mut pairs = bulk.chunks_exact(2 * STEP);
    for pair in &mut pairs {
        let Some(pair) = pair.first_chunk::<{ 2 * STEP }>() else {
            break;
        };
        let (x0, r) = pair.split_first_chunk::<16>().unwrap_or((&[0; 16], &[]));
        let (y0, r) = r.split_first_chunk::<16>().unwrap_or((&[0; 16], &[]));
        let (x1, r) = r.split_first_chunk::<16>().unwrap_or((&[0; 16], &[]));
        let y1 = r.first_chunk::<16>().unwrap_or(&[0; 16]);
        a = round2(round2(a, load(x0)), load(x1));
        b = round2(round2(b, load(y0)), load(y1));
    }
    if let Some((x, r)) = pairs.remainder().split_first_chunk::<16>() {
        if let Some(y) = r.first_chunk::<16>() {
            a = round2(a, load(x));
            b = round2(b, load(y));
        }
    }
    [
        u64x2_extract_lane::<0>(a),
        u64x2_extract_lane::<1>(a),
        u64x2_extract_lane::<0>(b),
        u64x2_extract_lane::<1>(b),
    ]
}

/// The chain of a byte stream (the canonical prefix, fed piece by piece), at most `limit`
/// bytes: of its whole blocks of `size` bytes, only the hashes the index uses are computed
/// (its points: block counts 1, 2, 4, ... and the blocks in which a message ends).
pub struct Blocks {
    size: usize,
    limit: usize,
    /// Bytes taken so far (at most `limit`).
    len: usize,
    stream: Stream,
    /// Whole blocks taken.
    blocks: usize,
    /// The next power of two.
    next_grid: usize,
    /// The stream at the end of block `blocks` when no point was taken there (a message that
    /// ends before the next block does needs its hash).
    at_boundary: Stream,
    points: Vec<(usize, u64)>,
    marks: Vec<usize>,
    /// Whole blocks when the leading system messages ended.
    shared: usize,
}

impl Blocks {
    /// A chain of blocks of `size` bytes (at least 1) started from `h0`, over at most
    /// `max_blocks` blocks.
    pub fn new(h0: u64, size: usize, max_blocks: usize) -> Blocks {
        let size = size.max(1);
        let stream = Stream::new(h0);
        Blocks {
            size,
            limit: size.saturating_mul(max_blocks),
            len: 0,
            at_boundary: stream.clone(),
            stream,
            blocks: 0,
            next_grid: 1,
            points: Vec::new(),
            marks: Vec::new(),
            shared: 0,
        }
    }

    /// Bytes taken so far.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Takes `bytes` (as much as the limit leaves room for); `false` once the limit is reached.
    /// The stream runs through the bytes in one go between the block ends that matter: grid
    /// points (hashed) and the last block end the bytes reach (kept for a message end).
    pub fn put(&mut self, bytes: &[u8]) -> bool {
        let room = self.limit.saturating_sub(self.len);
        let mut rest = bytes.get(..room.min(bytes.len())).unwrap_or_default();
        while !rest.is_empty() {
            let end = self.len + rest.len();
            let grid_at = self.next_grid.saturating_mul(self.size);
            let last_boundary = end - end % self.size;
            let stop = if grid_at <= end {
                grid_at
            } else if last_boundary > self.len {
                last_boundary
            } else {
                end
            };
            let (now, later) = rest.split_at(stop.saturating_sub(self.len).min(rest.len()));
            self.stream.feed(now);
            self.len += now.len();
            if !now.is_empty() && self.len % self.size == 0 {
                self.boundary();
            }
            rest = later;
        }
        self.len < self.limit
    }

    fn boundary(&mut self) {
        self.blocks = self.len / self.size;
        if self.blocks == self.next_grid {
            self.points.push((self.blocks, self.stream.digest()));
            self.next_grid = self.next_grid.saturating_mul(2);
        } else {
            self.at_boundary.copy_from(&self.stream);
        }
    }

    /// A message ended here: the block count before it is a point (when at least 1).
    pub fn message_end(&mut self) {
        let m = self.blocks;
        if m == 0 || self.marks.last() == Some(&m) {
            return;
        }
        self.marks.push(m);
        if self.points.last().map(|p| p.0) != Some(m) {
            self.points.push((m, self.at_boundary.digest()));
        }
    }

    /// The leading system messages end here: the whole blocks so far are shared ones.
    pub fn shared_end(&mut self) {
        self.shared = self.blocks;
    }

    /// (whole blocks, points ascending, marks ascending, shared blocks).
    pub fn finish(self) -> (usize, Vec<(usize, u64)>, Vec<usize>, usize) {
        (self.blocks, self.points, self.marks, self.shared)
    }
}

impl Stream {
    /// Becomes a copy of `other` (its pending bytes only when there are some).
    fn copy_from(&mut self, other: &Stream) {
        self.lanes = other.lanes;
        self.len = other.len;
        self.pending_len = other.pending_len;
        if let (Some(dst), Some(src)) = (
            self.pending.get_mut(..other.pending_len),
            other.pending.get(..other.pending_len),
        ) {
            dst.copy_from_slice(src);
        }
    }
}

/// Every block hash of `text` (whole blocks, at most `max_blocks`) from `h0`: the chain the
/// points are taken from (for tests and tools).
pub fn all_blocks(h0: u64, text: &[u8], size: usize, max_blocks: usize) -> Vec<u64> {
    let mut stream = Stream::new(h0);
    text.chunks_exact(size.max(1))
        .take(max_blocks)
        .map(|block| {
            stream.feed(block);
            stream.digest()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// `n` test bytes from the crate's test generator.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        crate::testutil::Rng::new(seed).bytes(n)
    }

    #[test]
    fn lanes_of_the_build_agree_with_the_scalar_lanes() {
        let start = [1, 2, 3, u64::MAX];
        for n in [0, 32, 64, 96, 256, 4096] {
            let b = bytes(n, n as u64 + 3);
            assert_eq!(lanes(start, &b), lanes_scalar(start, &b), "{n} bytes");
        }
    }

    #[test]
    fn hash_values_are_fixed() {
        // The values are part of the index format (entries written by one worker are read
        // by another): a change here is a deliberate format change.
        let b = bytes(300, 9);
        let values = [
            hash_block(0, b""),
            hash_block(1, b"abc"),
            hash_block(7, &b[..32]),
            hash_block(7, &b[..256]),
            hash_block(7, &b),
        ];
        let unique: std::collections::HashSet<_> = values.iter().collect();
        assert_eq!(unique.len(), values.len());
        assert_eq!(values, FIXED);
    }

    const FIXED: [u64; 5] = [
        4_094_828_744_043_468_164,
        9_636_147_071_042_703_122,
        10_897_286_977_719_276_184,
        14_902_226_475_879_512_556,
        2_605_427_364_529_357_393,
    ];

    #[test]
    fn every_single_byte_change_changes_the_hash() {
        let b = bytes(256, 11);
        let h = hash_block(3, &b);
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[i] ^= 1 << bit;
                assert_ne!(hash_block(3, &c), h, "byte {i} bit {bit}");
            }
        }
        // Two top-bit flips in the same lane do not cancel.
        let mut c = b.clone();
        c[7] ^= 0x80;
        c[39] ^= 0x80;
        assert_ne!(hash_block(3, &c), h);
    }

    #[test]
    fn points_are_the_whole_chain_sampled_at_the_grid_and_message_ends() {
        let text = bytes(5000, 21);
        for size in [16, 17, 64, 256, 1000] {
            for max in [1, 3, 100] {
                let all = all_blocks(99, &text, size, max);
                for cut in [1, 7, 31, 33, 255, 256, 257, 4999] {
                    let mut blocks = Blocks::new(99, size, max);
                    // A message ends after every piece.
                    let mut ends = Vec::new();
                    for piece in text.chunks(cut) {
                        let more = blocks.put(piece);
                        blocks.message_end();
                        ends.push(blocks.len() / size);
                        if !more {
                            break;
                        }
                    }
                    assert!(blocks.len() <= size * max);
                    let (n, points, marks, _) = blocks.finish();
                    assert_eq!(n, all.len(), "size {size} max {max} cut {cut}");
                    let mut want_marks: Vec<usize> = ends.into_iter().filter(|&m| m > 0).collect();
                    want_marks.dedup();
                    assert_eq!(marks, want_marks, "size {size} max {max} cut {cut}");
                    assert_eq!(
                        points,
                        super::super::index::points(&all, &marks),
                        "size {size} max {max} cut {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_stream_fed_in_pieces_hashes_as_one_piece() {
        let text = bytes(1000, 5);
        for cut in 1..70 {
            let mut s = Stream::new(4);
            for piece in text.chunks(cut) {
                s.feed(piece);
            }
            assert_eq!(s.digest(), hash_block(4, &text), "cut {cut}");
        }
    }
}
