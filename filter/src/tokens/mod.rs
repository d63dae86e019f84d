//! Prompt token estimation from text, without shipping a vocabulary.
//!
//! The filter must know roughly how many BPE tokens (OpenAI's cl100k_base / o200k_base, and
//! similar 100k-200k vocabularies such as Llama 3's) a prompt holds, on every request and for
//! bodies up to a few MiB, so this is a single pass over the characters with no allocation and
//! no tables beyond the constants below.
//!
//! It mimics what those tokenizers do in two stages:
//!
//! 1. Pre-tokenization splits text into runs: words (letters, optionally with one leading space
//!    or punctuation mark), digit groups of at most three, punctuation runs, whitespace runs.
//! 2. BPE then merges each run into vocabulary tokens: frequent short English words are one
//!    token, long or rare words a few, and scripts the vocabulary saw less often cost more
//!    tokens per character (Cyrillic, Arabic, Indic scripts), up to about one token per
//!    character for CJK ideographs, kana and Hangul, and two or more per emoji.
//!
//! Stage 1 is reproduced closely (character classes); stage 2 is replaced by a cost per run
//! that depends on its class and length. The costs are in thousandths of a token and were fitted
//! against tiktoken's cl100k_base on the corpus under `bench/corpus` (about 5 % mean error per
//! category there). The estimate is therefore "cl100k tokens": for English, code and JSON,
//! o200k_base (GPT-4o) and Llama 3's vocabulary give nearly the same counts, but for non-Latin
//! scripts they need fewer tokens (o200k: about 0.7x for CJK, 0.6x for Russian, 0.4x for Arabic,
//! 0.3x for Hindi), so there the estimate errs on the high side, which is the safe side for
//! rate limiting (reconciled with the real `usage` afterwards) and for tier routing.
//! `make bench` (binary `estimator-accuracy`) prints the current error against both.

/// Estimated number of BPE tokens (cl100k/o200k-like) in `text`.
///
/// Returns 0 for an empty string and at least 1 for any non-empty one. Never panics and never
/// overflows (the count saturates, far beyond any body the filter accepts).
pub fn estimate_tokens(text: &str) -> u64 {
    estimate_with(text, &PARAMS)
}

mod masks;
mod params;
mod prose;
use params::{ws_add, ws_kind};
pub(crate) use params::{Params, PARAMS};
use prose::{latin_word, lower_run, smul, upper_run, word_gap};

/// Character classes that matter to the pre-tokenizer and to the costs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Lower,
    Upper,
    /// Accented Latin letter (Latin-1 Supplement, Latin Extended, Vietnamese).
    Accented,
    Cyrillic,
    Arabic,
    Indic,
    Han,
    Kana,
    Hangul,
    CjkPunct,
    Symbol,
    Emoji,
    Joiner,
    Other,
    Digit,
    Punct,
    Space,
    Newline,
}

/// Which kind of word is being accumulated.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum WordKind {
    Latin,
    Cyrillic,
    Arabic,
}

fn classify(c: char) -> Class {
    match u8::try_from(c) {
        Ok(b) if b.is_ascii() => ascii_class(b),
        _ => classify_non_ascii(c),
    }
}

/// Class of an ASCII byte (a table lookup; bytes >= 0x80 never reach it).
fn ascii_class(b: u8) -> Class {
    ASCII_CLASS
        .get(usize::from(b))
        .copied()
        .unwrap_or(Class::Other)
}

const ASCII_CLASS: [Class; 128] = {
    let mut table = [Class::Punct; 128];
    let mut b = 0u8;
    while b < 128 {
        table[b as usize] = match b {
            b'a'..=b'z' => Class::Lower,
            b'A'..=b'Z' => Class::Upper,
            b'0'..=b'9' => Class::Digit,
            b'\n' | b'\r' => Class::Newline,
            // ' ', '\t' and form feed (not vertical tab: that one is punctuation, as in
            // `u8::is_ascii_whitespace`).
            _ if b.is_ascii_whitespace() => Class::Space,
            _ => Class::Punct,
        };
        b += 1;
    }
    table
};

fn classify_non_ascii(c: char) -> Class {
    match u32::from(c) {
        0xA0 | 0x2000..=0x200B | 0x3000 => Class::Space,
        0xD7 | 0xF7 => Class::Symbol,
        0xC0..=0x24F | 0x1E00..=0x1EFF => Class::Accented,
        // Combining diacritics follow a Latin letter; keep the word going.
        0x300..=0x36F => Class::Accented,
        // Greek, Cyrillic and Armenian: alphabets with cl100k/o200k merges of similar depth.
        0x370..=0x58F | 0x1F00..=0x1FFF => Class::Cyrillic,
        // Hebrew, Arabic, Syriac, Thaana, N'Ko and Arabic presentation forms.
        0x590..=0x7FF | 0x8A0..=0x8FF | 0xFB1D..=0xFDFF | 0xFE70..=0xFEFF => Class::Arabic,
        // Indic, South-East Asian, Tibetan, Georgian, Ethiopic, ...
        0x900..=0x10FF | 0x1200..=0x139F | 0x1780..=0x18AF => Class::Indic,
        0x1100..=0x11FF | 0x3130..=0x318F | 0xAC00..=0xD7AF => Class::Hangul,
        0x3040..=0x30FF | 0x31F0..=0x31FF | 0xFF66..=0xFF9F => Class::Kana,
        0x2E80..=0x2FFF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF => Class::Han,
        0x20000..=0x3FFFF => Class::Han,
        0x3001..=0x303F | 0xFF00..=0xFF65 | 0xFFA0..=0xFFEF => Class::CjkPunct,
        0x200C | 0x200D | 0xFE00..=0xFE0F | 0x1F3FB..=0x1F3FF | 0xE0020..=0xE007F => Class::Joiner,
        0x2600..=0x27BF | 0x1F000..=0x1FAFF => Class::Emoji,
        0x80..=0xBF | 0x2010..=0x2BFF => Class::Symbol,
        _ => Class::Other,
    }
}

/// The run being accumulated.
#[derive(Clone, Copy, Debug)]
enum Run {
    None,
    Word {
        kind: WordKind,
        letters: u64,
        uppers: u64,
        accents: u64,
        capital: bool,
    },
    Digits(u64),
    Punct(u64),
    /// Whitespace: number of characters, whether it holds a line break, the number of
    /// spaces/tabs after the last line break, the run's linear cost (see `Params::ws_space`)
    /// and the kind of its last character.
    Space {
        len: u64,
        newline: bool,
        trailing: u64,
        lin: u64,
        last: u8,
    },
}

struct Estimator<'p> {
    p: &'p Params,
    milli: u64,
    run: Run,
    last_lower: bool,
}

impl Estimator<'_> {
    fn add(&mut self, m: u64) {
        self.milli = self.milli.saturating_add(m);
    }

    /// Ends the current run; `next` is the class of the character that follows (None at the end).
    #[inline]
    fn flush(&mut self, next: Option<Class>) {
        let p = self.p;
        let cost = match self.run {
            Run::None => 0,
            Run::Word {
                kind,
                letters,
                uppers,
                accents,
                capital,
            } => match kind {
                WordKind::Latin => latin_word(p, letters, uppers, capital).saturating_add(
                    if letters >= 2 && uppers == letters {
                        0
                    } else {
                        smul(accents, p.latin_accent)
                    },
                ),
                WordKind::Cyrillic => p
                    .cyrillic_word
                    .saturating_add(smul(letters, p.cyrillic_per_char)),
                WordKind::Arabic => p
                    .arabic_word
                    .saturating_add(smul(letters, p.arabic_per_char)),
            },
            Run::Digits(n) => smul(n.div_ceil(3), p.digit_group),
            Run::Punct(n) => {
                let is_letter = matches!(
                    next,
                    Some(
                        Class::Lower
                            | Class::Upper
                            | Class::Accented
                            | Class::Cyrillic
                            | Class::Arabic
                    )
                );
                if n == 1 && is_letter {
                    p.punct_attached
                } else {
                    p.punct_first
                        .saturating_add(smul(n.saturating_sub(1), p.punct_next))
                }
            }
            Run::Space {
                len,
                newline,
                trailing,
                lin,
                ..
            } => {
                let merges_last = matches!(
                    next,
                    Some(
                        Class::Lower
                            | Class::Upper
                            | Class::Accented
                            | Class::Cyrillic
                            | Class::Arabic
                            | Class::Punct
                    )
                );
                let flat = if newline {
                    let indent = if trailing >= 2 { p.indent } else { 0 };
                    p.newline_run.saturating_add(indent)
                } else if len == 1 && merges_last {
                    0
                } else if len == 1 && next == Some(Class::Digit) {
                    p.space_before_digit
                } else {
                    p.space_run
                };
                if len >= 2 {
                    flat.max(lin)
                } else {
                    flat
                }
            }
        };
        self.add(cost);
        self.run = Run::None;
    }

    /// Feeds the run of ASCII bytes at the start of `s` (which starts with an ASCII byte) and
    /// returns how many bytes it consumed (at least 1 for a non-empty `s`). The same state
    /// changes as [`Self::push`] on each of those characters, a run at a time.
    fn ascii_run(&mut self, s: &[u8]) -> usize {
        let Some(&first) = s.first() else {
            return 0;
        };
        let class = ascii_class(first);
        match class {
            Class::Lower | Class::Upper => {
                let upper = class == Class::Upper;
                let continues = matches!(
                    self.run,
                    Run::Word {
                        kind: WordKind::Latin,
                        ..
                    }
                ) && !(upper && self.last_lower);
                if !continues {
                    self.flush(Some(class));
                    self.run = Run::Word {
                        kind: WordKind::Latin,
                        letters: 0,
                        uppers: 0,
                        accents: 0,
                        capital: upper,
                    };
                }
                // Letters up to the next non-letter, or up to a camelCase hump (an uppercase
                // letter after a lowercase one; the next call starts a new word).
                let mut n: u64 = 0;
                let mut ups: u64 = 0;
                let mut last_lower = self.last_lower && !upper;
                // Uppercase letters (not after a lowercase one), then lowercase ones.
                if !last_lower {
                    ups = upper_run(s) as u64;
                    n = ups;
                }
                let lower = lower_run(s.get(n as usize..).unwrap_or_default());
                if lower > 0 {
                    last_lower = true;
                }
                n = n.saturating_add(lower as u64);
                if let Run::Word {
                    letters, uppers, ..
                } = &mut self.run
                {
                    *letters = letters.saturating_add(n);
                    *uppers = uppers.saturating_add(ups);
                }
                self.last_lower = last_lower;
                let used = n as usize;
                let Some((gap, punct)) = word_gap(self.p, s, used) else {
                    return used;
                };
                // A word's cost does not depend on what follows it.
                self.flush(None);
                self.add(punct);
                self.words(s, used.saturating_add(gap))
            }
            Class::Digit => {
                let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
                let k = n as u64;
                if let Run::Digits(d) = &mut self.run {
                    *d = d.saturating_add(k);
                } else {
                    self.flush(Some(class));
                    self.run = Run::Digits(k);
                }
                self.last_lower = false;
                n
            }
            Class::Punct => {
                let n = s
                    .iter()
                    .take_while(|&&b| b.is_ascii() && ascii_class(b) == Class::Punct)
                    .count();
                let k = n as u64;
                if let Run::Punct(d) = &mut self.run {
                    *d = d.saturating_add(k);
                } else {
                    self.flush(Some(class));
                    self.run = Run::Punct(k);
                }
                self.last_lower = false;
                n
            }
            _ => {
                // Space or Newline: the whitespace run up to the next other byte.
                let p = self.p;
                if !matches!(self.run, Run::Space { .. }) {
                    self.flush(Some(class));
                    self.run = Run::Space {
                        len: 0,
                        newline: false,
                        trailing: 0,
                        lin: 0,
                        last: u8::MAX,
                    };
                }
                let mut n = 0usize;
                if let Run::Space {
                    len,
                    newline,
                    trailing,
                    lin,
                    last,
                } = &mut self.run
                {
                    // The first character of a run adds no change of kind.
                    if *len == 0 {
                        *last = ws_kind(p, u32::from(first)).0;
                    }
                    for &b in s {
                        match b {
                            b'\n' | b'\r' => {
                                *newline = true;
                                *trailing = 0;
                            }
                            b' ' | b'\t' | 0x0C => *trailing = trailing.saturating_add(1),
                            _ => break,
                        }
                        ws_add(p, lin, last, ws_kind(p, u32::from(b)));
                        n = n.saturating_add(1);
                    }
                    *len = len.saturating_add(n as u64);
                }
                self.last_lower = false;
                n
            }
        }
    }

    fn push(&mut self, c: char) {
        let class = classify(c);
        let word_kind = match class {
            Class::Lower | Class::Upper | Class::Accented => Some(WordKind::Latin),
            Class::Cyrillic => Some(WordKind::Cyrillic),
            Class::Arabic => Some(WordKind::Arabic),
            _ => None,
        };
        if let Some(kind) = word_kind {
            let upper = class == Class::Upper;
            // camelCase: an uppercase letter after a lowercase one starts a new token.
            let continues = match self.run {
                Run::Word { kind: k, .. } => k == kind && !(upper && self.last_lower),
                _ => false,
            };
            if !continues {
                self.flush(Some(class));
                self.run = Run::Word {
                    kind,
                    letters: 0,
                    uppers: 0,
                    accents: 0,
                    capital: upper,
                };
            }
            if let Run::Word {
                letters,
                uppers,
                accents,
                ..
            } = &mut self.run
            {
                *letters = letters.saturating_add(1);
                if upper {
                    *uppers = uppers.saturating_add(1);
                }
                if class == Class::Accented {
                    *accents = accents.saturating_add(1);
                }
            }
            self.last_lower =
                class == Class::Lower || (class == Class::Accented && c.is_lowercase());
            return;
        }
        self.last_lower = false;
        match class {
            Class::Digit => {
                if let Run::Digits(n) = &mut self.run {
                    *n = n.saturating_add(1);
                } else {
                    self.flush(Some(class));
                    self.run = Run::Digits(1);
                }
            }
            Class::Punct => {
                if let Run::Punct(n) = &mut self.run {
                    *n = n.saturating_add(1);
                } else {
                    self.flush(Some(class));
                    self.run = Run::Punct(1);
                }
            }
            Class::Space | Class::Newline => {
                let nl = class == Class::Newline;
                let p = self.p;
                let step = ws_kind(p, u32::from(c));
                if let Run::Space {
                    len,
                    newline,
                    trailing,
                    lin,
                    last,
                } = &mut self.run
                {
                    *len = len.saturating_add(1);
                    if nl {
                        *newline = true;
                        *trailing = 0;
                    } else {
                        *trailing = trailing.saturating_add(1);
                    }
                    ws_add(p, lin, last, step);
                } else {
                    self.flush(Some(class));
                    self.run = Run::Space {
                        len: 1,
                        newline: nl,
                        trailing: u64::from(!nl),
                        lin: step.1,
                        last: step.0,
                    };
                }
            }
            _ => {
                self.flush(Some(class));
                let p = self.p;
                let cost = match class {
                    Class::Indic => p.indic_per_char,
                    Class::Han => p.han_per_char,
                    Class::Kana => p.kana_per_char,
                    Class::Hangul => p.hangul_per_char,
                    Class::CjkPunct => p.cjk_punct,
                    Class::Symbol => p.symbol,
                    Class::Emoji => p.emoji,
                    Class::Joiner => p.emoji_joiner,
                    _ => smul(c.len_utf8() as u64, p.other_per_byte),
                };
                self.add(cost);
            }
        }
    }
}

pub(crate) fn estimate_with(text: &str, p: &Params) -> u64 {
    if text.is_empty() {
        return 0;
    }
    let mut e = Estimator {
        p,
        milli: 0,
        run: Run::None,
        last_lower: false,
    };
    let mut rest = text;
    while let Some(&b) = rest.as_bytes().first() {
        if b.is_ascii() {
            // Consumes ASCII bytes only, so the cut is on a character boundary.
            let n = e.ascii_run(rest.as_bytes());
            rest = rest.get(n.max(1)..).unwrap_or_default();
        } else {
            // A stretch of non-ASCII characters, one at a time.
            let mut chars = rest.chars();
            while let Some(c) = chars.next() {
                e.push(c);
                if chars.as_str().as_bytes().first().is_some_and(u8::is_ascii) {
                    break;
                }
            }
            rest = chars.as_str();
        }
    }
    e.flush(None);
    e.milli.saturating_add(500).div_euclid(1000).max(1)
}

/// The reference the fast path must match: every character through [`Estimator::push`].
#[cfg(test)]
pub(crate) fn estimate_per_char(text: &str, p: &Params) -> u64 {
    if text.is_empty() {
        return 0;
    }
    let mut e = Estimator {
        p,
        milli: 0,
        run: Run::None,
        last_lower: false,
    };
    for c in text.chars() {
        e.push(c);
    }
    e.flush(None);
    e.milli.saturating_add(500).div_euclid(1000).max(1)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_blocks;
