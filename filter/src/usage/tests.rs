#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;

#[test]
fn json_body_usage() {
    let b = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
    assert_eq!(
        json_usage(b),
        Some(Usage {
            prompt_tokens: 12,
            completion_tokens: 30,
            total_tokens: 42
        })
    );
    assert_eq!(json_usage(br#"{"choices":[]}"#), None);
    assert_eq!(json_usage(br#"{"usage":null}"#), None);
    assert_eq!(json_usage(b"not json"), None);
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
    assert!(s.done);
}

#[test]
fn sse_crlf_and_no_space() {
    let mut s = SseScanner::default();
    s.feed(b"event: x\r\ndata:{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\r\n\r\n");
    assert_eq!(s.usage.unwrap().total(), 2);
}

#[test]
fn sse_without_usage() {
    let mut s = SseScanner::default();
    s.feed(b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n");
    assert!(s.saw_data && s.done && s.usage.is_none());
}

#[test]
fn sse_first_data_is_not_a_comment_or_empty() {
    let mut s = SseScanner::default();
    assert!(!s.feed(b": keep-alive\n\n"));
    assert!(!s.feed(b"data:\n\n"));
    assert!(s.feed(b"data: {}\n\n"));
    assert!(!s.feed(b"data: {}\n\n"));
}

#[test]
fn sse_huge_line_is_skipped_not_kept() {
    let mut s = SseScanner::default();
    s.feed(b"data: ");
    for _ in 0..100 {
        s.feed(&[b'x'; 10_000]);
    }
    assert!(s.line.len() <= MAX_LINE);
    s.feed(b"\ndata: {\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":5}}\n");
    assert_eq!(s.usage.unwrap().total(), 10);
}
