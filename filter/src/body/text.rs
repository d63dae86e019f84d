//! The byte-level text work under the JSON readers: finding quotes and backslashes sixteen
//! bytes at a time, and decoding the escapes of a JSON string that serde_json has validated.

use std::borrow::Cow;

const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
const ONES: u64 = 0x0101_0101_0101_0101;

/// Index of the first `"` or `\` in `b` at or after `from`.
#[inline]
pub(crate) fn find_quote_or_backslash(b: &[u8], from: usize) -> Option<usize> {
    find2(b, from, b'"', b'\\')
}

/// Bit 7 set in the first byte of `x` equal to `c`; bytes above it may be flagged falsely
/// (by the borrow), the lowest flagged byte is exact.
#[inline(always)]
fn first_eq(x: u64, c: u8) -> u64 {
    let y = x ^ (ONES * u64::from(c));
    y.wrapping_sub(ONES) & !y & !LOW7
}

/// Index of the first byte equal to `c1` or `c2` in `b` at or after `from`, sixteen bytes
/// at a time: with wasm simd128 when the module is built with it, else in two `u64`s.
#[inline]
pub(super) fn find2(b: &[u8], from: usize, c1: u8, c2: u8) -> Option<usize> {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        find2_simd(b, from, c1, c2)
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        find2_swar(b, from, c1, c2)
    }
}

/// [`find2`] on `u64`s (no bounds checks nor saturating arithmetic inside the loop).
#[cfg_attr(
    all(target_arch = "wasm32", target_feature = "simd128", not(test)),
    allow(dead_code)
)]
#[inline]
fn find2_swar(b: &[u8], from: usize, c1: u8, c2: u8) -> Option<usize> {
    let rest = b.get(from..)?;
    let mut chunks = rest.chunks_exact(16);
    let mut done = 0usize;
    for chunk in &mut chunks {
        let (Some(lo), Some(hi)) = (chunk.first_chunk::<8>(), chunk.last_chunk::<8>()) else {
            break;
        };
        let (lo, hi) = (u64::from_le_bytes(*lo), u64::from_le_bytes(*hi));
        let (l, h) = (
            first_eq(lo, c1) | first_eq(lo, c2),
            first_eq(hi, c1) | first_eq(hi, c2),
        );
        if l | h != 0 {
            let within = if l != 0 {
                l.trailing_zeros() / 8
            } else {
                8 + h.trailing_zeros() / 8
            };
            return Some(from.saturating_add(done).saturating_add(within as usize));
        }
        done = done.wrapping_add(16);
    }
    find2_tail(chunks.remainder(), from.saturating_add(done), c1, c2)
}

/// [`find2`] with wasm simd128: two byte compares, an or and a bitmask per sixteen bytes.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline]
fn find2_simd(b: &[u8], from: usize, c1: u8, c2: u8) -> Option<usize> {
    use core::arch::wasm32::{i8x16_bitmask, i8x16_eq, u8x16_splat, v128, v128_load, v128_or};
    let rest = b.get(from..)?;
    let (v1, v2) = (u8x16_splat(c1), u8x16_splat(c2));
    let mut chunks = rest.chunks_exact(16);
    let mut done = 0usize;
    for chunk in &mut chunks {
        let Some(bytes) = chunk.first_chunk::<16>() else {
            break;
        };
        // SAFETY: `bytes` is a reference to 16 readable bytes, and `v128_load` is a 1-aligned
        // load (no alignment requirement on the pointer).
        let v = unsafe { v128_load(bytes.as_ptr().cast::<v128>()) };
        let hits = i8x16_bitmask(v128_or(i8x16_eq(v, v1), i8x16_eq(v, v2)));
        if hits != 0 {
            let within = hits.trailing_zeros() as usize;
            return Some(from.saturating_add(done).saturating_add(within));
        }
        done = done.wrapping_add(16);
    }
    find2_tail(chunks.remainder(), from.saturating_add(done), c1, c2)
}

/// [`find2`] in the last (fewer than sixteen) bytes, which start at `at`.
#[inline]
fn find2_tail(tail: &[u8], at: usize, c1: u8, c2: u8) -> Option<usize> {
    tail.iter()
        .position(|&c| c == c1 || c == c2)
        .map(|i| at.saturating_add(i))
}

/// `inner` (the text between the quotes of a valid JSON string) decoded: borrowed when it has
/// no escape. `None` for a lone surrogate.
pub(super) fn decode(inner: &str) -> Option<Cow<'_, str>> {
    match find_backslash(inner.as_bytes(), 0) {
        None => Some(Cow::Borrowed(inner)),
        Some(first) => unescape(inner, first).map(Cow::Owned),
    }
}

/// Index of the first backslash in `b` at or after `from`.
fn find_backslash(b: &[u8], from: usize) -> Option<usize> {
    find2(b, from, b'\\', b'\\')
}

/// `inner` (the text between the quotes of a valid JSON string) with its escapes decoded;
/// `None` for a lone surrogate.
pub(super) fn unescape_text(inner: &str) -> Option<String> {
    match find_backslash(inner.as_bytes(), 0) {
        None => Some(inner.to_string()),
        Some(first) => unescape(inner, first),
    }
}

/// `inner` (the text between the quotes of a valid JSON string) with its escapes decoded; the
/// first backslash is at `first`. `None` for a lone surrogate.
fn unescape(inner: &str, first: usize) -> Option<String> {
    let b = inner.as_bytes();
    let mut out = String::with_capacity(inner.len());
    let (mut at, mut slash) = (0usize, first);
    loop {
        out.push_str(inner.get(at..slash)?);
        let esc = *b.get(slash.saturating_add(1))?;
        at = slash.saturating_add(2);
        let c = match esc {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(b, at)?;
                at = at.saturating_add(4);
                match hi {
                    0xD800..=0xDBFF => {
                        if b.get(at..at.saturating_add(2)) != Some(b"\\u".as_slice()) {
                            return None;
                        }
                        let lo = hex4(b, at.saturating_add(2))?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return None;
                        }
                        at = at.saturating_add(6);
                        let c = 0x1_0000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        char::from_u32(c)?
                    }
                    _ => char::from_u32(hi)?,
                }
            }
            _ => return None,
        };
        out.push(c);
        match find_backslash(b, at) {
            Some(next) => slash = next,
            None => {
                out.push_str(inner.get(at..)?);
                return Some(out);
            }
        }
    }
}

/// The four hex digits at `at` of `b`.
fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let digits = b.get(at..at.saturating_add(4))?;
    digits.iter().try_fold(0u32, |n, &d| {
        let v = char::from(d).to_digit(16)?;
        Some(n << 4 | v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every search (`find2` with the builder the target has, the `u64` one, and the simd128
    /// one on wasm) finds what a byte-by-byte search finds: the bytes at every offset of
    /// every length up to three blocks, from every start, among random and look-alike bytes.
    #[test]
    fn find2_finds_the_first_of_two_bytes() {
        let mut rng = crate::testutil::Rng::new(0xF1D2_0000_0001);
        let fill = b"\"\\!]#[\x22\x5C\xA2\xDC\x00\xFFab";
        for round in 0..crate::testutil::iters(300) {
            let len = rng.below(50);
            let mut b: Vec<u8> = (0..len).map(|_| *rng.pick(&fill[2..])).collect();
            for _ in 0..rng.below(3) {
                if len > 0 {
                    let at = rng.below(len);
                    if let Some(c) = b.get_mut(at) {
                        *c = *rng.pick(&fill[..2]);
                    }
                }
            }
            let (c1, c2) = if round % 3 == 0 {
                (b'\\', b'\\')
            } else {
                (b'"', b'\\')
            };
            for from in 0..=len + 1 {
                let want = b
                    .get(from..)
                    .and_then(|r| r.iter().position(|&c| c == c1 || c == c2))
                    .map(|i| i + from);
                assert_eq!(find2(&b, from, c1, c2), want, "{b:?} from {from}");
                assert_eq!(find2_swar(&b, from, c1, c2), want, "{b:?} from {from}");
                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                assert_eq!(find2_simd(&b, from, c1, c2), want, "{b:?} from {from}");
            }
        }
    }
}
