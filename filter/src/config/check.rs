//! Validation of each part of the raw configuration into its runtime type. Every string that
//! ends up in a metric label, a header name or value, a path match or a shared-data key is
//! checked here, and every error names its field.

use super::raw::{self, RawLimits};
use super::{
    err, BucketLimit, ConfigError, Criticality, Endpoints, Global, HeaderNames, Limits, ModelSplit,
    OnOutage, Rule, SplitTarget, TenantSource, Tenants, Tier, TierId, UnknownTenant, DEFAULT_APIS,
    DEFAULT_MAX_TOKENS_CAP, DEFAULT_MAX_TRACKED_TENANTS,
};
use crate::metrics::labels as metrics;

/// `prefix.name`, with a name that cannot be shown as it is (control characters, non-ASCII,
/// very long) quoted and cut, so the one log line stays readable.
pub(super) fn key_path(prefix: &str, name: &str) -> String {
    let plain = name.len() <= 64 && name.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
    if plain {
        return format!("{prefix}.{name}");
    }
    let cut: String = name.chars().take(64).collect();
    let more = if cut.len() < name.len() { "..." } else { "" };
    format!("{prefix}.{cut:?}{more}")
}

/// Anything that becomes a metric label value (and, for models and tiers, a header value).
pub(super) fn check_label(field: &str, value: &str) -> Result<(), ConfigError> {
    match metrics::label_value_problem(value) {
        Some(why) => err(field, why),
        None => Ok(()),
    }
}

/// Tier and tenant names also name shared-data keys and headers: plain characters only.
fn check_name(field: &str, name: &str, what: &str) -> Result<(), ConfigError> {
    check_label(field, name)?;
    let plain = name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !plain {
        return err(
            field,
            format!("{what} must be 1-64 characters of [A-Za-z0-9_.-]"),
        );
    }
    Ok(())
}

/// An HTTP field name (RFC 9110 token). Pseudo-headers (`:path`) are not tokens.
pub(super) fn check_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.starts_with(':') {
        return err(field, format!("`{name}` is a pseudo-header"));
    }
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || name.len() > 256 || !name.bytes().all(token) {
        return err(
            field,
            format!("`{}` is not a valid HTTP header name", name.escape_debug()),
        );
    }
    Ok(())
}

/// A header value a request header is compared with: Envoy trims surrounding whitespace and
/// refuses control characters, so such a value could never match.
fn check_header_value(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.len() > 4096 {
        return err(field, "must be at most 4096 bytes");
    }
    if value.trim_matches([' ', '\t']) != value {
        return err(
            field,
            "must not start or end with whitespace (it could never match)",
        );
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return err(field, "must not contain control characters");
    }
    Ok(())
}

/// A path prefix matched against the normalised request path: a prefix that normalisation
/// would change (query, fragment, escapes, `//`, `.` / `..` segments) could never match.
pub(super) fn check_path(field: &str, p: &str) -> Result<(), ConfigError> {
    if !p.starts_with('/') {
        return err(field, "must start with '/'");
    }
    if p.len() > 1024 || !p.bytes().all(|b| b.is_ascii_graphic()) {
        return err(
            field,
            "must be at most 1024 printable ASCII characters without spaces",
        );
    }
    if p.contains(['?', '#', '%']) {
        return err(field, "must be a plain path (no '?', '#' or '%' escapes)");
    }
    let dots = p.split('/').skip(1).any(|s| s == "." || s == "..");
    if p.contains("//") || dots {
        return err(
            field,
            "must be a normalised path (no '//', '.' or '..' segments)",
        );
    }
    Ok(())
}

/// Headers the filter must never own: it removes client values of its own headers, and
/// these carry the request itself or its credentials.
const NOT_OWNABLE: [&str; 13] = [
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "authorization",
    "cookie",
];

pub(super) fn headers(raw: Option<raw::RawHeaders>) -> Result<HeaderNames, ConfigError> {
    let raw = raw.unwrap_or(raw::RawHeaders {
        tier: None,
        model: None,
        endpoint: None,
        prompt_tokens: None,
    });
    let pick = |field: &str, v: Option<String>, default: &str| -> Result<String, ConfigError> {
        let field = format!("headers.{field}");
        let name = v.unwrap_or_else(|| default.to_string());
        check_header_name(&field, &name)?;
        let name = name.to_ascii_lowercase();
        if NOT_OWNABLE.contains(&name.as_str()) {
            return err(
                field,
                format!("`{name}` cannot be a routing header (the filter removes client values of its headers)"),
            );
        }
        Ok(name)
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

/// A header the filter reads must not be one it strips (it would always be missing) and
/// must not be one it writes (the client would choose it).
fn check_read_header(field: &str, name: &str, owned: &HeaderNames) -> Result<(), ConfigError> {
    check_header_name(field, name)?;
    let lower = name.to_ascii_lowercase();
    if owned.owned().contains(&lower.as_str()) {
        return err(
            field,
            format!("`{lower}` is one of `headers`: the filter removes the client's value"),
        );
    }
    Ok(())
}

pub(super) fn apis(raw: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let Some(list) = raw else {
        return Ok(DEFAULT_APIS.iter().map(|s| s.to_string()).collect());
    };
    if list.is_empty() {
        return err("apis", "must list at least one path prefix");
    }
    for (i, p) in list.iter().enumerate() {
        check_path(&format!("apis[{i}]"), p)?;
    }
    Ok(list)
}

pub(super) fn tiers(raw: raw::OrderedMap<raw::RawTier>) -> Result<Vec<Tier>, ConfigError> {
    if raw.0.is_empty() {
        return err("tiers", "must define at least one tier");
    }
    let mut tiers = Vec::with_capacity(raw.0.len());
    for (name, t) in raw.0 {
        let at = key_path("tiers", &name);
        check_name(&at, &name, "tier names")?;
        if let Some(m) = &t.model {
            check_label(&format!("{at}.model"), m)?;
        }
        tiers.push(Tier {
            name,
            model: t.model,
        });
    }
    Ok(tiers)
}

pub(super) fn tier_by_name(tiers: &[Tier], field: &str, name: &str) -> Result<TierId, ConfigError> {
    match tiers.iter().position(|t| t.name == name) {
        Some(id) => Ok(id),
        None => err(field, format!("unknown tier `{}`", name.escape_debug())),
    }
}

pub(super) fn rules(
    raw: Vec<raw::RawRule>,
    tiers: &[Tier],
    owned: &HeaderNames,
) -> Result<Vec<Rule>, ConfigError> {
    let mut rules = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let at = |f: &str| format!("rules[{i}].{f}");
        let tier = tier_by_name(tiers, &at("tier"), &r.tier)?;
        if let Some(models) = &r.models {
            if models.is_empty() {
                return err(
                    at("models"),
                    "must not be empty (omit it to match any model)",
                );
            }
            for (j, m) in models.iter().enumerate() {
                check_label(&at(&format!("models[{j}]")), m)?;
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
                check_read_header(&at("header.name"), &h.name, owned)?;
                check_header_value(&at("header.value"), &h.value)?;
                Some((h.name.to_ascii_lowercase(), h.value))
            }
        };
        if let Some(p) = &r.path_prefix {
            check_path(&at("path_prefix"), p)?;
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
    Ok(rules)
}

pub(super) fn models(raw: raw::OrderedMap<raw::RawModel>) -> Result<Vec<ModelSplit>, ConfigError> {
    let mut models = Vec::with_capacity(raw.0.len());
    for (name, m) in raw.0 {
        let base = key_path("models", &name);
        check_label(&base, &name)?;
        let at = |f: &str| format!("{base}.{f}");
        if m.targets.is_empty() {
            return err(at("targets"), "must list at least one target model");
        }
        let mut total_weight = 0u64;
        let mut targets = Vec::with_capacity(m.targets.len());
        for (j, t) in m.targets.into_iter().enumerate() {
            check_label(&at(&format!("targets[{j}].model")), &t.model)?;
            total_weight = total_weight.saturating_add(u64::from(t.weight));
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
    Ok(models)
}

fn limits(field: &str, raw: &RawLimits) -> Result<Limits, ConfigError> {
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
                if r > MAX {
                    return err(
                        format!("{field}.{rate_name}"),
                        format!("must be at most {MAX}"),
                    );
                }
                if burst > MAX {
                    return err(
                        format!("{field}.{burst_name}"),
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

fn tenant_source(t: &raw::RawTenants, owned: &HeaderNames) -> Result<TenantSource, ConfigError> {
    match (&t.header, &t.jwt_claim) {
        (Some(h), None) => {
            check_read_header("tenants.header", h, owned)?;
            if t.jwt_payload_key.is_some() {
                return err("tenants.jwt_payload_key", "only applies with `jwt_claim`");
            }
            Ok(TenantSource::Header(h.to_ascii_lowercase()))
        }
        (None, Some(c)) => {
            let key = t.jwt_payload_key.as_deref().unwrap_or("jwt_payload");
            for (field, v) in [
                ("tenants.jwt_claim", c.as_str()),
                ("tenants.jwt_payload_key", key),
            ] {
                if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
                    return err(field, "must be 1-256 characters without control characters");
                }
            }
            Ok(TenantSource::JwtClaim {
                claim: c.clone(),
                payload_key: key.to_string(),
            })
        }
        (Some(_), Some(_)) => err("tenants", "set either `header` or `jwt_claim`, not both"),
        (None, None) => err(
            "tenants",
            "needs `header` or `jwt_claim` to identify tenants",
        ),
    }
}

pub(super) fn tenants(t: raw::RawTenants, owned: &HeaderNames) -> Result<Tenants, ConfigError> {
    let source = tenant_source(&t, owned)?;
    let default = match &t.default {
        Some(l) => limits("tenants.default", l)?,
        None => Limits {
            requests: None,
            tokens: None,
        },
    };
    let mut list = Vec::with_capacity(t.limits.0.len());
    for (name, l) in &t.limits.0 {
        let at = key_path("tenants.limits", name);
        check_name(&at, name, "tenant ids")?;
        if matches!(name.as_str(), "default" | "overflow") {
            return err(at, "`default` and `overflow` are reserved tenant names");
        }
        list.push((name.clone(), limits(&at, l)?));
    }
    let max_tracked_tenants = t.max_tracked_tenants.unwrap_or(DEFAULT_MAX_TRACKED_TENANTS);
    if max_tracked_tenants > 1_000_000 {
        return err("tenants.max_tracked_tenants", "must be at most 1000000");
    }
    let max_tokens_cap = t.max_tokens_cap.unwrap_or(DEFAULT_MAX_TOKENS_CAP);
    if max_tokens_cap == 0 {
        return err("tenants.max_tokens_cap", "must be at least 1");
    }
    let global = match t.global {
        None => None,
        Some(g) => {
            let g = global(g)?;
            within_quota_service_bounds(&default, &list)?;
            Some(g)
        }
    };
    Ok(Tenants {
        source,
        unknown: t.unknown.unwrap_or(UnknownTenant::Default),
        default,
        limits: list,
        max_tracked_tenants,
        max_tokens_cap,
        global,
    })
}

/// The quota service keeps its numbers exact in Redis's Lua (doubles): rates and bursts of at
/// most 2^33 per bucket. Under `tenants.global` a larger limit would be refused on every call.
fn within_quota_service_bounds(
    default: &Limits,
    list: &[(String, Limits)],
) -> Result<(), ConfigError> {
    const MAX: u64 = 1 << 33;
    let named = std::iter::once(("tenants.default".to_string(), default))
        .chain(list.iter().map(|(n, l)| (key_path("tenants.limits", n), l)));
    for (at, l) in named {
        for (kind, b) in [("requests", &l.requests), ("tokens", &l.tokens)] {
            if let Some(b) = b {
                if b.per_minute > MAX || b.burst > MAX {
                    return err(
                        at,
                        format!(
                            "{kind}: with `tenants.global`, rates and bursts must be at most \
                             {MAX} (the quota service's bound)"
                        ),
                    );
                }
            }
        }
    }
    Ok(())
}

/// `field` within `[lo, hi]`, or `default` when absent.
fn bounded(
    field: &str,
    v: Option<u64>,
    default: u64,
    lo: u64,
    hi: u64,
) -> Result<u64, ConfigError> {
    let v = v.unwrap_or(default);
    if v < lo || v > hi {
        return err(field, format!("must be between {lo} and {hi}"));
    }
    Ok(v)
}

const MAX_CLUSTER_NAME: usize = 120;

pub(super) fn global(g: raw::RawGlobal) -> Result<Global, ConfigError> {
    let Some(cluster) = g.cluster else {
        return err(
            "tenants.global.cluster",
            "is required (the Envoy cluster of the quota service)",
        );
    };
    // At most 120: the serialized GrpcService that carries the name stays one-byte lengths,
    // plain ASCII (see `quota::wire::encode_grpc_service`).
    let cluster_ok = !cluster.is_empty()
        && cluster.len() <= MAX_CLUSTER_NAME
        && cluster.bytes().all(|b| b.is_ascii_graphic());
    if !cluster_ok {
        return err(
            "tenants.global.cluster",
            "must be a cluster name (1 to 120 visible ASCII characters)",
        );
    }
    let upstream = crate::quota::wire::encode_grpc_service(&cluster);
    for (field, v) in [
        ("tenants.global.lease_requests", g.lease_requests),
        ("tenants.global.lease_tokens", g.lease_tokens),
    ] {
        if let Some(v) = v {
            bounded(field, Some(v), v, 1, 1 << 40)?;
        }
    }
    let replicas = bounded("tenants.global.replicas", g.replicas, 1, 1, 10_000)?;
    let timeout_ms = bounded("tenants.global.timeout_ms", g.timeout_ms, 500, 10, 10_000)?;
    let refill_interval_ms = bounded(
        "tenants.global.refill_interval_ms",
        g.refill_interval_ms,
        200,
        10,
        60_000,
    )?;
    let idle_ms = bounded(
        "tenants.global.idle_ms",
        g.idle_ms,
        60_000,
        1_000,
        86_400_000,
    )?;
    if idle_ms <= refill_interval_ms {
        return err(
            "tenants.global.idle_ms",
            "must be longer than `refill_interval_ms`",
        );
    }
    Ok(Global {
        cluster,
        upstream,
        lease_requests: g.lease_requests,
        lease_tokens: g.lease_tokens,
        replicas,
        on_outage: g.on_outage.unwrap_or(OnOutage::StaticShare),
        timeout_ms,
        refill_interval_ms,
        idle_ms,
    })
}

pub(super) fn endpoints(
    e: raw::RawEndpoints,
    apis: &[String],
    owned: &HeaderNames,
) -> Result<Endpoints, ConfigError> {
    let push_path = e
        .push_path
        .unwrap_or_else(|| "/.well-known/llm-router/load".to_string());
    check_path("endpoints.push_path", &push_path)?;
    if apis.iter().any(|a| crate::path::has_prefix(&push_path, a)) {
        return err(
            "endpoints.push_path",
            "must not be one of the inspected `apis` paths",
        );
    }
    let push_token_env = e
        .push_token_env
        .unwrap_or_else(|| "LLM_ROUTER_PUSH_TOKEN".to_string());
    let env_name = push_token_env.len() <= 256
        && !push_token_env.starts_with(|c: char| c.is_ascii_digit())
        && push_token_env
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if push_token_env.is_empty() || !env_name {
        return err(
            "endpoints.push_token_env",
            "must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
        );
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
        check_read_header("endpoints.criticality_header", h, owned)?;
    }
    Ok(Endpoints {
        push_path,
        push_token_env,
        stale_after_ms,
        max_queue: e.max_queue.unwrap_or(5),
        max_kv_cache,
        criticality_header: e.criticality_header.map(|h| h.to_ascii_lowercase()),
        prefix: e.prefix.map(super::check_prefix::prefix).transpose()?,
    })
}
