//! The server's span per HTTP stream: it continues the trace the request arrived in (W3C
//! `traceparent` from the ext_proc call's gRPC metadata, which Envoy sets to its ext_proc span
//! when it traces; else the request's own `traceparent`; else Datadog's `x-datadog-trace-id` /
//! `x-datadog-parent-id`) and carries the filter's decision: the `llm_router.*` properties the
//! filter published (the filter's `trace::ATTRIBUTES` names each attribute, as in Envoy's
//! span). Pure: parsing and building; `otlp` exports.

use std::time::{SystemTime, UNIX_EPOCH};

use llm_router::trace::ATTRIBUTES;

use crate::engine::Headers;

/// The prefix of the properties the filter publishes for tracing.
pub const PUBLISHED_PREFIX: &str = "llm_router.";
/// The span's name.
pub const SPAN_NAME: &str = "llm_router.extproc";

/// Where a span hangs: its trace and parent span, and whether the caller samples it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        *out.get_mut(i)? = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// A W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`); all-zero ids are invalid.
pub fn traceparent(value: &[u8]) -> Option<Parent> {
    let value = value.trim_ascii();
    let mut parts = value.split(|&b| b == b'-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four fields; later versions may append more.
    if version.len() != 2 || version == b"ff" || (version == b"00" && parts.next().is_some()) {
        return None;
    }
    let trace_id = hex::<16>(trace)?;
    let span_id = hex::<8>(span)?;
    let flags = hex::<1>(flags)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags[0] & 1 == 1,
    })
}

/// Datadog's decimal 64-bit ids (the trace id's low half of a 128-bit W3C id);
/// `x-datadog-sampling-priority` <= 0 means not sampled.
pub fn datadog(trace: &[u8], parent: &[u8], priority: Option<&[u8]>) -> Option<Parent> {
    let num = |b: &[u8]| std::str::from_utf8(b).ok()?.trim().parse::<u64>().ok();
    let (t, p) = (num(trace)?, num(parent)?);
    if t == 0 || p == 0 {
        return None;
    }
    let mut trace_id = [0u8; 16];
    trace_id[8..].copy_from_slice(&t.to_be_bytes());
    let sampled = priority
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<i64>().ok())
        .is_none_or(|p| p > 0);
    Some(Parent {
        trace_id,
        span_id: p.to_be_bytes(),
        sampled,
    })
}

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v.as_slice())
}

/// The parent in a header map (gRPC metadata or HTTP request headers): W3C first, then Datadog.
pub fn parent_in(headers: &Headers) -> Option<Parent> {
    if let Some(p) = header(headers, "traceparent").and_then(traceparent) {
        return Some(p);
    }
    datadog(
        header(headers, "x-datadog-trace-id")?,
        header(headers, "x-datadog-parent-id")?,
        header(headers, "x-datadog-sampling-priority"),
    )
}

/// The span attribute of a published property, `None` for a property the filter does not
/// publish for tracing.
pub fn attribute_of(property: &str) -> Option<&'static str> {
    ATTRIBUTES
        .iter()
        .find(|(_, key)| *key == property)
        .map(|(attr, _)| *attr)
}

/// One finished span, ready to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanData {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// None: a root span (no incoming context).
    pub parent_span_id: Option<[u8; 8]>,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<(String, String)>,
    /// The filter answered with this status (a local reply).
    pub error: bool,
}

pub fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The span of one stream, or None when its caller does not sample it. `ids` gives random
/// bytes for new ids. `published`: what the filter left (`Stream::finish_published`).
pub fn span(
    parent: Option<Parent>,
    mut ids: impl FnMut() -> u64,
    start_unix_ns: u64,
    end_unix_ns: u64,
    published: &[(String, Vec<u8>)],
    local_reply: Option<u32>,
) -> Option<SpanData> {
    if parent.is_some_and(|p| !p.sampled) {
        return None;
    }
    let mut span_id = ids().to_be_bytes();
    if span_id == [0; 8] {
        span_id = [0, 0, 0, 0, 0, 0, 0, 1];
    }
    let trace_id = match parent {
        Some(p) => p.trace_id,
        None => {
            let mut t = [0u8; 16];
            t[..8].copy_from_slice(&ids().to_be_bytes());
            t[8..].copy_from_slice(&(ids() | 1).to_be_bytes());
            t
        }
    };
    let mut attributes: Vec<(String, String)> = published
        .iter()
        .filter_map(|(k, v)| {
            let attr = attribute_of(k)?;
            Some((attr.to_string(), String::from_utf8_lossy(v).into_owned()))
        })
        .collect();
    if let Some(status) = local_reply {
        attributes.push(("http.response.status_code".to_string(), status.to_string()));
    }
    Some(SpanData {
        trace_id,
        span_id,
        parent_span_id: parent.map(|p| p.span_id),
        start_unix_ns,
        end_unix_ns: end_unix_ns.max(start_unix_ns),
        attributes,
        error: local_reply.is_some_and(|s| s >= 500),
    })
}

#[cfg(test)]
#[path = "trace_tests.rs"]
mod tests;
