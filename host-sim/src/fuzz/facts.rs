//! What the fuzzer needs to know about the plugin configuration: the filter's own header
//! names, the values it may write, tenant limits, the push path.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use serde_json::Value;

/// A tenant's request bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestLimit {
    pub per_minute: f64,
    pub burst: f64,
}

#[derive(Debug, Clone)]
pub struct Facts {
    pub tier_header: String,
    pub model_header: String,
    pub endpoint_header: String,
    pub tokens_header: String,
    pub tiers: BTreeSet<String>,
    /// Models the filter may write (tier models and split targets); `None`: any (a tier
    /// without a model forwards the requested one).
    pub models: Option<BTreeSet<String>>,
    /// Client-facing names that rules or splits react to.
    pub known_requested: Vec<String>,
    pub tenant_header: Option<String>,
    pub default_limit: Option<RequestLimit>,
    pub tenant_limits: BTreeMap<String, RequestLimit>,
    pub push_path: Option<String>,
    pub push_token_env: Option<String>,
    pub rule_headers: Vec<(String, String)>,
    pub apis: Vec<String>,
    pub max_body_bytes: usize,
}

fn limit(v: &Value) -> Option<RequestLimit> {
    let per_minute = v.get("requests_per_minute")?.as_f64()?;
    let burst = v
        .get("burst_requests")
        .and_then(Value::as_f64)
        .unwrap_or(per_minute);
    Some(RequestLimit { per_minute, burst })
}

fn s(v: Option<&Value>, default: &str) -> String {
    v.and_then(Value::as_str).unwrap_or(default).to_string()
}

impl Facts {
    pub fn from_config(text: &str) -> Result<Facts> {
        let cfg: Value = serde_json::from_str(text).context("plugin configuration")?;
        let h = cfg.get("headers");
        let tiers_v = cfg
            .get("tiers")
            .and_then(Value::as_object)
            .context("plugin configuration without tiers")?;
        let tiers = tiers_v.keys().cloned().collect();
        let mut models = BTreeSet::new();
        let mut any_model = false;
        for t in tiers_v.values() {
            match t.get("model").and_then(Value::as_str) {
                Some(m) => {
                    models.insert(m.to_string());
                }
                None => any_model = true,
            }
        }
        let mut known_requested = Vec::new();
        if let Some(splits) = cfg.get("models").and_then(Value::as_object) {
            for (name, split) in splits {
                known_requested.push(name.clone());
                for t in split["targets"].as_array().into_iter().flatten() {
                    if let Some(m) = t.get("model").and_then(Value::as_str) {
                        models.insert(m.to_string());
                    }
                }
            }
        }
        let mut rule_headers = Vec::new();
        for r in cfg["rules"].as_array().into_iter().flatten() {
            for m in r["models"].as_array().into_iter().flatten() {
                if let Some(m) = m.as_str() {
                    known_requested.push(m.to_string());
                }
            }
            if let (Some(n), Some(v)) =
                (r["header"]["name"].as_str(), r["header"]["value"].as_str())
            {
                rule_headers.push((n.to_string(), v.to_string()));
            }
        }
        let tenants = cfg.get("tenants");
        let tenant_limits = tenants
            .and_then(|t| t.get("limits"))
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), limit(v)?)))
                    .collect()
            })
            .unwrap_or_default();
        let endpoints = cfg.get("endpoints");
        Ok(Facts {
            tier_header: s(h.and_then(|h| h.get("tier")), "x-llm-model-type"),
            model_header: s(h.and_then(|h| h.get("model")), "x-model-id"),
            endpoint_header: s(
                h.and_then(|h| h.get("endpoint")),
                "x-gateway-destination-endpoint",
            ),
            tokens_header: s(
                h.and_then(|h| h.get("prompt_tokens")),
                "x-llm-prompt-tokens",
            ),
            tiers,
            models: if any_model { None } else { Some(models) },
            known_requested,
            tenant_header: tenants
                .and_then(|t| t.get("header"))
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase),
            default_limit: tenants.and_then(|t| t.get("default")).and_then(limit),
            tenant_limits,
            push_path: endpoints.map(|e| s(e.get("push_path"), "/.well-known/llm-router/load")),
            push_token_env: endpoints.map(|e| s(e.get("push_token_env"), "LLM_ROUTER_PUSH_TOKEN")),
            rule_headers,
            apis: cfg["apis"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_else(|| {
                    ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
                        .map(String::from)
                        .to_vec()
                }),
            max_body_bytes: cfg["max_body_bytes"].as_u64().unwrap_or(1_048_576) as usize,
        })
    }

    /// The headers the filter owns (writes, and removes from clients).
    pub fn owned(&self) -> Vec<String> {
        [
            &self.tier_header,
            &self.model_header,
            &self.endpoint_header,
            &self.tokens_header,
        ]
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect()
    }

    /// The request limit of tenant `id` (`anonymous` for none).
    pub fn request_limit(&self, id: &str) -> Option<RequestLimit> {
        self.tenant_limits.get(id).copied().or(self.default_limit)
    }
}
