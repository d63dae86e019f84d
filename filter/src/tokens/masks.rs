//! Bit masks of a 64-byte block of text for the estimator's block path (`prose::blocks`):
//! bit i of each mask says what byte i of the block is. Built with wasm simd128 when the
//! module is compiled with it (sixteen bytes per compare, `i8x16_bitmask`), else eight bytes
//! at a time in a `u64` (SWAR) with the per-byte flags gathered into bits by a multiply.
//! Both builders give the same masks for every block (a test compares them).

/// Bytes per block (one bit per byte in a `u64`).
pub(super) const BLOCK: usize = 64;

/// What each byte of a block is.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(super) struct Masks {
    /// ASCII letters.
    pub(super) letters: u64,
    /// ASCII uppercase letters.
    pub(super) upper: u64,
    /// `b' '`.
    pub(super) spaces: u64,
    /// `b'.'` and `b','`.
    pub(super) marks: u64,
}

/// The masks of `b`, with the builder the target has.
#[inline(always)]
pub(super) fn masks(b: &[u8; BLOCK]) -> Masks {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        simd_masks(b)
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        scalar_masks(b)
    }
}

/// Bit 7 of every byte.
pub(super) const HIGH: u64 = 0x8080_8080_8080_8080;

/// Bit 7 of each byte of `x` that is an ASCII lowercase letter (no carries between bytes).
#[inline(always)]
pub(super) fn lower_bits(x: u64) -> u64 {
    let low7 = x & !HIGH;
    // Bit 7 set for bytes >= b'a', and for bytes > b'z'.
    let from_a = low7.wrapping_add(0x1F1F_1F1F_1F1F_1F1F);
    let past_z = low7.wrapping_add(0x0505_0505_0505_0505);
    from_a & !past_z & !x & HIGH
}

const ONES: u64 = 0x0101_0101_0101_0101;

/// Bit 7 of each byte of `x` equal to `c` (exact: no carries between bytes).
#[inline(always)]
fn eq_bits(x: u64, c: u8) -> u64 {
    let y = x ^ u64::from(c).wrapping_mul(ONES);
    let t = (y & !HIGH).wrapping_add(!HIGH);
    !(t | y) & HIGH
}

/// Bit 7 of byte k of `high` (the other bits clear) moved to bit k: the multiply puts byte
/// k's bit at position 56 + k and every other product bit elsewhere (no two coincide, so
/// nothing carries into the top byte).
#[inline(always)]
fn gather(high: u64) -> u64 {
    (high >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// The masks of `b`, eight bytes at a time.
#[cfg_attr(
    all(target_arch = "wasm32", target_feature = "simd128", not(test)),
    allow(dead_code)
)]
#[inline(always)]
pub(super) fn scalar_masks(b: &[u8; BLOCK]) -> Masks {
    let mut m = Masks::default();
    let mut shift = 0u32;
    for chunk in b.chunks_exact(8) {
        let Some(bytes) = chunk.first_chunk::<8>() else {
            break;
        };
        let x = u64::from_le_bytes(*bytes);
        // Letters: lowercase once bit 5 is set; uppercase ones had it clear (bit 5 moved to
        // bit 7 of its byte by the shift).
        let letters = lower_bits(x | 0x2020_2020_2020_2020);
        let upper = letters & !(x << 2);
        // `.` (0x2E) and `,` (0x2C) differ in bit 1 only.
        let marks = eq_bits(x | 0x0202_0202_0202_0202, b'.');
        m.letters |= gather(letters) << shift;
        m.upper |= gather(upper) << shift;
        m.spaces |= gather(eq_bits(x, b' ')) << shift;
        m.marks |= gather(marks) << shift;
        shift = shift.wrapping_add(8);
    }
    m
}

/// The masks of `b`, sixteen bytes per compare.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(super) fn simd_masks(b: &[u8; BLOCK]) -> Masks {
    use core::arch::wasm32::{
        i8x16_bitmask, i8x16_eq, i8x16_sub, u8x16_lt, u8x16_splat, v128, v128_and, v128_load,
        v128_or,
    };
    let mut m = Masks::default();
    let mut shift = 0u32;
    for chunk in b.chunks_exact(16) {
        let Some(bytes) = chunk.first_chunk::<16>() else {
            break;
        };
        // SAFETY: `bytes` is a reference to 16 readable bytes, and `v128_load` is a 1-aligned
        // load (no alignment requirement on the pointer).
        let v = unsafe { v128_load(bytes.as_ptr().cast::<v128>()) };
        let folded = v128_or(v, u8x16_splat(0x20));
        // Letters: `b | 0x20` in `a..=z` (unsigned: bytes below `a` wrap to large values).
        let letters = u8x16_lt(i8x16_sub(folded, u8x16_splat(b'a')), u8x16_splat(26));
        let upper = v128_and(letters, u8x16_lt(v, u8x16_splat(b'a')));
        let spaces = i8x16_eq(v, u8x16_splat(b' '));
        let marks = i8x16_eq(v128_or(v, u8x16_splat(0x02)), u8x16_splat(b'.'));
        m.letters |= u64::from(i8x16_bitmask(letters)) << shift;
        m.upper |= u64::from(i8x16_bitmask(upper)) << shift;
        m.spaces |= u64::from(i8x16_bitmask(spaces)) << shift;
        m.marks |= u64::from(i8x16_bitmask(marks)) << shift;
        shift = shift.wrapping_add(16);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags byte by byte, for comparing the builders with.
    fn reference(b: &[u8; BLOCK]) -> Masks {
        let mut m = Masks::default();
        for (i, &c) in b.iter().enumerate() {
            let bit = 1u64 << i;
            if c.is_ascii_alphabetic() {
                m.letters |= bit;
            }
            if c.is_ascii_uppercase() {
                m.upper |= bit;
            }
            if c == b' ' {
                m.spaces |= bit;
            }
            if c == b'.' || c == b',' {
                m.marks |= bit;
            }
        }
        m
    }

    /// Every byte value at every position, and random blocks biased to prose bytes, give
    /// the byte-by-byte masks with the scalar builder and (wasm simd128) the SIMD one.
    #[test]
    fn builders_match_byte_by_byte() {
        let mut rng = crate::testutil::Rng::new(0x6D61_736B_7321);
        let prose = b"aAzZ .,@[`{-/\x80\xC3\xE0\xFF\x00\x7F";
        let mut blocks = Vec::new();
        for v in 0..=255u8 {
            let mut b = [b'x'; BLOCK];
            for (i, c) in b.iter_mut().enumerate() {
                if (i + usize::from(v)) % 3 == 0 {
                    *c = v;
                }
            }
            blocks.push(b);
        }
        for _ in 0..crate::testutil::iters(2000) {
            let mut b = [0u8; BLOCK];
            for c in b.iter_mut() {
                *c = if rng.chance(50) {
                    *rng.pick(prose)
                } else {
                    rng.next_u64() as u8
                };
            }
            blocks.push(b);
        }
        for b in &blocks {
            let want = reference(b);
            assert_eq!(scalar_masks(b), want, "{b:?}");
            assert_eq!(masks(b), want, "{b:?}");
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            assert_eq!(simd_masks(b), want, "{b:?}");
        }
    }
}
