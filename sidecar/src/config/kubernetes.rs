//! The `kubernetes` section (and the flags that override it).

use super::raw::RawKubernetes;
use super::{is_pool_name, ConfigError, KubeOverrides, KubeSettings, PoolApi, DEFAULT_TIER_LABEL};

pub(super) fn kube_settings(
    raw: Option<RawKubernetes>,
    overrides: &KubeOverrides,
) -> Result<Option<KubeSettings>, ConfigError> {
    if raw.is_none() && overrides.is_empty() {
        return Ok(None);
    }
    let raw = raw.unwrap_or_default();
    let (pool_field, inference_pool) = match (&overrides.inference_pool, raw.inference_pool) {
        (Some(flag), _) => ("--inference-pool", flag.clone()),
        (None, Some(name)) => ("kubernetes.inference_pool", name),
        (None, None) => {
            return Err(ConfigError::new(
                "kubernetes.inference_pool",
                "required: the name of the InferencePool to watch (or --inference-pool)",
            ))
        }
    };
    check_dns_name(pool_field, &inference_pool)?;
    let namespace = match (&overrides.namespace, raw.namespace) {
        (Some(flag), _) => Some(("--namespace", flag.clone())),
        (None, given) => given.map(|ns| ("kubernetes.namespace", ns)),
    };
    if let Some((field, ns)) = &namespace {
        check_dns_name(field, ns)?;
    }
    let (label_field, tier_label) = match (&overrides.tier_label, raw.tier_label) {
        (Some(flag), _) => ("--tier-label", flag.clone()),
        (None, given) => (
            "kubernetes.tier_label",
            given.unwrap_or_else(|| DEFAULT_TIER_LABEL.to_string()),
        ),
    };
    check_label_key(label_field, &tier_label)?;
    let default_tier = raw.default_tier.unwrap_or_else(|| inference_pool.clone());
    if !is_pool_name(&default_tier) {
        return Err(ConfigError::new(
            "kubernetes.default_tier",
            "must be non-empty and contain no spaces",
        ));
    }
    let api = match raw.api_version.as_deref() {
        None => None,
        Some(given) => Some(
            PoolApi::ALL
                .into_iter()
                .find(|api| api.api_version() == given)
                .ok_or_else(|| {
                    ConfigError::new(
                        "kubernetes.api_version",
                        format!(
                            "must be {} or {} (got {given:?}); leave it out to use whichever the cluster serves",
                            PoolApi::V1.api_version(),
                            PoolApi::V1Alpha2.api_version()
                        ),
                    )
                })?,
        ),
    };
    Ok(Some(KubeSettings {
        inference_pool,
        namespace: namespace.map(|(_, ns)| ns),
        tier_label,
        default_tier,
        api,
    }))
}

/// A Kubernetes object or namespace name: lowercase letters, digits, `-` and `.`, at most 253.
fn check_dns_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("not a Kubernetes name (lowercase letters, digits, '-', '.'): {name:?}"),
        ))
    }
}

/// A label key: `[prefix/]name`, name of at most 63 of `[A-Za-z0-9._-]` starting and ending
/// alphanumeric, prefix a DNS subdomain.
fn check_label_key(field: &str, key: &str) -> Result<(), ConfigError> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| check_dns_name(field, p).is_ok());
    if name_ok && prefix_ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("not a Kubernetes label key (e.g. llm-router.io/tier): {key:?}"),
        ))
    }
}
