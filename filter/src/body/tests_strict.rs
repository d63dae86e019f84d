//! The strict one-pass validator (`strict::members`) against serde_json's reading of the top
//! level (`json::members`, what `inspect` used before): the same bodies accepted and refused,
//! and for accepted ones the same members (keys and value texts, in order) and the same
//! slots, on edge cases of every JSON rule and on generated bodies mutated byte by byte.

use super::json;
use super::strict;
use super::tests_diff::{body, mutate};
use crate::testutil::{iters, Rng};

const KEYS: [&str; 4] = ["model", "messages", "a", "\u{fffd}"];

type Members = Vec<(String, String)>;

fn by_strict(body: &[u8]) -> Option<(Members, Vec<Option<String>>)> {
    let mut seen = Vec::new();
    let (text, slots) = strict::members(body, KEYS, &mut |k, v| {
        seen.push((k.to_string(), v.get().to_string()))
    })
    .ok()?;
    assert_eq!(text.as_bytes(), body);
    Some((seen, slots.map(|s| s.map(|v| v.get().to_string())).to_vec()))
}

fn by_serde(text: &str) -> Option<(Members, Vec<Option<String>>)> {
    let mut seen = Vec::new();
    let slots = json::members(text, KEYS, &mut |k, v| {
        seen.push((k.to_string(), v.get().to_string()))
    })
    .ok()?;
    Some((seen, slots.map(|s| s.map(|v| v.get().to_string())).to_vec()))
}

fn same(text: &str) {
    assert_eq!(by_strict(text.as_bytes()), by_serde(text), "{text:?}");
}

/// Not UTF-8 is refused (serde_json never sees it: `str` is UTF-8).
fn same_bytes(b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(text) => same(text),
        Err(_) => assert_eq!(by_strict(b), None, "{b:?}"),
    }
}

/// Every JSON rule at its edges, as a member value, as a key, and at the top level.
#[test]
fn edge_cases_match_serde() {
    let values = [
        "0",
        "-0",
        "01",
        "-01",
        "00",
        "1.",
        ".5",
        "1.5",
        "1e",
        "1e+",
        "1E5",
        "1e-0",
        "-0.0e-0",
        "-",
        "--1",
        "+1",
        "1.5.3",
        "1e5e5",
        "0x10",
        "1_0",
        "123456789012345678901234567890",
        "true",
        "false",
        "null",
        "nul",
        "nulll",
        "True",
        "tru",
        "fals",
        "NaN",
        "Infinity",
        "\"\"",
        "\"a\"",
        "\"\\u0041\"",
        "\"\\u00e9\"",
        "\"\\uD800\"",
        "\"\\udc00\\u0041\"",
        "\"\\ud83d\\ude00\"",
        "\"\\u12\"",
        "\"\\u12G4\"",
        "\"\\x\"",
        "\"\\/\"",
        "\"\\b\\f\\n\\r\\t\"",
        "\"\\'\"",
        "\"\\\"",
        "\"a",
        "\"\\u\"",
        "\"\\uD800\\\"\"",
        "\"\\uD800\\n\"",
        "\"\u{7f}\"",
        "\"é你🎉\"",
        "[]",
        "[ ]",
        "[1,]",
        "[,1]",
        "[1 2]",
        "[1,,2]",
        "{}",
        "{ }",
        "{\"a\"}",
        "{\"a\":}",
        "{\"a\" 1}",
        "{\"a\":1,}",
        "{1:1}",
        "{\"a\":1 \"b\":2}",
        "[}",
        "{]",
        "[[]]",
        "[[],[{}],{\"x\":[]}]",
        "[\"]\"]",
        "{\"}\":\"{\"}",
        "[\"\\\\\"]",
        "[\"\\\\\\\"\"]",
        "",
        " ",
        "1 2",
        "[1] ]",
    ];
    for v in values {
        same(&format!("{{\"a\":{v}}}"));
        same(&format!("{{\"a\": {v} , \"b\":1}}"));
        same(&format!("{{\"a\":[{v}]}}"));
        same(&format!("{{\"x\":{{\"a\":{v}}}}}"));
        same(&format!("{{{v}:1}}"));
        same(v);
    }
    for c in (0u8..0x20).chain([0x7f]) {
        let c = char::from(c);
        same(&format!("{{\"a\":\"x{c}y\"}}"));
        same(&format!("{{\"a{c}\":1}}"));
        same(&format!("{{\"a\":[\"{c}\"]}}"));
        same(&format!("{c}{{\"a\":1}}"));
        same(&format!("{{\"a\":1}}{c}"));
        same(&format!("{{\"a\":{c}1}}"));
    }
    for key in [
        "\"mod\\u0065l\"",
        "\"model\"",
        "\"\\ud800\"",
        "\"\\u0001\"",
        "\"\\ud800\\u0041\"",
        "\"\\ud800\\\\\"",
        "\"\\ud800\\x\"",
        "\"\\ud800\\uZZZZ\"",
        "\"\\ud800\\ud800\\udc00\"",
        "\"a\\\"b\"",
    ] {
        same(&format!("{{{key}:1, \"model\":2, {key}:[3]}}"));
    }
    for text in [
        "{}",
        " {} ",
        "\t\r\n{}\n",
        "{}x",
        "{}{}",
        "{},",
        "\u{c}{}",
        "{}\u{c}",
        "\u{a0}{}",
        "{\"a\":1}{",
        "{\"a\":1",
        "{\"a\"",
        "{\"a\":",
        "{",
        "}",
        "[]",
        "\"a\"",
        "1",
    ] {
        same(text);
    }
}

/// Broken UTF-8 anywhere (in strings, keys, between tokens, across the 64-byte steps of
/// the scan) is refused; good UTF-8 is read.
#[test]
fn utf8_is_checked() {
    let bad: [&[u8]; 8] = [
        b"\xc3",
        b"\xa9",
        b"\xe4\xbd",
        b"\xf0\x9f\x8e",
        b"\xed\xa0\x80",
        b"\xc0\x80",
        b"\xf4\x90\x80\x80",
        b"\xff",
    ];
    let good = [
        "é",
        "你好",
        "🎉",
        "\u{10ffff}",
        "\u{7ff}\u{800}\u{ffff}\u{10000}",
    ];
    for pad in [0usize, 1, 15, 16, 62, 63, 64, 65, 130] {
        let x = "x".repeat(pad);
        for g in good {
            same(&format!("{{\"a\":\"{x}{g}\"}}"));
            same(&format!("{{\"a\":\"{x}{g}{x}{g}\",\"{g}\":[\"{g}\"]}}"));
        }
        for bad in bad {
            for (head, tail) in [
                (format!("{{\"a\":\"{x}"), "\"}"),
                (format!("{{\"a\":\"{x}é"), "é\"}"),
                (format!("{{\"{x}"), "\":1}"),
                (format!("{{\"a\":[1,{x:?}"), "]}"),
                (format!("{{\"a\":1{x:?}"), "}"),
                (format!("{{\"a\":\"{x}\"}}"), ""),
            ] {
                let mut b = head.into_bytes();
                b.extend_from_slice(bad);
                b.extend_from_slice(tail.as_bytes());
                same_bytes(&b);
            }
        }
    }
}

/// Nesting far deeper than serde_json's recursion limit (it does not apply to skipped
/// values) and unbalanced nesting.
#[test]
fn deep_nesting_matches_serde() {
    for depth in [1usize, 127, 128, 129, 20_000] {
        let open = "[{\"k\":".repeat(depth);
        let close = "}]".repeat(depth);
        same(&format!("{{\"a\":{open}1{close}}}"));
        same(&format!("{{\"a\":{open}1{close}]}}"));
        same(&format!("{{\"a\":{open}1{}}}", &close[1..]));
        let arrays = "[".repeat(depth) + &"]".repeat(depth);
        same(&format!("{{\"a\":{arrays},\"model\":\"m\"}}"));
    }
}

/// Generated request bodies (every shape the reader knows), whole and mutated byte by byte,
/// and random JSON-ish byte soup.
#[test]
fn prop_strict_matches_serde() {
    let mut r = Rng::new(0x5791_C700_0000_0001);
    let (mut ok, mut refused) = (0u64, 0u64);
    for _ in 0..iters(3000) {
        let text = body(&mut r);
        same(&text);
        for _ in 0..6 {
            let mut bad = text.as_bytes().to_vec();
            mutate(&mut r, &mut bad);
            same_bytes(&bad);
            if let Ok(t) = std::str::from_utf8(&bad) {
                match by_serde(t) {
                    Some(_) => ok += 1,
                    None => refused += 1,
                }
            }
        }
        const SOUP: &[u8] = b"{}[]\",:\\ \n\t0123456789-+.eEtrufalsn\"\"u\x01\x1f";
        let mut soup = b"{\"a\":".to_vec();
        for _ in 0..r.below(30) {
            soup.push(*r.pick(SOUP));
        }
        same_bytes(&soup);
    }
    assert!(ok > 100 && refused > 100, "{ok} {refused}");
}
