//! The estimator's costs (fitted against tiktoken's cl100k_base on `bench/corpus`).

/// Per-class costs, in thousandths of a token (milli-tokens).
#[derive(Clone, Debug)]
pub(crate) struct Params {
    /// ASCII word (with its leading space) of up to `word_short_len` letters.
    pub word_short: u64,
    pub word_short_len: u64,
    /// Cost of each letter beyond `word_short_len`.
    pub word_extra_per_char: u64,
    /// Extra cost of a word that starts with an uppercase letter (names, sentence starts).
    pub word_capital: u64,
    /// All-caps word of two letters or more: cost per letter.
    pub caps_per_char: u64,
    /// Extra cost per accented Latin letter inside a word (é, ü, ñ, ...).
    pub latin_accent: u64,
    /// Cyrillic / Greek-like alphabets: cost per word and per letter.
    pub cyrillic_word: u64,
    pub cyrillic_per_char: u64,
    /// Arabic, Hebrew and other alphabets: cost per word and per letter.
    pub arabic_word: u64,
    pub arabic_per_char: u64,
    /// Indic and South-East Asian scripts: cost per character (marks included).
    pub indic_per_char: u64,
    /// CJK ideographs, kana, Hangul syllables: cost per character.
    pub han_per_char: u64,
    pub kana_per_char: u64,
    pub hangul_per_char: u64,
    /// Full-width and CJK punctuation.
    pub cjk_punct: u64,
    /// General punctuation and symbols above U+007F (dashes, quotes, arrows, ...).
    pub symbol: u64,
    /// Emoji and other astral-plane pictographs; joiners and variation selectors.
    pub emoji: u64,
    pub emoji_joiner: u64,
    /// Any other non-ASCII character: cost per UTF-8 byte.
    pub other_per_byte: u64,
    /// A group of up to three digits.
    pub digit_group: u64,
    /// ASCII punctuation run: first mark, each further mark.
    pub punct_first: u64,
    pub punct_next: u64,
    /// A single punctuation mark directly followed by a letter (merges with the word).
    pub punct_attached: u64,
    /// A single space directly followed by a digit (not merged by the pre-tokenizer).
    pub space_before_digit: u64,
    /// A run of two or more spaces/tabs without a line break.
    pub space_run: u64,
    /// A run holding line breaks; extra when indentation follows the last line break.
    pub newline_run: u64,
    pub indent: u64,
    /// Long whitespace runs: cost per character by kind (tiktoken merges at most about 128
    /// spaces, 32 line breaks or 16 tabs into one token, and never merges form feeds), plus a
    /// cost per change of kind inside the run (`" \n \n"` costs about a token per 4 chars).
    /// A run costs the larger of this sum and the flat costs above.
    pub ws_space: u64,
    pub ws_tab: u64,
    pub ws_newline: u64,
    pub ws_cr: u64,
    pub ws_nbsp: u64,
    pub ws_wide: u64,
    pub ws_other: u64,
    pub ws_switch: u64,
}

pub(crate) const PARAMS: Params = Params {
    word_short: 875,
    word_short_len: 6,
    word_extra_per_char: 300,
    word_capital: 225,
    caps_per_char: 350,
    latin_accent: 2525,
    cyrillic_word: 1200,
    cyrillic_per_char: 300,
    arabic_word: 2325,
    arabic_per_char: 400,
    indic_per_char: 1025,
    han_per_char: 1200,
    kana_per_char: 1000,
    hangul_per_char: 950,
    cjk_punct: 875,
    symbol: 1625,
    emoji: 2200,
    emoji_joiner: 1625,
    other_per_byte: 500,
    digit_group: 875,
    punct_first: 825,
    punct_next: 200,
    punct_attached: 425,
    space_before_digit: 1300,
    space_run: 975,
    newline_run: 950,
    indent: 425,
    ws_space: 8,
    ws_tab: 63,
    ws_newline: 63,
    ws_cr: 250,
    ws_nbsp: 125,
    ws_wide: 500,
    ws_other: 1000,
    ws_switch: 400,
};

/// Kind of a whitespace character (a change of kind inside a run costs `ws_switch`) and its
/// cost in a long run. `\r` and `\n` are one kind: CRLF line ends merge well.
pub(super) fn ws_kind(p: &Params, c: u32) -> (u8, u64) {
    match c {
        0x20 => (0, p.ws_space),
        0x09 => (1, p.ws_tab),
        0x0A => (2, p.ws_newline),
        0x0D => (2, p.ws_cr),
        0xA0 => (3, p.ws_nbsp),
        0x3000 => (4, p.ws_wide),
        _ => (5, p.ws_other),
    }
}

/// Adds one whitespace character of `kind` costing `rate` to a run's linear cost.
#[inline]
pub(super) fn ws_add(p: &Params, lin: &mut u64, last: &mut u8, (kind, rate): (u8, u64)) {
    *lin = lin.saturating_add(rate);
    if *last != kind {
        *lin = lin.saturating_add(p.ws_switch);
        *last = kind;
    }
}
