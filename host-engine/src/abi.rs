//! Proxy-Wasm ABI 0.2.1 constants and the wire formats the host and guest exchange.

use anyhow::{bail, Result};

/// Context id of each VM's root context (Envoy gives the VM context 0 and the root context 1).
pub const ROOT_CONTEXT_ID: u32 = 1;

/// Status codes as the Rust SDK decodes them (proxy-wasm `Status`, cpp-host `WasmResult`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

impl Status {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// `proxy_get_buffer_bytes` / `proxy_set_buffer_bytes` buffer types.
pub mod buffer {
    pub const HTTP_REQUEST_BODY: i32 = 0;
    pub const HTTP_RESPONSE_BODY: i32 = 1;
    pub const DOWNSTREAM_DATA: i32 = 2;
    pub const UPSTREAM_DATA: i32 = 3;
    pub const HTTP_CALL_RESPONSE_BODY: i32 = 4;
    pub const GRPC_RECEIVE_BUFFER: i32 = 5;
    pub const VM_CONFIGURATION: i32 = 6;
    pub const PLUGIN_CONFIGURATION: i32 = 7;
    pub const CALL_DATA: i32 = 8;
}

/// Header map types.
pub mod map {
    pub const HTTP_REQUEST_HEADERS: i32 = 0;
    pub const HTTP_REQUEST_TRAILERS: i32 = 1;
    pub const HTTP_RESPONSE_HEADERS: i32 = 2;
    pub const HTTP_RESPONSE_TRAILERS: i32 = 3;
    pub const GRPC_RECEIVE_INITIAL_METADATA: i32 = 4;
    pub const GRPC_RECEIVE_TRAILING_METADATA: i32 = 5;
    pub const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
    pub const HTTP_CALL_RESPONSE_TRAILERS: i32 = 7;
}

/// `proxy_continue_stream` / `proxy_close_stream` stream types.
pub mod stream {
    pub const HTTP_REQUEST: i32 = 0;
    pub const HTTP_RESPONSE: i32 = 1;
    pub const DOWNSTREAM: i32 = 2;
    pub const UPSTREAM: i32 = 3;
}

/// Log levels of `proxy_log` / `proxy_get_log_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub fn from_i32(v: i32) -> LogLevel {
        match v {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            _ => LogLevel::Critical,
        }
    }

    /// The `log` crate's level for this level (critical is an error).
    pub fn to_log(self) -> log::Level {
        match self {
            LogLevel::Trace => log::Level::Trace,
            LogLevel::Debug => log::Level::Debug,
            LogLevel::Info => log::Level::Info,
            LogLevel::Warn => log::Level::Warn,
            LogLevel::Error | LogLevel::Critical => log::Level::Error,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
        }
    }
}

/// Serializes header pairs the way proxy-wasm hosts do: a u32 count, then a u32 key length and
/// a u32 value length per pair (all little endian), then each key and each value followed by NUL.
pub fn serialize_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut size = 4 + pairs.len() * 8;
    for (k, v) in pairs {
        size += k.as_ref().len() + v.as_ref().len() + 2;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// Parses the format written by [`serialize_pairs`], as lossy text. An empty input is an empty
/// map.
pub fn deserialize_pairs(data: &[u8]) -> Result<Vec<(String, String)>> {
    Ok(deserialize_pairs_raw(data)?
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect())
}

/// Parses the format written by [`serialize_pairs`], exact bytes. An empty input is an empty
/// map.
#[allow(clippy::type_complexity)]
pub fn deserialize_pairs_raw(data: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let word = |at: usize| -> Result<usize> {
        match data.get(at..at + 4) {
            Some(b) => Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize),
            None => bail!("header map truncated at byte {at}"),
        }
    };
    let count = word(0)?;
    if count > data.len() / 8 + 1 {
        bail!("header map claims {count} pairs in {} bytes", data.len());
    }
    let mut lens = Vec::with_capacity(count);
    for i in 0..count {
        lens.push((word(4 + i * 8)?, word(8 + i * 8)?));
    }
    let mut at = 4 + count * 8;
    let mut take = |len: usize| -> Result<Vec<u8>> {
        let Some(bytes) = data.get(at..at + len) else {
            bail!("header map string truncated at byte {at}");
        };
        if data.get(at + len) != Some(&0) {
            bail!("header map string at byte {at} is not NUL-terminated");
        }
        at += len + 1;
        Ok(bytes.to_vec())
    };
    let mut out = Vec::with_capacity(count);
    for (kl, vl) in lens {
        let k = take(kl)?;
        let v = take(vl)?;
        out.push((k, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() -> Result<()> {
        let pairs = vec![
            (":path".to_string(), "/v1/x".to_string()),
            ("empty".to_string(), String::new()),
        ];
        let bytes = serialize_pairs(&pairs);
        assert_eq!(&bytes[0..4], &2u32.to_le_bytes());
        assert_eq!(deserialize_pairs(&bytes)?, pairs);
        assert!(deserialize_pairs(&bytes[..bytes.len() - 1]).is_err());
        Ok(())
    }
}
