//! Building `ProcessingResponse` messages: header diffs, streamed body chunks, immediate
//! responses, the endpoint-picker dynamic metadata.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderMap, HeaderValue, HeaderValueOption,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation::Mutation, common_response::ResponseStatus, processing_response::Response,
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse,
    ProcessingResponse, StreamedBodyResponse, TrailersResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

use crate::engine::Headers;

/// Envoy's ext_proc limit for one streamed body message is 64 KiB of gRPC payload; the
/// endpoint-picker protocol sends bodies back in chunks of at most this many bytes.
pub const MAX_STREAMED_CHUNK: usize = 62_000;

/// The dynamic-metadata namespace and key the endpoint-picker protocol uses.
pub const LB_NAMESPACE: &str = "envoy.lb";
pub const DESTINATION_KEY: &str = "x-gateway-destination-endpoint";

/// Which half of the HTTP exchange a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Request,
    Response,
}

/// Envoy's header map as bytes (`raw_value` when set, else `value`).
pub fn headers_from(map: Option<&HeaderMap>) -> Headers {
    map.map(|m| {
        m.headers
            .iter()
            .map(|h| {
                let value = if h.raw_value.is_empty() {
                    h.value.as_bytes().to_vec()
                } else {
                    h.raw_value.clone()
                };
                (h.key.to_ascii_lowercase().into_bytes(), value)
            })
            .collect()
    })
    .unwrap_or_default()
}

fn grouped(headers: &Headers) -> Vec<(Vec<u8>, Vec<&[u8]>)> {
    let mut out: Vec<(Vec<u8>, Vec<&[u8]>)> = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => out.push((name, vec![value])),
        }
    }
    out
}

fn option(name: &[u8], value: &[u8], action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: String::from_utf8_lossy(name).into_owned(),
            value: String::new(),
            raw_value: value.to_vec(),
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

/// The mutation that turns `original` into `wanted`: names whose values changed are set
/// (overwrite, then append for further values), names that disappeared are removed.
/// Pseudo-headers cannot be removed in Envoy and are never listed for removal.
pub fn header_mutation(original: &Headers, wanted: &Headers) -> Option<HeaderMutation> {
    let before = grouped(original);
    let after = grouped(wanted);
    let mut mutation = HeaderMutation::default();
    for (name, values) in &after {
        let unchanged = before.iter().any(|(n, v)| n == name && v == values);
        if unchanged {
            continue;
        }
        for (i, value) in values.iter().enumerate() {
            let action = if i == 0 {
                HeaderAppendAction::OverwriteIfExistsOrAdd
            } else {
                HeaderAppendAction::AppendIfExistsOrAdd
            };
            mutation.set_headers.push(option(name, value, action));
        }
    }
    for (name, _) in &before {
        if !name.starts_with(b":") && !after.iter().any(|(n, _)| n == name) {
            mutation
                .remove_headers
                .push(String::from_utf8_lossy(name).into_owned());
        }
    }
    if mutation.set_headers.is_empty() && mutation.remove_headers.is_empty() {
        None
    } else {
        Some(mutation)
    }
}

/// A CONTINUE answer carrying optional header mutation and route-cache clearing.
pub fn common(header_mutation: Option<HeaderMutation>, clear_route_cache: bool) -> CommonResponse {
    CommonResponse {
        status: ResponseStatus::Continue as i32,
        header_mutation,
        clear_route_cache,
        ..Default::default()
    }
}

pub fn headers_response(dir: Dir, response: CommonResponse) -> ProcessingResponse {
    let inner = HeadersResponse {
        response: Some(response),
    };
    wrap(match dir {
        Dir::Request => Response::RequestHeaders(inner),
        Dir::Response => Response::ResponseHeaders(inner),
    })
}

pub fn body_response(dir: Dir, response: CommonResponse) -> ProcessingResponse {
    let inner = BodyResponse {
        response: Some(response),
    };
    wrap(match dir {
        Dir::Request => Response::RequestBody(inner),
        Dir::Response => Response::ResponseBody(inner),
    })
}

pub fn trailers_response(dir: Dir) -> ProcessingResponse {
    let inner = TrailersResponse::default();
    wrap(match dir {
        Dir::Request => Response::RequestTrailers(inner),
        Dir::Response => Response::ResponseTrailers(inner),
    })
}

/// A body mutation replacing the whole buffered body.
pub fn replace_body(body: Vec<u8>) -> BodyMutation {
    BodyMutation {
        mutation: Some(Mutation::Body(body)),
    }
}

/// The body as FULL_DUPLEX_STREAMED body responses of at most [`MAX_STREAMED_CHUNK`] bytes;
/// `end_of_stream` goes on the last one. An empty body yields one message only when it ends
/// the stream (nothing to say otherwise).
pub fn streamed_body(dir: Dir, body: &[u8], end_of_stream: bool) -> Vec<ProcessingResponse> {
    if body.is_empty() {
        if end_of_stream {
            return vec![streamed_chunk(dir, Vec::new(), true)];
        }
        return Vec::new();
    }
    let pieces: Vec<&[u8]> = body.chunks(MAX_STREAMED_CHUNK).collect();
    let last = pieces.len().saturating_sub(1);
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, piece)| streamed_chunk(dir, piece.to_vec(), end_of_stream && i == last))
        .collect()
}

fn streamed_chunk(dir: Dir, body: Vec<u8>, end_of_stream: bool) -> ProcessingResponse {
    let mutation = BodyMutation {
        mutation: Some(Mutation::StreamedResponse(StreamedBodyResponse {
            body,
            end_of_stream,
            ..Default::default()
        })),
    };
    body_response(
        dir,
        CommonResponse {
            body_mutation: Some(mutation),
            ..common(None, false)
        },
    )
}

/// A local reply: status, headers and body as the filter made them.
pub fn immediate(status: u32, headers: &Headers, body: Vec<u8>) -> ProcessingResponse {
    let set_headers = headers
        .iter()
        .filter(|(name, _)| !name.starts_with(b":"))
        .map(|(name, value)| option(name, value, HeaderAppendAction::AppendIfExistsOrAdd))
        .collect::<Vec<_>>();
    let headers = if set_headers.is_empty() {
        None
    } else {
        Some(HeaderMutation {
            set_headers,
            remove_headers: Vec::new(),
        })
    };
    wrap(Response::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus {
            code: i32::try_from(status).unwrap_or(500),
        }),
        headers,
        body,
        ..Default::default()
    }))
}

/// The server's own 503 (fail closed, or no eligible endpoint), in OpenAI's error shape.
pub fn service_unavailable(message: &str) -> ProcessingResponse {
    let body = serde_json::json!({"error": {
        "message": message, "type": "service_unavailable", "param": null,
        "code": "service_unavailable"}});
    let headers = vec![(b"content-type".to_vec(), b"application/json".to_vec())];
    immediate(503, &headers, body.to_string().into_bytes())
}

/// `envoy.lb` / `x-gateway-destination-endpoint` = the picked endpoint.
pub fn destination_metadata(endpoint: &str) -> Struct {
    let inner = Struct {
        fields: HashMap::from([(DESTINATION_KEY.to_string(), string_value(endpoint))]),
    };
    Struct {
        fields: HashMap::from([(
            LB_NAMESPACE.to_string(),
            Value {
                kind: Some(Kind::StructValue(inner)),
            },
        )]),
    }
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

fn wrap(response: Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..Default::default()
    }
}
