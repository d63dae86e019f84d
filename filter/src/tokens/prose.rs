//! The estimator's fast path for prose: words of ASCII letters, eight bytes at a time (64 in clean stretches), with
//! the state in locals from one word to the next. Same results as the general path
//! (`Estimator::push` on every character; the tests compare them).

use super::masks::{lower_bits, masks, Masks, BLOCK, HIGH};
use super::{ascii_class, Class, Estimator, Params, Run, WordKind};

impl Estimator<'_> {
    /// Prose, the common case: words that start at `at` (an ASCII letter; the previous
    /// word was flushed), each followed by one space or by one punctuation mark and one space
    /// (", ", ". ") before the next. The state stays in locals until the first other byte;
    /// the same state changes as the general path.
    pub(super) fn words(&mut self, s: &[u8], mut at: usize) -> usize {
        let p = self.p;
        let mut milli = self.milli;
        // Where the block path is tried next (it is not retried on every word after it
        // handed back, so text that is not clean prose does not pay for it word by word).
        let mut blocks_from = at;
        let blocks_ok = block_costs_fit(p);
        loop {
            if blocks_ok && at >= blocks_from {
                let (next, cost) = blocks(p, s, at);
                milli = milli.saturating_add(cost);
                blocks_from = next.saturating_add(BLOCK_RETRY);
                at = next;
            }
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

/// Bytes of text after which the block path is tried again once it handed back.
const BLOCK_RETRY: usize = 32;

/// The block path counts the letters past the sixth of a word (`word_short_len` 6), and adds
/// counts times costs without saturating on the way (it subtracts a
/// word's cost again when it hands back mid-word), which is exact while the costs are small.
fn block_costs_fit(p: &Params) -> bool {
    let limit = u64::from(u32::MAX);
    p.word_short_len == 6
        && p.word_short <= limit
        && p.word_capital <= limit
        && p.word_extra_per_char <= limit
        && p.punct_first <= limit
}

/// Clean prose 64 bytes at a time from `start` (an ASCII letter starting a word; the word
/// before it flushed): words of ASCII letters, lowercase after an optional capital, each
/// followed by one space, or by `.`/`,` and one space, before the next word. Per block, the
/// costs come from counts of bit masks (bit i for byte i): word starts (`word_short`),
/// capitalised starts (`word_capital`), letters with six letters before them in their word
/// (`word_extra_per_char`), marks (`punct_first`); the same sums as [`Estimator::words`] word
/// by word. Stops at the first byte that is not clean (each byte is checked with the one
/// before it), and hands back at the start of the last word it saw begin:
/// `(position, cost of the text before it)`.
pub(super) fn blocks(p: &Params, s: &[u8], start: usize) -> (usize, u64) {
    let rest = s.get(start..).unwrap_or_default();
    let mut c = Counts::default();
    let mut done = 0usize;
    let mut chunks = rest.chunks_exact(BLOCK);
    let mut whole = true;
    for chunk in &mut chunks {
        let Some(block) = chunk.first_chunk::<BLOCK>() else {
            break;
        };
        let n = c.block(block);
        done = done.wrapping_add(n as usize);
        if n < BLOCK as u32 {
            whole = false;
            break;
        }
    }
    let tail = chunks.remainder();
    if whole && !tail.is_empty() {
        // The last bytes, padded with zeros (not clean: the count stops before them).
        let mut block = [0u8; BLOCK];
        if let Some(to) = block.get_mut(..tail.len()) {
            to.copy_from_slice(tail);
        }
        done = done.wrapping_add(c.block(&block) as usize);
    }
    let at = start.saturating_add(done);
    if at == start {
        return (start, 0);
    }
    let Counts {
        mut starts,
        mut caps,
        mut extra,
        mut marks,
        ..
    } = c;
    // Hand back at the start of the last word that began before `at`: that word, and the
    // marks and spaces after it, are taken back and redone word by word (what follows them
    // was not checked).
    let byte = |i: usize| s.get(i).copied().unwrap_or(0);
    let mut w = at;
    while w > start && !byte(w.saturating_sub(1)).is_ascii_alphabetic() {
        if matches!(byte(w.saturating_sub(1)), b'.' | b',') {
            marks = marks.wrapping_sub(1);
        }
        w = w.saturating_sub(1);
    }
    let end = w;
    while w > start && byte(w.saturating_sub(1)).is_ascii_alphabetic() {
        w = w.saturating_sub(1);
    }
    starts = starts.wrapping_sub(1);
    if byte(w).is_ascii_uppercase() {
        caps = caps.wrapping_sub(1);
    }
    extra = extra.wrapping_sub((end.saturating_sub(w) as u64).saturating_sub(6));
    if w == start {
        return (start, 0);
    }
    let cost = starts
        .wrapping_mul(p.word_short)
        .wrapping_add(caps.wrapping_mul(p.word_capital))
        .wrapping_add(extra.wrapping_mul(p.word_extra_per_char))
        .wrapping_add(marks.wrapping_mul(p.punct_first));
    (w, cost)
}

/// The counts of [`blocks`] so far, and what it carries from one block to the next.
#[derive(Default)]
struct Counts {
    starts: u64,
    caps: u64,
    extra: u64,
    marks: u64,
    /// The previous block's masks (zero before the first: `start` begins a word).
    prev: Masks,
    /// The previous block's letters with one, and with three, letters right before them.
    prev_pairs: u64,
    prev_fours: u64,
}

impl Counts {
    /// Counts the clean bytes at the start of `b` (each checked with the byte before it,
    /// the first with the previous block's last); returns how many there are (`BLOCK` when
    /// all are).
    #[inline(always)]
    fn block(&mut self, b: &[u8; BLOCK]) -> u32 {
        let m = masks(b);
        // The masks one byte earlier (bit i: byte i - 1).
        let before = (m.letters << 1) | (self.prev.letters >> 63);
        let space_before = (m.spaces << 1) | (self.prev.spaces >> 63);
        let mark_before = (m.marks << 1) | (self.prev.marks >> 63);
        // Not a letter, space or mark; a capital after a letter; not a letter after a
        // space; not a space after a mark.
        let bad = !(m.letters | m.spaces | m.marks)
            | (m.upper & before)
            | (space_before & !m.letters)
            | (mark_before & !m.spaces);
        let n = bad.trailing_zeros();
        // The clean bytes: those below the first bad one.
        let keep = !u64::MAX.checked_shl(n).unwrap_or(0);
        let word_starts = m.letters & !before & keep;
        // Letters with 1, 3 and 6 letters right before them.
        let pairs = m.letters & before;
        let fours = pairs & ((pairs << 2) | (self.prev_pairs >> 62));
        let sevens = fours & ((fours << 3) | (self.prev_fours >> 61)) & keep;
        let count = |x: u64| u64::from(x.count_ones());
        self.starts = self.starts.wrapping_add(count(word_starts));
        self.caps = self.caps.wrapping_add(count(word_starts & m.upper));
        self.extra = self.extra.wrapping_add(count(sevens));
        self.marks = self.marks.wrapping_add(count(m.marks & keep));
        (self.prev, self.prev_pairs, self.prev_fours) = (m, pairs, fours);
        n
    }
}
