//! Configuration file: parsing and validation (pure; no I/O except what the caller passes in).
//!
//! The file is JSON read into serde types with `deny_unknown_fields` (see `raw`), through
//! `serde_path_to_error`, so that every error names the field it is about, e.g.
//! `pools.small[1]: bad address "x"`. Checks that span fields follow in `validate`.

mod kubernetes;
mod raw;
#[cfg(test)]
mod tests;

pub use raw::{is_metric_name, parse_address};

use kubernetes::kube_settings;
use raw::{PoolSpec, RawConfig, RawMetrics};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_INTERVAL_MS: u64 = 500;
pub const DEFAULT_SCRAPE_TIMEOUT_MS: u64 = 300;
pub const DEFAULT_PUSH_URL: &str = "http://127.0.0.1:10000/.well-known/llm-router/load";
pub const DEFAULT_TOKEN_ENV: &str = "LLM_ROUTER_PUSH_TOKEN";
pub const DEFAULT_METRICS_PATH: &str = "/metrics";
pub const DEFAULT_TIER_LABEL: &str = "llm-router.io/tier";
/// vLLM's metric names (V1 engine and older releases).
pub const DEFAULT_WAITING: &[&str] = &["vllm:num_requests_waiting"];
pub const DEFAULT_RUNNING: &[&str] = &["vllm:num_requests_running"];
pub const DEFAULT_KV_CACHE: &[&str] = &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"];

const MAX_INTERVAL_MS: u64 = 3_600_000;

/// A configuration error: the field it is about (a JSON path such as `pools.small[1]`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolSource {
    /// Addresses listed in the configuration file.
    Static(Vec<String>),
    /// A file with one address per line; re-read when its modification time changes.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub name: String,
    pub source: PoolSource,
}

/// Which InferencePool API to watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolApi {
    /// `inference.networking.k8s.io/v1`: `spec.selector.matchLabels`, `spec.targetPorts[].number`.
    V1,
    /// `inference.networking.x-k8s.io/v1alpha2`: `spec.selector` (a label map),
    /// `spec.targetPortNumber`.
    V1Alpha2,
}

impl PoolApi {
    pub const ALL: [PoolApi; 2] = [PoolApi::V1, PoolApi::V1Alpha2];

    pub fn group(self) -> &'static str {
        match self {
            PoolApi::V1 => "inference.networking.k8s.io",
            PoolApi::V1Alpha2 => "inference.networking.x-k8s.io",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            PoolApi::V1 => "v1",
            PoolApi::V1Alpha2 => "v1alpha2",
        }
    }

    pub fn api_version(self) -> String {
        format!("{}/{}", self.group(), self.version())
    }
}

/// The Kubernetes pool source: the Ready pods of one InferencePool, grouped by a tier label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    pub inference_pool: String,
    /// `None`: the namespace of the client configuration (in a pod: the pod's own namespace).
    pub namespace: Option<String>,
    /// Pod label naming the tier (the snapshot pool) a pod serves.
    pub tier_label: String,
    /// The pool of pods without the tier label (default: the InferencePool's name).
    pub default_tier: String,
    /// `None`: whichever of the two APIs the cluster serves (v1 first).
    pub api: Option<PoolApi>,
}

/// Command-line flags that set or override the `kubernetes` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeOverrides {
    pub inference_pool: Option<String>,
    pub namespace: Option<String>,
    pub tier_label: Option<String>,
}

impl KubeOverrides {
    pub(crate) fn is_empty(&self) -> bool {
        self == &KubeOverrides::default()
    }
}

/// Where snapshots are POSTed: a plain `http://` URL split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    pub url: String,
    /// `host[:port]` as written, used for the Host header.
    pub authority: String,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Env(String),
    File(PathBuf),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Env(name) => write!(f, "${name}"),
            TokenSource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// Metric names to read, per quantity. The first name present in a scrape wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricNames {
    pub waiting: Vec<String>,
    pub running: Vec<String>,
    /// May be empty (servers without a KV-cache gauge, e.g. TGI): then `kv_cache` is 0.
    pub kv_cache: Vec<String>,
}

impl Default for MetricNames {
    fn default() -> Self {
        let own = |names: &[&str]| names.iter().map(|s| (*s).to_string()).collect();
        MetricNames {
            waiting: own(DEFAULT_WAITING),
            running: own(DEFAULT_RUNNING),
            kv_cache: own(DEFAULT_KV_CACHE),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Pools listed in the file (addresses or pool files), sorted by name.
    pub pools: Vec<PoolConfig>,
    /// The Kubernetes pool source, if configured.
    pub kubernetes: Option<KubeSettings>,
    pub interval: Duration,
    pub scrape_timeout: Duration,
    pub push: PushTarget,
    pub token: TokenSource,
    pub metrics: MetricNames,
    pub metrics_path: String,
}

/// Parses and validates a configuration. Relative file paths (`pools.*.file`,
/// `push_token_file`) are resolved against `base_dir` (the configuration file's directory).
pub fn parse_config(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    parse_config_with(text, base_dir, &KubeOverrides::default())
}

/// [`parse_config`], with command-line flags applied over the `kubernetes` section.
pub fn parse_config_with(
    text: &str,
    base_dir: &Path,
    overrides: &KubeOverrides,
) -> Result<Config, ConfigError> {
    if !text.trim_start().starts_with('{') {
        // serde would read a struct from a JSON array too; the file must be an object.
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => ConfigError::new("(top level)", "must be a JSON object"),
            Err(e) => ConfigError::new("(file)", format!("not valid JSON: {e}")),
        });
    }
    let de = &mut serde_json::Deserializer::from_str(text);
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = if inner.is_syntax() || inner.is_eof() {
            "(file)".to_string()
        } else if path == "." {
            "(top level)".to_string()
        } else {
            path
        };
        ConfigError::new(field, inner.to_string())
    })?;
    validate(raw, base_dir, overrides)
}

fn validate(
    raw: RawConfig,
    base_dir: &Path,
    overrides: &KubeOverrides,
) -> Result<Config, ConfigError> {
    let kubernetes = kube_settings(raw.kubernetes, overrides)?;
    let pools = match raw.pools {
        Some(pools) => validate_pools(pools, base_dir)?,
        None if kubernetes.is_some() => Vec::new(),
        None => {
            return Err(ConfigError::new(
                "pools",
                "required (unless a kubernetes section is given): an object mapping each tier to its endpoints",
            ))
        }
    };
    let interval_ms = raw.interval_ms.unwrap_or(DEFAULT_INTERVAL_MS);
    in_range("interval_ms", interval_ms, 10)?;
    let timeout_ms = raw.scrape_timeout_ms.unwrap_or(DEFAULT_SCRAPE_TIMEOUT_MS);
    in_range("scrape_timeout_ms", timeout_ms, 1)?;
    let push_url = raw.push_url.as_deref().unwrap_or(DEFAULT_PUSH_URL);
    let push = parse_push_url(push_url).map_err(|m| ConfigError::new("push_url", m))?;
    let token = token_source(raw.push_token_env, raw.push_token_file, base_dir)?;
    let metrics = metric_names(raw.metrics)?;
    let metrics_path = raw
        .metrics_path
        .unwrap_or_else(|| DEFAULT_METRICS_PATH.to_string());
    if !metrics_path.starts_with('/')
        || metrics_path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ConfigError::new(
            "metrics_path",
            format!("must start with '/' and contain no spaces (got {metrics_path:?})"),
        ));
    }
    Ok(Config {
        pools,
        kubernetes,
        interval: Duration::from_millis(interval_ms),
        scrape_timeout: Duration::from_millis(timeout_ms),
        push,
        token,
        metrics,
        metrics_path,
    })
}

fn in_range(field: &str, value: u64, min: u64) -> Result<(), ConfigError> {
    if (min..=MAX_INTERVAL_MS).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("must be between {min} and {MAX_INTERVAL_MS} (got {value})"),
        ))
    }
}

fn validate_pools(
    pools: std::collections::BTreeMap<String, PoolSpec>,
    base_dir: &Path,
) -> Result<Vec<PoolConfig>, ConfigError> {
    if pools.is_empty() {
        return Err(ConfigError::new("pools", "must name at least one pool"));
    }
    let mut out = Vec::with_capacity(pools.len());
    for (name, spec) in pools {
        let field = format!("pools.{name}");
        if !is_pool_name(&name) {
            return Err(ConfigError::new(
                field,
                "pool names must be non-empty and contain no spaces",
            ));
        }
        let source = match spec {
            PoolSpec::List(addrs) => {
                if addrs.is_empty() {
                    return Err(ConfigError::new(
                        field,
                        "empty pool: list at least one ip:port",
                    ));
                }
                let mut kept: Vec<String> = Vec::with_capacity(addrs.len());
                for (i, addr) in addrs.into_iter().enumerate() {
                    if kept.contains(&addr.0) {
                        return Err(ConfigError::new(
                            format!("{field}[{i}]"),
                            format!("duplicate address {}", addr.0),
                        ));
                    }
                    kept.push(addr.0);
                }
                PoolSource::Static(kept)
            }
            PoolSpec::File(spec) if spec.file.trim().is_empty() => {
                return Err(ConfigError::new(
                    format!("{field}.file"),
                    "required: path of a file with one ip:port per line",
                ))
            }
            PoolSpec::File(spec) => PoolSource::File(base_dir.join(spec.file)),
        };
        out.push(PoolConfig { name, source });
    }
    Ok(out)
}

pub(crate) fn is_pool_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_control() || c.is_whitespace())
}

fn token_source(
    env: Option<String>,
    file: Option<String>,
    base_dir: &Path,
) -> Result<TokenSource, ConfigError> {
    match (env, file) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            "push_token_file",
            "set either push_token_env or push_token_file, not both",
        )),
        (_, Some(file)) if file.trim().is_empty() => {
            Err(ConfigError::new("push_token_file", "must not be empty"))
        }
        (_, Some(file)) => Ok(TokenSource::File(base_dir.join(file))),
        (env, None) => {
            let name = env.unwrap_or_else(|| DEFAULT_TOKEN_ENV.to_string());
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(ConfigError::new(
                    "push_token_env",
                    format!("not a valid environment variable name: {name:?}"),
                ));
            }
            Ok(TokenSource::Env(name))
        }
    }
}

fn metric_names(raw: Option<RawMetrics>) -> Result<MetricNames, ConfigError> {
    let mut names = MetricNames::default();
    let Some(raw) = raw else { return Ok(names) };
    for (key, given, slot) in [
        ("waiting", raw.waiting, &mut names.waiting),
        ("running", raw.running, &mut names.running),
        ("kv_cache", raw.kv_cache, &mut names.kv_cache),
    ] {
        let Some(list) = given else { continue };
        if list.0.is_empty() && key != "kv_cache" {
            return Err(ConfigError::new(
                format!("metrics.{key}"),
                "must name at least one metric",
            ));
        }
        *slot = list.0;
    }
    Ok(names)
}

/// Parses a pool file: one address per line; `#` starts a comment; blank lines are skipped;
/// duplicates are dropped (first occurrence kept). Errors name the line.
pub fn parse_pool_file(text: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let content = match line.find('#') {
            Some(pos) => &line[..pos],
            None => line,
        }
        .trim();
        if content.is_empty() {
            continue;
        }
        let addr = parse_address(content).map_err(|m| format!("line {}: {m}", i + 1))?;
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// Splits a plain `http://host[:port][/path]` URL.
pub fn parse_push_url(url: &str) -> Result<PushTarget, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("must be a plain http:// URL (the gateway listener on loopback), got {url:?}")
    })?;
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("must not contain spaces, got {url:?}"));
    }
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    if authority.is_empty() {
        return Err(format!("missing host in {url:?}"));
    }
    if authority.contains('@') {
        return Err("user:password@ is not supported; the token is sent as a Bearer header".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in {url:?}"))?;
        let port = match after {
            "" => 80,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or_else(|| format!("bad port in {url:?}"))?,
        };
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>()
                    .map_err(|_| format!("bad port in {url:?}"))?,
            ),
            None => (authority.to_string(), 80),
        }
    };
    if host.is_empty() || port == 0 {
        return Err(format!("missing host or port in {url:?}"));
    }
    Ok(PushTarget {
        url: url.to_string(),
        authority: authority.to_string(),
        host,
        port,
        path,
    })
}

/// Resolves the push token. `env` looks up an environment variable and `read_file` reads a
/// file (injected so this stays testable). The token is trimmed; it must be non-empty and
/// printable ASCII without spaces (it goes into an HTTP header).
pub fn resolve_token(
    source: &TokenSource,
    env: impl Fn(&str) -> Option<String>,
    read_file: impl Fn(&Path) -> std::io::Result<String>,
) -> Result<String, ConfigError> {
    let (field, raw) = match source {
        TokenSource::Env(name) => {
            let raw = env(name).ok_or_else(|| {
                ConfigError::new(
                    "push_token_env",
                    format!("environment variable {name} is not set (it must hold the filter's push token)"),
                )
            })?;
            ("push_token_env", raw)
        }
        TokenSource::File(path) => {
            let raw = read_file(path).map_err(|e| {
                ConfigError::new(
                    "push_token_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            ("push_token_file", raw)
        }
    };
    let token = raw.trim();
    if token.is_empty() {
        return Err(ConfigError::new(
            field,
            format!("the push token from {source} is empty"),
        ));
    }
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ConfigError::new(
            field,
            format!("the push token from {source} must be printable ASCII without spaces"),
        ));
    }
    Ok(token.to_string())
}
