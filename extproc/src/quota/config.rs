//! The tenants' limits for the rate-limit service, read from the filter's own plugin
//! configuration (`--plugin-config`): `tenants.default` and `tenants.limits.<name>`, each with
//! `requests_per_minute`, `tokens_per_minute`, `burst_requests`, `burst_tokens`. Only these
//! are read, but strictly: an unknown key under `tenants` or in a limits object, a wrong type
//! or a figure out of bounds is an error at start, naming the field.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::limits::{Limit, MAX_RATE};

/// Rate and capacity of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u64,
    pub capacity: u64,
}

/// One tenant's limits; `None` = not limited on that bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantLimits {
    pub requests: Option<Rate>,
    pub tokens: Option<Rate>,
}

impl TenantLimits {
    pub fn get(&self, limit: Limit) -> Option<Rate> {
        match limit {
            Limit::Requests => self.requests,
            Limit::Tokens => self.tokens,
        }
    }
}

/// Limits by tenant name; every other name (`anonymous`, `overflow`, `u/<id>`) has `default`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub default: TenantLimits,
    pub tenants: HashMap<String, TenantLimits>,
}

impl Limits {
    pub fn of(&self, tenant: &str) -> TenantLimits {
        self.tenants.get(tenant).copied().unwrap_or(self.default)
    }
}

/// Keys the filter accepts under `tenants` (see filter/src/config/raw.rs); only `default` and
/// `limits` matter here.
const TENANT_KEYS: [&str; 9] = [
    "header",
    "jwt_claim",
    "jwt_payload_key",
    "unknown",
    "default",
    "limits",
    "max_tracked_tenants",
    "max_tokens_cap",
    "global",
];

fn whole(at: &str, v: Option<&Value>) -> Result<Option<u64>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_RATE).contains(&n) => Ok(Some(n)),
            _ => Err(format!("{at}: must be a whole number from 1 to {MAX_RATE}")),
        },
    }
}

fn rate(at: &str, o: &Map<String, Value>, rate: &str, burst: &str) -> Result<Option<Rate>, String> {
    let per_minute = whole(&format!("{at}.{rate}"), o.get(rate))?;
    let capacity = whole(&format!("{at}.{burst}"), o.get(burst))?;
    match (per_minute, capacity) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(format!("{at}.{burst}: needs {rate} to be set")),
        (Some(p), c) => Ok(Some(Rate {
            per_minute: p,
            capacity: c.unwrap_or(p),
        })),
    }
}

fn tenant_limits(at: &str, v: &Value) -> Result<TenantLimits, String> {
    let Some(o) = v.as_object() else {
        return Err(format!("{at}: must be an object"));
    };
    const KEYS: [&str; 4] = [
        "requests_per_minute",
        "tokens_per_minute",
        "burst_requests",
        "burst_tokens",
    ];
    if let Some(k) = o.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!(
            "{at}.{k}: unknown field (expected one of {KEYS:?})"
        ));
    }
    Ok(TenantLimits {
        requests: rate(at, o, "requests_per_minute", "burst_requests")?,
        tokens: rate(at, o, "tokens_per_minute", "burst_tokens")?,
    })
}

/// Reads the limits from the plugin configuration's bytes.
pub fn parse(json: &[u8]) -> Result<Limits, String> {
    let root: Value = serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    let Some(tenants) = root.get("tenants") else {
        return Err("tenants: missing (the rate-limit service needs the tenants' limits)".into());
    };
    let Some(tenants) = tenants.as_object() else {
        return Err("tenants: must be an object".into());
    };
    if let Some(k) = tenants.keys().find(|k| !TENANT_KEYS.contains(&k.as_str())) {
        return Err(format!("tenants.{k}: unknown field"));
    }
    let default = match tenants.get("default") {
        None => TenantLimits::default(),
        Some(v) => tenant_limits("tenants.default", v)?,
    };
    let mut by_name = HashMap::new();
    match tenants.get("limits") {
        None => {}
        Some(Value::Object(list)) => {
            for (name, v) in list {
                by_name.insert(
                    name.clone(),
                    tenant_limits(&format!("tenants.limits.{name}"), v)?,
                );
            }
        }
        Some(_) => return Err("tenants.limits: must be an object".into()),
    }
    Ok(Limits {
        default,
        tenants: by_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_default_and_named_limits_with_bursts() {
        let got = parse(
            br#"{"tiers": {}, "tenants": {"header": "x-tenant-id",
                "default": {"requests_per_minute": 600, "tokens_per_minute": 100000},
                "limits": {"acme": {"requests_per_minute": 60, "burst_requests": 5}}}}"#,
        );
        let Ok(limits) = got else {
            unreachable!("{got:?}")
        };
        assert_eq!(
            limits.of("u/x").tokens,
            Some(Rate {
                per_minute: 100000,
                capacity: 100000
            })
        );
        assert_eq!(
            limits.of("acme").requests,
            Some(Rate {
                per_minute: 60,
                capacity: 5
            })
        );
        assert_eq!(limits.of("acme").tokens, None);
    }

    #[test]
    fn the_shipped_plugin_configs_are_read() {
        for path in [
            "../host-sim/examples/plugin.json",
            "../deploy/extproc/config/plugin.json",
        ] {
            let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
            let json = std::fs::read(&full).unwrap_or_default();
            assert!(!json.is_empty(), "{full} missing");
            let got = parse(&json);
            assert!(got.is_ok(), "{path}: {got:?}");
        }
    }

    #[test]
    fn typos_and_bad_figures_name_the_field() {
        for (json, field) in [
            (r#"{"tenants": {"defualt": {}}}"#, "tenants.defualt"),
            (
                r#"{"tenants": {"default": {"request_per_minute": 1}}}"#,
                "tenants.default.request_per_minute",
            ),
            (
                r#"{"tenants": {"limits": {"a": {"tokens_per_minute": 0}}}}"#,
                "tenants.limits.a.tokens_per_minute",
            ),
            (
                r#"{"tenants": {"limits": {"a": {"tokens_per_minute": "5"}}}}"#,
                "tenants.limits.a.tokens_per_minute",
            ),
            (
                r#"{"tenants": {"default": {"burst_tokens": 5}}}"#,
                "tenants.default.burst_tokens",
            ),
            (
                r#"{"tenants": {"default": {"requests_per_minute": 8589934593}}}"#,
                "tenants.default.requests_per_minute",
            ),
            (r#"{"tenants": {"limits": []}}"#, "tenants.limits"),
            (r#"{"tiers": {}}"#, "tenants"),
        ] {
            match parse(json.as_bytes()) {
                Err(e) => assert!(e.starts_with(field), "{json}: {e}"),
                Ok(l) => unreachable!("{json} accepted: {l:?}"),
            }
        }
    }
}
