//! The estimator's fast path for prose: words of ASCII letters, eight bytes at a time, with
//! the state in locals from one word to the next. Same results as the general path
//! (`Estimator::push` on every character; the tests compare them).

use super::{ascii_class, Class, Estimator, Params, Run, WordKind};

impl Estimator<'_> {
    /// Prose, the common case: words that start at `at` (an ASCII letter; the previous
    /// word was flushed), each followed by one space or by one punctuation mark and one space
    /// (", ", ". ") before the next. The state stays in locals until the first other byte;
    /// the same state changes as the general path.
    pub(super) fn words(&mut self, s: &[u8], mut at: usize) -> usize {
        let p = self.p;
        let mut milli = self.milli;
        loop {
            let rest = s.get(at..).unwrap_or_default();
            let capital = rest.first().is_some_and(u8::is_ascii_uppercase);
            let (ups, lower, after) = word_shape(rest);
            let n = ups.saturating_add(lower);
            at = at.saturating_add(n);
            let gap = match after {
                // The three bytes after the word were in the same eight.
                Some(b) if n <= 5 => gap_of(p, b as u8, (b >> 8) as u8, (b >> 16) as u8),
                _ => word_gap(p, s, at),
            };
            match gap {
                Some((gap, punct)) => {
                    let cost = latin_word(p, n as u64, ups as u64, capital);
                    milli = milli.saturating_add(cost).saturating_add(punct);
                    at = at.saturating_add(gap);
                }
                None => {
                    self.milli = milli;
                    self.run = Run::Word {
                        kind: WordKind::Latin,
                        letters: n as u64,
                        uppers: ups as u64,
                        accents: 0,
                        capital,
                    };
                    self.last_lower = lower > 0;
                    return at;
                }
            }
        }
    }
}

/// `a * b`, saturating, without the 128-bit multiply `u64::saturating_mul` becomes on wasm32
/// (a call to `__multi3` per word): the operands here are nearly always below 2^32.
#[inline(always)]
pub(super) fn smul(a: u64, b: u64) -> u64 {
    if (a | b) >> 32 == 0 {
        a.wrapping_mul(b)
    } else {
        a.saturating_mul(b)
    }
}

/// Cost of a Latin word of `letters` letters (`uppers` of them uppercase), without accents.
#[inline(always)]
pub(super) fn latin_word(p: &Params, letters: u64, uppers: u64, capital: bool) -> u64 {
    if letters >= 2 && uppers == letters {
        smul(letters, p.caps_per_char).max(p.word_short)
    } else {
        let extra = letters.saturating_sub(p.word_short_len);
        p.word_short
            .saturating_add(smul(extra, p.word_extra_per_char))
            .saturating_add(if capital { p.word_capital } else { 0 })
    }
}

/// The gap between two words of prose at `at`: one space before a letter, or one
/// punctuation mark and one space before a letter (the mark is a run of one not followed by
/// a letter). `(bytes, cost of the mark)`; `None` for anything else.
#[inline(always)]
pub(super) fn word_gap(p: &Params, s: &[u8], at: usize) -> Option<(usize, u64)> {
    let b = |i: usize| s.get(at.saturating_add(i)).copied().unwrap_or(0);
    gap_of(p, b(0), b(1), b(2))
}

/// [`word_gap`] of the three bytes after a word (0 past the end).
#[inline(always)]
pub(super) fn gap_of(p: &Params, b0: u8, b1: u8, b2: u8) -> Option<(usize, u64)> {
    match (b0, b1, b2) {
        (b' ', next, _) if next.is_ascii_alphabetic() => Some((1, 0)),
        (mark, b' ', next)
            if next.is_ascii_alphabetic()
                && mark.is_ascii()
                && ascii_class(mark) == Class::Punct =>
        {
            Some((2, p.punct_first))
        }
        _ => None,
    }
}

const HIGH: u64 = 0x8080_8080_8080_8080;

/// Bit 7 of each byte of `x` that is an ASCII lowercase letter (no carries between bytes).
#[inline(always)]
pub(super) fn lower_bits(x: u64) -> u64 {
    let low7 = x & !HIGH;
    // Bit 7 set for bytes >= b'a', and for bytes > b'z'.
    let from_a = low7.wrapping_add(0x1F1F_1F1F_1F1F_1F1F);
    let past_z = low7.wrapping_add(0x0505_0505_0505_0505);
    from_a & !past_z & !x & HIGH
}

/// Bit 7 of each byte of `x` that is an ASCII uppercase letter.
#[inline(always)]
pub(super) fn upper_bits(x: u64) -> u64 {
    let low7 = x & !HIGH;
    let from_a = low7.wrapping_add(0x3F3F_3F3F_3F3F_3F3F);
    let past_z = low7.wrapping_add(0x2525_2525_2525_2525);
    from_a & !past_z & !x & HIGH
}

/// The letters of a word at the start of `s`: (uppercase letters, then lowercase letters),
/// and, when the word ends within the first eight bytes, those eight bytes shifted so that
/// the byte after the word is the lowest.
#[inline(always)]
pub(super) fn word_shape(s: &[u8]) -> (usize, usize, Option<u64>) {
    let Some(x) = s.first_chunk::<8>().map(|b| u64::from_le_bytes(*b)) else {
        let ups = upper_run(s);
        return (ups, lower_run(s.get(ups..).unwrap_or_default()), None);
    };
    let ups = ((!upper_bits(x) & HIGH).trailing_zeros() / 8) as usize;
    if ups >= 8 {
        let ups = upper_run(s);
        return (ups, lower_run(s.get(ups..).unwrap_or_default()), None);
    }
    let shift = (ups as u32).saturating_mul(8);
    let not_lower = !lower_bits(x) & HIGH & u64::MAX.checked_shl(shift).unwrap_or(0);
    let n = (not_lower.trailing_zeros() / 8) as usize;
    if n >= 8 {
        let more = lower_run(s.get(8..).unwrap_or_default());
        return (ups, (8 - ups).saturating_add(more), None);
    }
    let after = x.checked_shr((n as u32).saturating_mul(8)).unwrap_or(0);
    (ups, n.saturating_sub(ups), Some(after))
}

/// Number of ASCII uppercase letters at the start of `s`.
#[inline(always)]
pub(super) fn upper_run(s: &[u8]) -> usize {
    let mut n = 0usize;
    while s.get(n).is_some_and(u8::is_ascii_uppercase) {
        n = n.saturating_add(1);
    }
    n
}

/// Number of ASCII lowercase letters at the start of `s`, eight bytes at a time (words of prose
/// mostly fit in one step, so the loop rarely branches on the data).
pub(super) fn lower_run(s: &[u8]) -> usize {
    let mut n = 0usize;
    let mut chunks = s.chunks_exact(8);
    for chunk in &mut chunks {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let other = !lower_bits(u64::from_le_bytes(bytes)) & HIGH;
        if other != 0 {
            return n.saturating_add((other.trailing_zeros() / 8) as usize);
        }
        n = n.saturating_add(8);
    }
    n.saturating_add(
        chunks
            .remainder()
            .iter()
            .take_while(|b| b.is_ascii_lowercase())
            .count(),
    )
}
