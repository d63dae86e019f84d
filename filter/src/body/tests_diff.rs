#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The reader against the one it replaced (`legacy`: serde_json re-parsing every nesting
//! level): the same `RequestInfo` or the same `InvalidBody` reason on generated request
//! bodies (every field the reader reads, in every shape, with escaped and duplicated keys,
//! odd whitespace, lone surrogates, deep nesting) and on those bodies mutated byte by byte.

use super::*;
use crate::testutil::{iters, Rng};

const WS: [&str; 6] = ["", "", "", " ", "\n  ", "\t\r\n"];

fn ws(r: &mut Rng) -> &'static str {
    WS[r.below(WS.len())]
}

fn string(r: &mut Rng) -> String {
    const PIECES: [&str; 18] = [
        "hello",
        " world",
        "The quick brown fox jumps over the lazy dog. ",
        "\\n",
        "\\\"",
        "\\\\",
        "\\u00e9",
        "\\ud83d\\ude00",
        "\\ud800",
        "\\udc00x",
        "é",
        "你好",
        "🎉",
        "{\\\"a\\\": [1, 2]}",
        "image_url",
        "text",
        "1",
        "true",
    ];
    let mut s = String::from("\"");
    for _ in 0..r.below(5) {
        s.push_str(PIECES[r.below(PIECES.len())]);
    }
    s.push('"');
    s
}

/// A key: the name (sometimes with an escape in it) or another name.
fn key(r: &mut Rng, name: &str) -> String {
    match r.below(10) {
        0 => "\"other\"".to_string(),
        1 if !name.is_empty() => {
            // The first letter as a \u escape: the same key once unescaped.
            let mut chars = name.chars();
            let first = chars.next().unwrap();
            format!("\"\\u{:04x}{}\"", u32::from(first), chars.as_str())
        }
        2 => "\"\\ud800\"".to_string(),
        _ => format!("\"{name}\""),
    }
}

fn scalar(r: &mut Rng) -> String {
    const SCALARS: [&str; 12] = [
        "null", "true", "false", "0", "1", "-1", "100", "1.5", "1e2", "2.0", "\"7\"", "\"yes\"",
    ];
    match r.below(3) {
        0 => string(r),
        _ => SCALARS[r.below(SCALARS.len())].to_string(),
    }
}

fn object(r: &mut Rng, fields: &[(&str, String)]) -> String {
    let mut out = format!("{{{}", ws(r));
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(&format!("{},{}", ws(r), ws(r)));
        }
        out.push_str(&format!("{}{}:{}{}", key(r, name), ws(r), ws(r), value));
    }
    out.push_str(&format!("{}}}", ws(r)));
    out
}

fn array(r: &mut Rng, items: &[String]) -> String {
    format!("[{}{}]", ws(r), items.join(&format!("{},{}", ws(r), ws(r))))
}

/// Any value, nested up to `depth`.
fn value(r: &mut Rng, depth: u32) -> String {
    if depth == 0 {
        return scalar(r);
    }
    match r.below(4) {
        0 => {
            let items: Vec<String> = (0..r.below(4)).map(|_| value(r, depth - 1)).collect();
            array(r, &items)
        }
        1 => {
            let names = ["a", "text", "type", "content", "function"];
            let fields: Vec<(&str, String)> = (0..r.below(4))
                .map(|_| (names[r.below(names.len())], value(r, depth - 1)))
                .collect();
            object(r, &fields)
        }
        _ => scalar(r),
    }
}

fn part(r: &mut Rng) -> String {
    match r.below(5) {
        0 => {
            let text = string(r);
            object(r, &[("type", "\"text\"".into()), ("text", text)])
        }
        1 => object(
            r,
            &[
                ("type", "\"image_url\"".into()),
                ("image_url", "{\"url\":\"data:x\"}".into()),
            ],
        ),
        2 => object(r, &[("type", "\"input_audio\"".into())]),
        _ => value(r, 2),
    }
}

fn message(r: &mut Rng) -> String {
    let content = match r.below(4) {
        0 | 1 => string(r),
        2 => {
            let parts: Vec<String> = (0..r.below(4)).map(|_| part(r)).collect();
            array(r, &parts)
        }
        _ => value(r, 2),
    };
    let mut fields = vec![("role", "\"user\"".to_string()), ("content", content)];
    if r.chance(20) {
        let name = string(r);
        let function = object(
            r,
            &[("name", name), ("arguments", "\"{\\\"x\\\":1}\"".into())],
        );
        let call = object(r, &[("function", function)]);
        let calls = if r.chance(80) {
            array(r, &[call])
        } else {
            value(r, 2)
        };
        fields.push(("tool_calls", calls));
    }
    if r.chance(20) {
        fields.push(("name", value(r, 1)));
    }
    if r.chance(10) {
        // A duplicate: the last one counts.
        fields.push(("content", value(r, 1)));
    }
    if r.chance(5) {
        return value(r, 1);
    }
    object(r, &fields)
}

pub(super) fn body(r: &mut Rng) -> String {
    let mut fields: Vec<(&str, String)> = Vec::new();
    if r.chance(90) {
        fields.push(("model", scalar(r)));
    }
    if r.chance(80) {
        let messages: Vec<String> = (0..r.below(5)).map(|_| message(r)).collect();
        let v = if r.chance(95) {
            array(r, &messages)
        } else {
            value(r, 1)
        };
        fields.push(("messages", v));
    }
    for name in [
        "prompt",
        "input",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "best_of",
        "stream",
        "stream_options",
        "tools",
        "functions",
        "response_format",
        "suffix",
        "documents",
        "chat_template_kwargs",
        "model",
        "other",
    ] {
        if !r.chance(12) {
            continue;
        }
        let v = match name {
            "prompt" | "input" => match r.below(3) {
                0 => "[1, 2, [3, 4], \"text\"]".to_string(),
                _ => value(r, 2),
            },
            "stream_options" => match r.below(3) {
                0 => {
                    let v = scalar(r);
                    object(r, &[("include_usage", v)])
                }
                _ => value(r, 1),
            },
            "tools" | "functions" => {
                let (name, description, parameters) = (string(r), string(r), value(r, 3));
                let f = object(
                    r,
                    &[
                        ("name", name),
                        ("description", description),
                        ("parameters", parameters),
                    ],
                );
                let t = object(r, &[("type", "\"function\"".into()), ("function", f)]);
                match r.below(3) {
                    0 => array(r, &[t]),
                    _ => value(r, 3),
                }
            }
            _ => match r.below(2) {
                0 => scalar(r),
                _ => value(r, 3),
            },
        };
        fields.push((name, v));
    }
    let mut out = String::from(ws(r));
    out.push_str(&object(r, &fields));
    out.push_str(ws(r));
    out
}

pub(super) fn mutate(r: &mut Rng, b: &mut Vec<u8>) {
    const BYTES: &[u8] = b"{}[]\",:\\ \n0a-.eu\x01\xff\xc3";
    for _ in 0..1 + r.below(3) {
        if b.is_empty() {
            return;
        }
        let at = r.below(b.len());
        match r.below(3) {
            0 => b[at] = BYTES[r.below(BYTES.len())],
            1 => b.insert(at, BYTES[r.below(BYTES.len())]),
            _ => {
                b.remove(at);
            }
        }
    }
}

fn same(b: &[u8], what: &str) {
    assert_eq!(
        inspect(b),
        legacy::inspect(b),
        "{what}: {:?}",
        String::from_utf8_lossy(b)
    );
}

#[test]
fn prop_reader_matches_the_serde_reader() {
    let mut r = Rng::new(0xD1FF_0000_0000_0011);
    let (mut accepted, mut mutated_accepted) = (0u64, 0u64);
    for round in 0..iters(4000) {
        let text = body(&mut r);
        let b = text.as_bytes();
        same(b, &format!("round {round}"));
        accepted += u64::from(inspect(b).is_ok());
        for m in 0..4 {
            let mut bad = b.to_vec();
            mutate(&mut r, &mut bad);
            same(&bad, &format!("round {round} mutation {m}"));
            mutated_accepted += u64::from(inspect(&bad).is_ok());
        }
    }
    // The generator reaches both sides: bodies read and bodies refused.
    let n = iters(4000);
    assert!(accepted > n / 3 && accepted < n, "{accepted}");
    assert!(
        mutated_accepted > 0 && mutated_accepted < 4 * n,
        "{mutated_accepted}"
    );
}

#[test]
fn deep_nesting_and_long_strings_match() {
    for depth in [1usize, 50, 126, 127, 128, 129, 500, 5000] {
        let v = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        for b in [
            format!(r#"{{"messages":[{{"role":"user","content":{v}}}]}}"#),
            format!(r#"{{"tools":{v},"x":{v}}}"#),
            format!(r#"{{"messages":{v}}}"#),
        ] {
            same(b.as_bytes(), &format!("depth {depth}"));
        }
    }
    let long = "word \\n \\\" ".repeat(10_000);
    let b = format!(r#"{{"messages":[{{"role":"user","content":"{long}"}}]}}"#);
    same(b.as_bytes(), "long string");
}
