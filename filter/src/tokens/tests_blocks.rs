//! The block path (`prose::blocks`: clean prose 64 bytes per step on bit masks) against the
//! general per-character path, at the lengths and offsets where its edges are: texts whose
//! length is a multiple of 8, 16 or 64 give or take two bytes, and a disruption (a byte that
//! makes the text unclean, so the path hands back) at every position around the block edges.
//! Natively the masks come from the scalar builder, in `scripts/test-wasm-unit.sh` from the
//! simd128 one.

use super::masks::BLOCK;
use super::prose::blocks;
use super::{estimate_per_char, estimate_with, Params, PARAMS};
use crate::testutil::Rng;

/// Costs that make every count show in the total (a difference of one milli-token survives
/// the rounding), with `word_short_len` 6 so that the block path runs.
fn fine() -> Params {
    Params {
        word_short: 875_000,
        word_extra_per_char: 300_007,
        word_capital: 225_001,
        punct_first: 825_029,
        ..PARAMS
    }
}

/// Prose of exactly `len` bytes (it may end inside a word or a gap): words of 1 to 14
/// letters, some capitalised, some all-caps when `caps` (the block path hands those back),
/// each followed by " ", ", " or ". ".
fn prose(rng: &mut Rng, len: usize, caps: bool) -> Vec<u8> {
    let mut text = Vec::with_capacity(len + 24);
    while text.len() < len {
        let n = 1 + rng.below(14);
        let shape = rng.below(8);
        for i in 0..n {
            let c = b'a' + rng.below(26) as u8;
            let upper = match shape {
                0 | 1 => i == 0,
                2 => caps,
                _ => false,
            };
            text.push(if upper { c.to_ascii_uppercase() } else { c });
        }
        let gap: &[u8] = match rng.below(8) {
            0 => b", ",
            1 => b". ",
            _ => b" ",
        };
        text.extend_from_slice(gap);
    }
    text.truncate(len);
    text
}

fn assert_paths_agree(text: &[u8], what: &str) {
    let text = std::str::from_utf8(text).unwrap_or_default();
    for p in [&PARAMS, &fine()] {
        assert_eq!(
            estimate_with(text, p),
            estimate_per_char(text, p),
            "{what}: {text:?}"
        );
    }
}

/// Lengths around every multiple of 8, 16 and 64 up to four blocks, starting at offsets
/// 0..3 after a prefix the block path does not take (so the blocks begin at every alignment).
#[test]
fn clean_prose_at_block_lengths() {
    let mut rng = Rng::new(0xB10C_0000_0001);
    let mut lengths: Vec<usize> = Vec::new();
    for base in (8..=4 * BLOCK + 8).step_by(8) {
        lengths.extend(base.saturating_sub(2)..=base + 2);
    }
    lengths.dedup();
    for round in 0..crate::testutil::iters(6) {
        for &len in &lengths {
            for prefix in ["", "7 ", "(x ", "{\"a\": "] {
                let mut text = prefix.as_bytes().to_vec();
                text.extend(prose(&mut rng, len, round % 2 == 1));
                assert_paths_agree(&text, &format!("round {round} len {len}"));
            }
        }
    }
}

/// One disruption at every position from 40 to 200 (around the edges of the first three
/// blocks), in clean prose of random length: the path hands back at the last word start
/// before it, wherever that falls relative to the blocks.
#[test]
fn dirty_prose_hands_back_at_block_edges() {
    let mut rng = Rng::new(0xB10C_0000_0002);
    let breakers: [&[u8]; 12] = [
        b"7",
        b"\n",
        b"A",
        b" ",
        b".",
        b",",
        b"-",
        b"'",
        b"\xC3\xA9",
        b"Q",
        b"\t",
        b"  ",
    ];
    for round in 0..crate::testutil::iters(3) {
        for at in 40..200 {
            let len = at + 1 + rng.below(3 * BLOCK);
            let caps = rng.chance(50);
            let mut text = prose(&mut rng, len, caps);
            let breaker = *rng.pick(&breakers);
            text.splice(at..at + 1, breaker.iter().copied());
            assert_paths_agree(&text, &format!("round {round} at {at}"));
            // A second disruption soon after (the path is retried past the first).
            let again = at + 1 + rng.below(2 * BLOCK);
            if again < text.len() && text.is_ascii() {
                let breaker = *rng.pick(&breakers);
                text.splice(again..again + 1, breaker.iter().copied());
                assert_paths_agree(&text, &format!("round {round} at {at} and {again}"));
            }
        }
    }
}

/// Mostly-dirty text (code-like, many disruptions) and mostly-clean text at random lengths.
#[test]
fn random_clean_and_dirty_prose() {
    let mut rng = Rng::new(0xB10C_0000_0003);
    let noise: [&[u8]; 10] = [
        b"7",
        b"\n",
        b"A",
        b"  ",
        b"..",
        b"(",
        b"_",
        b"\xC3\xA9",
        b"\"",
        b"x.y",
    ];
    for round in 0..crate::testutil::iters(1500) {
        let len = rng.below(6 * BLOCK);
        let caps = rng.chance(30);
        let mut text = prose(&mut rng, len, caps);
        let disruptions = match rng.below(3) {
            0 => 0,
            1 => rng.below(3),
            _ => rng.below(len / 4 + 1),
        };
        for _ in 0..disruptions {
            // Only at ASCII positions, so the text stays UTF-8.
            let at = rng.below(text.len() + 1);
            if text.get(..at).is_some_and(|t| t.is_ascii()) {
                let b = *rng.pick(&noise);
                text.splice(at..at, b.iter().copied());
            }
        }
        assert_paths_agree(&text, &format!("round {round}"));
    }
}

/// On clean prose the path takes whole blocks and the tail, and hands back at a word start.
#[test]
fn blocks_take_clean_prose_to_the_last_word() {
    let mut rng = Rng::new(0xB10C_0000_0004);
    for len in [64, 65, 127, 128, 129, 200, 256, 1000] {
        let mut text = b"Start ".to_vec();
        text.extend(prose(&mut rng, len, false));
        text.extend_from_slice(b" end");
        let (at, cost) = blocks(&PARAMS, &text, 0);
        assert!(at + 20 >= text.len() && cost > 0, "{len}: {at} {cost}");
        let before = text.get(at.wrapping_sub(1)).copied();
        assert!(before == Some(b' '), "{len}: hands back after {before:?}");
        assert!(text.get(at).is_some_and(u8::is_ascii_alphabetic));
    }
}
