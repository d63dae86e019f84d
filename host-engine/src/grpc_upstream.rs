//! The `upstream` argument of `proxy_grpc_call`, read as Envoy reads it
//! (`source/extensions/common/wasm/context.cc`, `Context::grpcCall`): bytes that parse as a
//! serialized `envoy.config.core.v3.GrpcService` are one; anything else is a cluster name.
//!
//! A guest that passes a plain name can be surprised: some short names are valid protobuf
//! (`"pa"` is field 14 with varint 97), so Envoy takes them as a GrpcService without a target
//! and the call fails with BadArgument. Guests that want no ambiguity send the serialized
//! GrpcService `{ envoy_grpc { cluster_name } }`, as this project's filter does.
//!
//! One difference remains: for a serialized GrpcService Envoy skips its cluster check, so a
//! cluster it does not know fails the call later (the close callback, UNAVAILABLE); our hosts
//! answer ParseFailure at once, as for an unknown plain name. A guest must handle both anyway.

/// What an `upstream` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcUpstream {
    /// The cluster, from a plain name or from `envoy_grpc.cluster_name`.
    Cluster(Vec<u8>),
    /// A GrpcService without `envoy_grpc` (Google gRPC, or nothing): Envoy cannot build a
    /// client for it here; the host call answers BadArgument.
    Unsupported,
}

pub fn read(upstream: &[u8]) -> GrpcUpstream {
    match fields(upstream) {
        Some(top) => match top.iter().rev().find(|(n, _)| *n == 1) {
            Some((_, Field::Bytes(envoy_grpc))) => match fields(envoy_grpc) {
                Some(inner) => match inner.iter().rev().find(|(n, _)| *n == 1) {
                    Some((_, Field::Bytes(name))) if !name.is_empty() => {
                        GrpcUpstream::Cluster(name.to_vec())
                    }
                    _ => GrpcUpstream::Unsupported,
                },
                None => GrpcUpstream::Cluster(upstream.to_vec()),
            },
            _ => GrpcUpstream::Unsupported,
        },
        None => GrpcUpstream::Cluster(upstream.to_vec()),
    }
}

enum Field<'a> {
    Scalar,
    Bytes(&'a [u8]),
}

fn varint(data: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Every field of a protobuf message, or `None` if the bytes are not one. Empty input is an
/// empty message, as protobuf parsers have it (an empty upstream is a GrpcService without a
/// target to Envoy).
fn fields(data: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let key = varint(data, &mut at)?;
        let number = key >> 3;
        if number == 0 || number > (1 << 29) - 1 {
            return None;
        }
        let field = match key & 7 {
            0 => {
                varint(data, &mut at)?;
                Field::Scalar
            }
            1 => {
                at = at.checked_add(8).filter(|e| *e <= data.len())?;
                Field::Scalar
            }
            2 => {
                let len = usize::try_from(varint(data, &mut at)?).ok()?;
                let end = at.checked_add(len).filter(|e| *e <= data.len())?;
                let bytes = data.get(at..end)?;
                at = end;
                Field::Bytes(bytes)
            }
            5 => {
                at = at.checked_add(4).filter(|e| *e <= data.len())?;
                Field::Scalar
            }
            // Groups (3, 4) and the undefined wire types: not read as a message here.
            _ => return None,
        };
        out.push((number, field));
    }
    Some(out)
}

/// The serialized `GrpcService { envoy_grpc { cluster_name } }` for `cluster` (tests, and the
/// reference for guests).
pub fn envoy_grpc(cluster: &[u8]) -> Vec<u8> {
    let mut inner = vec![0x0a];
    push_len(&mut inner, cluster.len());
    inner.extend_from_slice(cluster);
    let mut out = vec![0x0a];
    push_len(&mut out, inner.len());
    out.extend_from_slice(&inner);
    out
}

fn push_len(out: &mut Vec<u8>, mut len: usize) {
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(s: &str) -> GrpcUpstream {
        GrpcUpstream::Cluster(s.as_bytes().to_vec())
    }

    #[test]
    fn plain_names_are_clusters() {
        for name in ["llm_router_quota", "quota", "outbound|9004||quota.svc", "x"] {
            assert_eq!(read(name.as_bytes()), cluster(name), "{name}");
        }
    }

    #[test]
    fn serialized_grpc_service_names_its_cluster() {
        let long = "c".repeat(300);
        for name in ["llm_router_quota", "pa", long.as_str()] {
            assert_eq!(read(&envoy_grpc(name.as_bytes())), cluster(name), "{name}");
        }
    }

    #[test]
    fn names_that_parse_as_protobuf_are_no_cluster() {
        // 'p' = field 14, varint; 'a' = 97: a GrpcService with an unknown field and no target.
        assert_eq!(read(b"pa"), GrpcUpstream::Unsupported);
        // 'q' = field 14, fixed64, then 8 bytes.
        assert_eq!(read(b"quota_svc"), GrpcUpstream::Unsupported);
        assert_eq!(read(b""), GrpcUpstream::Unsupported);
        // google_grpc (field 2) only.
        assert_eq!(read(&[0x12, 0x00]), GrpcUpstream::Unsupported);
    }

    #[test]
    fn any_bytes_are_read_without_panicking() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len % 40)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = read(&bytes);
        }
    }
}
