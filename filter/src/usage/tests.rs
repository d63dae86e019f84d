#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;
use crate::tokens::estimate_tokens;

fn usage(p: u64, c: u64, t: u64) -> Option<Usage> {
    Some(Usage {
        prompt_tokens: p,
        completion_tokens: c,
        total_tokens: t,
    })
}

#[test]
fn json_body_usage() {
    let b = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
    assert_eq!(json_usage(b), usage(12, 30, 42));
    assert_eq!(json_usage(br#"{"choices":[]}"#), None);
    assert_eq!(json_usage(br#"{"usage":null}"#), None);
    assert_eq!(json_usage(b"not json"), None);
    assert_eq!(json_usage(b"[1,2]"), None);
    assert_eq!(json_usage(b""), None);
    // embeddings: no completion tokens
    let e = json_usage(br#"{"usage":{"prompt_tokens":8,"total_tokens":8}}"#).unwrap();
    assert_eq!((e.completion_tokens, e.total()), (0, 8));
}

#[test]
fn total_falls_back_to_the_sum() {
    let u = Usage {
        prompt_tokens: 3,
        completion_tokens: 4,
        total_tokens: 0,
    };
    assert_eq!(u.total(), 7);
    let huge = Usage {
        prompt_tokens: u64::MAX,
        completion_tokens: 5,
        total_tokens: 0,
    };
    assert_eq!(huge.total(), u64::MAX);
}

#[test]
fn counts_are_read_leniently_and_hostile_ones_never_count() {
    let u = |counts: &str| json_usage(format!(r#"{{"usage":{{{counts}}}}}"#).as_bytes());
    assert_eq!(
        u(r#""prompt_tokens":12.0,"completion_tokens":1.5e1"#),
        usage(12, 15, 0)
    );
    assert_eq!(
        u(r#""prompt_tokens":"7","completion_tokens":" 3 ""#),
        usage(7, 3, 0)
    );
    // fractions round up (the charge errs on the safe side)
    assert_eq!(u(r#""prompt_tokens":2.1"#), usage(3, 0, 0));
    // negative, non-numeric, boolean, container: absent
    assert_eq!(
        u(r#""prompt_tokens":-5,"completion_tokens":"x","total_tokens":true"#),
        None
    );
    assert_eq!(
        u(r#""prompt_tokens":[1],"completion_tokens":{"a":2}"#),
        None
    );
    assert_eq!(
        u(r#""prompt_tokens":"NaN","completion_tokens":"inf""#),
        None
    );
    assert_eq!(u(r#""prompt_tokens":1e400"#), None);
    // huge: saturates, never wraps or panics
    assert_eq!(
        u(r#""prompt_tokens":99999999999999999999999999,"completion_tokens":1e30"#),
        usage(u64::MAX, u64::MAX, 0)
    );
    // a number longer than any count is no count
    let long = "1".repeat(100);
    assert_eq!(u(&format!(r#""prompt_tokens":{long}"#)), None);
    // duplicate keys: the last one wins, as in Python
    assert_eq!(
        u(r#""prompt_tokens":1,"prompt_tokens":2,"completion_tokens":5,"completion_tokens":"bad""#),
        usage(2, 0, 0)
    );
    // an empty usage object carries nothing (it must not refund the whole charge)
    assert_eq!(u(""), None);
}

#[test]
fn only_the_top_level_usage_counts_and_strings_are_not_structure() {
    let b = br#"{"choices":[{"message":{"content":"\"usage\":{\"prompt_tokens\":999}}"}}],
        "meta":{"usage":{"prompt_tokens":5}},"x":"}{][","usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
    assert_eq!(json_usage(b), usage(1, 2, 0));
    // an escaped key is the key it spells
    assert_eq!(
        json_usage(br#"{"\u0075sage":{"total_tokens":9}}"#),
        usage(0, 0, 9)
    );
    // null never erases a usage read before; a later usage object replaces it
    assert_eq!(
        json_usage(br#"{"usage":{"total_tokens":9},"usage":null}"#),
        usage(0, 0, 9)
    );
    assert_eq!(
        json_usage(br#"{"usage":{"total_tokens":9},"usage":{"total_tokens":4}}"#),
        usage(0, 0, 4)
    );
}

#[test]
fn a_huge_response_yields_its_usage_with_bounded_memory() {
    let mut s = JsonUsageScanner::default();
    s.feed(br#"{"id":"a","choices":[{"message":{"content":""#);
    let filler = "word ".repeat(20_000); // 100 kB per chunk, 10 MB in all
    for _ in 0..100 {
        s.feed(filler.as_bytes());
    }
    s.feed(br#""}}],"data":[[[[{"deep":["#);
    for _ in 0..1000 {
        s.feed(b"[[[[[[[[[[");
    }
    for _ in 0..1000 {
        s.feed(b"]]]]]]]]]]");
    }
    s.feed(br#"]}]]]],"usage":{"prompt_tokens":3,"completion_tokens":2000000}}"#);
    assert!(s.scan.held_bytes() <= 2 * scan::TEXT_CHUNK);
    assert_eq!(s.finish(), usage(3, 2_000_000, 0));
    // the content was estimated chunk by chunk: about one token per word
    let est = s.completion_estimate();
    assert!((1_500_000..=2_500_000).contains(&est), "{est}");
}

#[test]
fn json_completion_text_is_estimated() {
    let mut s = JsonUsageScanner::default();
    s.feed(br#"{"choices":[{"message":{"content":"Hello there, how are you?","tool_calls":[{"function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]}},{"text":"ok"}]}"#);
    assert_eq!(s.finish(), None);
    let want = estimate_tokens("Hello there, how are you?")
        + estimate_tokens("get_weather")
        + estimate_tokens("{\"city\":\"Paris\"}")
        + estimate_tokens("ok");
    assert_eq!(s.completion_estimate(), want);
}

const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n\
data: [DONE]\n\n";

#[test]
fn sse_usage_in_one_chunk() {
    let mut s = SseScanner::default();
    assert!(s.feed(STREAM.as_bytes()));
    assert_eq!(s.usage.unwrap().total(), 11);
    assert_eq!(s.events, 4);
    assert!(s.done);
    assert_eq!(
        s.completion_estimate,
        estimate_tokens("Hel") + estimate_tokens("lo")
    );
}

#[test]
fn sse_split_at_every_byte() {
    let mut s = SseScanner::default();
    let mut firsts = 0;
    for b in STREAM.as_bytes() {
        if s.feed(std::slice::from_ref(b)) {
            firsts += 1;
        }
    }
    assert_eq!(firsts, 1);
    assert_eq!(s.usage.unwrap().completion_tokens, 2);
    assert_eq!(s.events, 4);
    assert!(s.done);
}

#[test]
fn sse_every_line_ending_of_the_sse_rules() {
    for eol in ["\n", "\r\n", "\r"] {
        let text = STREAM.replace('\n', eol);
        let mut s = SseScanner::default();
        s.feed(text.as_bytes());
        assert_eq!(s.usage, usage(9, 2, 11), "{eol:?}");
        assert_eq!(s.events, 4, "{eol:?}");
        assert!(s.done, "{eol:?}");
    }
    // bare CR between fields, no space after the colon
    let mut s = SseScanner::default();
    s.feed(b"event: x\rdata:{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\r\r");
    assert_eq!(s.usage.unwrap().total(), 2);
}

#[test]
fn sse_crlf_split_across_chunks_is_one_line_end() {
    // One event over two data lines: a CR | LF split that counted twice would be a blank
    // line between them, ending the event early and losing its usage.
    let mut s = SseScanner::default();
    s.feed(b"data: {\"choices\":[],\r");
    s.feed(b"\ndata: \"usage\":{\"total_tokens\":3}}\r");
    s.feed(b"\n\r");
    s.feed(b"\n");
    assert_eq!(s.usage, usage(0, 0, 3));
    assert_eq!(s.events, 2);
    // A lone CR then a chunk starting with "data": the CR ended the line.
    let mut s = SseScanner::default();
    s.feed(b": comment\r");
    s.feed(b"data: {\"usage\":{\"total_tokens\":4}}\n");
    assert_eq!(s.usage, usage(0, 0, 4));
}

#[test]
fn sse_without_usage_is_estimated_from_the_streamed_text() {
    let mut s = SseScanner::default();
    s.feed(b"data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"Let me think\"}}]}\n\n");
    s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"The answer is 42.\"}}]}\n\n");
    s.feed(b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"calc\",\"arguments\":\"{\\\"x\\\": 1}\"}}]}}]}\n\n");
    s.feed(b"data: {\"choices\":[{\"text\":\" legacy completion\"}]}\n\n");
    s.feed(b"data: [DONE]\n\n");
    assert!(s.saw_data && s.done && s.usage.is_none());
    let want = estimate_tokens("Let me think")
        + estimate_tokens("The answer is 42.")
        + estimate_tokens("calc")
        + estimate_tokens("{\"x\": 1}")
        + estimate_tokens(" legacy completion");
    assert_eq!(s.completion_estimate, want);
    // other strings (ids, roles, finish reasons) are not completion text
    let mut s = SseScanner::default();
    s.feed(b"data: {\"id\":\"chatcmpl-123456\",\"choices\":[{\"delta\":{\"role\":\"assistant\"},\"finish_reason\":\"stop\"}]}\n\n");
    assert_eq!(s.completion_estimate, 0);
}

#[test]
fn sse_first_data_is_not_a_comment_or_empty() {
    let mut s = SseScanner::default();
    assert!(!s.feed(b": keep-alive\n\n"));
    assert!(!s.feed(b"data:\n\n"));
    assert!(!s.feed(b"data: [DONE]\n\n"));
    assert!(s.feed(b"data: {}\n\n"));
    assert!(!s.feed(b"data: {}\n\n"));
    assert_eq!(s.events, 2);
}

#[test]
fn sse_huge_event_keeps_its_usage_and_memory_stays_bounded() {
    let mut s = SseScanner::default();
    s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"");
    for _ in 0..100 {
        s.feed(&[b'x'; 10_000]);
    }
    // 1 MB line with the usage at its end, then a normal event
    s.feed(b"\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":5}}\n\n");
    assert_eq!(s.usage.unwrap().total(), 10);
    assert!(s.completion_estimate > 0);
    assert!(s.json.held_bytes() <= 2 * scan::TEXT_CHUNK);
    assert!(s.head.capacity() <= 64 && s.field.capacity() <= 64);
    // a huge line that is not data, then usage after it
    s.feed(b": ");
    for _ in 0..100 {
        s.feed(&[b'y'; 10_000]);
    }
    s.feed(b"\ndata: {\"usage\":{\"prompt_tokens\":6,\"completion_tokens\":6}}\n");
    assert_eq!(s.usage.unwrap().total(), 12);
}

#[test]
fn sse_event_over_several_data_lines() {
    let mut s = SseScanner::default();
    s.feed(b"data: {\"usage\":\ndata: {\"total_tokens\":7}}\n\n");
    assert_eq!(s.usage, usage(0, 0, 7));
    // a blank line ends an unfinished event: the next one starts afresh
    let mut s = SseScanner::default();
    s.feed(b"data: {\"usage\":\n\ndata: {\"usage\":{\"total_tokens\":8}}\n\n");
    assert_eq!(s.usage, usage(0, 0, 8));
}

#[test]
fn sse_last_line_without_line_end_counts_at_finish() {
    let mut s = SseScanner::default();
    s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"partial text");
    assert_eq!(s.completion_estimate, 0);
    s.finish();
    assert_eq!(s.events, 1);
    assert_eq!(s.completion_estimate, estimate_tokens("partial text"));
    let mut s = SseScanner::default();
    s.feed(b"data: {\"usage\":{\"total_tokens\":3}}");
    assert_eq!(s.usage, usage(0, 0, 3));
}

#[test]
fn escapes_in_completion_text_are_decoded() {
    let mut s = SseScanner::default();
    s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"caf\\u00e9 \\ud83d\\ude00 \\ud800x \\n\\\"q\\\" \\uZZ\"}}]}\n");
    assert_eq!(
        s.completion_estimate,
        estimate_tokens("caf\u{e9} \u{1F600} \u{FFFD}x \n\"q\" \u{FFFD}ZZ")
    );
}
