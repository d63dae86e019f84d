//! Generators of the wire-level parts both request and response generators use: header
//! names and values as bytes, random chunk cuts, response framing, the endpoints pushed.

use super::case::{Bytes, Pairs, Response};
use super::rng::Rng;

/// Addresses the fuzzer's load pushes use (and some spoofed endpoint values reuse).
pub const ENDPOINTS: &[&str] = &[
    "10.1.0.1:8000",
    "10.1.0.2:8000",
    "10.2.0.1:8000",
    "10.2.0.2:8000",
];

pub fn pair(k: &str, v: impl AsRef<[u8]>) -> (Bytes, Bytes) {
    (Bytes::from(k), Bytes(v.as_ref().to_vec()))
}

/// Header values as Envoy may pass them: printable ASCII, obs-text, empty, sometimes huge.
pub fn value_bytes(rng: &mut Rng) -> Vec<u8> {
    let n = match rng.below(40) {
        0 => rng.range(4096, 65536) as usize,
        1..=4 => 0,
        _ => rng.len(64),
    };
    let mode = rng.below(4);
    (0..n)
        .map(|_| match mode {
            0 => rng.range(0x20, 0x7e) as u8,
            1 => rng.range(0x80, 0xff) as u8,
            2 => {
                if rng.chance(1, 3) {
                    rng.range(0x80, 0xff) as u8
                } else {
                    rng.range(0x21, 0x7e) as u8
                }
            }
            _ => match rng.byte() {
                0 | b'\r' | b'\n' => b'x',
                b => b,
            },
        })
        .collect()
}

pub fn name_bytes(rng: &mut Rng) -> Vec<u8> {
    const TCHAR: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_!#$%&'*+.^`|~ABCXYZ";
    match rng.below(20) {
        0 => Vec::new(),
        1 => (0..rng.range(1, 12))
            .map(|_| rng.range(0x80, 0xff) as u8)
            .collect(),
        2 => (0..rng.range(1, 12))
            .map(|_| rng.range(1, 0xff) as u8)
            .collect(),
        3 => rng
            .pick(&[
                &b":path"[..],
                b":method",
                b":authority",
                b"content-length",
                b"x-tenant-id",
            ])
            .to_vec(),
        _ => (0..rng.range(1, 24))
            .map(|_| rng.pick_copy(TCHAR))
            .collect(),
    }
}

pub fn random_pairs(rng: &mut Rng, n: usize) -> Pairs {
    (0..n)
        .map(|_| (Bytes(name_bytes(rng)), Bytes(value_bytes(rng))))
        .collect()
}

/// Chunk boundaries for a body of `len` bytes.
pub fn cuts(rng: &mut Rng, len: usize) -> Vec<usize> {
    if len < 2 {
        return Vec::new();
    }
    let n = match rng.below(20) {
        0..=7 => 0,
        8..=14 => rng.range(1, 3) as usize,
        15..=18 => rng.range(4, 31) as usize,
        _ => (len - 1).min(64),
    };
    if n + 1 >= len {
        return (1..len).collect();
    }
    let mut v: Vec<usize> = (0..n).map(|_| 1 + rng.below_usize(len - 1)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

pub fn shuffle<T>(rng: &mut Rng, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = rng.below_usize(i + 1);
        v.swap(i, j);
    }
}

/// Response headers: status aside, content type as given plus random extra headers.
pub fn response_headers(rng: &mut Rng, content_type: &[u8], body_len: usize) -> Pairs {
    let mut h: Pairs = Vec::new();
    if !content_type.is_empty() {
        h.push(pair("content-type", content_type));
    }
    if rng.chance(1, 2) {
        h.push(pair("content-length", body_len.to_string()));
    }
    if rng.chance(1, 5) {
        h.push(pair("server", b"vllm \xa1\xb1"));
    }
    if rng.chance(1, 4) {
        let n = rng.range(1, 8) as usize;
        h.extend(random_pairs(rng, n));
    }
    h
}

/// The model server's answer to `request_body`.
pub fn wrap_response(rng: &mut Rng, status: u32, content_type: &[u8], body: Vec<u8>) -> Response {
    Response {
        status,
        headers: response_headers(rng, content_type, body.len()),
        cuts: cuts(rng, body.len()),
        trailers: if rng.chance(3, 100) {
            Some(random_pairs(rng, 1))
        } else {
            None
        },
        body: Bytes(body),
    }
}
