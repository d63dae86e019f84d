#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Bodies written to walk around the limits or the rewrite (issue 10).

use super::*;

fn ok(body: &str) -> RequestInfo<'_> {
    inspect(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e:?}"))
}

/// Every top-level `model` member of `out`, as raw JSON text, in order.
fn models(out: &[u8]) -> Vec<String> {
    let spans = locate_model(out).expect("a JSON object").model_spans;
    spans
        .iter()
        .map(|s| String::from_utf8(out[s.clone()].to_vec()).unwrap())
        .collect()
}

fn rewrite(body: &str) -> String {
    let info = ok(body);
    String::from_utf8(with_model(body.as_bytes(), &info, "tier-model")).unwrap()
}

#[test]
fn numbers_are_read_as_pydantic_lax_reads_them() {
    for v in [
        "100",
        "100.0",
        "1e2",
        "1E2",
        "1.0e+2",
        "10000e-2",
        "\"100\"",
        "\" 100 \"",
        "\"1e2\"",
    ] {
        let body = format!(r#"{{"max_tokens":{v}}}"#);
        assert_eq!(ok(&body).max_tokens, Some(100), "{v}");
    }
    assert_eq!(ok(r#"{"max_tokens":true}"#).max_tokens, Some(1));
    assert_eq!(ok(r#"{"max_tokens":null}"#).max_tokens, None);
    assert_eq!(ok(r#"{"max_tokens":1e400}"#).max_tokens, Some(u64::MAX));
    assert_eq!(
        ok(r#"{"max_tokens":18446744073709551616}"#).max_tokens,
        Some(u64::MAX)
    );
    for v in [
        "-1", "1.5", "100.01", "1e-2", "\"abc\"", "\"\"", "{}", "[100]", "\"0x10\"",
    ] {
        let body = format!(r#"{{"max_tokens":{v}}}"#);
        assert_eq!(
            inspect(body.as_bytes()),
            Err(InvalidBody::InvalidField),
            "{v}"
        );
    }
    // -0 and 0.0 are zero, and zero is "unset".
    assert_eq!(ok(r#"{"max_tokens":-0}"#).max_tokens, None);
    assert_eq!(ok(r#"{"max_tokens":0.0}"#).max_tokens, None);
}

#[test]
fn number_parser_is_exact() {
    let n = json::number_for_tests;
    assert_eq!(n("0"), Ok(0));
    assert_eq!(n("007"), Ok(7));
    assert_eq!(n("+5"), Ok(5));
    assert_eq!(n("12.000"), Ok(12));
    assert_eq!(n("1.25e2"), Ok(125));
    assert_eq!(n("125e-1"), Err(()));
    assert_eq!(n("0.5e1"), Ok(5));
    assert_eq!(n("0e-999999999999"), Ok(0));
    assert_eq!(n("1e999999999999"), Ok(u64::MAX));
    assert_eq!(n("9007199254740993"), Ok(9_007_199_254_740_993));
    for bad in [
        "", "-", ".", "e5", "1e", "1e+", "1.2.3", "1 2", "--1", "1_000", "inf", "NaN",
    ] {
        assert_eq!(n(bad), Err(()), "{bad}");
    }
}

#[test]
fn booleans_are_read_as_pydantic_lax_reads_them() {
    for v in [
        "true", "1", "1.0", "\"true\"", "\"True\"", "\"1\"", "\"yes\"", "\"on\"", "\"t\"", "\"y\"",
    ] {
        assert!(ok(&format!(r#"{{"stream":{v}}}"#)).stream, "{v}");
    }
    for v in [
        "false",
        "0",
        "\"false\"",
        "\"0\"",
        "\"no\"",
        "\"off\"",
        "\"OFF\"",
        "null",
    ] {
        assert!(!ok(&format!(r#"{{"stream":{v}}}"#)).stream, "{v}");
    }
    let i = ok(r#"{"stream":"true","stream_options":{"include_usage":"yes"}}"#);
    assert!(i.stream && i.has_stream_options && i.include_usage);
}

#[test]
fn duplicate_keys_resolve_to_the_last_one_at_every_depth() {
    let i = ok(r#"{"max_tokens":5,"stream":true,"max_tokens":500,"stream":false}"#);
    assert_eq!(i.max_tokens, Some(500));
    assert!(!i.stream);
    let i = ok(
        r#"{"messages":[{"role":"user","content":"short","content":"the real, longer content"}]}"#,
    );
    assert_eq!(i.segments, ["the real, longer content"]);
    let i = ok(r#"{"messages":[],"messages":[{"role":"user","content":"x"}]}"#);
    assert_eq!(i.messages, 1);
    // An escaped key is the same key (Python decodes keys).
    let i = ok(r#"{"max_tokens":1,"max_\u0074okens":64}"#);
    assert_eq!(i.max_tokens, Some(64));
}

#[test]
fn completion_limit_follows_vllm() {
    let limit = |b: &str| ok(b).max_tokens;
    assert_eq!(
        limit(r#"{"max_completion_tokens":0,"max_tokens":700}"#),
        Some(700)
    );
    assert_eq!(
        limit(r#"{"max_completion_tokens":null,"max_tokens":700}"#),
        Some(700)
    );
    assert_eq!(
        limit(r#"{"max_completion_tokens":30,"max_tokens":700}"#),
        Some(30)
    );
    assert_eq!(limit(r#"{"max_completion_tokens":"30.0"}"#), Some(30));
    assert_eq!(limit(r#"{"max_tokens":0}"#), None);
}

#[test]
fn n_and_best_of() {
    let n = |b: &str| ok(b).n;
    assert_eq!(n("{}"), 1);
    assert_eq!(n(r#"{"n":4}"#), 4);
    assert_eq!(n(r#"{"n":"4"}"#), 4);
    assert_eq!(n(r#"{"n":2,"best_of":5}"#), 5);
    assert_eq!(n(r#"{"n":5,"best_of":2}"#), 5);
    assert_eq!(n(r#"{"best_of":3.0}"#), 3);
    assert_eq!(n(r#"{"n":0}"#), 1);
    assert_eq!(n(r#"{"n":null,"best_of":null}"#), 1);
    assert_eq!(
        inspect(br#"{"best_of":1.5}"#),
        Err(InvalidBody::InvalidField)
    );
}

#[test]
fn model_null_is_replaced_not_duplicated() {
    let out = rewrite(r#"{"model":null,"messages":[]}"#);
    assert_eq!(out, r#"{"model":"tier-model","messages":[]}"#);
    let i = ok(r#"{"model":null}"#);
    assert_eq!(i.model, None);
    assert_eq!(i.model_spans.len(), 1);
}

#[test]
fn every_model_member_is_rewritten_into_one() {
    for body in [
        r#"{"model":"a","model":"b"}"#,
        r#"{"model":"a","messages":[],"model":null}"#,
        r#"{"model":1, "model" : [1,{"model":2}] ,"x":0,"model":{"a":"}"}}"#,
        r#"{"mod\u0065l":"x","model":"y","m\u006fdel":false}"#,
        r#"{ "model"  :  "a"  ,
              "model":"b"  }"#,
        r#"{"\"model":"k","model":"a","model\\":"j","model":"b"}"#,
    ] {
        let out = rewrite(body);
        assert_eq!(
            models(out.as_bytes()),
            [r#""tier-model""#],
            "{body} -> {out}"
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["model"], "tier-model", "{out}");
    }
    // Keys that only look like `model` are kept.
    let out = rewrite(r#"{"\"model":"k","model":"a","model\\":"j"}"#);
    assert_eq!(out, r#"{"\"model":"k","model":"tier-model","model\\":"j"}"#);
    // The last string wins for routing, and other members are kept byte for byte.
    let body = r#"{"model":"a", "temperature": 0.5, "model":"b"}"#;
    assert_eq!(ok(body).model.as_deref(), Some("b"));
    assert_eq!(
        rewrite(body),
        r#"{"temperature": 0.5, "model":"tier-model"}"#
    );
    // A last member that is not a string: no requested model.
    assert_eq!(ok(r#"{"model":"a","model":7}"#).model, None);
}

#[test]
fn rewrite_and_usage_injection_compose() {
    for body in [
        r#"{"model":null,"stream":"true","model":"x"}"#,
        r#"{"stream":1}"#,
        r#"  {"model":"x","model":"y","stream":true}  "#,
    ] {
        let info = ok(body);
        assert!(info.stream && !info.has_stream_options);
        let out = with_model(body.as_bytes(), &info, "m2");
        let out = with_include_usage(&out, info.object_start);
        let again = inspect(&out).unwrap();
        assert!(again.include_usage, "{}", String::from_utf8_lossy(&out));
        assert_eq!(again.model.as_deref(), Some("m2"));
        assert_eq!(again.model_spans.len(), 1);
    }
}

#[test]
fn locate_model_works_on_objects_inspect_refuses() {
    let body = br#"{"model":"client","max_tokens":-5,"model":null}"#;
    assert_eq!(inspect(body), Err(InvalidBody::InvalidField));
    let loc = locate_model(body).unwrap();
    let out = with_model(body, &loc, "tier");
    assert_eq!(models(&out), [r#""tier""#]);
    assert!(locate_model(b"[1]").is_none());
    assert!(locate_model(b"{oops").is_none());
}

#[test]
fn hostile_encodings() {
    // A lone surrogate in a key or value is valid for Python's json: still read, still rewritten.
    let i = ok(r#"{"\ud800":1,"model":"x","messages":[{"role":"user","content":"a\udc00b"}]}"#);
    assert_eq!(i.model.as_deref(), Some("x"));
    assert_eq!(i.segments.len(), 1);
    assert_eq!(
        rewrite(r#"{"model":"\ud800"}"#),
        r#"{"model":"tier-model"}"#
    );
    // Raw control characters in keys are not JSON (Python refuses them too).
    assert_eq!(inspect(b"{\"a\x01\":1}"), Err(InvalidBody::NotJson));
    assert_eq!(inspect(b"{\"a\\n\x01\":1}"), Err(InvalidBody::NotJson));
    assert!(inspect(br#"{"a\n\u0001":1}"#).is_ok());
    assert_eq!(inspect(b"{\"model\":\"a\x02\"}"), Err(InvalidBody::NotJson));
}

#[test]
fn tools_functions_and_schemas_are_prompt_text() {
    let description = "Looks up the weather for a city and returns a long report. ".repeat(10_000);
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {
            "name": "weather", "description": description,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
    })
    .to_string();
    assert!(body.len() > 590_000);
    let info = ok(&body);
    assert_eq!(info.tools, 1);
    let est = prompt_tokens(&info);
    // cl100k: 11 tokens per sentence.
    assert!((100_000..130_000).contains(&est), "{est}");
    let schema = r#"{"type":"object","properties":{"answer":{"type":"string","description":"the final answer in one sentence"}}}"#;
    for body in [
        format!(r#"{{"functions":[{{"name":"f","description":"d","parameters":{schema}}}]}}"#),
        format!(
            r#"{{"response_format":{{"type":"json_schema","json_schema":{{"name":"a","schema":{schema}}}}}}}"#
        ),
        format!(r#"{{"tools":[{{"type":"web_search","config":{schema}}}]}}"#),
        format!(
            r#"{{"messages":[{{"role":"assistant","content":null,"tool_calls":[{{"function":{{"name":"f","arguments":{schema}}}}}]}}]}}"#
        ),
    ] {
        let info = ok(&body);
        assert!(
            prompt_tokens(&info) >= 20,
            "{body}: {}",
            prompt_tokens(&info)
        );
    }
}

#[test]
fn other_prompt_text_is_counted() {
    let count = |b: &str| prompt_tokens(&ok(b));
    let words = "lorem ipsum dolor sit amet ".repeat(100);
    for field in ["suffix", "chat_template"] {
        assert!(
            count(&format!(r#"{{"{field}":"{words}"}}"#)) >= 400,
            "{field}"
        );
    }
    assert!(count(&format!(r#"{{"documents":[{{"text":"{words}"}}]}}"#)) >= 400);
    assert!(
        count(&format!(
            r#"{{"messages":[{{"role":"user","name":"{words}","content":"x"}}]}}"#
        )) >= 400
    );
    assert!(
        count(&format!(
            r#"{{"messages":[{{"role":"user","content":[{{"type":"refusal","refusal":"{words}"}}]}}]}}"#
        )) >= 400
    );
    // Responses-style input items and odd content shapes count as their JSON text.
    assert!(
        count(&format!(
            r#"{{"input":[{{"role":"user","content":"{words}"}}]}}"#
        )) >= 400
    );
    assert!(
        count(&format!(
            r#"{{"messages":[{{"role":"user","content":{{"x":"{words}"}}}}]}}"#
        )) >= 400
    );
    // Media parts are counted per item, not by their base64 bytes.
    let img = format!(
        r#"{{"messages":[{{"role":"user","content":[{{"type":"input_audio","input_audio":{{"data":"{}"}}}}]}}]}}"#,
        "QUJD".repeat(10_000)
    );
    assert_eq!(count(&img), 85 + 7);
}

#[test]
fn whitespace_padding_in_prompts_is_counted() {
    let spaces = format!(r#"{{"prompt":"a{}b"}}"#, " ".repeat(100_000));
    assert!(prompt_tokens(&ok(&spaces)) >= 700);
    let lines = format!(r#"{{"prompt":"a{}b"}}"#, "\\n".repeat(100_000));
    assert!(prompt_tokens(&ok(&lines)) >= 3000);
    // JSON syntax whitespace outside strings is not prompt text.
    let padded = format!(r#"{{"prompt":"a b"{}}}"#, " ".repeat(100_000));
    assert!(prompt_tokens(&ok(&padded)) <= 3);
}
