//! The configuration file as serde types: `deny_unknown_fields` everywhere, and values that
//! carry their own syntax (addresses, metric names) checked while they are read, so that
//! `serde_path_to_error` names the exact field (`pools.small[1]`, `metrics.running[0]`).

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub pools: Option<BTreeMap<String, PoolSpec>>,
    pub kubernetes: Option<RawKubernetes>,
    pub interval_ms: Option<u64>,
    pub scrape_timeout_ms: Option<u64>,
    pub push_url: Option<String>,
    pub push_token_env: Option<String>,
    pub push_token_file: Option<String>,
    pub metrics: Option<RawMetrics>,
    pub metrics_path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetes {
    pub inference_pool: Option<String>,
    pub namespace: Option<String>,
    pub tier_label: Option<String>,
    pub default_tier: Option<String>,
    pub api_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub waiting: Option<MetricList>,
    pub running: Option<MetricList>,
    pub kv_cache: Option<MetricList>,
}

/// A pool in the file: a list of addresses, or `{"file": path}`.
#[derive(Debug)]
pub(super) enum PoolSpec {
    List(Vec<Address>),
    File(FileSpec),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSpec {
    pub file: String,
}

impl<'de> Deserialize<'de> for PoolSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PoolVisitor;
        impl<'de> Visitor<'de> for PoolVisitor {
            type Value = PoolSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a list of "ip:port" strings or {"file": path}"#)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<PoolSpec, A::Error> {
                Vec::<Address>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(PoolSpec::List)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PoolSpec, A::Error> {
                FileSpec::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(PoolSpec::File)
            }
        }
        deserializer.deserialize_any(PoolVisitor)
    }
}

/// An endpoint address, canonical `ip:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Address(pub String);

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AddressVisitor;
        impl Visitor<'_> for AddressVisitor {
            type Value = Address;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"an "ip:port" string"#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Address, E> {
                parse_address(s).map(Address).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(AddressVisitor)
    }
}

/// Metric names for one quantity: a list, or a single name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MetricList(pub Vec<String>);

impl<'de> Deserialize<'de> for MetricList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = MetricList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of Prometheus metric names")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<MetricList, E> {
                metric_name(s)
                    .map(|n| MetricList(vec![n]))
                    .map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<MetricList, A::Error> {
                let names =
                    Vec::<MetricName>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(MetricList(names.into_iter().map(|n| n.0).collect()))
            }
        }
        deserializer.deserialize_any(ListVisitor)
    }
}

struct MetricName(String);

impl<'de> Deserialize<'de> for MetricName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        metric_name(&s).map(MetricName).map_err(de::Error::custom)
    }
}

fn metric_name(s: &str) -> Result<String, String> {
    if is_metric_name(s) {
        Ok(s.to_string())
    } else {
        Err(format!("not a Prometheus metric name: {s:?}"))
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Validates an endpoint address: an IP literal and a non-zero port (`10.0.0.7:8000`,
/// `[fd00::7]:8000`). Host names are refused: the filter hands the address to Envoy's
/// ORIGINAL_DST cluster, which needs an IP. Returns the canonical form.
pub fn parse_address(s: &str) -> Result<String, String> {
    let addr: SocketAddr = s.trim().parse().map_err(|_| {
        format!("bad address {s:?}: expected ip:port, e.g. 10.0.0.7:8000 or [fd00::7]:8000")
    })?;
    if addr.port() == 0 {
        return Err(format!("bad address {s:?}: port must not be 0"));
    }
    Ok(addr.to_string())
}
