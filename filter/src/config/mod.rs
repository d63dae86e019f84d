//! Plugin configuration: parsed from JSON once (`on_configure`), validated into the runtime
//! types below. Every error names the field it is about.

pub mod raw;

pub use raw::{Criticality, InvalidBodyAction, UnknownTenant};
use raw::{RawConfig, RawLimits};
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

fn err<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        field: field.into(),
        reason: reason.into(),
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
}

impl Config {
    /// Parses and validates a plugin configuration.
    pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        let raw: RawConfig = match serde_path_to_error::deserialize(de) {
            Ok(raw) => raw,
            Err(e) => {
                let path = e.path().to_string();
                let field = if path == "." {
                    "(root)".to_string()
                } else {
                    path
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
        let apis = match raw.apis {
            None => DEFAULT_APIS.iter().map(|s| s.to_string()).collect(),
            Some(list) => {
                if list.is_empty() {
                    return err("apis", "must list at least one path prefix");
                }
                for (i, p) in list.iter().enumerate() {
                    if !p.starts_with('/') {
                        return err(format!("apis[{i}]"), "must start with '/'");
                    }
                }
                list
            }
        };

        let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 || max_body_bytes > MAX_MAX_BODY_BYTES {
            return err(
                "max_body_bytes",
                format!("must be between 1 and {MAX_MAX_BODY_BYTES}"),
            );
        }

        let headers = validate_headers(raw.headers)?;

        if raw.tiers.0.is_empty() {
            return err("tiers", "must define at least one tier");
        }
        let mut tiers = Vec::with_capacity(raw.tiers.0.len());
        for (name, t) in raw.tiers.0 {
            if !is_label_value(&name) {
                return err(
                    format!("tiers.{name}"),
                    "tier names must be 1-64 characters of [A-Za-z0-9_.-] (they become a header value and a metric label)",
                );
            }
            if let Some(m) = &t.model {
                check_model_name(&format!("tiers.{name}.model"), m)?;
            }
            tiers.push(Tier {
                name,
                model: t.model,
            });
        }
        let tier_by_name = |field: &str, name: &str| -> Result<TierId, ConfigError> {
            tiers
                .iter()
                .position(|t| t.name == name)
                .map_or_else(|| err(field, format!("unknown tier `{name}`")), Ok)
        };

        let default_tier = match &raw.default_tier {
            Some(name) => tier_by_name("default_tier", name)?,
            None => 0,
        };

        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, r) in raw.rules.into_iter().enumerate() {
            let at = |f: &str| format!("rules[{i}].{f}");
            let tier = tier_by_name(&at("tier"), &r.tier)?;
            if let Some(models) = &r.models {
                if models.is_empty() {
                    return err(
                        at("models"),
                        "must not be empty (omit it to match any model)",
                    );
                }
            }
            if let (Some(min), Some(max)) = (r.min_prompt_tokens, r.max_prompt_tokens) {
                if min > max {
                    return err(
                        at("min_prompt_tokens"),
                        format!("{min} is greater than max_prompt_tokens {max}"),
                    );
                }
            }
            let header = match r.header {
                None => None,
                Some(h) => {
                    check_header_name(&at("header.name"), &h.name)?;
                    Some((h.name.to_ascii_lowercase(), h.value))
                }
            };
            if let Some(p) = &r.path_prefix {
                if !p.starts_with('/') {
                    return err(at("path_prefix"), "must start with '/'");
                }
            }
            rules.push(Rule {
                tier,
                models: r.models,
                min_prompt_tokens: r.min_prompt_tokens,
                max_prompt_tokens: r.max_prompt_tokens,
                header,
                path_prefix: r.path_prefix,
                stream: r.stream,
            });
        }

        let mut models = Vec::with_capacity(raw.models.0.len());
        for (name, m) in raw.models.0 {
            let at = |f: &str| format!("models.{name}.{f}");
            check_model_name(&format!("models.{name}"), &name)?;
            if m.targets.is_empty() {
                return err(at("targets"), "must list at least one target model");
            }
            let mut total_weight = 0u64;
            let mut targets = Vec::with_capacity(m.targets.len());
            for (j, t) in m.targets.into_iter().enumerate() {
                check_model_name(&at(&format!("targets[{j}].model")), &t.model)?;
                total_weight += u64::from(t.weight);
                targets.push(SplitTarget {
                    model: t.model,
                    weight: t.weight,
                });
            }
            if total_weight == 0 {
                return err(at("targets"), "weights must not all be zero");
            }
            models.push(ModelSplit {
                name,
                targets,
                total_weight,
                criticality: m.criticality.unwrap_or(Criticality::Standard),
            });
        }

        let tenants = match raw.tenants {
            None => None,
            Some(t) => Some(validate_tenants(t)?),
        };
        let endpoints = match raw.endpoints {
            None => None,
            Some(e) => Some(validate_endpoints(e, &apis)?),
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
        })
    }
}

/// Segment-aware prefix match: `/v1/completions` matches `/v1/completions` and
/// `/v1/completions/x`, not `/v1/completionsfoo`.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

fn validate_headers(raw: Option<raw::RawHeaders>) -> Result<HeaderNames, ConfigError> {
    let raw = raw.unwrap_or(raw::RawHeaders {
        tier: None,
        model: None,
        endpoint: None,
        prompt_tokens: None,
    });
    let pick = |field: &str, v: Option<String>, default: &str| -> Result<String, ConfigError> {
        let name = v.unwrap_or_else(|| default.to_string());
        check_header_name(&format!("headers.{field}"), &name)?;
        Ok(name.to_ascii_lowercase())
    };
    let names = HeaderNames {
        tier: pick("tier", raw.tier, "x-llm-model-type")?,
        model: pick("model", raw.model, "x-model-id")?,
        endpoint: pick("endpoint", raw.endpoint, "x-gateway-destination-endpoint")?,
        prompt_tokens: pick("prompt_tokens", raw.prompt_tokens, "x-llm-prompt-tokens")?,
    };
    let all = names.owned();
    for (i, a) in all.iter().enumerate() {
        if all.iter().skip(i + 1).any(|b| a == b) {
            return err("headers", format!("header `{a}` is used for two purposes"));
        }
    }
    Ok(names)
}

fn validate_limits(field: &str, raw: &RawLimits) -> Result<Limits, ConfigError> {
    let bucket = |rate: Option<u64>,
                  burst: Option<u64>,
                  rate_name: &str,
                  burst_name: &str|
     -> Result<Option<BucketLimit>, ConfigError> {
        match (rate, burst) {
            (None, None) => Ok(None),
            (None, Some(_)) => err(
                format!("{field}.{burst_name}"),
                format!("needs {rate_name} to be set"),
            ),
            (Some(0), _) => err(
                format!("{field}.{rate_name}"),
                "must be at least 1 (omit it for no limit)",
            ),
            (Some(r), b) => {
                let burst = b.unwrap_or(r);
                if burst == 0 {
                    return err(format!("{field}.{burst_name}"), "must be at least 1");
                }
                // Buckets store milli-units in i64; keep far away from overflow.
                const MAX: u64 = 1 << 40;
                if r > MAX || burst > MAX {
                    return err(
                        format!("{field}.{rate_name}"),
                        format!("must be at most {MAX}"),
                    );
                }
                Ok(Some(BucketLimit {
                    per_minute: r,
                    burst,
                }))
            }
        }
    };
    Ok(Limits {
        requests: bucket(
            raw.requests_per_minute,
            raw.burst_requests,
            "requests_per_minute",
            "burst_requests",
        )?,
        tokens: bucket(
            raw.tokens_per_minute,
            raw.burst_tokens,
            "tokens_per_minute",
            "burst_tokens",
        )?,
    })
}

fn validate_tenants(t: raw::RawTenants) -> Result<Tenants, ConfigError> {
    let source = match (t.header, t.jwt_claim) {
        (Some(h), None) => {
            check_header_name("tenants.header", &h)?;
            TenantSource::Header(h.to_ascii_lowercase())
        }
        (None, Some(c)) => {
            if c.is_empty() {
                return err("tenants.jwt_claim", "must not be empty");
            }
            TenantSource::JwtClaim {
                claim: c,
                payload_key: t
                    .jwt_payload_key
                    .unwrap_or_else(|| "jwt_payload".to_string()),
            }
        }
        (Some(_), Some(_)) => {
            return err("tenants", "set either `header` or `jwt_claim`, not both");
        }
        (None, None) => {
            return err(
                "tenants",
                "needs `header` or `jwt_claim` to identify tenants",
            )
        }
    };
    let default = match &t.default {
        Some(l) => validate_limits("tenants.default", l)?,
        None => Limits {
            requests: None,
            tokens: None,
        },
    };
    let mut limits = Vec::with_capacity(t.limits.0.len());
    for (name, l) in &t.limits.0 {
        if !is_label_value(name) {
            return err(
                format!("tenants.limits.{name}"),
                "tenant ids must be 1-64 characters of [A-Za-z0-9_.-] (they become a metric label)",
            );
        }
        if matches!(name.as_str(), "default" | "overflow") {
            return err(
                format!("tenants.limits.{name}"),
                "`default` and `overflow` are reserved tenant names",
            );
        }
        limits.push((
            name.clone(),
            validate_limits(&format!("tenants.limits.{name}"), l)?,
        ));
    }
    let max_tracked_tenants = t.max_tracked_tenants.unwrap_or(DEFAULT_MAX_TRACKED_TENANTS);
    if max_tracked_tenants > 1_000_000 {
        return err("tenants.max_tracked_tenants", "must be at most 1000000");
    }
    let max_tokens_cap = t.max_tokens_cap.unwrap_or(DEFAULT_MAX_TOKENS_CAP);
    if max_tokens_cap == 0 {
        return err("tenants.max_tokens_cap", "must be at least 1");
    }
    Ok(Tenants {
        source,
        unknown: t.unknown.unwrap_or(UnknownTenant::Default),
        default,
        limits,
        max_tracked_tenants,
        max_tokens_cap,
    })
}

fn validate_endpoints(e: raw::RawEndpoints, apis: &[String]) -> Result<Endpoints, ConfigError> {
    let push_path = e
        .push_path
        .unwrap_or_else(|| "/.well-known/llm-router/load".to_string());
    if !push_path.starts_with('/') {
        return err("endpoints.push_path", "must start with '/'");
    }
    if apis.iter().any(|a| path_has_prefix(&push_path, a)) {
        return err(
            "endpoints.push_path",
            "must not be one of the inspected `apis` paths",
        );
    }
    let push_token_env = e
        .push_token_env
        .unwrap_or_else(|| "LLM_ROUTER_PUSH_TOKEN".to_string());
    if push_token_env.is_empty() {
        return err("endpoints.push_token_env", "must not be empty");
    }
    let stale_after_ms = e.stale_after_ms.unwrap_or(2000);
    if stale_after_ms == 0 {
        return err("endpoints.stale_after_ms", "must be at least 1");
    }
    let max_kv_cache = e.max_kv_cache.unwrap_or(0.8);
    if !(max_kv_cache > 0.0 && max_kv_cache <= 1.0) {
        return err("endpoints.max_kv_cache", "must be in (0, 1]");
    }
    if let Some(h) = &e.criticality_header {
        check_header_name("endpoints.criticality_header", h)?;
    }
    Ok(Endpoints {
        push_path,
        push_token_env,
        stale_after_ms,
        max_queue: e.max_queue.unwrap_or(5),
        max_kv_cache,
        criticality_header: e.criticality_header.map(|h| h.to_ascii_lowercase()),
    })
}

/// Values that may become a metric label or a header value: short, plain characters.
fn is_label_value(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn check_model_name(field: &str, m: &str) -> Result<(), ConfigError> {
    if m.is_empty() || m.len() > 256 {
        return err(field, "model names must be 1-256 characters");
    }
    // Model names are written into a request header and a metric name.
    if !m.bytes().all(|b| b.is_ascii_graphic()) || m.contains(';') || m.contains('=') {
        return err(
            field,
            "model names must be printable ASCII without spaces, ';' or '='",
        );
    }
    Ok(())
}

fn check_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return err(field, format!("`{name}` is not a valid HTTP header name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
