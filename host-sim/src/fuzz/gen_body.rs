//! Body generators: OpenAI-style requests written as JSON text (so that they can hold what a
//! serializer never writes: duplicate keys, `100.0`, lone surrogates, huge whitespace), byte
//! mutations, sidecar load pushes, and model-server responses (JSON and SSE).

use super::case::Response;
use super::facts::Facts;
use super::gen_wire::{wrap_response, ENDPOINTS};
use super::rng::Rng;

const WORDS: &[&str] = &[
    "hello",
    "the",
    "model",
    "token",
    "router",
    "explain",
    "quantum",
    "数据",
    "🙂",
    "é",
    "naïve",
    "\t",
    "  ",
    "\n",
    "a",
    "1234",
    "{\"x\":1}",
    "\\",
    "\"",
    "Ω≈ç√",
    "\u{0}",
    "\u{7f}",
    "\u{ffff}",
];

fn ws(rng: &mut Rng) -> &'static str {
    match rng.below(30) {
        0..=23 => "",
        24 => " ",
        25 => "\n",
        26 => "\t",
        27 => "\r\n",
        28 => "   \n\t ",
        _ => "\u{a0}",
    }
}

fn big_whitespace(rng: &mut Rng) -> String {
    let n = rng.range(10_000, 400_000) as usize;
    let unit = rng.pick_copy(&[" ", "\n", "\t", " \r\n"]);
    unit.repeat(n / unit.len())
}

/// A JSON string literal (with quotes).
fn text(rng: &mut Rng) -> String {
    let mut s = String::new();
    let words = match rng.below(50) {
        0 => rng.range(20_000, 120_000) as usize,
        1..=3 => rng.range(200, 3000) as usize,
        _ => rng.len(60),
    };
    for _ in 0..words {
        let w = rng.pick_copy(WORDS);
        s.push_str(w);
        s.push(' ');
    }
    if rng.chance(1, 40) {
        s.push_str(&big_whitespace(rng));
    }
    let mut lit = serde_json::Value::String(s).to_string();
    if rng.chance(1, 8) {
        let esc = rng.pick_copy(&[
            "\\u00e9",
            "\\ud83d\\ude00",
            "\\ud800",
            "\\udc00x",
            "\\/",
            "\\u0000",
            "\\b\\f",
        ]);
        lit.insert_str(1, esc);
    }
    lit
}

fn number(rng: &mut Rng) -> String {
    if rng.chance(1, 3) {
        return rng.below(5000).to_string();
    }
    rng.pick(&[
        "100",
        "100.0",
        "\"100\"",
        "-1",
        "1e300",
        "0",
        "1e2",
        "null",
        "true",
        "18446744073709551616",
        "4096",
        "1.5",
        "-0",
        "1E3",
        "\"1e2\"",
        "\" 7 \"",
        "[]",
        "{}",
        "9223372036854775807",
        "0.0",
        "1e-300",
        "\"\"",
        "2.000000000000000000001",
        "NaN",
        "-Infinity",
    ])
    .to_string()
}

fn boolish(rng: &mut Rng) -> &'static str {
    rng.pick_copy(&[
        "true",
        "false",
        "\"true\"",
        "\"false\"",
        "1",
        "0",
        "null",
        "\"yes\"",
        "\"\"",
        "\"True\"",
    ])
}

fn model(rng: &mut Rng, facts: &Facts) -> String {
    let mut pool: Vec<String> = facts.known_requested.clone();
    pool.extend(facts.models.iter().flatten().cloned());
    pool.extend(
        [
            "gpt-4o-mini",
            "",
            "GPT-4O",
            "Large",
            "chat-canary ",
            "llama\u{0}",
        ]
        .map(String::from),
    );
    match rng.below(20) {
        0 => "null".into(),
        1 => number(rng),
        2 => "{\"name\":\"gpt-4o\"}".into(),
        3 => "[\"gpt-4o\"]".into(),
        4 => text(rng),
        _ if pool.is_empty() => "\"m\"".into(),
        _ => serde_json::Value::String(rng.pick(&pool).clone()).to_string(),
    }
}

fn content(rng: &mut Rng) -> String {
    match rng.below(12) {
        0 => format!("[{{\"type\":\"text\",\"text\":{}}},{{\"type\":\"image_url\",\"image_url\":{{\"url\":\"data:x\"}}}}]", text(rng)),
        1 => "null".into(),
        2 => number(rng),
        3 => format!("[{}]", text(rng)),
        _ => text(rng),
    }
}

fn message(rng: &mut Rng) -> String {
    let role = rng.pick_copy(&["user", "system", "assistant", "tool", "developer", "🙂"]);
    let mut m = format!(
        "{{\"role\":\"{role}\",{}\"content\":{}",
        ws(rng),
        content(rng)
    );
    if rng.chance(1, 10) {
        m.push_str(&format!(
            ",\"tool_calls\":[{{\"id\":\"c1\",\"type\":\"function\",\"function\":{{\"name\":\"f\",\"arguments\":{}}}}}]",
            text(rng)
        ));
    }
    m.push('}');
    m
}

fn nested(rng: &mut Rng) -> String {
    let depth = rng.range(10, 3000) as usize;
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

fn messages(rng: &mut Rng) -> String {
    if rng.chance(1, 40) {
        return nested(rng);
    }
    let n = match rng.below(20) {
        0 => 0,
        1 => rng.range(50, 400) as usize,
        _ => rng.range(1, 6) as usize,
    };
    let items: Vec<String> = (0..n).map(|_| message(rng)).collect();
    format!("[{}]", items.join(","))
}

fn tools(rng: &mut Rng) -> String {
    let n = rng.range(1, 3);
    let items: Vec<String> = (0..n)
        .map(|_| {
            format!(
                "{{\"type\":\"function\",\"function\":{{\"name\":\"f\",\"description\":{},\"parameters\":{{\"type\":\"object\",\"properties\":{{\"q\":{{\"type\":\"string\",\"description\":{}}}}}}}}}}}",
                text(rng),
                text(rng)
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

fn members(rng: &mut Rng, facts: &Facts, api: &str) -> Vec<(&'static str, String)> {
    let mut m: Vec<(&'static str, String)> = Vec::new();
    let mut maybe = |rng: &mut Rng, pct: u64, key: &'static str, v: &dyn Fn(&mut Rng) -> String| {
        if rng.chance(pct, 100) {
            m.push((key, v(rng)));
        }
    };
    maybe(rng, 90, "model", &|r| model(r, facts));
    if api.contains("embeddings") {
        maybe(rng, 95, "input", &|r| {
            if r.chance(1, 3) {
                format!("[{},{}]", text(r), text(r))
            } else {
                text(r)
            }
        });
        maybe(rng, 20, "encoding_format", &|_| "\"float\"".into());
    } else if api.ends_with("/completions") && !api.contains("chat") {
        maybe(rng, 95, "prompt", &|r| match r.below(4) {
            0 => format!("[{},{}]", text(r), text(r)),
            1 => "[1,2,3,50256]".into(),
            _ => text(r),
        });
    } else {
        maybe(rng, 95, "messages", &messages);
    }
    maybe(rng, 50, "max_tokens", &number);
    maybe(rng, 20, "max_completion_tokens", &number);
    maybe(rng, 30, "stream", &|r| boolish(r).into());
    maybe(rng, 15, "stream_options", &|r| match r.below(3) {
        0 => "{}".into(),
        _ => format!("{{\"include_usage\":{}}}", boolish(r)),
    });
    maybe(rng, 10, "n", &number);
    maybe(rng, 5, "best_of", &number);
    maybe(rng, 10, "tools", &tools);
    maybe(rng, 4, "functions", &|r| {
        format!("[{{\"name\":\"g\",\"description\":{}}}]", text(r))
    });
    maybe(rng, 6, "response_format", &|r| {
        format!("{{\"type\":\"json_schema\",\"json_schema\":{{\"name\":\"s\",\"schema\":{{\"description\":{}}}}}}}", text(r))
    });
    maybe(rng, 20, "temperature", &number);
    maybe(rng, 5, "user", &text);
    maybe(rng, 8, "unknown_field", &|r| {
        if r.chance(1, 4) {
            nested(r)
        } else {
            text(r)
        }
    });
    m
}

/// An OpenAI-style request body for `api`.
pub fn request(rng: &mut Rng, facts: &Facts, api: &str) -> Vec<u8> {
    if rng.chance(3, 100) {
        let junk = rng.pick(&[
            "",
            "[]",
            "null",
            "\"str\"",
            "123",
            "{",
            "{\"model\":",
            "{}",
            "\u{feff}{}",
            "[{\"model\":\"gpt-4o\"}]",
        ]);
        return junk.as_bytes().to_vec();
    }
    let mut m = members(rng, facts, api);
    // Duplicate keys: the last one wins at the model server.
    for _ in 0..rng.below(3) {
        if m.is_empty() || !rng.chance(1, 4) {
            break;
        }
        let i = rng.below_usize(m.len());
        let key = m[i].0;
        let v = match key {
            "model" => model(rng, facts),
            "stream" => boolish(rng).into(),
            _ => number(rng),
        };
        m.push((key, v));
    }
    let mut out = String::from("{");
    out.push_str(ws(rng));
    let parts: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("\"{k}\"{}:{}{v}", ws(rng), ws(rng)))
        .collect();
    out.push_str(&parts.join(","));
    out.push_str(ws(rng));
    out.push('}');
    if rng.chance(1, 200) {
        // Valid JSON padded past the usual max_body_bytes (1 MiB).
        out.push_str(&" ".repeat(rng.range(1_048_577, 1_200_000) as usize));
    } else if rng.chance(1, 30) {
        out.push_str(&big_whitespace(rng));
    }
    out.into_bytes()
}

/// A small, well-formed request with a small completion limit: many of them drain a
/// tenant's request bucket before its token bucket.
pub fn cheap(rng: &mut Rng, api: &str) -> Vec<u8> {
    let model = rng.pick_copy(&["gpt-4o", "chat-canary", "small", "large"]);
    let max = rng.range(1, 16);
    let input = if api.contains("embeddings") {
        "\"input\":\"hi\"".to_string()
    } else if api.ends_with("/completions") && !api.contains("chat") {
        "\"prompt\":\"hi\"".to_string()
    } else {
        "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]".to_string()
    };
    format!("{{\"model\":\"{model}\",{input},\"max_tokens\":{max}}}").into_bytes()
}

/// A few random edits: flips, inserted bytes (obs-text too), deletions, duplications,
/// truncation, an injected `"model":null`.
pub fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    for _ in 0..rng.range(1, 4) {
        let len = b.len();
        let at = rng.below_usize(len + 1);
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below_usize(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let ins: Vec<u8> = (0..rng.range(1, 8)).map(|_| rng.byte()).collect();
                b.splice(at..at, ins);
            }
            2 if len > 0 => {
                let end = (at + rng.range(1, 64) as usize).min(len);
                b.drain(at.min(end)..end);
            }
            3 if len > 0 => {
                let end = (at + rng.range(1, 64) as usize).min(len);
                let dup = b[at.min(end)..end].to_vec();
                b.splice(end..end, dup);
            }
            4 => b.truncate(at),
            5 => {
                if let Some(i) = b.iter().position(|&c| c == b'{') {
                    b.splice(i + 1..i + 1, b"\"model\":null,".iter().copied());
                }
            }
            6 => b.splice(at..at, [0xa1, 0xb1, 0xff, 0xc3]).for_each(drop),
            _ => b.splice(at..at, b"\\ud800".iter().copied()).for_each(drop),
        }
    }
}

/// A sidecar load snapshot.
pub fn push(rng: &mut Rng) -> Vec<u8> {
    let junk = [
        "not-an-address",
        "",
        "1.2.3.4:99999",
        "[::1]:80",
        "a\u{e9}:1",
        "10.9.9.9:8000",
    ];
    let mut pools = Vec::new();
    for (tier, addrs) in [
        ("small", &ENDPOINTS[..2]),
        ("large", &ENDPOINTS[2..]),
        ("ghost", &ENDPOINTS[..1]),
    ] {
        let wanted = if tier == "ghost" { (1, 10) } else { (9, 10) };
        if !rng.chance(wanted.0, wanted.1) {
            continue;
        }
        // Mostly valid snapshots (so that endpoints get picked), sometimes junk.
        let junky = rng.chance(1, 8);
        let entries: Vec<String> = (0..rng.range(1, 3))
            .map(|_| {
                let addr = if junky && rng.chance(1, 2) {
                    rng.pick_copy(&junk)
                } else {
                    rng.pick_copy(addrs)
                };
                format!(
                    "{{\"address\":{},\"waiting\":{},\"running\":{},\"kv_cache\":{}}}",
                    serde_json::Value::String(addr.into()),
                    if junky {
                        number(rng)
                    } else {
                        rng.below(8).to_string()
                    },
                    if junky {
                        number(rng)
                    } else {
                        rng.below(8).to_string()
                    },
                    if junky {
                        rng.pick_copy(&["-1", "1e9", "\"x\"", "null", "1.0"])
                    } else {
                        rng.pick_copy(&["0.1", "0.5", "0.95", "0.0", "0.79"])
                    },
                )
            })
            .collect();
        pools.push(format!("\"{tier}\":[{}]", entries.join(",")));
    }
    format!("{{\"pools\":{{{}}}}}", pools.join(",")).into_bytes()
}

fn usage(rng: &mut Rng) -> String {
    let mut n = || -> String {
        match rng.below(12) {
            0 => number(rng),
            1 => rng
                .pick(&[
                    "18446744073709551615",
                    "9223372036854775808",
                    "-5",
                    "1e20",
                    "12.5",
                ])
                .to_string(),
            2..=3 => rng.below(5000).to_string(),
            _ => rng.below(40).to_string(),
        }
    };
    let (p, c, t) = (n(), n(), n());
    format!("{{\"prompt_tokens\":{p},\"completion_tokens\":{c},\"total_tokens\":{t}}}")
}

fn sse_body(rng: &mut Rng) -> Vec<u8> {
    let eol = rng.pick_copy(&["\n", "\r\n", "\r", "\n", "\r\n"]);
    let mut out = String::new();
    let mut event = |rng: &mut Rng, data: &str| {
        if rng.chance(1, 10) {
            out.push_str(&format!(": ping{eol}"));
        }
        if rng.chance(1, 10) {
            out.push_str(&format!("event: message{eol}id: 1{eol}"));
        }
        let sep = if rng.chance(1, 8) { "data:" } else { "data: " };
        out.push_str(&format!("{sep}{data}{eol}{eol}"));
    };
    for _ in 0..rng.below(12) {
        let t = if rng.chance(1, 50) {
            serde_json::Value::String("x".repeat(rng.range(200_000, 400_000) as usize)).to_string()
        } else {
            text(rng)
        };
        event(rng, &format!("{{\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{t}}}}}]}}"));
    }
    if rng.chance(3, 5) {
        let u = usage(rng);
        event(
            rng,
            &format!("{{\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{u}}}"),
        );
    }
    if rng.chance(4, 5) {
        event(rng, "[DONE]");
    }
    out.into_bytes()
}

fn json_body(rng: &mut Rng) -> Vec<u8> {
    let u = if rng.chance(4, 5) {
        format!(",\"usage\":{}", usage(rng))
    } else {
        String::new()
    };
    let body = match rng.below(10) {
        0 => "{\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}".to_string(),
        1 => "not json \u{a1}".to_string(),
        _ => format!(
            "{{\"id\":\"x\",\"object\":\"chat.completion\",\"choices\":[{{\"message\":{{\"role\":\"assistant\",\"content\":{}}}}}]{u}}}",
            text(rng)
        ),
    };
    let mut b = body.into_bytes();
    if rng.chance(1, 10) {
        mutate(rng, &mut b);
    }
    b
}

/// A short answer with small usage (bursts: keeps token buckets out of debt).
pub fn cheap_response(rng: &mut Rng) -> Response {
    let (p, c) = (rng.below(20), rng.below(16));
    let body = format!(
        "{{\"choices\":[{{\"message\":{{\"role\":\"assistant\",\"content\":\"ok\"}}}}],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{c},\"total_tokens\":{}}}}}",
        p + c
    );
    wrap_response(rng, 200, b"application/json", body.into_bytes())
}

/// The model server's response to a request with `request_body`.
pub fn response(rng: &mut Rng, request_body: &[u8]) -> Response {
    let streamed = request_body.windows(6).any(|w| w == b"stream") && rng.chance(3, 4);
    let sse = if rng.chance(1, 10) {
        !streamed
    } else {
        streamed
    };
    let status = if rng.chance(4, 5) {
        200
    } else {
        rng.pick_copy(&[400, 429, 500, 503, 204, 404])
    };
    let content_type: &[u8] = match (rng.below(12), sse) {
        (0, _) => b"",
        (1, _) => b"text/plain; charset=\xa1",
        (2, true) => b"TEXT/EVENT-STREAM",
        (3, true) => b"text/event-stream; charset=utf-8",
        (_, true) => b"text/event-stream",
        (_, false) => b"application/json",
    };
    let body = if sse { sse_body(rng) } else { json_body(rng) };
    wrap_response(rng, status, content_type, body)
}
