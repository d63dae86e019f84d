//! Plugin configuration: parsed from JSON once (`on_configure`), validated into the runtime
//! types below. Every error names the field it is about.

mod check;
pub mod check_prefix;
pub mod raw;

use raw::RawConfig;
pub use raw::{Criticality, InvalidBodyAction, OnOutage, UnknownTenant};
use std::fmt;

pub const DEFAULT_APIS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Bodies are held in the proxy's memory while inspected; beyond this a configuration is
/// almost certainly a mistake.
pub const MAX_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_MAX_TRACKED_TENANTS: u32 = 1000;
pub const DEFAULT_MAX_TOKENS_CAP: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending field, e.g. `rules[1].tier`.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.field, self.reason)
    }
}

/// Every error goes through here: field and reason are made fit for one log line (they may
/// quote configuration text).
fn err<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        field: printable(&field.into()),
        reason: printable(&reason.into()),
    })
}

/// Index into `Config::tiers`.
pub type TierId = usize;

#[derive(Debug, Clone)]
pub struct Config {
    pub apis: Vec<String>,
    pub max_body_bytes: usize,
    pub on_invalid_body: InvalidBodyAction,
    pub headers: HeaderNames,
    pub tiers: Vec<Tier>,
    pub default_tier: TierId,
    pub rules: Vec<Rule>,
    pub models: Vec<ModelSplit>,
    pub tenants: Option<Tenants>,
    pub endpoints: Option<Endpoints>,
    pub inject_stream_usage: bool,
    /// Publish the decision as `llm_router.*` properties (`trace`); off saves the host calls
    /// when nothing reads them.
    pub trace_properties: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderNames {
    pub tier: String,
    pub model: String,
    pub endpoint: String,
    pub prompt_tokens: String,
}

impl HeaderNames {
    /// The headers the filter owns: client-supplied values are always removed.
    pub fn owned(&self) -> [&str; 4] {
        [&self.tier, &self.model, &self.endpoint, &self.prompt_tokens]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub name: String,
    pub model: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub tier: TierId,
    pub models: Option<Vec<String>>,
    pub min_prompt_tokens: Option<u64>,
    pub max_prompt_tokens: Option<u64>,
    /// (lower-case name, exact value)
    pub header: Option<(String, String)>,
    pub path_prefix: Option<String>,
    pub stream: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSplit {
    pub name: String,
    pub targets: Vec<SplitTarget>,
    pub total_weight: u64,
    pub criticality: Criticality,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitTarget {
    pub model: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantSource {
    Header(String),
    /// A claim of the JWT payload that Envoy's jwt_authn filter writes into dynamic metadata
    /// under `payload_key`.
    JwtClaim {
        claim: String,
        payload_key: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenants {
    pub source: TenantSource,
    pub unknown: UnknownTenant,
    pub default: Limits,
    pub limits: Vec<(String, Limits)>,
    pub max_tracked_tenants: u32,
    pub max_tokens_cap: u64,
    /// Global limits through the quota service; `None`: per-proxy limits.
    pub global: Option<Global>,
}

/// `tenants.global`: leases of Redis buckets, refilled through the quota service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    /// Envoy cluster (gRPC) of the quota service.
    pub cluster: String,
    /// What the filter passes to `proxy_grpc_call` as the upstream: the serialized
    /// `GrpcService { envoy_grpc { cluster_name: cluster } }` (ASCII). A plain name can be
    /// mistaken by Envoy for a serialized GrpcService (some short names are valid protobuf),
    /// which fails the call with a status the SDK's dispatch panics on.
    pub upstream: String,
    /// Lease sizes; `None`: derived per tenant from its burst (see [`Global::lease`]).
    pub lease_requests: Option<u64>,
    pub lease_tokens: Option<u64>,
    pub replicas: u64,
    pub on_outage: OnOutage,
    pub timeout_ms: u64,
    pub refill_interval_ms: u64,
    pub idle_ms: u64,
}

impl Global {
    /// The lease size of one bucket: the configured size (at most the burst), or by default
    /// `burst / (2 x replicas)` (at least 1), so that every replica holding the most a lease
    /// may hold (twice its size) together holds no more than the burst.
    pub fn lease(&self, configured: Option<u64>, limit: &BucketLimit) -> u64 {
        let size = match configured {
            Some(n) => n,
            None => limit.burst / self.replicas.saturating_mul(2).max(1),
        };
        size.clamp(1, limit.burst.max(1))
    }

    pub fn lease_requests(&self, limit: &BucketLimit) -> u64 {
        self.lease(self.lease_requests, limit)
    }

    pub fn lease_tokens(&self, limit: &BucketLimit) -> u64 {
        self.lease(self.lease_tokens, limit)
    }
}

/// Per-tenant limits; `None` = that bucket is not limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub requests: Option<BucketLimit>,
    pub tokens: Option<BucketLimit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketLimit {
    pub per_minute: u64,
    pub burst: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoints {
    pub push_path: String,
    pub push_token_env: String,
    pub stale_after_ms: u64,
    pub max_queue: u64,
    pub max_kv_cache: f64,
    pub criticality_header: Option<String>,
    /// Prefix-cache affinity (`endpoints.prefix`); `None` = off.
    pub prefix: Option<Prefix>,
}

/// `endpoints.prefix`: send a request where its prompt prefix went before (see `crate::prefix`).
#[derive(Debug, Clone, PartialEq)]
pub struct Prefix {
    /// Bytes of canonical prompt text per hashed block.
    pub block_bytes: usize,
    /// Most blocks hashed per request (the rest of a longer prompt is not hashed).
    pub max_blocks: usize,
    /// Entries of the shared index (all pools together); the oldest are evicted.
    pub index_entries: usize,
    /// Weight of the matched prefix (fraction of the request's blocks, 0..1) in the score.
    pub weight: f64,
    /// Weight of the load score (queue, KV cache, running) in the score.
    pub load_weight: f64,
    /// A match shorter than this many blocks counts as none.
    pub min_match_blocks: usize,
    /// Seed of the block hashes (the same on every proxy of one deployment).
    pub seed: u64,
}

impl Config {
    /// Parses and validates a plugin configuration.
    pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        let raw: RawConfig = match serde_path_to_error::deserialize(de) {
            Ok(raw) => raw,
            Err(e) => {
                // A syntax error can leave the path unknown (`?`): name what is known.
                let path = e.path().to_string();
                let known = path.split('?').next().unwrap_or_default();
                let known = known.trim_end_matches(['.', '[']);
                let field = if known.is_empty() {
                    "(root)".to_string()
                } else {
                    known.to_string()
                };
                return err(field, e.into_inner().to_string());
            }
        };
        Config::validate(raw)
    }

    pub fn tier_id(&self, name: &str) -> Option<TierId> {
        self.tiers.iter().position(|t| t.name == name)
    }

    pub fn split(&self, model: &str) -> Option<&ModelSplit> {
        self.models.iter().find(|m| m.name == model)
    }

    /// Whether the raw request path (`:path`, query and fragment ignored) is one of the
    /// inspected API paths under any plausible decoding (see [`crate::path::matches_prefixes`]).
    pub fn is_api_path(&self, raw_path: &str) -> bool {
        crate::path::matches_prefixes(&self.apis, raw_path.as_bytes())
    }

    fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let apis = check::apis(raw.apis)?;
        let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 || max_body_bytes > MAX_MAX_BODY_BYTES {
            return err(
                "max_body_bytes",
                format!("must be between 1 and {MAX_MAX_BODY_BYTES}"),
            );
        }
        let headers = check::headers(raw.headers)?;
        let tiers = check::tiers(raw.tiers)?;
        let default_tier = match &raw.default_tier {
            Some(name) => check::tier_by_name(&tiers, "default_tier", name)?,
            None => 0,
        };
        let rules = check::rules(raw.rules, &tiers, &headers)?;
        let models = check::models(raw.models)?;
        let tenants = match raw.tenants {
            None => None,
            Some(t) => Some(check::tenants(t, &headers)?),
        };
        let endpoints = match raw.endpoints {
            None => None,
            Some(e) => Some(check::endpoints(e, &apis, &headers)?),
        };
        let has_token_limits = tenants.as_ref().is_some_and(|t| {
            t.default.tokens.is_some() || t.limits.iter().any(|(_, l)| l.tokens.is_some())
        });
        Ok(Config {
            apis,
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            on_invalid_body: raw
                .on_invalid_body
                .unwrap_or(InvalidBodyAction::DefaultTier),
            headers,
            tiers,
            default_tier,
            rules,
            models,
            tenants,
            endpoints,
            inject_stream_usage: raw.inject_stream_usage.unwrap_or(has_token_limits),
            trace_properties: raw.trace_properties.unwrap_or(true),
        })
    }
}

/// Text from the configuration made fit for one log line: control characters escaped, cut
/// to a bounded length.
fn printable(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() >= 300 {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
