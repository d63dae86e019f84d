//! Scripted ext_proc sequences against a fake filter stream.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation::Mutation, processing_request::Request, processing_response::Response,
    CommonResponse, HttpBody, HttpHeaders, HttpTrailers, ProcessingRequest, ProcessingResponse,
    ProtocolConfiguration,
};
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};

use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    ReqHeaders(bool),
    ReqBody(Vec<u8>, bool),
    ReqTrailers,
    RespHeaders(bool),
    RespBody(Vec<u8>, bool),
    RespTrailers,
    Finish,
}

/// A filter stream that answers from a script and records what it was given.
pub struct Fake {
    steps: VecDeque<Step>,
    pub calls: Arc<Mutex<Vec<Call>>>,
}

impl Fake {
    pub fn new(steps: Vec<Step>) -> (Self, Arc<Mutex<Vec<Call>>>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let fake = Fake {
            steps: steps.into(),
            calls: calls.clone(),
        };
        (fake, calls)
    }
    fn next(&mut self, call: Call) -> Step {
        if let Ok(mut c) = self.calls.lock() {
            c.push(call);
        }
        self.steps.pop_front().unwrap_or(Step::Continue {
            headers: None,
            body: None,
            end_of_stream: false,
            clear_route_cache: false,
        })
    }
}

impl FilterStream for Fake {
    fn request_headers(&mut self, _h: Headers, eos: bool) -> Step {
        self.next(Call::ReqHeaders(eos))
    }
    fn request_body(&mut self, chunk: Vec<u8>, eos: bool) -> Step {
        self.next(Call::ReqBody(chunk, eos))
    }
    fn request_trailers(&mut self, _t: Headers) -> Step {
        self.next(Call::ReqTrailers)
    }
    fn response_headers(&mut self, _h: Headers, eos: bool) -> Step {
        self.next(Call::RespHeaders(eos))
    }
    fn response_body(&mut self, chunk: Vec<u8>, eos: bool) -> Step {
        self.next(Call::RespBody(chunk, eos))
    }
    fn response_trailers(&mut self, _t: Headers) -> Step {
        self.next(Call::RespTrailers)
    }
    fn finish(self) {
        if let Ok(mut c) = self.calls.lock() {
            c.push(Call::Finish);
        }
    }
}

// ---- message builders ----

pub fn hmap(pairs: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                value: String::new(),
                raw_value: v.as_bytes().to_vec(),
            })
            .collect(),
    }
}

pub fn hv(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

fn config(mode: BodySendMode) -> Option<ProtocolConfiguration> {
    Some(ProtocolConfiguration {
        request_body_mode: mode as i32,
        response_body_mode: mode as i32,
        send_body_without_waiting_for_header_response: false,
    })
}

const CLIENT: &[(&str, &str)] = &[
    (":method", "POST"),
    (":path", "/v1/chat/completions"),
    ("content-type", "application/json"),
    ("content-length", "40"),
];

fn req_headers(mode: Option<BodySendMode>, eos: bool) -> ProcessingRequest {
    ProcessingRequest {
        protocol_config: mode.and_then(config),
        request: Some(Request::RequestHeaders(HttpHeaders {
            headers: Some(hmap(CLIENT)),
            end_of_stream: eos,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn body(dir: Dir, bytes: &[u8], eos: bool) -> ProcessingRequest {
    let b = HttpBody {
        body: bytes.to_vec(),
        end_of_stream: eos,
        ..Default::default()
    };
    ProcessingRequest {
        request: Some(match dir {
            Dir::Request => Request::RequestBody(b),
            Dir::Response => Request::ResponseBody(b),
        }),
        ..Default::default()
    }
}

fn resp_headers(pairs: &[(&str, &str)]) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Request::ResponseHeaders(HttpHeaders {
            headers: Some(hmap(pairs)),
            end_of_stream: false,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn trailers(dir: Dir) -> ProcessingRequest {
    let t = HttpTrailers {
        trailers: Some(hmap(&[("grpc-status", "0")])),
    };
    ProcessingRequest {
        request: Some(match dir {
            Dir::Request => Request::RequestTrailers(t),
            Dir::Response => Request::ResponseTrailers(t),
        }),
        ..Default::default()
    }
}

fn routed_headers(endpoint: &str) -> Headers {
    hv(&[
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        ("content-type", "application/json"),
        ("x-llm-model-type", "large"),
        ("x-gateway-destination-endpoint", endpoint),
    ])
}

fn go(headers: Option<Headers>, body: Option<&[u8]>, crc: bool) -> Step {
    Step::Continue {
        headers,
        body: body.map(<[u8]>::to_vec),
        end_of_stream: true,
        clear_route_cache: crc,
    }
}

fn session(steps: Vec<Step>) -> (Session<Fake>, Arc<Mutex<Vec<Call>>>) {
    let (fake, calls) = Fake::new(steps);
    (Session::new(fake, ProtocolOptions::default()), calls)
}

// ---- readers of answers ----

fn kind(r: &ProcessingResponse) -> &'static str {
    match &r.response {
        Some(Response::RequestHeaders(_)) => "req_headers",
        Some(Response::ResponseHeaders(_)) => "resp_headers",
        Some(Response::RequestBody(_)) => "req_body",
        Some(Response::ResponseBody(_)) => "resp_body",
        Some(Response::RequestTrailers(_)) => "req_trailers",
        Some(Response::ResponseTrailers(_)) => "resp_trailers",
        Some(Response::ImmediateResponse(_)) => "immediate",
        _ => "other",
    }
}

fn kinds(rs: &[ProcessingResponse]) -> Vec<&'static str> {
    rs.iter().map(kind).collect()
}

fn common_of(r: &ProcessingResponse) -> CommonResponse {
    match &r.response {
        Some(Response::RequestHeaders(h)) | Some(Response::ResponseHeaders(h)) => {
            h.response.clone().unwrap_or_default()
        }
        Some(Response::RequestBody(b)) | Some(Response::ResponseBody(b)) => {
            b.response.clone().unwrap_or_default()
        }
        _ => CommonResponse::default(),
    }
}

fn set_headers(r: &ProcessingResponse) -> Vec<(String, String)> {
    common_of(r)
        .header_mutation
        .map(|m| {
            m.set_headers
                .into_iter()
                .filter_map(|o| o.header)
                .map(|h| (h.key, String::from_utf8_lossy(&h.raw_value).into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn removed(r: &ProcessingResponse) -> Vec<String> {
    common_of(r)
        .header_mutation
        .map(|m| m.remove_headers)
        .unwrap_or_default()
}

/// (bytes, end_of_stream) of a streamed body answer.
fn streamed(r: &ProcessingResponse) -> Option<(Vec<u8>, bool)> {
    match common_of(r).body_mutation.and_then(|b| b.mutation) {
        Some(Mutation::StreamedResponse(s)) => Some((s.body, s.end_of_stream)),
        _ => None,
    }
}

fn replaced_body(r: &ProcessingResponse) -> Option<Vec<u8>> {
    match common_of(r).body_mutation.and_then(|b| b.mutation) {
        Some(Mutation::Body(b)) => Some(b),
        _ => None,
    }
}

fn metadata_endpoint(r: &ProcessingResponse) -> Option<String> {
    let lb = r.dynamic_metadata.as_ref()?.fields.get("envoy.lb")?;
    match &lb.kind {
        Some(Kind::StructValue(s)) => match &s.fields.get("x-gateway-destination-endpoint")?.kind {
            Some(Kind::StringValue(v)) => Some(v.clone()),
            _ => None,
        },
        _ => None,
    }
}

type Immediate = (i32, Vec<(String, String)>, String);

fn immediate_of(r: &ProcessingResponse) -> Option<Immediate> {
    match &r.response {
        Some(Response::ImmediateResponse(i)) => Some((
            i.status.map(|s| s.code).unwrap_or_default(),
            i.headers
                .clone()
                .map(|m| {
                    m.set_headers
                        .into_iter()
                        .filter_map(|o| o.header)
                        .map(|h| (h.key, String::from_utf8_lossy(&h.raw_value).into_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            String::from_utf8_lossy(&i.body).into_owned(),
        )),
        _ => None,
    }
}

fn calls_of(calls: &Arc<Mutex<Vec<Call>>>) -> Vec<Call> {
    calls.lock().map(|c| c.clone()).unwrap_or_default()
}

#[path = "protocol_tests_cases.rs"]
mod cases;
