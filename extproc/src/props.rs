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
/// The property the filter reads the subset hint from (`ip:port,...`; see the filter's
/// `glue::request::SUBSET_PROPERTY`).
pub const SUBSET_PROPERTY: [&str; 2] = ["llm_router", "endpoint_subset"];
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
///
/// The gRPC peer is the gateway, not the client: it is never given as the source address
/// (a client request through a gateway on loopback must not look like a local push).
pub fn stream_props(first: &ProcessingRequest) -> StreamProps {
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
        // The filter picks only among the endpoints the gateway allows (it answers 503 when
        // none of the tier's is usable); the server still checks the pick afterwards.
        if let Some(list) = subset_hint(metadata) {
            let path = SUBSET_PROPERTY.iter().map(|s| s.to_string()).collect();
            properties.push((path, list.join(",").into_bytes()));
        }
    }
    StreamProps {
        source_address: attr("source.address"),
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn s(v: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(v.into())),
        }
    }

    fn st(fields: Vec<(&str, Value)>) -> Struct {
        Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }

    #[test]
    fn jwt_claims_and_attributes_become_properties_and_the_peer_is_never_the_source() {
        let payload = Value {
            kind: Some(Kind::StructValue(st(vec![
                ("sub", s("acme")),
                (
                    "n",
                    Value {
                        kind: Some(Kind::NumberValue(3.0)),
                    },
                ),
            ]))),
        };
        let first = ProcessingRequest {
            metadata_context: Some(Metadata {
                filter_metadata: HashMap::from([(
                    "envoy.filters.http.jwt_authn".to_string(),
                    st(vec![("payload", payload)]),
                )]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let props = stream_props(&first);
        assert_eq!(props.source_address, None);
        let path = |claim: &str| -> Vec<String> {
            [
                "metadata",
                "filter_metadata",
                "envoy.filters.http.jwt_authn",
                "payload",
                claim,
            ]
            .map(String::from)
            .to_vec()
        };
        assert!(props.properties.contains(&(path("sub"), b"acme".to_vec())));
        assert!(props.properties.contains(&(path("n"), b"3".to_vec())));

        let mut with_attrs = first.clone();
        with_attrs.attributes.insert(
            "envoy.filters.http.ext_proc".into(),
            st(vec![("source.address", s("192.0.2.1:5555"))]),
        );
        assert_eq!(
            stream_props(&with_attrs).source_address.as_deref(),
            Some("192.0.2.1:5555")
        );
    }

    #[test]
    fn subset_hint_accepts_a_list_or_a_comma_string() {
        let md = |v: Value| Metadata {
            filter_metadata: HashMap::from([(
                SUBSET_NAMESPACE.to_string(),
                st(vec![(SUBSET_KEY, v)]),
            )]),
            ..Default::default()
        };
        assert_eq!(
            subset_hint(&md(s("10.0.0.1:80, 10.0.0.2:80"))),
            Some(vec!["10.0.0.1:80".to_string(), "10.0.0.2:80".to_string()])
        );
        assert_eq!(subset_hint(&Metadata::default()), None);
    }
}
