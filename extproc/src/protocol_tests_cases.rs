use super::*;

const FD: Option<BodySendMode> = Some(BodySendMode::FullDuplexStreamed);
const BUF: Option<BodySendMode> = Some(BodySendMode::Buffered);
const BODY: &[u8] = br#"{"model":"gpt-4o","messages":[]}"#;
const REWRITTEN: &[u8] = br#"{"model":"llama-3.1-70b-instruct","messages":[]}"#;

#[test]
fn full_duplex_holds_headers_until_body_end_then_headers_body_in_order() {
    let (mut s, calls) = session(vec![
        Step::Hold,
        Step::Hold,
        go(Some(routed_headers("10.0.0.7:8000")), Some(REWRITTEN), true),
    ]);
    assert!(s.handle(req_headers(FD, false)).is_empty());
    assert!(s.handle(body(Dir::Request, &BODY[..10], false)).is_empty());
    let out = s.handle(body(Dir::Request, &BODY[10..], true));
    assert_eq!(kinds(&out), ["req_headers", "req_body"]);
    let set = set_headers(&out[0]);
    assert!(set.contains(&(
        "x-gateway-destination-endpoint".into(),
        "10.0.0.7:8000".into()
    )));
    assert!(set.contains(&("x-llm-model-type".into(), "large".into())));
    assert!(
        !set.iter().any(|(k, _)| k == ":path" || k == "content-type"),
        "unchanged headers are not set: {set:?}"
    );
    assert_eq!(removed(&out[0]), ["content-length"]);
    assert!(common_of(&out[0]).clear_route_cache);
    assert_eq!(metadata_endpoint(&out[0]).as_deref(), Some("10.0.0.7:8000"));
    assert_eq!(streamed(&out[1]), Some((REWRITTEN.to_vec(), true)));
    assert_eq!(s.events().picked_endpoint.as_deref(), Some("10.0.0.7:8000"));
    assert_eq!(
        calls_of(&calls),
        [
            Call::ReqHeaders(false),
            Call::ReqBody(BODY[..10].to_vec(), false),
            Call::ReqBody(BODY[10..].to_vec(), true)
        ]
    );
}

#[test]
fn full_duplex_body_is_sent_back_in_chunks_of_at_most_62000_bytes() {
    let big: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
    let (mut s, _) = session(vec![
        Step::Hold,
        go(Some(routed_headers("10.0.0.7:8000")), Some(&big), true),
    ]);
    s.handle(req_headers(FD, false));
    let out = s.handle(body(Dir::Request, &big, true));
    assert_eq!(
        kinds(&out),
        ["req_headers", "req_body", "req_body", "req_body"]
    );
    let parts: Vec<(Vec<u8>, bool)> = out[1..].iter().filter_map(streamed).collect();
    let sizes: Vec<usize> = parts.iter().map(|(b, _)| b.len()).collect();
    assert_eq!(sizes, [62_000, 62_000, 26_000]);
    let eos: Vec<bool> = parts.iter().map(|(_, e)| *e).collect();
    assert_eq!(eos, [false, false, true]);
    assert_eq!(parts.concat_bytes(), big);
}

trait Concat {
    fn concat_bytes(&self) -> Vec<u8>;
}
impl Concat for Vec<(Vec<u8>, bool)> {
    fn concat_bytes(&self) -> Vec<u8> {
        self.iter().flat_map(|(b, _)| b.clone()).collect()
    }
}

#[test]
fn exactly_62000_bytes_is_one_chunk_and_62001_is_two() {
    for (len, expect) in [(62_000usize, vec![62_000usize]), (62_001, vec![62_000, 1])] {
        let data = vec![b'a'; len];
        let (mut s, _) = session(vec![
            Step::Hold,
            go(Some(routed_headers("10.0.0.7:8000")), Some(&data), true),
        ]);
        s.handle(req_headers(FD, false));
        let out = s.handle(body(Dir::Request, &data, true));
        let sizes: Vec<usize> = out[1..]
            .iter()
            .filter_map(streamed)
            .map(|(b, _)| b.len())
            .collect();
        assert_eq!(sizes, expect, "len {len}");
    }
}

#[test]
fn a_list_of_endpoints_goes_out_as_one_in_header_and_metadata() {
    let (mut s, _) = session(vec![
        Step::Hold,
        go(
            Some(routed_headers("10.0.0.7:8000, 10.0.0.8:8000")),
            Some(BODY),
            true,
        ),
    ]);
    s.handle(req_headers(FD, false));
    let out = s.handle(body(Dir::Request, BODY, true));
    let set = set_headers(&out[0]);
    let endpoints: Vec<&(String, String)> = set
        .iter()
        .filter(|(k, _)| k == "x-gateway-destination-endpoint")
        .collect();
    assert_eq!(
        endpoints,
        [&(
            "x-gateway-destination-endpoint".to_string(),
            "10.0.0.7:8000".to_string()
        )]
    );
    assert_eq!(metadata_endpoint(&out[0]).as_deref(), Some("10.0.0.7:8000"));
}

#[test]
fn no_endpoint_picked_means_no_header_and_no_metadata() {
    let mut h = routed_headers("x");
    h.retain(|(k, _)| k != b"x-gateway-destination-endpoint");
    let (mut s, _) = session(vec![Step::Hold, go(Some(h), Some(BODY), true)]);
    s.handle(req_headers(FD, false));
    let out = s.handle(body(Dir::Request, BODY, true));
    assert!(out[0].dynamic_metadata.is_none());
    assert!(!set_headers(&out[0])
        .iter()
        .any(|(k, _)| k == "x-gateway-destination-endpoint"));
    assert_eq!(streamed(&out[1]), Some((BODY.to_vec(), true)));
}

#[test]
fn local_reply_mid_body_is_one_immediate_response_and_the_stream_goes_quiet() {
    let reply = Step::Reply {
        status: 429,
        headers: hv(&[("content-type", "application/json"), ("retry-after", "3")]),
        body: br#"{"error":{"code":"rate_limit_exceeded"}}"#.to_vec(),
    };
    let (mut s, calls) = session(vec![Step::Hold, Step::Hold, reply]);
    s.handle(req_headers(FD, false));
    assert!(s.handle(body(Dir::Request, b"{\"mo", false)).is_empty());
    let out = s.handle(body(Dir::Request, b"del\":1}", true));
    assert_eq!(kinds(&out), ["immediate"]);
    let (status, headers, text) = immediate_of(&out[0]).unwrap_or_default();
    assert_eq!(status, 429);
    assert!(headers.contains(&("retry-after".into(), "3".into())));
    assert!(text.contains("rate_limit_exceeded"));
    assert!(s.handle(resp_headers(&[(":status", "200")])).is_empty());
    assert_eq!(s.events().local_reply, Some(429));
    s.finish();
    assert_eq!(calls_of(&calls).last(), Some(&Call::Finish));
    assert_eq!(
        calls_of(&calls).len(),
        4,
        "the filter saw nothing after its reply"
    );
}

#[test]
fn response_sse_chunks_are_answered_one_by_one_as_they_come() {
    let chunks: [&[u8]; 3] = [
        b"data: {\"a\":1}\n\n",
        b"data: {\"a\":2}\n\n",
        b"data: [DONE]\n\n",
    ];
    let mut steps = vec![
        Step::Hold,
        go(Some(routed_headers("10.0.0.7:8000")), Some(BODY), true),
    ];
    steps.push(go(
        Some(hv(&[
            (":status", "200"),
            ("content-type", "text/event-stream"),
        ])),
        None,
        false,
    ));
    for c in chunks {
        steps.push(go(None, Some(c), false));
    }
    let (mut s, _) = session(steps);
    s.handle(req_headers(FD, false));
    s.handle(body(Dir::Request, BODY, true));
    let out = s.handle(resp_headers(&[
        (":status", "200"),
        ("content-type", "text/event-stream"),
    ]));
    assert_eq!(kinds(&out), ["resp_headers"]);
    assert!(common_of(&out[0]).header_mutation.is_none());
    for (i, c) in chunks.iter().enumerate() {
        let last = i == chunks.len() - 1;
        let out = s.handle(body(Dir::Response, c, last));
        assert_eq!(kinds(&out), ["resp_body"], "chunk {i}");
        assert_eq!(streamed(&out[0]), Some((c.to_vec(), last)));
    }
}

#[test]
fn served_endpoint_is_read_from_response_metadata_and_header() {
    let (mut s, _) = session(vec![]);
    let mut msg = resp_headers(&[(":status", "200")]);
    msg.metadata_context = Some(Metadata {
        filter_metadata: [(
            "envoy.lb".to_string(),
            Struct {
                fields: [(
                    "x-gateway-destination-endpoint-served".to_string(),
                    Value {
                        kind: Some(Kind::StringValue("10.0.0.9:8000".into())),
                    },
                )]
                .into(),
            },
        )]
        .into(),
        ..Default::default()
    });
    s.handle(msg);
    assert_eq!(s.events().served_endpoint.as_deref(), Some("10.0.0.9:8000"));
    let (mut s, _) = session(vec![]);
    s.handle(resp_headers(&[
        (":status", "200"),
        ("x-gateway-destination-endpoint-served", "10.0.0.5:80"),
    ]));
    assert_eq!(s.events().served_endpoint.as_deref(), Some("10.0.0.5:80"));
}

#[test]
fn request_trailers_end_a_held_request_in_order_headers_body_trailers() {
    let (mut s, _) = session(vec![
        Step::Hold,
        Step::Hold,
        go(Some(routed_headers("10.0.0.7:8000")), Some(BODY), true),
    ]);
    s.handle(req_headers(FD, false));
    assert!(s.handle(body(Dir::Request, BODY, false)).is_empty());
    let out = s.handle(trailers(Dir::Request));
    assert_eq!(kinds(&out), ["req_headers", "req_body", "req_trailers"]);
    assert_eq!(streamed(&out[1]), Some((BODY.to_vec(), false)));
}

#[test]
fn trap_fail_closed_answers_503() {
    let trap = Step::Trapped {
        continue_unchanged: false,
        message: "unreachable".into(),
    };
    let (mut s, _) = session(vec![Step::Hold, trap]);
    s.handle(req_headers(FD, false));
    let out = s.handle(body(Dir::Request, BODY, true));
    assert_eq!(kinds(&out), ["immediate"]);
    let (status, _, text) = immediate_of(&out[0]).unwrap_or_default();
    assert_eq!(status, 503);
    assert!(text.contains("\"error\""));
    assert!(s.events().trapped);
}

#[test]
fn trap_fail_open_mid_body_passes_everything_held_unchanged_and_stops_calling_the_filter() {
    let trap = Step::Trapped {
        continue_unchanged: true,
        message: "oops".into(),
    };
    let (mut s, calls) = session(vec![Step::Hold, Step::Hold, trap]);
    s.handle(req_headers(FD, false));
    s.handle(body(Dir::Request, &BODY[..5], false));
    let out = s.handle(body(Dir::Request, &BODY[5..], true));
    assert_eq!(kinds(&out), ["req_headers", "req_body"]);
    assert!(common_of(&out[0]).header_mutation.is_none());
    assert_eq!(streamed(&out[1]), Some((BODY.to_vec(), true)));
    let out = s.handle(resp_headers(&[(":status", "200")]));
    assert_eq!(kinds(&out), ["resp_headers"]);
    let out = s.handle(body(Dir::Response, b"{}", true));
    assert_eq!(streamed(&out[0]), Some((b"{}".to_vec(), true)));
    assert_eq!(calls_of(&calls).len(), 3);
}

#[test]
fn buffered_answers_headers_at_once_and_puts_mutations_on_the_body_response() {
    let (mut s, _) = session(vec![
        Step::Hold,
        go(Some(routed_headers("10.0.0.7:8000")), Some(REWRITTEN), true),
    ]);
    let out = s.handle(req_headers(BUF, false));
    assert_eq!(kinds(&out), ["req_headers"]);
    assert!(common_of(&out[0]).header_mutation.is_none());
    assert!(out[0].dynamic_metadata.is_none());
    let out = s.handle(body(Dir::Request, BODY, true));
    assert_eq!(kinds(&out), ["req_body"]);
    assert!(set_headers(&out[0]).contains(&(
        "x-gateway-destination-endpoint".into(),
        "10.0.0.7:8000".into()
    )));
    assert_eq!(replaced_body(&out[0]), Some(REWRITTEN.to_vec()));
    assert!(common_of(&out[0]).clear_route_cache);
    assert_eq!(metadata_endpoint(&out[0]).as_deref(), Some("10.0.0.7:8000"));
    assert_eq!(s.mode(Dir::Request), BodyMode::PerMessage);
}

#[test]
fn buffered_unchanged_body_carries_no_body_mutation() {
    let (mut s, _) = session(vec![
        Step::Hold,
        go(Some(routed_headers("10.0.0.7:8000")), Some(BODY), true),
    ]);
    s.handle(req_headers(BUF, false));
    let out = s.handle(body(Dir::Request, BODY, true));
    assert_eq!(replaced_body(&out[0]), None);
}

#[test]
fn without_protocol_config_every_message_is_answered_at_once() {
    let (mut s, _) = session(vec![
        Step::Hold,
        Step::Hold,
        go(Some(routed_headers("10.0.0.7:8000")), Some(REWRITTEN), true),
    ]);
    assert_eq!(kinds(&s.handle(req_headers(None, false))), ["req_headers"]);
    assert_eq!(
        kinds(&s.handle(body(Dir::Request, &BODY[..4], false))),
        ["req_body"]
    );
    let out = s.handle(body(Dir::Request, &BODY[4..], true));
    assert_eq!(kinds(&out), ["req_body"]);
    // The first 4 bytes already went unchanged: the rewrite cannot be applied without
    // duplicating them, so it is dropped and counted, never spliced.
    assert_eq!(replaced_body(&out[0]), None);
    assert!(s.events().lost_body_rewrite);
}

#[test]
fn full_duplex_headers_only_request_is_answered_at_once() {
    let (mut s, _) = session(vec![Step::Hold]);
    let out = s.handle(req_headers(FD, true));
    assert_eq!(kinds(&out), ["req_headers"]);
}

fn subset(list: &[&str]) -> Metadata {
    Metadata {
        filter_metadata: [(
            "envoy.lb.subset_hint".to_string(),
            Struct {
                fields: [(
                    "x-gateway-destination-endpoint-subset".to_string(),
                    Value {
                        kind: Some(Kind::ListValue(ListValue {
                            values: list
                                .iter()
                                .map(|e| Value {
                                    kind: Some(Kind::StringValue(e.to_string())),
                                })
                                .collect(),
                        })),
                    },
                )]
                .into(),
            },
        )]
        .into(),
        ..Default::default()
    }
}

#[test]
fn subset_hint_is_honoured() {
    for (list, expect_ok) in [
        (vec!["10.0.0.7:8000", "10.0.0.8:8000"], true),
        (vec!["10.0.0.8:8000"], false),
        (vec![], false),
    ] {
        let (mut s, _) = session(vec![
            Step::Hold,
            go(Some(routed_headers("10.0.0.7:8000")), Some(BODY), true),
        ]);
        let mut first = req_headers(FD, false);
        first.metadata_context = Some(subset(&list));
        s.handle(first);
        let out = s.handle(body(Dir::Request, BODY, true));
        if expect_ok {
            assert_eq!(kinds(&out), ["req_headers", "req_body"], "{list:?}");
        } else {
            assert_eq!(kinds(&out), ["immediate"], "{list:?}");
            assert_eq!(immediate_of(&out[0]).map(|i| i.0), Some(503));
            assert!(s.events().subset_rejected);
        }
    }
}

/// A full-duplex exchange, cut after every message: the filter stream is finished exactly
/// once, and never called after it.
#[test]
fn cancel_at_every_point_finishes_the_filter_stream_once() {
    let script = || {
        vec![
            req_headers(FD, false),
            body(Dir::Request, &BODY[..8], false),
            body(Dir::Request, &BODY[8..], true),
            resp_headers(&[(":status", "200")]),
            body(Dir::Response, b"data: x\n\n", false),
            body(Dir::Response, b"data: [DONE]\n\n", true),
        ]
    };
    for cut in 0..=script().len() {
        let steps = vec![
            Step::Hold,
            Step::Hold,
            go(Some(routed_headers("10.0.0.7:8000")), Some(BODY), true),
        ];
        let (mut s, calls) = session(steps);
        for msg in script().into_iter().take(cut) {
            s.handle(msg);
        }
        s.finish();
        let calls = calls_of(&calls);
        assert_eq!(
            calls.iter().filter(|c| **c == Call::Finish).count(),
            1,
            "cut {cut}"
        );
        assert_eq!(calls.last(), Some(&Call::Finish), "cut {cut}");
        assert_eq!(calls.len(), cut + 1, "cut {cut}");
    }
}

#[test]
fn header_diff_sets_changed_removes_missing_and_never_removes_pseudo_headers() {
    let before = hv(&[
        (":path", "/a"),
        ("a", "1"),
        ("b", "2"),
        ("c", "3"),
        ("c", "4"),
    ]);
    let after = hv(&[("a", "1"), ("b", "9"), ("c", "3"), ("c", "5"), ("d", "x")]);
    let Some(mutation) = m::header_mutation(&before, &after) else {
        unreachable!("a change was made")
    };
    let set: Vec<(String, String, i32)> = mutation
        .set_headers
        .iter()
        .filter_map(|o| {
            o.header.as_ref().map(|h| {
                (
                    h.key.clone(),
                    String::from_utf8_lossy(&h.raw_value).into_owned(),
                    o.append_action,
                )
            })
        })
        .collect();
    assert_eq!(
        set,
        [
            ("b".into(), "9".into(), 2),
            ("c".into(), "3".into(), 2),
            ("c".into(), "5".into(), 0),
            ("d".into(), "x".into(), 2)
        ]
    );
    assert!(
        mutation.remove_headers.is_empty(),
        "{:?}",
        mutation.remove_headers
    );
    assert_eq!(m::header_mutation(&before, &before), None);
}
