#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn ok(body: &str) -> RequestInfo<'_> {
    inspect(body.as_bytes()).expect("body should be accepted")
}

fn segs<'a>(info: &'a RequestInfo) -> Vec<&'a str> {
    info.segments.iter().map(|s| s.as_ref()).collect()
}

#[test]
fn chat_with_string_contents() {
    let b = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi there"}],"max_tokens":50,"stream":true}"#;
    let i = ok(b);
    assert_eq!(i.model.as_deref(), Some("gpt-4o"));
    assert_eq!(i.model_spans.len(), 1);
    assert_eq!(&b[i.model_spans[0].clone()], "\"gpt-4o\"");
    assert_eq!(i.n, 1);
    assert_eq!(segs(&i), ["Be brief.", "Hi there"]);
    assert_eq!(i.messages, 2);
    assert_eq!(i.max_tokens, Some(50));
    assert!(i.stream);
    assert!(!i.include_usage && !i.has_stream_options);
}

#[test]
fn chat_with_content_parts_and_images() {
    let b = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"What is"},{"type":"image_url","image_url":{"url":"data:x"}},{"type":"text","text":"this?"}]}]}"#;
    let i = ok(b);
    assert_eq!(segs(&i), ["What is", "this?"]);
    assert_eq!(i.images, 1);
}

#[test]
fn chat_null_content_and_tool_calls() {
    let b = r#"{"messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}}]},{"role":"tool","content":"12C"}]}"#;
    let i = ok(b);
    assert_eq!(segs(&i), ["get_weather", "{\"city\":\"Oslo\"}", "12C"]);
    assert_eq!(i.model, None);
}

#[test]
fn escaped_strings_are_decoded() {
    let i = ok(r#"{"model":"a\"b","prompt":"line1\nline2 \u00e9"}"#);
    assert_eq!(i.model.as_deref(), Some("a\"b"));
    assert_eq!(segs(&i), ["line1\nline2 é"]);
}

#[test]
fn completions_prompt_shapes() {
    assert_eq!(segs(&ok(r#"{"prompt":"Once upon"}"#)), ["Once upon"]);
    assert_eq!(segs(&ok(r#"{"prompt":["a","b"]}"#)), ["a", "b"]);
    let i = ok(r#"{"prompt":[1,2,3,4]}"#);
    assert_eq!(i.token_ids, 4);
    let i = ok(r#"{"prompt":[[1,2],[3]]}"#);
    assert_eq!(i.token_ids, 3);
    assert_eq!(ok(r#"{"prompt":null}"#).segments.len(), 0);
}

#[test]
fn embeddings_input_shapes() {
    assert_eq!(segs(&ok(r#"{"model":"e","input":"hello"}"#)), ["hello"]);
    assert_eq!(segs(&ok(r#"{"input":["x","y","z"]}"#)), ["x", "y", "z"]);
    assert_eq!(ok(r#"{"input":[[5,6,7]]}"#).token_ids, 3);
}

#[test]
fn max_completion_tokens_wins_over_max_tokens() {
    let i = ok(r#"{"max_tokens":10,"max_completion_tokens":20}"#);
    assert_eq!(i.max_tokens, Some(20));
    assert_eq!(ok(r#"{"max_tokens":null}"#).max_tokens, None);
}

#[test]
fn stream_options_are_seen() {
    let i = ok(r#"{"stream":true,"stream_options":{"include_usage":true}}"#);
    assert!(i.has_stream_options && i.include_usage);
    let i = ok(r#"{"stream":true,"stream_options":null}"#);
    assert!(i.has_stream_options && !i.include_usage);
    let i = ok(r#"{"stream":true,"stream_options":{}}"#);
    assert!(i.has_stream_options && !i.include_usage);
}

#[test]
fn unknown_fields_are_ignored() {
    let i = ok(r#"{"temperature":0.2,"model":"m","n":2,"user":"u","metadata":{"k":"long text"}}"#);
    assert_eq!(i.model.as_deref(), Some("m"));
    assert!(i.segments.is_empty());
}

#[test]
fn invalid_bodies_are_classified() {
    let bad = |b: &str| inspect(b.as_bytes()).unwrap_err();
    assert_eq!(bad(""), InvalidBody::Empty);
    assert_eq!(bad("  \n "), InvalidBody::Empty);
    assert_eq!(bad("{not json"), InvalidBody::NotJson);
    assert_eq!(bad("hello"), InvalidBody::NotJson);
    assert_eq!(bad(r#"{"model":"m"} trailing"#), InvalidBody::NotJson);
    assert_eq!(bad("[1,2]"), InvalidBody::NotObject);
    assert_eq!(bad("\"str\""), InvalidBody::NotObject);
    assert_eq!(bad("42"), InvalidBody::NotObject);
    assert_eq!(bad(r#"{"messages":"hi"}"#), InvalidBody::InvalidField);
    assert_eq!(bad(r#"{"messages":["hi"]}"#), InvalidBody::InvalidField);
    assert_eq!(bad(r#"{"max_tokens":-1}"#), InvalidBody::InvalidField);
    assert_eq!(bad(r#"{"max_tokens":1.5}"#), InvalidBody::InvalidField);
    assert_eq!(bad(r#"{"max_tokens":"lots"}"#), InvalidBody::InvalidField);
    assert_eq!(bad(r#"{"max_tokens":[1]}"#), InvalidBody::InvalidField);
    assert_eq!(bad(r#"{"n":-2}"#), InvalidBody::InvalidField);
    assert_eq!(bad(r#"{"stream":"maybe"}"#), InvalidBody::InvalidField);
    assert_eq!(bad(r#"{"stream":2}"#), InvalidBody::InvalidField);
    assert_eq!(bad(r#"{"stream_options":5}"#), InvalidBody::InvalidField);
    assert_eq!(bad(r#"{"prompt":{"a":1}}"#), InvalidBody::InvalidField);
    assert_eq!(bad(r#"{"prompt":[true]}"#), InvalidBody::InvalidField);
    assert_eq!(bad(r#"{"prompt":7}"#), InvalidBody::InvalidField);
    assert_eq!(bad("\u{feff}{}"), InvalidBody::NotJson);
    let invalid_utf8 = [b'{', b'"', b'a', 0xff, b'"', b':', b'1', b'}'];
    assert_eq!(inspect(&invalid_utf8).unwrap_err(), InvalidBody::NotJson);
}

#[test]
fn deep_nesting_does_not_crash() {
    // Valid deep nesting in an ignored field is skipped without recursion.
    let deep = format!("{{\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(inspect(deep.as_bytes()).is_ok());
    for field in ["messages", "prompt", "input", "model"] {
        let deep = format!(
            "{{\"{field}\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let r = inspect(deep.as_bytes());
        match field {
            "messages" => assert_eq!(r.unwrap_err(), InvalidBody::InvalidField),
            // Nested arrays of token ids: one id-less item each level; counted as raw text.
            "prompt" | "input" => assert!(r.is_ok() || r == Err(InvalidBody::InvalidField)),
            // Not a string: no requested model, but its span is known (for the rewrite).
            _ => assert_eq!(r.unwrap().model_spans.len(), 1),
        }
        let unclosed = format!("{{\"{field}\":{}", "[".repeat(100_000));
        assert!(inspect(unclosed.as_bytes()).is_err());
    }
}

#[test]
fn model_rewrite_keeps_other_bytes() {
    let b = "{ \"temperature\" : 0.5,\n  \"model\" :  \"gpt-4o\" , \"messages\":[{\"role\":\"user\",\"content\":\"model\"}] }";
    let i = ok(b);
    let out = with_model(b.as_bytes(), &i, "llama-3.1-70b-instruct");
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        out,
        "{ \"temperature\" : 0.5,\n  \"model\" :  \"llama-3.1-70b-instruct\" , \"messages\":[{\"role\":\"user\",\"content\":\"model\"}] }"
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["model"], "llama-3.1-70b-instruct");
}

#[test]
fn model_rewrite_of_escaped_value_and_quoting() {
    let b = r#"{"model":"a\u0022b","x":1}"#;
    let i = ok(b);
    let out = with_model(b.as_bytes(), &i, "new\"one");
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["model"], "new\"one");
    assert_eq!(v["x"], 1);
}

#[test]
fn model_is_inserted_when_absent() {
    for b in [r#"{"prompt":"hi"}"#, "  {  }  ", "{}", "{\n\"a\":1}"] {
        let i = ok(b);
        let out = with_model(b.as_bytes(), &i, "m1");
        let v: serde_json::Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{b:?} -> {:?}: {e}", String::from_utf8_lossy(&out)));
        assert_eq!(v["model"], "m1", "{b}");
    }
}

#[test]
fn include_usage_is_inserted() {
    for b in [
        r#"{"stream":true}"#,
        "{ }",
        r#"{"model":"m","stream":true}"#,
    ] {
        let i = ok(b);
        let out = with_include_usage(b.as_bytes(), i.object_start);
        let i2 = inspect(&out).unwrap();
        assert!(i2.include_usage, "{}", String::from_utf8_lossy(&out));
    }
}

#[test]
fn prompt_token_estimate_counts_text_framing_and_ids() {
    let chat = ok(r#"{"messages":[{"role":"user","content":""}]}"#);
    assert_eq!(prompt_tokens(&chat), 4 + 3);
    let ids = ok(r#"{"prompt":[1,2,3]}"#);
    assert_eq!(prompt_tokens(&ids), 3);
    let img =
        ok(r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#);
    assert_eq!(prompt_tokens(&img), 85 + 7);
    let short = ok(r#"{"prompt":"hello"}"#);
    let long = format!(r#"{{"prompt":"{}"}}"#, "hello world ".repeat(500));
    let long = inspect(long.as_bytes()).unwrap();
    assert!(prompt_tokens(&long) > 100 * prompt_tokens(&short));
}

#[test]
fn estimate_ignores_json_syntax() {
    // The estimate comes from the text, not from the raw JSON: padding the body with
    // whitespace and non-prompt fields does not change it.
    let a = ok(r#"{"messages":[{"role":"user","content":"Tell me a story"}]}"#);
    let padded = format!(
        r#"{{"temperature":0.1,   "metadata":{{"k":"{}"}},"messages":[{{"role":"user","content":"Tell me a story"}}]}}"#,
        "x".repeat(5000)
    );
    let b = inspect(padded.as_bytes()).unwrap();
    assert_eq!(prompt_tokens(&a), prompt_tokens(&b));
}

#[test]
fn strings_without_escapes_are_borrowed_and_escaped_ones_decoded() {
    let info = ok(
        r#"{"model":"m","messages":[{"role":"user","content":"plain text"},{"role":"user","content":"a\nb \u00e9\"q\""}]}"#,
    );
    let segments = &info.segments;
    assert_eq!(segments.len(), 2);
    assert!(matches!(
        segments.first(),
        Some(std::borrow::Cow::Borrowed("plain text"))
    ));
    assert!(matches!(segments.get(1), Some(std::borrow::Cow::Owned(s)) if s == "a\nb é\"q\""));
    assert!(matches!(info.model, Some(std::borrow::Cow::Borrowed("m"))));
}

/// `json::string` (escapes decoded by hand on text serde_json validated) reads every JSON
/// string as serde_json reads it: the same text, borrowed exactly when serde_json borrows,
/// and `None` for the same lone surrogates. Generated strings of escapes (valid, paired and
/// lone surrogates), quotes, backslashes, Unicode and plain runs that cross 8-byte chunks.
#[test]
fn prop_string_matches_serde_json() {
    let pieces = [
        "a",
        "plain text ",
        "0123456789abcdef",
        "\\n",
        "\\\"",
        "\\\\",
        "\\/",
        "\\b",
        "\\f",
        "\\r",
        "\\t",
        "\\u0041",
        "\\u00e9",
        "\\u4f60",
        "\\ud83d\\ude00",
        "\\ud800",
        "\\udc00",
        "\\ud800\\u0041",
        "\\ud800\\n",
        "\\uDBFF\\uDFFF",
        "\\u0000",
        "é",
        "你",
        "🎉",
        "\\\\u0041",
        "\\\\\\\"",
    ];
    let mut rng = crate::testutil::Rng::new(0x5EED_0057_0000_0001);
    for round in 0..crate::testutil::iters(5000) {
        let mut s = String::from("\"");
        for _ in 0..rng.below(24) {
            let piece: &&str = rng.pick::<&str>(&pieces);
            s.push_str(piece);
        }
        s.push('"');
        if rng.chance(20) {
            s.push_str(" \n");
        }
        let raw: &serde_json::value::RawValue =
            serde_json::from_str(&s).unwrap_or_else(|e| panic!("round {round}: {s}: {e}"));
        let (ours, theirs) = (
            json::string(scan::Raw(raw.get())),
            json::string_by_serde(raw),
        );
        assert_eq!(ours, theirs, "round {round}: {s}");
        assert_eq!(
            matches!(ours, Some(Cow::Borrowed(_))),
            matches!(theirs, Some(Cow::Borrowed(_))),
            "round {round}: {s}"
        );
    }
    for other in ["1", "null", "[\"a\"]", "{}", "true"] {
        let raw: &serde_json::value::RawValue = serde_json::from_str(other).unwrap();
        assert_eq!(json::string(scan::Raw(raw.get())), None);
    }
}
