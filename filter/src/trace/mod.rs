//! What the filter publishes about each request for tracing: the decision (tier, rule, split,
//! estimate, endpoint and why, tenant label, local reply) and the real usage, as proxy-wasm
//! properties. Envoy keeps a property `k` set by a filter as the filter state object `wasm.k`,
//! which a tracing custom tag reads (`%FILTER_STATE(wasm.k:PLAIN)%`, Envoy >= 1.37); the ext_proc
//! server reads the same keys back for its own span. The one owner of the keys and of the span
//! attribute each becomes (`ATTRIBUTES`); see docs/tracing.md.
//!
//! Every value is bounded and comes from the configuration, the decision or a number: a raw
//! client id never appears (the tenant is its metric label).

use crate::config::Config;
use crate::plan::Forward;
use crate::reply::LocalReply;
use crate::routing::Reason;
use crate::usage::Usage;
use std::borrow::Cow;

/// The property keys (one path segment each, so Envoy's filter state name is `wasm.<key>`).
pub mod key {
    pub const OPERATION: &str = "llm_router.operation";
    pub const MODEL: &str = "llm_router.model";
    pub const TIER: &str = "llm_router.tier";
    pub const RULE: &str = "llm_router.rule";
    pub const SPLIT: &str = "llm_router.split";
    pub const SPLIT_TARGET: &str = "llm_router.split_target";
    pub const PROMPT_ESTIMATE: &str = "llm_router.prompt_estimate";
    pub const STREAM: &str = "llm_router.stream";
    pub const TENANT: &str = "llm_router.tenant";
    pub const ENDPOINT: &str = "llm_router.endpoint";
    pub const ENDPOINT_REASON: &str = "llm_router.endpoint_reason";
    pub const LOCAL_REPLY: &str = "llm_router.local_reply";
    /// Real usage from the response (the names the global-limit work publishes too).
    pub const PROMPT_TOKENS: &str = "llm_router.prompt_tokens";
    pub const COMPLETION_TOKENS: &str = "llm_router.completion_tokens";
}

/// Span attribute <- property key. OpenTelemetry GenAI semantic-convention names where one
/// exists, the property's own name otherwise.
pub const ATTRIBUTES: [(&str, &str); 14] = [
    ("gen_ai.operation.name", key::OPERATION),
    ("gen_ai.request.model", key::MODEL),
    ("gen_ai.usage.input_tokens", key::PROMPT_TOKENS),
    ("gen_ai.usage.output_tokens", key::COMPLETION_TOKENS),
    ("llm_router.tier", key::TIER),
    ("llm_router.rule", key::RULE),
    ("llm_router.split", key::SPLIT),
    ("llm_router.split_target", key::SPLIT_TARGET),
    ("llm_router.prompt_estimate", key::PROMPT_ESTIMATE),
    ("llm_router.stream", key::STREAM),
    ("llm_router.tenant", key::TENANT),
    ("llm_router.endpoint", key::ENDPOINT),
    ("llm_router.endpoint_reason", key::ENDPOINT_REASON),
    ("llm_router.local_reply", key::LOCAL_REPLY),
];

/// Values of `llm_router.endpoint_reason`: why an endpoint was named, or why none was (the
/// fallback reasons are `metrics::FALLBACK_REASON`).
pub const ENDPOINT_PICKED: &str = "least_loaded";
/// Picked because of prefix affinity (load alone would have picked another endpoint).
pub const ENDPOINT_PREFIX_AFFINITY: &str = "prefix_affinity";
pub const ENDPOINT_SHED: &str = "shed";
pub const ENDPOINT_NOT_IN_SUBSET: &str = "not_in_subset";

/// Key and value pairs to publish. Values borrow what they can (names from the configuration
/// and the decision): only numbers are formatted.
pub type Facts<'a> = Vec<(&'static str, Cow<'a, str>)>;

/// `gen_ai.operation.name` of an API path (normalised): the GenAI operation names.
pub fn operation(path: &str) -> &'static str {
    let p = path.trim_end_matches('/');
    if p.ends_with("/chat/completions") {
        "chat"
    } else if p.ends_with("/completions") {
        "text_completion"
    } else if p.ends_with("/embeddings") {
        "embeddings"
    } else {
        "other"
    }
}

/// `llm_router.rule`: the index of the rule that matched, `default`, or `invalid_body`.
pub fn rule(reason: Reason) -> Cow<'static, str> {
    match reason {
        Reason::Rule(i) => Cow::Owned(i.to_string()),
        other => Cow::Borrowed(other.label()),
    }
}

/// What the plan decided for a forwarded request (before the tenant and endpoint steps).
pub fn routed<'a>(cfg: &'a Config, path: &str, fwd: &'a Forward) -> Facts<'a> {
    let mut out: Facts = Vec::with_capacity(8);
    out.push((key::OPERATION, Cow::Borrowed(operation(path))));
    if let Some(t) = cfg.tiers.get(fwd.tier) {
        out.push((key::TIER, Cow::Borrowed(&t.name)));
    }
    out.push((key::RULE, rule(fwd.reason)));
    if let Some(m) = &fwd.model {
        out.push((key::MODEL, Cow::Borrowed(m)));
    }
    if let Some(split) = fwd.split.and_then(|i| cfg.models.get(i)) {
        out.push((key::SPLIT, Cow::Borrowed(&split.name)));
        if let Some(m) = &fwd.model {
            out.push((key::SPLIT_TARGET, Cow::Borrowed(m)));
        }
    }
    if let Some(p) = fwd.prompt_tokens {
        out.push((key::PROMPT_ESTIMATE, Cow::Owned(p.to_string())));
    }
    let stream = if fwd.stream { "true" } else { "false" };
    out.push((key::STREAM, Cow::Borrowed(stream)));
    out
}

/// A body refused before any decision (400/413): the operation (the reply is published as
/// every local reply is, `local_reply`).
pub fn rejected(path: &str) -> Facts<'static> {
    vec![(key::OPERATION, Cow::Borrowed(operation(path)))]
}

/// `llm_router.local_reply`: the reply's bounded error code (`rate_limit_exceeded`,
/// `overloaded` for shedding, `request_too_large`, ...).
pub fn local_reply(reply: &LocalReply) -> Facts<'_> {
    if reply.code.is_empty() {
        return Vec::new();
    }
    vec![(key::LOCAL_REPLY, Cow::Borrowed(reply.code))]
}

/// The tenant's metric label (a configured tenant, `default`, `anonymous` or `overflow`).
pub fn tenant(label: &str) -> Facts<'_> {
    vec![(key::TENANT, Cow::Borrowed(label))]
}

/// The endpoint picked, or why none was (`reason` without an address).
pub fn endpoint<'a>(address: Option<&'a str>, reason: &'a str) -> Facts<'a> {
    let mut out: Facts = Vec::with_capacity(2);
    if let Some(a) = address {
        out.push((key::ENDPOINT, Cow::Borrowed(a)));
    }
    out.push((key::ENDPOINT_REASON, Cow::Borrowed(reason)));
    out
}

/// The response's real usage.
pub fn usage(u: &Usage) -> Facts<'static> {
    vec![
        (key::PROMPT_TOKENS, Cow::Owned(u.prompt_tokens.to_string())),
        (
            key::COMPLETION_TOKENS,
            Cow::Owned(u.completion_tokens.to_string()),
        ),
    ]
}

#[cfg(test)]
mod tests;
