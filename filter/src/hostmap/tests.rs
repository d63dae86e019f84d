use super::*;

#[test]
fn round_trip_keeps_bytes_that_are_not_utf8() {
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"user-agent".to_vec(), b"Mozilla/5.0 \xa1\xb1".to_vec()),
        (b"".to_vec(), b"".to_vec()),
        (b"x\xff".to_vec(), vec![0u8; 3]),
    ];
    assert_eq!(decode(&encode(&pairs)), pairs);
}

#[test]
fn text_view_replaces_invalid_bytes() {
    let text = to_text(vec![(b"ua".to_vec(), b"a\xa1b".to_vec())]);
    assert_eq!(text, vec![("ua".to_string(), "a\u{fffd}b".to_string())]);
}

#[test]
fn truncated_or_lying_maps_decode_what_fits() {
    let full = encode(&[("a", "1"), ("bb", "22")]);
    for cut in 0..full.len() {
        let got = decode(&full[..cut]);
        assert!(got.len() <= 2, "cut {cut}");
    }
    assert_eq!(decode(&full).len(), 2);
    // A count of 4 billion pairs in a 12-byte buffer allocates nothing big and yields nothing.
    let mut lie = u32::MAX.to_le_bytes().to_vec();
    lie.extend_from_slice(&[0xff; 8]);
    assert!(decode(&lie).is_empty());
    // Sizes past the end.
    let mut bad = 1u32.to_le_bytes().to_vec();
    bad.extend_from_slice(&u32::MAX.to_le_bytes());
    bad.extend_from_slice(&u32::MAX.to_le_bytes());
    bad.extend_from_slice(b"abc\0");
    assert!(decode(&bad).is_empty());
}

#[test]
fn property_paths_join_with_nul() {
    assert_eq!(
        property_path(&["source", "address"]),
        b"source\0address".to_vec()
    );
    assert!(property_path::<&str>(&[]).is_empty());
}

#[test]
fn prop_decode_never_panics_on_random_bytes() {
    let iters = crate::testutil::iters(3000);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..iters {
        let len = (next() % 64) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if len >= 4 && next() % 2 == 0 {
            // Plausible small counts exercise the pair loop.
            bytes[..4].copy_from_slice(&((next() % 4) as u32).to_le_bytes());
        }
        let pairs = decode(&bytes);
        // Whatever decoded re-encodes to something that decodes the same.
        assert_eq!(decode(&encode(&pairs)), pairs);
    }
}

#[test]
fn find_reads_the_first_value_of_a_name_in_any_case_without_decoding() {
    let map = encode(&[
        (":status", "200"),
        ("Content-Type", "text/event-stream"),
        ("content-type", "application/json"),
    ]);
    assert_eq!(find(&map, ":status"), Some(&b"200"[..]));
    assert_eq!(find(&map, "content-type"), Some(&b"text/event-stream"[..]));
    assert_eq!(find(&map, "x-missing"), None);
    // A map cut short: what fits is read, the rest is absent (as `decode` reads it).
    let cut = &map[..map.len() - 5];
    assert_eq!(find(cut, ":status"), Some(&b"200"[..]));
    assert_eq!(pairs(cut).count(), decode(cut).len());
    assert_eq!(find(&[], ":status"), None);
}
