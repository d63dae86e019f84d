//! Property test (seeded): the plain-path shortcut answers exactly as the full readings do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;
use crate::testutil::Rng;

fn gen_path(rng: &mut Rng) -> Vec<u8> {
    let pieces: [&[u8]; 24] = [
        b"/",
        b"/",
        b"/",
        b"v1",
        b"chat",
        b"completions",
        b"embeddings",
        b".",
        b"..",
        b"%2F",
        b"%2e",
        b"%25",
        b"%",
        b"\\",
        b";",
        b"?",
        b"#",
        b"x",
        b"-",
        b" ",
        b"\xff",
        b"\xc3\xa9",
        b"http://h",
        b"//",
    ];
    let n = rng.below(10);
    let mut out = Vec::new();
    if rng.chance(90) {
        out.push(b'/');
    }
    for _ in 0..n {
        let piece: &[u8] = rng.pick::<&[u8]>(&pieces);
        out.extend_from_slice(piece);
    }
    out
}

#[test]
fn the_plain_path_shortcut_equals_the_full_readings() {
    let prefixes: Vec<String> = ["/v1/chat/completions", "/v1/embeddings", "/v1/"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut rng = Rng::new(0x5EED_0077);
    let mut plain_seen = 0u64;
    for iter in 0..crate::testutil::iters(20_000) {
        let raw = gen_path(&mut rng);
        if plain(path_part(&raw)).is_some() {
            plain_seen += 1;
        }
        assert_eq!(
            normalize(&raw),
            normalize_slow(&raw),
            "iter {iter}: {raw:?}"
        );
        for n in 1..=prefixes.len() {
            let p = &prefixes[..n];
            assert_eq!(
                matches_prefixes(p, &raw),
                matches_prefixes_slow(p, &raw),
                "iter {iter}: {raw:?}"
            );
        }
    }
    // Both branches were exercised.
    assert!(plain_seen > 100, "only {plain_seen} plain paths");
}

#[test]
fn plain_takes_only_paths_with_one_reading() {
    for p in [&b"/v1/chat/completions"[..], b"/", b"/v1/", b"/a.b/c..d/.e"] {
        assert_eq!(plain(p), std::str::from_utf8(p).ok(), "{p:?}");
    }
    for p in [
        &b"v1/chat"[..],
        b"",
        b"//v1",
        b"/v1//chat",
        b"/v1/./chat",
        b"/v1/..",
        b"/v1/.",
        b"/v1%2Fchat",
        b"/v1\\chat",
        b"/v1;x",
        b"/v1 chat",
        b"/v1/\xc3\xa9",
    ] {
        assert_eq!(plain(p), None, "{p:?}");
    }
}
