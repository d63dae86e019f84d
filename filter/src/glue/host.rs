//! Host calls with their failures handled: each logs and degrades instead of trapping.

use crate::reply::LocalReply;
use log::{debug, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};

/// All request headers (lower-case names), or none when the host cannot give them.
pub fn request_headers() -> Vec<(String, String)> {
    match hostcalls::get_map(MapType::HttpRequestHeaders) {
        Ok(h) => h,
        Err(status) => {
            warn!("llm-router: cannot read request headers: {status:?}");
            Vec::new()
        }
    }
}

/// Sets (`Some`) or removes (`None`) a request header.
pub fn set_request_header(name: &str, value: Option<&str>) {
    if let Err(status) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value) {
        warn!("llm-router: cannot set request header {name}: {status:?}");
    }
}

/// Up to `max` bytes of the buffered request body.
pub fn request_body(max: usize) -> Vec<u8> {
    match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, max) {
        Ok(b) => b.unwrap_or_default(),
        Err(status) => {
            warn!("llm-router: cannot read the request body: {status:?}");
            Vec::new()
        }
    }
}

pub fn send_reply(reply: &LocalReply) {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if let Err(status) = hostcalls::send_http_response(reply.status, headers, Some(&reply.body)) {
        warn!(
            "llm-router: cannot send the {} reply: {status:?}",
            reply.status
        );
    }
}

/// Makes Envoy match the route again after header changes. ABI 0.2.1 hosts do it on their
/// own and may not know the function (`NotFound`), which is fine.
pub fn clear_route_cache() {
    match hostcalls::call_foreign_function("clear_route_cache", None) {
        Ok(_) | Err(Status::NotFound) => {}
        Err(status) => debug!("llm-router: clear_route_cache: {status:?}"),
    }
}
