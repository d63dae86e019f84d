#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const SPAN: &str = "b7ad6b7169203331";

fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

#[test]
fn a_w3c_traceparent_is_read_and_bad_ones_are_not() {
    let p = traceparent(format!("00-{TRACE}-{SPAN}-01").as_bytes()).unwrap();
    assert_eq!(p.trace_id[0], 0x0a);
    assert_eq!(p.span_id[7], 0x31);
    assert!(p.sampled);
    let unsampled = traceparent(format!("00-{TRACE}-{SPAN}-00").as_bytes()).unwrap();
    assert!(!unsampled.sampled);
    for bad in [
        String::new(),
        format!("00-{TRACE}-{SPAN}"),
        format!("00-{TRACE}-{SPAN}-01-extra"),
        format!("ff-{TRACE}-{SPAN}-01"),
        format!("00-{}-{SPAN}-01", "0".repeat(32)),
        format!("00-{TRACE}-{}-01", "0".repeat(16)),
        format!("00-{TRACE}-{SPAN}x-01"),
        format!("00-{}-{SPAN}-01", "é".repeat(16)),
    ] {
        assert_eq!(traceparent(bad.as_bytes()), None, "{bad}");
    }
    // A later version may carry more fields.
    assert!(traceparent(format!("01-{TRACE}-{SPAN}-01-more").as_bytes()).is_some());
}

#[test]
fn datadog_headers_are_the_fallback() {
    let p = parent_in(&h(&[
        ("x-datadog-trace-id", "1234"),
        ("x-datadog-parent-id", "5678"),
    ]))
    .unwrap();
    assert_eq!(&p.trace_id[8..], &1234u64.to_be_bytes());
    assert_eq!(p.span_id, 5678u64.to_be_bytes());
    assert!(p.sampled);
    let dropped = parent_in(&h(&[
        ("x-datadog-trace-id", "1"),
        ("x-datadog-parent-id", "2"),
        ("x-datadog-sampling-priority", "-1"),
    ]))
    .unwrap();
    assert!(!dropped.sampled);
    // W3C wins when both are there.
    let both = parent_in(&h(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("x-datadog-trace-id", "1"),
        ("x-datadog-parent-id", "2"),
    ]))
    .unwrap();
    assert_eq!(both.trace_id[0], 0x0a);
    assert_eq!(parent_in(&h(&[("x-datadog-trace-id", "x")])), None);
}

#[test]
fn a_span_continues_the_parent_with_the_published_attributes() {
    let parent = traceparent(format!("00-{TRACE}-{SPAN}-01").as_bytes());
    let published = vec![
        ("llm_router.tier".to_string(), b"small".to_vec()),
        ("llm_router.model".to_string(), b"m".to_vec()),
        ("llm_router.not_traced".to_string(), b"x".to_vec()),
    ];
    let mut n = 0u64;
    let s = span(
        parent,
        || {
            n += 1;
            n
        },
        10,
        20,
        &published,
        Some(429),
    )
    .unwrap();
    assert_eq!(s.trace_id, parent.unwrap().trace_id);
    assert_eq!(s.parent_span_id, Some(parent.unwrap().span_id));
    assert_eq!(s.span_id, 1u64.to_be_bytes());
    assert_eq!(
        s.attributes,
        vec![
            ("llm_router.tier".to_string(), "small".to_string()),
            ("gen_ai.request.model".to_string(), "m".to_string()),
            ("http.response.status_code".to_string(), "429".to_string()),
        ]
    );
    assert!(!s.error);
}

#[test]
fn no_parent_starts_a_trace_and_an_unsampled_parent_gets_no_span() {
    let s = span(None, || 7, 5, 1, &[], None).unwrap();
    assert_ne!(s.trace_id, [0; 16]);
    assert_eq!(s.parent_span_id, None);
    assert_eq!(s.end_unix_ns, 5, "an end before the start is clamped");
    let unsampled = traceparent(format!("00-{TRACE}-{SPAN}-00").as_bytes());
    assert_eq!(span(unsampled, || 7, 0, 1, &[], None), None);
}

/// xorshift64*: deterministic pseudo-random inputs.
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.max(1);
    move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn any_bytes_parse_without_panicking_and_valid_ids_round_trip() {
    let mut next = rng(42);
    let alphabet = b"0123456789abcdefABCDEF-_ \t\xff\x00";
    for i in 0..20_000u64 {
        let len = (next() % 80) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                if i.is_multiple_of(2) {
                    alphabet[(next() % alphabet.len() as u64) as usize]
                } else {
                    next() as u8
                }
            })
            .collect();
        let _ = traceparent(&bytes);
        let _ = datadog(&bytes, &bytes, Some(&bytes));
        let _ = parent_in(&vec![(b"traceparent".to_vec(), bytes)]);
    }
    for _ in 0..2_000 {
        let (t, s) = ((next() as u128) << 64 | next() as u128 | 1, next() | 1);
        let sampled = next().is_multiple_of(2);
        let v = format!("00-{t:032x}-{s:016x}-{:02x}", u8::from(sampled));
        let p = traceparent(v.as_bytes()).unwrap();
        assert_eq!(
            (p.trace_id, p.span_id, p.sampled),
            (t.to_be_bytes(), s.to_be_bytes(), sampled)
        );
    }
}
