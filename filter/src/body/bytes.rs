//! Finding the first byte of a set in a byte slice, 64 bytes per step: with wasm simd128
//! (four 16-byte compares folded into one branch) when the module is built with it, else four
//! `u64`s at a time (SWAR). Under the body reader's byte scans (quotes and backslashes, the
//! bytes that stop a JSON string, non-ASCII bytes) and its UTF-8 check.
//!
//! The fuel-counted cost of a scan is its loop: one branch and one pointer step per 64 bytes
//! instead of per 16 (the earlier `find2`) cut a string scan from about 1.9 wasm instructions
//! per byte to about 0.6.

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use core::arch::wasm32::v128;

/// A set of byte values, tested three ways that must agree (the tests compare them).
pub(super) trait ByteSet: Copy {
    /// Whether `c` is in the set.
    fn has(self, c: u8) -> bool;
    /// Bit 7 set in the bytes of `x` in the set. The lowest flagged byte must be exact and a
    /// word with no byte in the set must give 0 (flags above the lowest may be false).
    fn swar(self, x: u64) -> u64;
    /// All ones in the lanes of `v` in the set.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn simd(self, v: v128) -> v128;
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Bit 7 set in the bytes of `x` below `n` (`n` <= 0x80); exact lowest, as [`ByteSet::swar`].
#[inline(always)]
fn below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES.wrapping_mul(u64::from(n))) & !x & HIGH
}

/// Bit 7 set in the bytes of `x` equal to `c`; exact lowest, as [`ByteSet::swar`].
#[inline(always)]
fn equal(x: u64, c: u8) -> u64 {
    below(x ^ ONES.wrapping_mul(u64::from(c)), 1)
}

/// Two byte values (`c1 == c2` for one).
#[derive(Clone, Copy)]
pub(super) struct Either(pub u8, pub u8);

impl ByteSet for Either {
    #[inline(always)]
    fn has(self, c: u8) -> bool {
        c == self.0 || c == self.1
    }
    #[inline(always)]
    fn swar(self, x: u64) -> u64 {
        equal(x, self.0) | equal(x, self.1)
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[inline(always)]
    fn simd(self, v: v128) -> v128 {
        use core::arch::wasm32::{i8x16_eq, u8x16_splat, v128_or};
        v128_or(
            i8x16_eq(v, u8x16_splat(self.0)),
            i8x16_eq(v, u8x16_splat(self.1)),
        )
    }
}

/// The bytes that stop a JSON string scan: `"`, `\`, the control characters below 0x20 and
/// the bytes >= 0x80 (whose UTF-8 is checked run by run).
#[derive(Clone, Copy)]
pub(super) struct StringStop;

impl ByteSet for StringStop {
    #[inline(always)]
    fn has(self, c: u8) -> bool {
        c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c)
    }
    #[inline(always)]
    fn swar(self, x: u64) -> u64 {
        equal(x, b'"') | equal(x, b'\\') | below(x, 0x20) | (x & HIGH)
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[inline(always)]
    fn simd(self, v: v128) -> v128 {
        use core::arch::wasm32::{i8x16_eq, i8x16_lt, i8x16_splat, u8x16_splat, v128_or};
        // Signed: below 0x20, or at least 0x80 (negative), in one compare.
        v128_or(
            v128_or(
                i8x16_eq(v, u8x16_splat(b'"')),
                i8x16_eq(v, u8x16_splat(b'\\')),
            ),
            i8x16_lt(v, i8x16_splat(0x20)),
        )
    }
}

/// Bytes at or above 0x80 (`true`) or below it (`false`).
#[derive(Clone, Copy)]
pub(super) struct NonAscii(pub bool);

impl ByteSet for NonAscii {
    #[inline(always)]
    fn has(self, c: u8) -> bool {
        (c >= 0x80) == self.0
    }
    #[inline(always)]
    fn swar(self, x: u64) -> u64 {
        if self.0 {
            x & HIGH
        } else {
            !x & HIGH
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[inline(always)]
    fn simd(self, v: v128) -> v128 {
        use core::arch::wasm32::{i8x16_lt, i8x16_splat, v128_not};
        let high = i8x16_lt(v, i8x16_splat(0));
        if self.0 {
            high
        } else {
            v128_not(high)
        }
    }
}

/// Index of the first byte of `b` in `set` at or after `from`.
#[inline(always)]
pub(super) fn find<S: ByteSet>(b: &[u8], from: usize, set: S) -> Option<usize> {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        find_simd(b, from, set)
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        find_swar(b, from, set)
    }
}

/// Bytes per step.
const STEP: usize = 64;

/// Offset of `part` (a sub-slice of `whole`) in `whole`.
#[inline(always)]
fn offset(whole: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize)
}

/// [`find`] on `u64`s.
#[cfg_attr(
    all(target_arch = "wasm32", target_feature = "simd128", not(test)),
    allow(dead_code)
)]
#[inline(always)]
pub(super) fn find_swar<S: ByteSet>(b: &[u8], from: usize, set: S) -> Option<usize> {
    let rest = b.get(from..)?;
    let mut steps = rest.chunks_exact(STEP);
    for step in &mut steps {
        let Some(step) = step.first_chunk::<STEP>() else {
            break;
        };
        let mut words = [0u64; 8];
        for (w, bytes) in words.iter_mut().zip(step.chunks_exact(8)) {
            if let Some(bytes) = bytes.first_chunk::<8>() {
                *w = set.swar(u64::from_le_bytes(*bytes));
            }
        }
        let any = words.iter().fold(0, |a, w| a | w);
        if any != 0 {
            let at = offset(rest, step);
            let (k, w) = words.iter().enumerate().find(|(_, w)| **w != 0)?;
            let within = k * 8 + (w.trailing_zeros() / 8) as usize;
            return Some(from.saturating_add(at).saturating_add(within));
        }
    }
    let tail = steps.remainder();
    let at = from.saturating_add(offset(rest, tail));
    tail.iter()
        .position(|&c| set.has(c))
        .map(|i| at.saturating_add(i))
}

/// [`find`] with wasm simd128: four 16-byte loads, the set's compares, one `v128_any_true`
/// branch per 64 bytes; the bitmasks only at the step that has a byte of the set.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub(super) fn find_simd<S: ByteSet>(b: &[u8], from: usize, set: S) -> Option<usize> {
    use core::arch::wasm32::{i8x16_bitmask, v128_any_true, v128_load, v128_or};
    let rest = b.get(from..)?;
    let load = |bytes: &[u8; 16]| {
        // SAFETY: `bytes` is a reference to 16 readable bytes, and `v128_load` is a 1-aligned
        // load (no alignment requirement on the pointer).
        unsafe { v128_load(bytes.as_ptr().cast::<v128>()) }
    };
    let mut steps = rest.chunks_exact(STEP);
    for step in &mut steps {
        let Some(step) = step.first_chunk::<STEP>() else {
            break;
        };
        let Some((a, r)) = step.split_first_chunk::<16>() else {
            break;
        };
        let Some((b1, r)) = r.split_first_chunk::<16>() else {
            break;
        };
        let Some((c, d)) = r.split_first_chunk::<16>() else {
            break;
        };
        let Some(d) = d.first_chunk::<16>() else {
            break;
        };
        let (ha, hb, hc, hd) = (
            set.simd(load(a)),
            set.simd(load(b1)),
            set.simd(load(c)),
            set.simd(load(d)),
        );
        if v128_any_true(v128_or(v128_or(ha, hb), v128_or(hc, hd))) {
            let mask = u64::from(i8x16_bitmask(ha))
                | u64::from(i8x16_bitmask(hb)) << 16
                | u64::from(i8x16_bitmask(hc)) << 32
                | u64::from(i8x16_bitmask(hd)) << 48;
            let at = offset(rest, step).wrapping_add(mask.trailing_zeros() as usize);
            return Some(from.saturating_add(at));
        }
    }
    let mut tail = steps.remainder();
    while let Some((sixteen, more)) = tail.split_first_chunk::<16>() {
        let mask = i8x16_bitmask(set.simd(load(sixteen)));
        if mask != 0 {
            let at = offset(rest, sixteen).wrapping_add(mask.trailing_zeros() as usize);
            return Some(from.saturating_add(at));
        }
        tail = more;
    }
    let at = from.saturating_add(offset(rest, tail));
    tail.iter()
        .position(|&c| set.has(c))
        .map(|i| at.saturating_add(i))
}

/// `b` as text when it is valid UTF-8 (as `std::str::from_utf8` says): ASCII 64 bytes per
/// step, each run of non-ASCII bytes checked by `std::str::from_utf8`.
pub(super) fn utf8(b: &[u8]) -> Option<&str> {
    let mut at = 0usize;
    while let Some(start) = find(b, at, NonAscii(true)) {
        let end = find(b, start, NonAscii(false)).unwrap_or(b.len());
        std::str::from_utf8(b.get(start..end)?).ok()?;
        at = end;
    }
    // SAFETY: every byte outside the runs checked above is ASCII, and each run is a maximal
    // stretch of bytes >= 0x80 (it starts at 0 or after an ASCII byte and ends at the end or
    // before one). A multi-byte UTF-8 sequence holds bytes >= 0x80 only, so it never crosses
    // an ASCII byte: `b` is valid UTF-8 exactly when every such run is, which was checked.
    Some(unsafe { std::str::from_utf8_unchecked(b) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<S: ByteSet>(b: &[u8], set: S, what: &str) {
        for from in 0..=b.len() + 1 {
            let want = b
                .get(from..)
                .and_then(|r| r.iter().position(|&c| set.has(c)))
                .map(|i| i + from);
            assert_eq!(find(b, from, set), want, "{what} {b:?} from {from}");
            assert_eq!(find_swar(b, from, set), want, "{what} {b:?} from {from}");
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            assert_eq!(find_simd(b, from, set), want, "{what} {b:?} from {from}");
        }
    }

    /// Every set, every builder: the first byte a byte-by-byte search finds, at every offset
    /// of lengths up to three steps and a half, among random and look-alike bytes.
    #[test]
    fn find_matches_a_byte_by_byte_search() {
        let mut rng = crate::testutil::Rng::new(0xB17E_5E70_0001);
        let fill = b"\"\\\x1f\x00\x80\xff\x7f \x20\x21\x5b\x5d\xc3\xa9ab";
        for _ in 0..crate::testutil::iters(150) {
            let len = rng.below(230);
            let mut b: Vec<u8> = (0..len).map(|_| b'a').collect();
            for _ in 0..rng.below(4) {
                if len > 0 {
                    let at = rng.below(len);
                    b[at] = *rng.pick(fill);
                }
            }
            if rng.chance(20) {
                b = (0..len).map(|_| *rng.pick(fill)).collect();
            }
            check(&b, Either(b'"', b'\\'), "quote");
            check(&b, Either(b'\\', b'\\'), "backslash");
            check(&b, StringStop, "stop");
            check(&b, NonAscii(true), "non-ascii");
            check(&b, NonAscii(false), "ascii");
        }
        for v in 0..=255u8 {
            let b: Vec<u8> = (0..70)
                .map(|i| if i % 23 == 5 { v } else { b'a' })
                .collect();
            check(&b, StringStop, "stop all bytes");
            check(&b, NonAscii(true), "non-ascii all bytes");
        }
    }

    /// The UTF-8 check says what `std::str::from_utf8` says, on text with every kind of
    /// sequence (good and broken) at every place around the step boundaries.
    #[test]
    fn utf8_agrees_with_std() {
        let mut rng = crate::testutil::Rng::new(0xB17E_5E70_0002);
        let pieces: [&[u8]; 14] = [
            b"a",
            b"hello world ",
            "é".as_bytes(),
            "你好".as_bytes(),
            "🎉".as_bytes(),
            b"\xc3",
            b"\xa9",
            b"\xe4\xbd",
            b"\xf0\x9f\x8e",
            b"\xed\xa0\x80",
            b"\xc0\x80",
            b"\xf4\x90\x80\x80",
            b"\xff",
            b"\x00",
        ];
        for _ in 0..crate::testutil::iters(3000) {
            let mut b = Vec::new();
            for _ in 0..rng.below(40) {
                let p = rng.pick(&pieces);
                if rng.chance(70) {
                    b.extend_from_slice(&[b'x'; 64][..rng.below(64)]);
                }
                b.extend_from_slice(p);
            }
            let want = std::str::from_utf8(&b).ok();
            assert_eq!(utf8(&b), want, "{b:?}");
        }
    }
}
