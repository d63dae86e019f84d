//! Metric names and their labels.
//!
//! Labels are embedded in the metric name with the Istio convention (`name;key=.=value;.;`)
//! and turned into Prometheus labels by Envoy's `stats_config.stats_tags` (see
//! `envoy-config/envoy.yaml`). Every label value comes from the configuration or a fixed set,
//! never from raw client input: a client-chosen model name is folded into `other`, an
//! unconfigured tenant into `default`/`overflow`.
//!
//! A metric is identified by a `Key` of small indices, so the hot path can find an already
//! defined metric without formatting its name.

pub mod labels;
use crate::config::Config;
pub use labels::{label_value_problem, MAX_LABEL_VALUE};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// counter {tier, model, status}
    Requests,
    /// counter {tier, model, reason}
    ModelSelected,
    /// counter {model, type}
    Tokens,
    /// histogram {tier}
    PromptTokensEstimated,
    /// counter {tenant, bucket}
    RateLimited,
    /// histogram {model}
    RequestDuration,
    /// histogram {model}
    TimeToFirstToken,
    /// counter {reason}
    InvalidBody,
    /// counter {pool, endpoint}
    EndpointPicked,
    /// counter {model}
    Shed,
    /// counter {pool, reason}: requests sent without an endpoint pick
    EndpointFallback,
    /// counter {method, result}: calls of the quota service (global limits)
    GlobalCalls,
    /// counter {action}: requests decided by `on_outage` (lease empty, service unreachable)
    GlobalFallback,
    /// gauge {action}: 1 while the quota service is unreachable, else 0
    GlobalOutage,
    /// counter {trigger}: grants credited to a lease (`tick`: background, `request`: a
    /// request's synchronous take)
    LeaseRefills,
    /// histogram {pool}: prompt prefix found sent to the picked endpoint before, in estimated
    /// tokens (`endpoints.prefix`)
    PrefixMatchTokens,
    /// counter {pool}: picks prefix affinity changed (load alone would have picked another
    /// endpoint)
    PrefixAffinityChanged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// What each label index of a `Key` refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Tier,
    Model,
    Status,
    Reason,
    TokenType,
    Tenant,
    Bucket,
    InvalidReason,
    Pool,
    Endpoint,
    FallbackReason,
    Method,
    CallResult,
    OutageAction,
    Trigger,
}

impl Metric {
    pub fn base(self) -> &'static str {
        match self {
            Metric::Requests => "llm_router_requests_total",
            Metric::ModelSelected => "llm_router_model_selected_total",
            Metric::Tokens => "llm_router_tokens_total",
            Metric::PromptTokensEstimated => "llm_router_prompt_tokens_estimated",
            Metric::RateLimited => "llm_router_rate_limited_total",
            Metric::RequestDuration => "llm_router_request_duration_milliseconds",
            Metric::TimeToFirstToken => "llm_router_time_to_first_token_milliseconds",
            Metric::InvalidBody => "llm_router_invalid_body_total",
            Metric::EndpointPicked => "llm_router_endpoint_picked_total",
            Metric::Shed => "llm_router_shed_total",
            Metric::EndpointFallback => "llm_router_endpoint_fallback_total",
            Metric::GlobalCalls => "llm_router_global_calls_total",
            Metric::GlobalFallback => "llm_router_global_fallback_total",
            Metric::GlobalOutage => "llm_router_global_outage",
            Metric::LeaseRefills => "llm_router_global_lease_refills_total",
            Metric::PrefixMatchTokens => "llm_router_prefix_match_tokens",
            Metric::PrefixAffinityChanged => "llm_router_prefix_affinity_changed_total",
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Metric::PromptTokensEstimated
            | Metric::RequestDuration
            | Metric::TimeToFirstToken
            | Metric::PrefixMatchTokens => Kind::Histogram,
            Metric::GlobalOutage => Kind::Gauge,
            _ => Kind::Counter,
        }
    }

    fn labels(self) -> &'static [Label] {
        use Label::*;
        match self {
            Metric::Requests => &[Tier, Model, Status],
            Metric::ModelSelected => &[Tier, Model, Reason],
            Metric::Tokens => &[Model, TokenType],
            Metric::PromptTokensEstimated => &[Tier],
            Metric::RateLimited => &[Tenant, Bucket],
            Metric::RequestDuration | Metric::TimeToFirstToken | Metric::Shed => &[Model],
            Metric::InvalidBody => &[InvalidReason],
            Metric::EndpointPicked => &[Pool, Endpoint],
            Metric::EndpointFallback => &[Pool, FallbackReason],
            Metric::GlobalCalls => &[Method, CallResult],
            Metric::GlobalFallback | Metric::GlobalOutage => &[OutageAction],
            Metric::LeaseRefills => &[Trigger],
            Metric::PrefixMatchTokens | Metric::PrefixAffinityChanged => &[Pool],
        }
    }

    pub const ALL: [Metric; 17] = [
        Metric::Requests,
        Metric::ModelSelected,
        Metric::Tokens,
        Metric::PromptTokensEstimated,
        Metric::RateLimited,
        Metric::RequestDuration,
        Metric::TimeToFirstToken,
        Metric::InvalidBody,
        Metric::EndpointPicked,
        Metric::Shed,
        Metric::EndpointFallback,
        Metric::GlobalCalls,
        Metric::GlobalFallback,
        Metric::GlobalOutage,
        Metric::LeaseRefills,
        Metric::PrefixMatchTokens,
        Metric::PrefixAffinityChanged,
    ];

    /// Label names, in order (for docs, dashboards and their tests).
    pub fn label_names(self) -> Vec<&'static str> {
        self.labels().iter().map(|l| l.name()).collect()
    }
}

impl Label {
    fn name(self) -> &'static str {
        match self {
            Label::Tier => "tier",
            Label::Model => "model",
            Label::Status => "status",
            Label::Reason | Label::InvalidReason | Label::FallbackReason => "reason",
            Label::TokenType => "type",
            Label::Tenant => "tenant",
            Label::Bucket => "bucket",
            Label::Pool => "pool",
            Label::Endpoint => "endpoint",
            Label::Method => "method",
            Label::CallResult => "result",
            Label::OutageAction => "action",
            Label::Trigger => "trigger",
        }
    }
}

/// Response classes for `status`.
pub const STATUS: [&str; 6] = ["2xx", "4xx", "5xx", "local", "cancelled", "other"];
pub const STATUS_2XX: u16 = 0;
pub const STATUS_4XX: u16 = 1;
pub const STATUS_5XX: u16 = 2;
pub const STATUS_LOCAL: u16 = 3;
pub const STATUS_CANCELLED: u16 = 4;
pub const STATUS_OTHER: u16 = 5;

/// Index into `STATUS` for an HTTP status code.
pub fn status_class(code: u32) -> u16 {
    match code {
        200..=299 => STATUS_2XX,
        400..=499 => STATUS_4XX,
        500..=599 => STATUS_5XX,
        _ => STATUS_OTHER,
    }
}

pub const SELECT_REASON: [&str; 3] = ["rule", "default", "invalid_body"];
pub const TOKEN_TYPE: [&str; 2] = ["prompt", "completion"];
pub const TOKEN_PROMPT: u16 = 0;
pub const TOKEN_COMPLETION: u16 = 1;
pub const BUCKET: [&str; 2] = ["requests", "tokens"];
pub const INVALID_REASON: [&str; 5] = [
    "empty",
    "too_large",
    "not_json",
    "not_object",
    "invalid_field",
];
pub const FALLBACK_REASON: [&str; 3] = ["no_snapshot", "stale", "no_endpoint"];
/// Quota service methods (`quota::Method::label`).
pub const GLOBAL_METHOD: [&str; 3] = ["take", "give", "charge"];
/// Results of a quota service call.
pub const CALL_RESULT: [&str; 4] = ["ok", "error", "unreadable", "not_sent"];
pub const CALL_OK: u16 = 0;
/// The service answered with a gRPC error (including a timeout).
pub const CALL_ERROR: u16 = 1;
/// The answer could not be decoded.
pub const CALL_UNREADABLE: u16 = 2;
/// The host refused to start the call (e.g. an unknown cluster).
pub const CALL_NOT_SENT: u16 = 3;
/// `on_outage` actions (`outage_action`).
pub const OUTAGE_ACTION: [&str; 3] = ["static_share", "reject", "admit"];
pub const REFILL_TRIGGER: [&str; 2] = ["tick", "request"];
pub const TRIGGER_TICK: u16 = 0;
pub const TRIGGER_REQUEST: u16 = 1;

/// Index into `OUTAGE_ACTION`.
pub fn outage_action(a: crate::config::OnOutage) -> u16 {
    match a {
        crate::config::OnOutage::StaticShare => 0,
        crate::config::OnOutage::Reject => 1,
        crate::config::OnOutage::Admit => 2,
    }
}

/// Index into `SELECT_REASON`.
pub fn select_reason(r: crate::routing::Reason) -> u16 {
    match r {
        crate::routing::Reason::Rule(_) => 0,
        crate::routing::Reason::Default => 1,
        crate::routing::Reason::InvalidBody => 2,
    }
}

/// Index into `INVALID_REASON`.
pub fn invalid_reason(r: crate::body::InvalidBody) -> u16 {
    use crate::body::InvalidBody::*;
    match r {
        Empty => 0,
        TooLarge => 1,
        NotJson => 2,
        NotObject => 3,
        InvalidField => 4,
    }
}

/// A metric with its labels as indices (see `Catalog::name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub metric: Metric,
    pub labels: [u16; 3],
}

impl Key {
    pub fn new(metric: Metric, labels: &[u16]) -> Key {
        let mut l = [0u16; 3];
        for (slot, v) in l.iter_mut().zip(labels) {
            *slot = *v;
        }
        Key { metric, labels: l }
    }
}

/// The label values that come from configuration, fixed at configure time.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub tiers: Vec<String>,
    /// Configured model names; index `models.len()` is `other`.
    pub models: Vec<String>,
    /// Configured tenants, then `default`, `anonymous`, `overflow`.
    pub tenants: Vec<String>,
    /// Endpoint addresses seen in load snapshots, bounded by `MAX_ENDPOINT_LABELS`; beyond that
    /// `other`.
    pub endpoints: Vec<String>,
}

pub const OTHER: &str = "other";
/// Distinct endpoint addresses that get a label of their own (pods come and go).
pub const MAX_ENDPOINT_LABELS: usize = 512;

impl Catalog {
    pub fn from_config(cfg: &Config) -> Catalog {
        let mut models: Vec<String> = Vec::new();
        let mut add = |m: &str| {
            if !models.iter().any(|x| x == m) {
                models.push(m.to_string());
            }
        };
        for t in &cfg.tiers {
            if let Some(m) = &t.model {
                add(m);
            }
        }
        for s in &cfg.models {
            add(&s.name);
            for t in &s.targets {
                add(&t.model);
            }
        }
        for r in &cfg.rules {
            for m in r.models.iter().flatten() {
                add(m);
            }
        }
        let mut tenants: Vec<String> = Vec::new();
        if let Some(t) = &cfg.tenants {
            tenants.extend(t.limits.iter().map(|(name, _)| name.clone()));
        }
        for reserved in ["default", "anonymous", "overflow"] {
            if !tenants.iter().any(|t| t == reserved) {
                tenants.push(reserved.to_string());
            }
        }
        Catalog {
            tiers: cfg.tiers.iter().map(|t| t.name.clone()).collect(),
            models,
            tenants,
            endpoints: Vec::new(),
        }
    }

    /// Label index of a model: configured names keep theirs, anything else is `other`.
    pub fn model(&self, model: Option<&str>) -> u16 {
        let i = model
            .and_then(|m| self.models.iter().position(|x| x == m))
            .unwrap_or(self.models.len());
        u16::try_from(i).unwrap_or(u16::MAX)
    }

    pub fn tenant(&self, name: &str) -> u16 {
        let i = self
            .tenants
            .iter()
            .position(|t| t == name)
            .or_else(|| self.tenants.iter().position(|t| t == "default"))
            .unwrap_or(0);
        u16::try_from(i).unwrap_or(u16::MAX)
    }

    /// Label index of an endpoint address, adding it while there is room.
    pub fn endpoint(&mut self, address: &str) -> u16 {
        let i = match self.endpoints.iter().position(|e| e == address) {
            Some(i) => i,
            None if self.endpoints.len() < MAX_ENDPOINT_LABELS => {
                self.endpoints.push(address.to_string());
                self.endpoints.len() - 1
            }
            None => MAX_ENDPOINT_LABELS,
        };
        u16::try_from(i).unwrap_or(u16::MAX)
    }

    fn value<'a>(&'a self, label: Label, i: u16) -> &'a str {
        let i = usize::from(i);
        let fixed = |list: &'static [&'static str]| list.get(i).copied().unwrap_or(OTHER);
        let configured = |list: &'a [String], or: &'a str| list.get(i).map_or(or, |s| s.as_str());
        match label {
            Label::Tier | Label::Pool => configured(&self.tiers, OTHER),
            Label::Model => configured(&self.models, OTHER),
            Label::Tenant => configured(&self.tenants, "default"),
            Label::Endpoint => configured(&self.endpoints, OTHER),
            Label::Status => fixed(&STATUS),
            Label::Reason => fixed(&SELECT_REASON),
            Label::TokenType => fixed(&TOKEN_TYPE),
            Label::Bucket => fixed(&BUCKET),
            Label::InvalidReason => fixed(&INVALID_REASON),
            Label::FallbackReason => fixed(&FALLBACK_REASON),
            Label::Method => fixed(&GLOBAL_METHOD),
            Label::CallResult => fixed(&CALL_RESULT),
            Label::OutageAction => fixed(&OUTAGE_ACTION),
            Label::Trigger => fixed(&REFILL_TRIGGER),
        }
    }

    /// The full metric name with its labels, e.g.
    /// `llm_router_requests_total;tier=.=small;.;model=.=m1;.;status=.=2xx;.;`.
    pub fn name(&self, key: &Key) -> String {
        let mut out = String::from(key.metric.base());
        out.push(';');
        for (label, i) in key.metric.labels().iter().zip(key.labels) {
            out.push_str(label.name());
            out.push_str("=.=");
            out.push_str(self.value(*label, i));
            out.push_str(";.;");
        }
        out
    }
}

#[cfg(test)]
mod tests;
