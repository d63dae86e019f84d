//! Property tests (seeded, bounded): random streams and documents, random chunkings, random
//! bytes. Run with overflow checks on (debug test builds).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;
use crate::testutil::Rng;
use serde_json::{json, Value};

const SEED: u64 = 0x5EED_0010;

fn gen_string(rng: &mut Rng) -> String {
    let pieces = [
        "a",
        "Hello",
        " world",
        "\"",
        "\\",
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\n",
        "\r",
        "\t",
        "\u{1}",
        "é",
        "日本",
        "😀",
        "usage",
        "\"usage\":{",
        "data: ",
        "[DONE]",
        " ",
    ];
    let n = rng.below(6);
    (0..n).map(|_| *rng.pick(&pieces)).collect()
}

fn gen_count(rng: &mut Rng) -> Value {
    match rng.below(10) {
        0 => json!(-3),
        1 => json!(12.0),
        2 => json!(2.5),
        3 => json!("17"),
        4 => json!("x"),
        5 => json!(null),
        6 => json!(u64::MAX),
        7 => json!(1e300),
        _ => json!(rng.below(100_000)),
    }
}

fn gen_value(rng: &mut Rng, depth: u32) -> Value {
    let leaf = depth == 0 || rng.chance(40);
    match (leaf, rng.below(8)) {
        (true, 0) => Value::Null,
        (true, 1) => json!(rng.chance(50)),
        (true, 2) => json!(rng.next_u64() as f64 / 7.0),
        (true, _) => json!(gen_string(rng)),
        (false, 0..=3) => {
            let keys = [
                "usage",
                "choices",
                "delta",
                "content",
                "text",
                "prompt_tokens",
                "x",
            ];
            let mut m = serde_json::Map::new();
            for _ in 0..rng.below(4) {
                let k = if rng.chance(50) {
                    rng.pick(&keys).to_string()
                } else {
                    gen_string(rng)
                };
                m.insert(k, gen_value(rng, depth - 1));
            }
            Value::Object(m)
        }
        _ => Value::Array(
            (0..rng.below(4))
                .map(|_| gen_value(rng, depth - 1))
                .collect(),
        ),
    }
}

fn gen_usage(rng: &mut Rng) -> Value {
    let mut m = serde_json::Map::new();
    for k in [
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "other",
    ] {
        if rng.chance(70) {
            m.insert(k.to_string(), gen_count(rng));
        }
    }
    if rng.chance(10) {
        m.insert("nested".into(), gen_value(rng, 3));
    }
    Value::Object(m)
}

/// A chat-completion-like document: choices with deltas, noise, maybe usage.
fn gen_doc(rng: &mut Rng) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("id".into(), json!(gen_string(rng)));
    let choices: Vec<Value> = (0..rng.below(3))
        .map(|_| {
            json!({"index": 0, "delta": {"content": gen_string(rng),
                "tool_calls": [{"function": {"name": gen_string(rng), "arguments": gen_string(rng)}}]},
                "text": gen_string(rng), "extra": gen_value(rng, 3)})
        })
        .collect();
    m.insert("choices".into(), Value::Array(choices));
    if rng.chance(30) {
        m.insert("noise".into(), gen_value(rng, 4));
    }
    match rng.below(4) {
        0 => {}
        1 => {
            m.insert("usage".into(), Value::Null);
        }
        _ => {
            m.insert("usage".into(), gen_usage(rng));
        }
    }
    Value::Object(m)
}

/// The usage the scanner must find, computed from the parsed document.
fn expected_usage(doc: &Value) -> Option<Usage> {
    let u = doc.get("usage")?.as_object()?;
    let count = |k: &str| -> Option<u64> {
        match u.get(k)? {
            Value::Number(n) => counts::lenient_count(n.to_string().as_bytes()),
            Value::String(s) => counts::lenient_count(s.as_bytes()),
            _ => None,
        }
    };
    let (p, c, t) = (
        count("prompt_tokens"),
        count("completion_tokens"),
        count("total_tokens"),
    );
    if p.is_none() && c.is_none() && t.is_none() {
        return None;
    }
    Some(Usage {
        prompt_tokens: p.unwrap_or(0),
        completion_tokens: c.unwrap_or(0),
        total_tokens: t.unwrap_or(0),
    })
}

fn json_result(parts: &[&[u8]]) -> (Option<Usage>, u64, usize) {
    let mut s = JsonUsageScanner::default();
    let mut held = 0;
    for p in parts {
        s.feed(p);
        held = held.max(s.scan.held_bytes());
    }
    (s.finish(), s.completion_estimate(), held)
}

/// The usage-only scanner on the same chunks: its usage and its (zero) estimate.
fn usage_only_result(parts: &[&[u8]]) -> (Option<Usage>, u64) {
    let mut s = JsonUsageScanner::usage_only();
    for p in parts {
        s.feed(p);
    }
    (s.finish(), s.completion_estimate())
}

#[test]
fn json_usage_matches_the_document_for_any_chunking() {
    let mut rng = Rng::new(SEED);
    for iter in 0..crate::testutil::iters(3000) {
        let doc = gen_doc(&mut rng);
        let text = doc.to_string();
        let whole = json_result(&[text.as_bytes()]);
        assert_eq!(whole.0, expected_usage(&doc), "iter {iter}: {text}");
        let parts = rng.split(text.as_bytes());
        let split = json_result(&parts);
        assert_eq!(
            (whole.0, whole.1),
            (split.0, split.1),
            "iter {iter}: {text}"
        );
        assert!(split.2 <= 2 * scan::TEXT_CHUNK, "iter {iter}");
        assert_eq!(
            usage_only_result(&parts),
            (whole.0, 0),
            "iter {iter}: {text}"
        );
    }
}

#[test]
fn json_scanner_survives_random_and_mutated_bytes() {
    let mut rng = Rng::new(SEED + 1);
    for iter in 0..crate::testutil::iters(3000) {
        let mut bytes = if rng.chance(30) {
            let n = rng.below(300);
            rng.bytes(n)
        } else {
            gen_doc(&mut rng).to_string().into_bytes()
        };
        for _ in 0..rng.below(5) {
            if bytes.is_empty() {
                break;
            }
            let i = rng.below(bytes.len());
            match rng.below(3) {
                0 => bytes[i] = rng.next_u64() as u8,
                1 => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, *rng.pick(b"\"\\{}[]:,u0")),
            }
        }
        let whole = json_result(&[&bytes]);
        let parts = rng.split(&bytes);
        let split = json_result(&parts);
        assert_eq!(
            (whole.0, whole.1),
            (split.0, split.1),
            "iter {iter}: {bytes:?}"
        );
        assert_eq!(
            usage_only_result(&parts),
            (whole.0, 0),
            "iter {iter}: {bytes:?}"
        );
    }
}

/// One SSE stream: the lines (without line ends) and the usage it carries.
fn gen_stream(rng: &mut Rng) -> (Vec<String>, Option<Usage>) {
    let mut lines = Vec::new();
    let mut last = None;
    for _ in 0..rng.below(8) {
        match rng.below(10) {
            0 => lines.push(format!(": {}", gen_string(rng).replace(['\n', '\r'], ""))),
            1 => lines.push("event: message".into()),
            2 => lines.push("data: [DONE]".into()),
            3 => lines.push("id: 7".into()),
            _ => {
                let doc = gen_doc(rng);
                if let Some(u) = expected_usage(&doc) {
                    last = Some(u);
                }
                let sp = if rng.chance(50) { " " } else { "" };
                let text = doc.to_string();
                // Some events span two data lines (joined by a line feed).
                let cut = text.find("\"choices\":").filter(|_| rng.chance(30));
                match cut {
                    Some(at) => {
                        let (a, b) = text.split_at(at + 10);
                        lines.push(format!("data:{sp}{a}"));
                        lines.push(format!("data:{sp}{b}"));
                    }
                    None => lines.push(format!("data:{sp}{text}")),
                }
            }
        }
        if rng.chance(70) {
            lines.push(String::new());
        }
    }
    (lines, last)
}

type SseResult = (u64, bool, bool, Option<Usage>, u64, usize);

fn core(r: &SseResult) -> (u64, bool, bool, Option<Usage>, u64) {
    (r.0, r.1, r.2, r.3, r.4)
}

fn sse_result(parts: &[&[u8]]) -> SseResult {
    let mut s = SseScanner::default();
    let mut firsts = 0;
    let mut held = 0;
    for p in parts {
        if s.feed(p) {
            firsts += 1;
        }
        held = held.max(s.json.held_bytes());
    }
    assert!(firsts <= 1);
    assert_eq!(firsts == 1, s.saw_data);
    s.finish();
    (
        s.events,
        s.saw_data,
        s.done,
        s.usage,
        s.completion_estimate,
        held,
    )
}

#[test]
fn sse_chunked_equals_whole_for_every_line_ending() {
    let mut rng = Rng::new(SEED + 2);
    for iter in 0..crate::testutil::iters(3000) {
        let (lines, usage) = gen_stream(&mut rng);
        let mut reference: Option<SseResult> = None;
        for eol in ["\n", "\r\n", "\r"] {
            let mut text = lines.join(eol);
            if rng.chance(80) {
                text.push_str(eol);
            }
            let whole = sse_result(&[text.as_bytes()]);
            assert_eq!(whole.3, usage, "iter {iter}: {text:?}");
            let parts = rng.split(text.as_bytes());
            let split = sse_result(&parts);
            assert_eq!(core(&whole), core(&split), "iter {iter} {eol:?}: {text:?}");
            assert!(split.5 <= 2 * scan::TEXT_CHUNK);
            match &reference {
                None => reference = Some(whole),
                Some(r) => assert_eq!(core(r), core(&whole), "iter {iter} {eol:?}"),
            }
        }
    }
}

#[test]
fn sse_scanner_survives_random_bytes() {
    let mut rng = Rng::new(SEED + 3);
    for iter in 0..crate::testutil::iters(3000) {
        let bytes = if rng.chance(50) {
            let n = rng.below(400);
            // bias towards the bytes that matter to the scanner
            (0..n)
                .map(|_| {
                    if rng.chance(50) {
                        *rng.pick(b"data:\r\n {}\"\\[]usage")
                    } else {
                        rng.next_u64() as u8
                    }
                })
                .collect()
        } else {
            let (lines, _) = gen_stream(&mut rng);
            let mut b = lines.join("\n").into_bytes();
            for _ in 0..rng.below(6) {
                if !b.is_empty() {
                    let i = rng.below(b.len());
                    b[i] = *rng.pick(b"\r\n\"\\{:");
                }
            }
            b
        };
        let whole = sse_result(&[&bytes]);
        let parts = rng.split(&bytes);
        let split = sse_result(&parts);
        assert_eq!(core(&whole), core(&split), "iter {iter}: {bytes:?}");
    }
}
