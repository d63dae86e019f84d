//! What the gateway tells about a stream besides its headers: ext_proc `metadata_context`
//! (subset hint, served endpoint, forwarded filter metadata such as jwt_authn claims) and
//! `attributes` (source/destination address), turned into what the filter reads through
//! `proxy_get_property`.

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

use crate::engine::StreamProps;
use crate::messages::LB_NAMESPACE;

pub const SUBSET_NAMESPACE: &str = "envoy.lb.subset_hint";
pub const SUBSET_KEY: &str = "x-gateway-destination-endpoint-subset";
pub const SERVED_KEY: &str = "x-gateway-destination-endpoint-served";
/// The attribute namespace Envoy's ext_proc filter uses for `request_attributes`.
const ATTRIBUTES_NAMESPACE: &str = "envoy.filters.http.ext_proc";

/// `envoy.lb.subset_hint` / `x-gateway-destination-endpoint-subset`: the endpoints the gateway
/// allows (a list, or one comma-separated string).
pub fn subset_hint(metadata: &Metadata) -> Option<Vec<String>> {
    let value = metadata
        .filter_metadata
        .get(SUBSET_NAMESPACE)?
        .fields
        .get(SUBSET_KEY)?;
    let mut out = Vec::new();
    match &value.kind {
        Some(Kind::ListValue(list)) => {
            for v in &list.values {
                if let Some(Kind::StringValue(s)) = &v.kind {
                    push_endpoints(&mut out, s);
                }
            }
        }
        Some(Kind::StringValue(s)) => push_endpoints(&mut out, s),
        _ => {}
    }
    Some(out)
}

fn push_endpoints(out: &mut Vec<String>, s: &str) {
    out.extend(
        s.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string),
    );
}

/// `envoy.lb` / `x-gateway-destination-endpoint-served` on the response.
pub fn served_endpoint(metadata: &Metadata) -> Option<String> {
    match &metadata
        .filter_metadata
        .get(LB_NAMESPACE)?
        .fields
        .get(SERVED_KEY)?
        .kind
    {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

/// The filter's view of the stream from the first ext_proc message: addresses from the
/// attributes Envoy was told to send (`source.address`, `destination.address`), and every
/// forwarded metadata namespace as `metadata.filter_metadata.<ns>.<key>[.<key>]` properties
/// (how the filter reads jwt_authn claims in Envoy).
pub fn stream_props(first: &ProcessingRequest, peer: Option<String>) -> StreamProps {
    let attrs = first.attributes.get(ATTRIBUTES_NAMESPACE);
    let attr = |name: &str| attrs.and_then(|a| a.fields.get(name)).and_then(scalar_text);
    let mut properties = Vec::new();
    if let Some(metadata) = &first.metadata_context {
        for (namespace, fields) in &metadata.filter_metadata {
            let base = vec![
                "metadata".to_string(),
                "filter_metadata".to_string(),
                namespace.clone(),
            ];
            flatten(&base, fields, 2, &mut properties);
        }
    }
    StreamProps {
        source_address: attr("source.address").or(peer),
        destination_address: attr("destination.address"),
        properties,
    }
}

fn flatten(base: &[String], fields: &Struct, depth: usize, out: &mut Vec<(Vec<String>, Vec<u8>)>) {
    for (key, value) in &fields.fields {
        let mut path = base.to_vec();
        path.push(key.clone());
        if let Some(text) = scalar_text(value) {
            out.push((path, text.into_bytes()));
        } else if let (Some(Kind::StructValue(inner)), true) = (&value.kind, depth > 1) {
            flatten(&path, inner, depth - 1, out);
        }
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match &value.kind {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        Some(Kind::BoolValue(b)) => Some(b.to_string()),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
            Some(format!("{}", *n as i64))
        }
        Some(Kind::NumberValue(n)) => Some(n.to_string()),
        _ => None,
    }
}
