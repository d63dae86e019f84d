//! Tier selection (ordered rules, first match wins) and model choice (weighted splits,
//! tier models).

use crate::config::{Config, Criticality, Rule, TierId};

/// What the rules look at.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Request path without the query string.
    pub path: &'a str,
    /// The model the client asked for.
    pub model: Option<&'a str>,
    pub prompt_tokens: u64,
    pub stream: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Rule at this index matched.
    Rule(usize),
    /// No rule matched.
    Default,
    /// The body could not be inspected; `on_invalid_body: default_tier` applied.
    InvalidBody,
}

impl Reason {
    /// Bounded label for `llm_router_model_selected_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Rule(_) => "rule",
            Reason::Default => "default",
            Reason::InvalidBody => "invalid_body",
        }
    }
}

/// Picks the tier: the first rule whose every condition holds, else the default tier.
/// `header` looks up a request header by lower-case name.
pub fn select_tier<'h>(
    cfg: &Config,
    facts: &Facts,
    header: impl Fn(&str) -> Option<&'h str>,
) -> (TierId, Reason) {
    for (i, rule) in cfg.rules.iter().enumerate() {
        if rule_matches(rule, facts, &header) {
            return (rule.tier, Reason::Rule(i));
        }
    }
    (cfg.default_tier, Reason::Default)
}

fn rule_matches<'h>(rule: &Rule, f: &Facts, header: &impl Fn(&str) -> Option<&'h str>) -> bool {
    if let Some(models) = &rule.models {
        match f.model {
            Some(m) if models.iter().any(|x| x == m) => {}
            _ => return false,
        }
    }
    if rule
        .min_prompt_tokens
        .is_some_and(|min| f.prompt_tokens < min)
    {
        return false;
    }
    if rule
        .max_prompt_tokens
        .is_some_and(|max| f.prompt_tokens > max)
    {
        return false;
    }
    if let Some((name, value)) = &rule.header {
        if header(name) != Some(value.as_str()) {
            return false;
        }
    }
    if let Some(prefix) = &rule.path_prefix {
        if !crate::path::has_prefix(f.path, prefix) {
            return false;
        }
    }
    if rule.stream.is_some_and(|s| s != f.stream) {
        return false;
    }
    true
}

/// The model a request is sent with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelChoice {
    /// Model for `headers.model` and the body; `None` when the client named none and the tier
    /// has none.
    pub model: Option<String>,
    /// The body's `model` must be rewritten to `model`.
    pub rewrite: bool,
    /// Index into `Config::models` when a split decided.
    pub split: Option<usize>,
    pub criticality: Criticality,
}

/// Chooses the model: a `models` split named by the client wins (weighted by `roll`, any
/// u64), else the tier's model, else the client's model unchanged.
pub fn choose_model(cfg: &Config, tier: TierId, requested: Option<&str>, roll: u64) -> ModelChoice {
    if let Some(req) = requested {
        if let Some((i, split)) = cfg.models.iter().enumerate().find(|(_, m)| m.name == req) {
            let mut point = roll % split.total_weight;
            let mut chosen = split.targets.last().map(|t| t.model.as_str());
            for t in &split.targets {
                let w = u64::from(t.weight);
                if point < w {
                    chosen = Some(t.model.as_str());
                    break;
                }
                point -= w;
            }
            let model = chosen.unwrap_or(req).to_string();
            return ModelChoice {
                rewrite: model != req,
                model: Some(model),
                split: Some(i),
                criticality: split.criticality,
            };
        }
    }
    let tier_model = cfg.tiers.get(tier).and_then(|t| t.model.as_deref());
    match tier_model {
        Some(m) => ModelChoice {
            rewrite: requested != Some(m),
            model: Some(m.to_string()),
            split: None,
            criticality: Criticality::Standard,
        },
        None => ModelChoice {
            model: requested.map(str::to_string),
            rewrite: false,
            split: None,
            criticality: Criticality::Standard,
        },
    }
}

#[cfg(test)]
mod tests;
