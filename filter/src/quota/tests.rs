//! The codec against fixed bytes, against prost (an independent protobuf implementation, with
//! the same field numbers as quota.proto), and under random and hostile input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::wire::*;
use super::*;
use crate::testutil::{iters, Rng};
use prost::Message;

// quota.proto, for prost.
#[derive(Clone, PartialEq, prost::Message)]
struct PBucket {
    #[prost(string, tag = "1")]
    tenant: String,
    #[prost(string, tag = "2")]
    limit: String,
    #[prost(uint64, tag = "3")]
    per_minute: u64,
    #[prost(uint64, tag = "4")]
    capacity: u64,
}
#[derive(Clone, PartialEq, prost::Message)]
struct PTakeItem {
    #[prost(message, optional, tag = "1")]
    bucket: Option<PBucket>,
    #[prost(int64, tag = "2")]
    want: i64,
    #[prost(int64, tag = "3")]
    min: i64,
}
#[derive(Clone, PartialEq, prost::Message)]
struct PTakeRequest {
    #[prost(message, repeated, tag = "1")]
    items: Vec<PTakeItem>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct PGrant {
    #[prost(int64, tag = "1")]
    granted: i64,
    #[prost(int64, tag = "2")]
    level: i64,
}
#[derive(Clone, PartialEq, prost::Message)]
struct PTakeResponse {
    #[prost(message, repeated, tag = "1")]
    grants: Vec<PGrant>,
    #[prost(uint64, tag = "2")]
    retry_after_ms: u64,
}
#[derive(Clone, PartialEq, prost::Message)]
struct PAmountItem {
    #[prost(message, optional, tag = "1")]
    bucket: Option<PBucket>,
    #[prost(int64, tag = "2")]
    amount: i64,
}
#[derive(Clone, PartialEq, prost::Message)]
struct PAmountRequest {
    #[prost(message, repeated, tag = "1")]
    items: Vec<PAmountItem>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct PLevelsResponse {
    #[prost(int64, repeated, tag = "1")]
    levels: Vec<i64>,
}

fn p_bucket(b: &Bucket) -> PBucket {
    PBucket {
        tenant: b.tenant.clone(),
        limit: b.limit.clone(),
        per_minute: b.per_minute,
        capacity: b.capacity,
    }
}

fn num(rng: &mut Rng) -> i64 {
    match rng.below(5) {
        0 => 0,
        1 => rng.below(100) as i64,
        2 => -(rng.below(1000) as i64),
        3 => rng.next_u64() as i64,
        _ => *rng.pick(&[i64::MIN, i64::MAX, -1, 127, 128, 16_383, 16_384]),
    }
}

fn text(rng: &mut Rng) -> String {
    let pool = [
        "",
        "acme",
        "u/some-id",
        "anonymous",
        "überlong-\u{1F600}",
        "requests",
        "tokens",
    ];
    let mut s = rng.pick(&pool).to_string();
    if rng.chance(20) {
        s.push_str(&"x".repeat(rng.below(300)));
    }
    s
}

fn bucket(rng: &mut Rng) -> Bucket {
    Bucket {
        tenant: text(rng),
        limit: text(rng),
        per_minute: num(rng) as u64,
        capacity: num(rng) as u64,
    }
}

fn take_request(rng: &mut Rng) -> TakeRequest {
    TakeRequest {
        items: (0..rng.below(4))
            .map(|_| TakeItem {
                bucket: bucket(rng),
                want: num(rng),
                min: num(rng),
            })
            .collect(),
    }
}

fn amount_request(rng: &mut Rng) -> AmountRequest {
    AmountRequest {
        items: (0..rng.below(4))
            .map(|_| AmountItem {
                bucket: bucket(rng),
                amount: num(rng),
            })
            .collect(),
    }
}

fn take_response(rng: &mut Rng) -> TakeResponse {
    TakeResponse {
        grants: (0..rng.below(4))
            .map(|_| Grant {
                granted: num(rng),
                level: num(rng),
            })
            .collect(),
        retry_after_ms: num(rng) as u64,
    }
}

fn levels_response(rng: &mut Rng) -> LevelsResponse {
    LevelsResponse {
        levels: (0..rng.below(6)).map(|_| num(rng)).collect(),
    }
}

#[test]
fn known_bytes() {
    // TakeRequest{items:[{bucket:{tenant:"a",limit:"tokens",per_minute:60,capacity:100},
    // want:5,min:-1}]}, worked out by hand from the protobuf encoding rules.
    let m = TakeRequest {
        items: vec![TakeItem {
            bucket: Bucket {
                tenant: "a".into(),
                limit: "tokens".into(),
                per_minute: 60,
                capacity: 100,
            },
            want: 5,
            min: -1,
        }],
    };
    let bucket = [
        0x0a, 1, b'a', 0x12, 6, b't', b'o', b'k', b'e', b'n', b's', 0x18, 60, 0x20, 100,
    ];
    let mut item = vec![0x0a, bucket.len() as u8];
    item.extend_from_slice(&bucket);
    item.extend_from_slice(&[0x10, 5, 0x18]);
    item.extend_from_slice(&[0xff; 9]);
    item.push(0x01);
    let mut want = vec![0x0a, item.len() as u8];
    want.extend_from_slice(&item);
    assert_eq!(encode_take_request(&m), want);
    assert_eq!(decode_take_request(&want).unwrap(), m);
    // LevelsResponse{levels:[1, 300]}: packed.
    let l = LevelsResponse {
        levels: vec![1, 300],
    };
    assert_eq!(encode_levels_response(&l), vec![0x0a, 3, 1, 0xac, 0x02]);
    // Unpacked elements and unknown fields (every wire type) are read too.
    let odd = [
        0x08, 1, 0x2a, 2, b'h', b'i', 0x08, 0xac, 0x02, 0x31, 0, 0, 0, 0, 0, 0, 0, 0, 0x3d, 0, 0,
        0, 0, 0x40, 7,
    ];
    assert_eq!(decode_levels_response(&odd).unwrap(), l);
    assert_eq!(decode_take_response(&[]).unwrap(), TakeResponse::default());
}

#[test]
fn round_trips_against_prost() {
    let mut rng = Rng::new(0x5eed_0014);
    for _ in 0..iters(3000) {
        let m = take_request(&mut rng);
        let ours = encode_take_request(&m);
        let p = PTakeRequest::decode(ours.as_slice()).unwrap();
        assert_eq!(p.items.len(), m.items.len());
        for (a, b) in p.items.iter().zip(&m.items) {
            assert_eq!(a.bucket.as_ref(), Some(&p_bucket(&b.bucket)));
            assert_eq!((a.want, a.min), (b.want, b.min));
        }
        assert_eq!(ours, p.encode_to_vec(), "canonical form");
        assert_eq!(decode_take_request(&p.encode_to_vec()).unwrap(), m);

        let m = amount_request(&mut rng);
        let ours = encode_amount_request(&m);
        let p = PAmountRequest::decode(ours.as_slice()).unwrap();
        assert_eq!(ours, p.encode_to_vec());
        assert_eq!(decode_amount_request(&ours).unwrap(), m);

        let m = take_response(&mut rng);
        let p = PTakeResponse {
            grants: m
                .grants
                .iter()
                .map(|g| PGrant {
                    granted: g.granted,
                    level: g.level,
                })
                .collect(),
            retry_after_ms: m.retry_after_ms,
        };
        assert_eq!(decode_take_response(&p.encode_to_vec()).unwrap(), m);
        assert_eq!(encode_take_response(&m), p.encode_to_vec());

        let m = levels_response(&mut rng);
        let p = PLevelsResponse {
            levels: m.levels.clone(),
        };
        assert_eq!(decode_levels_response(&p.encode_to_vec()).unwrap(), m);
        assert_eq!(encode_levels_response(&m), p.encode_to_vec());
    }
}

/// Every decoder on arbitrary bytes: an answer or an error, never a panic; what prost refuses
/// as malformed we refuse too, and what both read they read alike.
#[test]
fn hostile_bytes() {
    let mut rng = Rng::new(0xbad_0014);
    for _ in 0..iters(20_000) {
        let bytes = match rng.below(3) {
            0 => {
                let n = rng.below(40);
                rng.bytes(n)
            }
            1 => {
                // A valid message with a byte flipped, cut or appended.
                let mut b = encode_take_response(&take_response(&mut rng));
                match rng.below(3) {
                    0 if !b.is_empty() => {
                        let i = rng.below(b.len());
                        b[i] ^= 1 << rng.below(8);
                    }
                    1 => b.truncate(rng.below(b.len() + 1)),
                    _ => {
                        let n = rng.below(6);
                        b.extend(rng.bytes(n))
                    }
                }
                b
            }
            _ => {
                let mut b = encode_levels_response(&levels_response(&mut rng));
                b.truncate(rng.below(b.len() + 1));
                b
            }
        };
        let ours = decode_take_response(&bytes);
        if let Ok(p) = PTakeResponse::decode(bytes.as_slice()) {
            if let Ok(o) = &ours {
                assert_eq!(o.grants.len(), p.grants.len());
                assert_eq!(o.retry_after_ms, p.retry_after_ms);
            }
        } else {
            assert!(ours.is_err(), "accepted what prost refuses: {bytes:?}");
        }
        let ours = decode_levels_response(&bytes);
        match PLevelsResponse::decode(bytes.as_slice()) {
            Ok(p) => {
                if let Ok(o) = ours {
                    assert_eq!(o.levels, p.levels);
                }
            }
            Err(_) => assert!(ours.is_err(), "accepted what prost refuses: {bytes:?}"),
        }
        let _ = decode_take_request(&bytes);
        let _ = decode_amount_request(&bytes);
    }
}

#[test]
fn bounds_and_malformed_input() {
    assert_eq!(
        decode_take_response(&vec![0u8; MAX_MESSAGE_BYTES + 1]),
        Err(WireError::TooLarge)
    );
    // A varint of eleven bytes, a length past the end, a group, field number 0.
    assert_eq!(
        decode_levels_response(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
        Err(WireError::BadVarint)
    );
    assert_eq!(
        decode_take_response(&[0x0a, 5, 1]),
        Err(WireError::Truncated)
    );
    assert_eq!(decode_take_response(&[0x0b]), Err(WireError::BadWireType));
    assert_eq!(
        decode_take_response(&[0x00, 1]),
        Err(WireError::BadFieldNumber)
    );
    // A known field with the wrong wire type.
    assert_eq!(
        decode_take_response(&[0x10 | 2, 0]),
        Err(WireError::BadWireType)
    );
    // Too many items.
    let many = LevelsResponse {
        levels: vec![1; MAX_ITEMS + 1],
    };
    assert_eq!(
        decode_levels_response(&encode_levels_response(&many)),
        Err(WireError::TooMany)
    );
    // Invalid UTF-8 in a string.
    let mut b = vec![0x0a, 6, 0x0a, 4];
    b.extend_from_slice(&[0x0a, 2, 0xff, 0xfe]);
    assert_eq!(decode_take_request(&b), Err(WireError::BadUtf8));
}

// envoy.config.core.v3.GrpcService / GrpcService.EnvoyGrpc, the fields the filter writes.
#[derive(Clone, PartialEq, prost::Message)]
struct PEnvoyGrpc {
    #[prost(string, tag = "1")]
    cluster_name: String,
    #[prost(string, tag = "2")]
    authority: String,
}
#[derive(Clone, PartialEq, prost::Message)]
struct PGrpcService {
    #[prost(message, optional, tag = "1")]
    envoy_grpc: Option<PEnvoyGrpc>,
}

#[test]
fn grpc_service_names_the_cluster_in_ascii() {
    let exact = encode_grpc_service("llm_router_quota");
    let mut want = vec![0x0a, 18, 0x0a, 16];
    want.extend_from_slice(b"llm_router_quota");
    assert_eq!(exact.as_bytes(), &want[..]);
    let mut rng = Rng::new(7);
    for len in 1..=125usize {
        let name: String = (0..len)
            .map(|_| char::from(b'!' + (rng.next_u64() % 94) as u8))
            .collect();
        let up = encode_grpc_service(&name);
        assert!(up.is_ascii(), "{name}");
        let parsed = PGrpcService::decode(up.as_bytes()).unwrap();
        assert_eq!(parsed.envoy_grpc.unwrap().cluster_name, name);
    }
    // Past one-byte lengths: the plain name (Envoy's other accepted form).
    let long = "c".repeat(126);
    assert_eq!(encode_grpc_service(&long), long);
}
