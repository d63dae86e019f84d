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

/// Proxy-wasm shared data as the rate limiter's store.
pub struct SharedData;

impl crate::store::Store for SharedData {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, crate::store::StoreError> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), cas)) => Ok(Some((value, cas.unwrap_or(0)))),
            Ok((None, _)) => Ok(None),
            Err(status) => Err(crate::store::StoreError::Other(format!("{status:?}"))),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), crate::store::StoreError> {
        match hostcalls::set_shared_data(key, Some(value), Some(cas)) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(crate::store::StoreError::CasMismatch),
            Err(status) => Err(crate::store::StoreError::Other(format!("{status:?}"))),
        }
    }
}

/// Milliseconds since the Unix epoch by the proxy's clock (0 if it cannot be read).
pub fn now_ms() -> u64 {
    match hostcalls::get_current_time() {
        Ok(t) => t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// A property as a UTF-8 string (e.g. a JWT claim in jwt_authn's dynamic metadata).
pub fn property_string(path: &[String]) -> Option<String> {
    let segments: Vec<&str> = path.iter().map(String::as_str).collect();
    match hostcalls::get_property(segments) {
        Ok(Some(bytes)) => String::from_utf8(bytes).ok(),
        Ok(None) | Err(_) => None,
    }
}

pub fn response_header(name: &str) -> Option<String> {
    hostcalls::get_map_value(MapType::HttpResponseHeaders, name)
        .ok()
        .flatten()
}

pub fn set_response_header(name: &str, value: &str) {
    if let Err(status) = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value)) {
        debug!("llm-router: cannot set response header {name}: {status:?}");
    }
}

pub fn response_body(size: usize) -> Vec<u8> {
    match hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size) {
        Ok(b) => b.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}
