//! The hand-written messages of `quota::proto` against proto/llm_router/quota/v1/quota.proto:
//! every field of the .proto, with its number and wire type, and nothing else, is what the
//! structs put on the wire; the service's method paths are the .proto's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use llm_router_extproc::quota::proto::*;
use prost::Message;

const PROTO: &str = include_str!("../../proto/llm_router/quota/v1/quota.proto");

/// message name -> {(field number, wire type)} from the .proto text.
fn declared() -> BTreeMap<String, BTreeSet<(u32, u8)>> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in PROTO
        .lines()
        .map(|l| l.split("//").next().unwrap_or("").trim())
    {
        if let Some(rest) = line.strip_prefix("message ") {
            let name = rest.trim_end_matches('{').trim().to_string();
            out.insert(name.clone(), BTreeSet::new());
            current = Some(name);
        } else if line == "}" {
            current = None;
        } else if let (Some(m), Some((decl, num))) = (&current, line.split_once('=')) {
            let words: Vec<&str> = decl.split_whitespace().collect();
            let (repeated, ty) = match words.as_slice() {
                ["repeated", ty, _name] => (true, *ty),
                [ty, _name] => (false, *ty),
                _ => panic!("unexpected field line {line:?}"),
            };
            let number: u32 = num.trim().trim_end_matches(';').trim().parse().unwrap();
            let wire = match ty {
                "uint64" | "int64" if !repeated => 0,
                // Scalars repeated are packed in proto3; strings and messages are length-delimited.
                _ => 2,
            };
            out.get_mut(m).unwrap().insert((number, wire));
        }
    }
    out
}

fn varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = bytes[*at];
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
    }
    v
}

/// Top-level (field number, wire type) of an encoded message.
fn on_wire(bytes: &[u8]) -> BTreeSet<(u32, u8)> {
    let mut out = BTreeSet::new();
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at);
        let (number, wire) = ((key >> 3) as u32, (key & 7) as u8);
        match wire {
            0 => {
                varint(bytes, &mut at);
            }
            2 => {
                let len = varint(bytes, &mut at) as usize;
                at += len;
            }
            w => panic!("wire type {w}"),
        }
        out.insert((number, wire));
    }
    out
}

fn bucket() -> Bucket {
    Bucket {
        tenant: "t".into(),
        limit: "tokens".into(),
        per_minute: 1,
        capacity: 2,
    }
}

#[test]
fn structs_match_the_proto_file() {
    let encoded: Vec<(&str, Vec<u8>)> = vec![
        ("Bucket", bucket().encode_to_vec()),
        (
            "TakeItem",
            TakeItem {
                bucket: Some(bucket()),
                want: 1,
                min: 2,
            }
            .encode_to_vec(),
        ),
        (
            "TakeRequest",
            TakeRequest {
                items: vec![TakeItem::default()],
            }
            .encode_to_vec(),
        ),
        (
            "TakeResponse",
            TakeResponse {
                grants: vec![Grant::default()],
                retry_after_ms: 5,
            }
            .encode_to_vec(),
        ),
        (
            "Grant",
            Grant {
                granted: 1,
                level: -1,
            }
            .encode_to_vec(),
        ),
        (
            "AmountItem",
            AmountItem {
                bucket: Some(bucket()),
                amount: 3,
            }
            .encode_to_vec(),
        ),
        (
            "AmountRequest",
            AmountRequest {
                items: vec![AmountItem::default()],
            }
            .encode_to_vec(),
        ),
        (
            "LevelsResponse",
            LevelsResponse {
                levels: vec![1, -2],
            }
            .encode_to_vec(),
        ),
    ];
    let declared = declared();
    let names: BTreeSet<&str> = encoded.iter().map(|(n, _)| *n).collect();
    let want: BTreeSet<&str> = declared.keys().map(String::as_str).collect();
    assert_eq!(names, want, "messages differ from the .proto");
    for (name, bytes) in &encoded {
        assert_eq!(&on_wire(bytes), &declared[*name], "message {name}");
    }
}

#[test]
fn method_paths_are_the_protos() {
    assert!(PROTO.contains("package llm_router.quota.v1;"));
    assert!(PROTO.contains("service Quota {"));
    for (method, path) in [
        ("Take", TAKE_PATH),
        ("Give", GIVE_PATH),
        ("Charge", CHARGE_PATH),
    ] {
        assert!(PROTO.contains(&format!("rpc {method}(")), "{method}");
        assert_eq!(path, format!("/{SERVICE_NAME}/{method}"));
    }
}
