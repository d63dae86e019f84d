//! Host calls with their failures handled: each logs and degrades instead of trapping. Header
//! maps, header values and properties are read as bytes (`abi`), never as UTF-8 that could
//! fail to decode.

use super::abi::{self, buffer, map};
use crate::hostmap;
use crate::reply::LocalReply;
use log::{debug, warn};

/// All request headers (lower-case names), or none when the host cannot give them. Values
/// that are not UTF-8 are read as bytes and carried with U+FFFD in place of invalid bytes.
pub fn request_headers() -> Vec<(String, String)> {
    match abi::get_map(map::REQUEST_HEADERS) {
        Ok(h) => hostmap::to_text(h),
        Err(status) => {
            warn!("llm-router: cannot read request headers: {status:?}");
            Vec::new()
        }
    }
}

/// Sets (`Some`) or removes (`None`) a request header. Fails quietly once the headers went
/// upstream (the host answers `BadArgument` then).
pub fn set_request_header(name: &str, value: Option<&str>) {
    if let Err(status) = abi::set_map_value(map::REQUEST_HEADERS, name, value.map(str::as_bytes)) {
        warn!("llm-router: cannot set request header {name}: {status:?}");
    }
}

/// Up to `max` bytes of the buffered request body.
pub fn request_body(max: usize) -> Vec<u8> {
    match abi::get_buffer(buffer::REQUEST_BODY, 0, max) {
        Ok(b) => b,
        Err(status) => {
            warn!("llm-router: cannot read the request body: {status:?}");
            Vec::new()
        }
    }
}

/// Rewrites the start of the buffered request body (`size` bytes held): its first `edit.cut`
/// bytes become `edit.with` (Envoy drains that many bytes and prepends the new ones); true
/// when the host took it.
pub fn set_request_body_prefix(size: usize, edit: &crate::body::Edit) -> bool {
    match abi::set_buffer(buffer::REQUEST_BODY, 0, edit.cut.min(size), &edit.with) {
        Ok(()) => true,
        Err(status) => {
            warn!("llm-router: cannot rewrite the body: {status:?}");
            false
        }
    }
}

/// The plugin configuration, `None` when the host cannot give it.
pub fn plugin_configuration() -> Option<Vec<u8>> {
    match abi::get_buffer(buffer::PLUGIN_CONFIGURATION, 0, usize::MAX) {
        Ok(b) => Some(b),
        Err(status) => {
            log::error!("llm-router: cannot read the plugin configuration: {status:?}");
            None
        }
    }
}

pub fn send_reply(reply: &LocalReply) {
    if let Err(status) = abi::send_local_response(reply.status, &reply.headers, &reply.body) {
        warn!(
            "llm-router: cannot send the {} reply: {status:?}",
            reply.status
        );
    }
}

/// Publishes facts for tracing as stream properties (`trace`). A host that refuses one only
/// loses that span attribute.
pub fn publish<'a>(cfg: &crate::config::Config, facts: impl FnOnce() -> crate::trace::Facts<'a>) {
    if !cfg.trace_properties {
        return;
    }
    publish_facts(&facts());
}

/// Publishes key and value pairs as properties of the stream, whatever the configuration.
pub fn publish_facts(facts: &crate::trace::Facts) {
    for (key, value) in facts {
        if let Err(status) = abi::set_property(&[key], value.as_bytes()) {
            debug!("llm-router: cannot set property {key}: {status:?}");
        }
    }
}

/// Makes Envoy match the route again after header changes. ABI 0.2.1 hosts do it on their
/// own and may not know the function (`NotFound`), which is fine.
pub fn clear_route_cache() {
    match abi::call_foreign_function("clear_route_cache", &[]) {
        Ok(_) => {}
        Err(status) => debug!("llm-router: clear_route_cache: {status:?}"),
    }
}

/// Proxy-wasm shared data as the rate limiter's store.
pub struct SharedData;

impl crate::store::Store for SharedData {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, crate::store::StoreError> {
        abi::get_shared_data(key)
            .map_err(|status| crate::store::StoreError::Other(format!("{status:?}")))
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), crate::store::StoreError> {
        match abi::set_shared_data(key, value, cas) {
            Ok(()) => Ok(()),
            Err(abi::Status(abi::CAS_MISMATCH)) => Err(crate::store::StoreError::CasMismatch),
            Err(status) => Err(crate::store::StoreError::Other(format!("{status:?}"))),
        }
    }
}

/// Milliseconds since the Unix epoch by the proxy's clock (0 if it cannot be read).
pub fn now_ms() -> u64 {
    abi::now_ns().map_or(0, |ns| ns / 1_000_000)
}

/// A property as text (e.g. a JWT claim in jwt_authn's dynamic metadata, the source address).
/// Bytes that are not UTF-8 make it absent.
pub fn property_string<S: AsRef<str>>(path: &[S]) -> Option<String> {
    match abi::get_property(path) {
        Ok(Some(bytes)) => String::from_utf8(bytes).ok(),
        Ok(None) | Err(_) => None,
    }
}

/// Response headers as text (U+FFFD for bytes that are not UTF-8), the first value of each
/// name, `None` when absent. One read of the whole map: a host call returning data costs two
/// crossings in Envoy (the call, and the VM's allocation for the answer), whatever its size.
pub fn response_headers<const N: usize>(names: [&str; N]) -> [Option<String>; N] {
    let map = abi::get_map_bytes(map::RESPONSE_HEADERS)
        .ok()
        .flatten()
        .unwrap_or_default();
    names.map(|name| hostmap::find(&map, name).map(|v| hostmap::into_string(v.to_vec())))
}

pub fn set_response_header(name: &str, value: &str) {
    if let Err(status) = abi::set_map_value(map::RESPONSE_HEADERS, name, Some(value.as_bytes())) {
        debug!("llm-router: cannot set response header {name}: {status:?}");
    }
}

pub fn response_body(size: usize) -> Vec<u8> {
    abi::get_buffer(buffer::RESPONSE_BODY, 0, size).unwrap_or_default()
}
