//! The plugin configuration as written by the user (JSON), before validation.
//!
//! Every struct denies unknown fields: a typo such as `tokens_per_minut` must fail loudly
//! instead of silently disabling a limit.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::marker::PhantomData;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub apis: Option<Vec<String>>,
    pub max_body_bytes: Option<u64>,
    pub on_invalid_body: Option<InvalidBodyAction>,
    pub headers: Option<RawHeaders>,
    pub tiers: OrderedMap<RawTier>,
    pub default_tier: Option<String>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    #[serde(default)]
    pub models: OrderedMap<RawModel>,
    pub tenants: Option<RawTenants>,
    pub endpoints: Option<RawEndpoints>,
    /// Add `stream_options.include_usage: true` to streaming requests that lack it, so the
    /// response's real usage can be counted. Default: on when token limits are configured.
    pub inject_stream_usage: Option<bool>,
    /// Publish the routing decision as `llm_router.*` properties for tracing (default true).
    pub trace_properties: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidBodyAction {
    DefaultTier,
    Reject,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    pub tier: Option<String>,
    pub model: Option<String>,
    pub endpoint: Option<String>,
    pub prompt_tokens: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    pub model: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub tier: String,
    pub models: Option<Vec<String>>,
    pub min_prompt_tokens: Option<u64>,
    pub max_prompt_tokens: Option<u64>,
    pub header: Option<RawHeaderMatch>,
    pub path_prefix: Option<String>,
    pub stream: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub targets: Vec<RawTarget>,
    pub criticality: Option<Criticality>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub model: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criticality {
    Sheddable,
    Standard,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownTenant {
    Default,
    Reject,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenants {
    pub header: Option<String>,
    pub jwt_claim: Option<String>,
    /// Envoy jwt_authn `payload_in_metadata` key that holds the JWT payload.
    pub jwt_payload_key: Option<String>,
    pub unknown: Option<UnknownTenant>,
    pub default: Option<RawLimits>,
    #[serde(default)]
    pub limits: OrderedMap<RawLimits>,
    /// How many distinct unconfigured tenant ids get a bucket of their own before the rest
    /// share the `overflow` bucket.
    pub max_tracked_tenants: Option<u32>,
    /// Upper bound of the completion tokens charged at admission (`min(max_tokens, cap)`);
    /// also what a request without `max_tokens` is charged.
    pub max_tokens_cap: Option<u64>,
    /// Limits shared by every replica of the gateway through the quota service (absent:
    /// per-proxy limits).
    pub global: Option<RawGlobal>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlobal {
    pub cluster: Option<String>,
    pub lease_requests: Option<u64>,
    pub lease_tokens: Option<u64>,
    pub replicas: Option<u64>,
    pub on_outage: Option<OnOutage>,
    pub timeout_ms: Option<u64>,
    pub refill_interval_ms: Option<u64>,
    pub idle_ms: Option<u64>,
}

/// What a replica does once its lease is spent while the quota service cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnOutage {
    /// Per-proxy buckets with the tenant's limits divided by `replicas`.
    StaticShare,
    /// 503 `rate_limiter_unavailable`.
    Reject,
    /// Admit (booked as debt, charged once the service answers again).
    Admit,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub burst_requests: Option<u64>,
    pub burst_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoints {
    pub push_path: Option<String>,
    pub push_token_env: Option<String>,
    pub stale_after_ms: Option<u64>,
    pub max_queue: Option<u64>,
    pub max_kv_cache: Option<f64>,
    /// Optional request header that sets the criticality (`critical`, `standard`, `sheddable`)
    /// of a request; it can only lower the criticality a `models` entry gives.
    pub criticality_header: Option<String>,
    /// Prefix-cache affinity; absent = off, `{}` = on with defaults.
    pub prefix: Option<RawPrefix>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrefix {
    pub block_bytes: Option<u64>,
    /// Alternative to `block_bytes`: estimated tokens (4 bytes each).
    pub block_tokens: Option<u64>,
    pub max_blocks: Option<u64>,
    pub index_entries: Option<u64>,
    pub weight: Option<f64>,
    pub load_weight: Option<f64>,
    pub min_match_blocks: Option<u64>,
    pub seed: Option<u64>,
}

/// A JSON object kept in document order, with duplicate keys rejected (serde's maps would
/// keep the last one silently, and the order of `tiers` gives the default tier).
#[derive(Debug)]
pub struct OrderedMap<T>(pub Vec<(String, T)>);

impl<T> Default for OrderedMap<T> {
    fn default() -> Self {
        OrderedMap(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OrderedMap<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OrderedMap<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(String, T)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if out.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
                    }
                    let value = map.next_value::<T>()?;
                    out.push((key, value));
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}
