//! The whole request-side decision for one inspected request, as a pure function: from the
//! configuration, the request head and its body to either "forward with these headers and
//! this body" or "answer locally with this reply".

use crate::body::{self, InvalidBody};
use crate::config::{Config, Criticality, InvalidBodyAction, TierId};
use crate::reply::{self, LocalReply};
use crate::routing::{self, Facts, Reason};

/// Request headers as the host gives them (lower-case names).
pub type Headers = [(String, String)];

pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[derive(Debug, PartialEq)]
pub enum Plan {
    Forward(Forward),
    /// `on_invalid_body: reject`: answer 400/413 with this reply.
    Reject(InvalidBody, LocalReply),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    pub tier: TierId,
    pub reason: Reason,
    /// Headers to set (replacing any value).
    pub set_headers: Vec<(String, String)>,
    /// The body's rewrite (a new prefix), when it was rewritten.
    pub body: Option<crate::body::Edit>,
    /// Model the request is sent with (for metrics; `None` when unknown).
    pub model: Option<String>,
    /// Index into `Config::models` when a split decided.
    pub split: Option<usize>,
    /// Estimated prompt tokens; `None` when the body could not be read (charge it from
    /// `body_bytes`).
    pub prompt_tokens: Option<u64>,
    /// Completion limit by vLLM's rule (`max_completion_tokens`, else `max_tokens`; 0 = unset).
    pub max_tokens: Option<u64>,
    /// Completions per request (`max(n, best_of)`, at least 1).
    pub n: u64,
    /// Length of the request body as known at decision time (the buffered body, or the
    /// declared/received length of one too large to buffer).
    pub body_bytes: u64,
    pub stream: bool,
    pub criticality: Criticality,
    pub invalid: Option<InvalidBody>,
    /// Block hash chain of the prompt prefix for the tier's pool (`endpoints.prefix`; empty
    /// when off or the body could not be read).
    pub prefix: crate::prefix::Chain,
}

/// Decides an inspected request. `path` is the normalised path ([`crate::path::normalize`]).
/// `body` is the whole body, or why it could not be had (too large); `body_bytes` is the
/// body's length as known at decision time (for a body too large to buffer: its
/// content-length or what arrived so far; for a buffered body its length is used when
/// larger). `roll` is a random number for weighted splits.
pub fn plan(
    cfg: &Config,
    path: &str,
    headers: &Headers,
    body: Result<&[u8], InvalidBody>,
    body_bytes: u64,
    roll: u64,
) -> Plan {
    let body_bytes = match body {
        Ok(b) => (b.len() as u64).max(body_bytes),
        Err(_) => body_bytes,
    };
    let info = body.and_then(body::inspect);
    let info = match info {
        Ok(info) => info,
        Err(why) => return invalid(cfg, why, body.ok(), body_bytes),
    };
    let prompt_tokens = body::prompt_tokens(&info);
    let path_only = path.split(['?', '#']).next().unwrap_or(path);
    let facts = Facts {
        path: path_only,
        model: info.model.as_deref(),
        prompt_tokens,
        stream: info.stream,
    };
    let (tier, reason) = routing::select_tier(cfg, &facts, |n| header(headers, n));
    let choice = routing::choose_model(cfg, tier, info.model.as_deref(), roll);

    let mut new_body: Option<body::Edit> = None;
    let raw = body.unwrap_or_default();
    if let (true, Some(m)) = (choice.rewrite, choice.model.as_deref()) {
        new_body = Some(body::model_edit(raw, &info, m));
    }
    if cfg.inject_stream_usage && info.stream && !info.has_stream_options {
        // The insertion point (just after `{`) is the same in the rewritten body: the model
        // edit happens later in the object or is itself inserted right there.
        new_body = Some(body::include_usage_edit(raw, new_body, info.object_start));
    }

    let mut set_headers = vec![
        (cfg.headers.tier.clone(), tier_name(cfg, tier)),
        (cfg.headers.prompt_tokens.clone(), prompt_tokens.to_string()),
    ];
    if let Some(m) = choice.model.as_deref().filter(|m| is_safe_header_value(m)) {
        set_headers.push((cfg.headers.model.clone(), m.to_string()));
    }

    let prefix = match cfg.endpoints.as_ref().and_then(|e| e.prefix.as_ref()) {
        Some(p) => crate::prefix::chain(&info, p, &tier_name(cfg, tier)),
        None => crate::prefix::Chain::default(),
    };

    Plan::Forward(Forward {
        tier,
        reason,
        set_headers,
        body: new_body,
        model: choice.model,
        split: choice.split,
        prompt_tokens: Some(prompt_tokens),
        max_tokens: info.max_tokens,
        n: info.n,
        body_bytes,
        stream: info.stream,
        criticality: choice.criticality,
        invalid: None,
        prefix,
    })
}

/// A body that could not be inspected: default tier, or a 400/413, as configured. Under
/// `default_tier`, a JSON object body (`body`, when given) still gets the tier's model
/// written into it, so that a wrongly typed field cannot carry the client's model past a
/// rewrite.
pub fn invalid(cfg: &Config, why: InvalidBody, body: Option<&[u8]>, body_bytes: u64) -> Plan {
    match cfg.on_invalid_body {
        InvalidBodyAction::Reject => {
            Plan::Reject(why, reply::invalid_body(why, cfg.max_body_bytes))
        }
        InvalidBodyAction::DefaultTier => {
            let tier = cfg.default_tier;
            let model = cfg.tiers.get(tier).and_then(|t| t.model.clone());
            let mut set_headers = vec![(cfg.headers.tier.clone(), tier_name(cfg, tier))];
            if let Some(m) = &model {
                set_headers.push((cfg.headers.model.clone(), m.clone()));
            }
            let new_body = match (body, &model) {
                (Some(raw), Some(m)) => {
                    body::locate_model(raw).map(|info| body::model_edit(raw, &info, m))
                }
                _ => None,
            };
            Plan::Forward(Forward {
                tier,
                reason: Reason::InvalidBody,
                set_headers,
                body: new_body,
                model,
                split: None,
                prompt_tokens: None,
                max_tokens: None,
                n: 1,
                body_bytes,
                stream: false,
                criticality: Criticality::Standard,
                invalid: Some(why),
                prefix: crate::prefix::Chain::default(),
            })
        }
    }
}

fn tier_name(cfg: &Config, tier: TierId) -> String {
    cfg.tiers
        .get(tier)
        .map(|t| t.name.clone())
        .unwrap_or_default()
}

/// A client-chosen model name is echoed in a header only when it is plain printable ASCII of
/// reasonable length (header injection and oversized headers are not passed on).
pub fn is_safe_header_value(v: &str) -> bool {
    !v.is_empty() && v.len() <= 256 && v.bytes().all(|b| (0x20..0x7f).contains(&b))
}

#[cfg(test)]
mod tests;
