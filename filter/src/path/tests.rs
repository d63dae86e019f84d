#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn apis() -> Vec<String> {
    ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn is_api(raw: &[u8]) -> bool {
    matches_prefixes(&apis(), raw)
}

#[test]
fn normalize_decodes_merges_and_resolves() {
    let cases: [(&[u8], &str); 20] = [
        (b"/v1/chat/completions", "/v1/chat/completions"),
        (b"/v1/chat%2Fcompletions", "/v1/chat/completions"),
        (b"/v1/chat%2fcompletions", "/v1/chat/completions"),
        (b"/v1//chat///completions", "/v1/chat/completions"),
        (b"//v1/chat/completions", "/v1/chat/completions"),
        (b"/v1/./chat/completions", "/v1/chat/completions"),
        (b"/v1/x/../chat/completions", "/v1/chat/completions"),
        (b"/x/%2E%2E/v1/chat/completions", "/v1/chat/completions"),
        (b"/x/%2e./v1/chat/completions", "/v1/chat/completions"),
        (b"/../../v1/chat/completions", "/v1/chat/completions"),
        (b"/v1/chat/completions?x=1", "/v1/chat/completions"),
        (b"/v1/chat/completions#frag", "/v1/chat/completions"),
        (b"/v1/chat/completions?a=%2F..#x", "/v1/chat/completions"),
        (b"/v1/completions/", "/v1/completions/"),
        (b"/v1/completions/.", "/v1/completions/"),
        (b"", "/"),
        (b"v1/embeddings", "/v1/embeddings"),
        (b"%zz/%2/%", "/%zz/%2/%"),
        (b"/v1/chat%252Fcompletions", "/v1/chat%2Fcompletions"),
        (
            b"http://gw:80/v1/chat/completions?x",
            "/v1/chat/completions",
        ),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize(raw), want, "{:?}", String::from_utf8_lossy(raw));
    }
}

#[test]
fn normalize_never_panics_on_bad_bytes() {
    // Invalid UTF-8 raw and after decoding: replaced, not trusted.
    assert_eq!(normalize(b"/a/\xff\xfe/b"), "/a/\u{fffd}\u{fffd}/b");
    assert_eq!(normalize(b"/a/%ff%C3/b"), "/a/\u{fffd}\u{fffd}/b");
    assert_eq!(normalize(b"/%C3%A9t%C3%A9"), "/\u{e9}t\u{e9}");
    assert_eq!(normalize(b"/a%00b"), "/a\0b");
    assert!(!is_api(b"\xff\xff%ff%"));
}

#[test]
fn every_spelling_of_an_api_path_is_inspected() {
    for raw in [
        &b"/v1/chat/completions"[..],
        b"/v1/chat%2Fcompletions",
        b"/v1/chat%2fcompletions",
        b"/v1%2Fchat%2Fcompletions",
        b"%2Fv1%2Fchat%2Fcompletions",
        b"/v1//chat/completions",
        b"//v1/chat/completions",
        b"/v1/./chat/completions",
        b"/./v1/chat/completions",
        b"/v1/x/../chat/completions",
        b"/x/%2E%2E/v1/chat/completions",
        b"/v1/chat/completions?stream=true",
        b"/v1/chat/completions#x",
        b"/v1/chat/completions/",
        // double and triple encoding: some proxy or server may decode again
        b"/v1/chat%252Fcompletions",
        b"/v1/chat%25252Fcompletions",
        b"/x/%252E%252E/v1/embeddings",
        // %-encoded letters
        b"/v1/%63hat/completions",
        b"/%76%31/completions",
        // backslash as a separator, encoded query/fragment/matrix parameters
        b"/v1\\chat\\completions",
        b"/v1%5Cchat%5Ccompletions",
        b"/v1/chat/completions%3Fx=1",
        b"/v1/chat/completions%23x",
        b"/v1/chat/completions;jsessionid=1",
        b"/v1/completions%3B",
        // absolute form
        b"http://gateway/v1/completions",
        b"HTTPS://gateway:443//v1//embeddings",
        // a server that does not resolve dot segments may read this one as the API path
        b"/v1/chat/completions/../../models",
    ] {
        assert!(is_api(raw), "{:?}", String::from_utf8_lossy(raw));
    }
}

#[test]
fn other_paths_are_not_api_paths() {
    for raw in [
        &b"/v1/models"[..],
        b"/v1/chat/completionsX",
        b"/v1/chat",
        b"/health",
        b"/",
        b"",
        b"?/v1/chat/completions",
        b"/x#/v1/chat/completions",
        b"/v1/chat/%2E%2E/models",
        b"/V1/CHAT/COMPLETIONS",
        b"%",
        b"%%%%",
        b"/v1/chat%2",
    ] {
        assert!(!is_api(raw), "{:?}", String::from_utf8_lossy(raw));
    }
}

#[test]
fn config_is_api_path_uses_the_normalisation() {
    let c = crate::config::Config::parse(br#"{"tiers":{"small":{}}}"#).unwrap();
    assert!(c.is_api_path("/v1/chat%2Fcompletions"));
    assert!(c.is_api_path("//v1/chat/completions?x"));
    assert!(!c.is_api_path("/v1/models"));
}

#[test]
fn percent_decoding_keeps_malformed_escapes() {
    assert_eq!(percent_decode(b"%41%4a%4A%g1%1"), b"AJJ%g1%1");
    assert_eq!(percent_decode(b"%"), b"%");
    assert_eq!(percent_decode(b"%2"), b"%2");
    assert_eq!(percent_decode(b"%252F"), b"%2F");
}
