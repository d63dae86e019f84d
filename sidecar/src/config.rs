//! Configuration file: parsing and validation (pure; no I/O except what the caller passes in).
//!
//! The file is JSON. Every field is checked by hand (rather than with `#[derive(Deserialize)]`)
//! so that every error names the field it is about, e.g. `pools.small[1]: bad address "x"`.

use serde_json::{Map, Value};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_INTERVAL_MS: u64 = 500;
pub const DEFAULT_SCRAPE_TIMEOUT_MS: u64 = 300;
pub const DEFAULT_PUSH_URL: &str = "http://127.0.0.1:10000/.well-known/llm-router/load";
pub const DEFAULT_TOKEN_ENV: &str = "LLM_ROUTER_PUSH_TOKEN";
pub const DEFAULT_METRICS_PATH: &str = "/metrics";
/// vLLM's metric names (V1 engine and older releases).
pub const DEFAULT_WAITING: &[&str] = &["vllm:num_requests_waiting"];
pub const DEFAULT_RUNNING: &[&str] = &["vllm:num_requests_running"];
pub const DEFAULT_KV_CACHE: &[&str] = &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"];

const KNOWN_FIELDS: &[&str] = &[
    "pools",
    "interval_ms",
    "scrape_timeout_ms",
    "push_url",
    "push_token_env",
    "push_token_file",
    "metrics",
    "metrics_path",
];
const METRICS_FIELDS: &[&str] = &["waiting", "running", "kv_cache"];
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
    /// Sorted by name.
    pub pools: Vec<PoolConfig>,
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
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ConfigError::new("(file)", format!("not valid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| ConfigError::new("(top level)", "must be a JSON object"))?;
    reject_unknown(obj, KNOWN_FIELDS, "")?;

    let pools = parse_pools(obj.get("pools"), base_dir)?;
    let interval_ms = opt_u64(obj, "interval_ms")?.unwrap_or(DEFAULT_INTERVAL_MS);
    if !(10..=MAX_INTERVAL_MS).contains(&interval_ms) {
        return Err(ConfigError::new(
            "interval_ms",
            format!("must be between 10 and {MAX_INTERVAL_MS} (got {interval_ms})"),
        ));
    }
    let timeout_ms = opt_u64(obj, "scrape_timeout_ms")?.unwrap_or(DEFAULT_SCRAPE_TIMEOUT_MS);
    if !(1..=MAX_INTERVAL_MS).contains(&timeout_ms) {
        return Err(ConfigError::new(
            "scrape_timeout_ms",
            format!("must be between 1 and {MAX_INTERVAL_MS} (got {timeout_ms})"),
        ));
    }
    let push_url = opt_str(obj, "push_url")?.unwrap_or(DEFAULT_PUSH_URL);
    let push = parse_push_url(push_url).map_err(|m| ConfigError::new("push_url", m))?;

    let token_env = opt_str(obj, "push_token_env")?;
    let token_file = opt_str(obj, "push_token_file")?;
    let token = match (token_env, token_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "push_token_file",
                "set either push_token_env or push_token_file, not both",
            ))
        }
        (_, Some(file)) => {
            if file.trim().is_empty() {
                return Err(ConfigError::new("push_token_file", "must not be empty"));
            }
            TokenSource::File(base_dir.join(file))
        }
        (env, None) => {
            let name = env.unwrap_or(DEFAULT_TOKEN_ENV);
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(ConfigError::new(
                    "push_token_env",
                    format!("not a valid environment variable name: {name:?}"),
                ));
            }
            TokenSource::Env(name.to_string())
        }
    };

    let metrics = parse_metrics(obj.get("metrics"))?;
    let metrics_path = opt_str(obj, "metrics_path")?.unwrap_or(DEFAULT_METRICS_PATH);
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
        interval: Duration::from_millis(interval_ms),
        scrape_timeout: Duration::from_millis(timeout_ms),
        push,
        token,
        metrics,
        metrics_path: metrics_path.to_string(),
    })
}

fn reject_unknown(
    obj: &Map<String, Value>,
    known: &[&str],
    prefix: &str,
) -> Result<(), ConfigError> {
    for key in obj.keys() {
        if !known.contains(&key.as_str()) {
            return Err(ConfigError::new(
                format!("{prefix}{key}"),
                format!("unknown field (known fields: {})", known.join(", ")),
            ));
        }
    }
    Ok(())
}

/// `null` counts as absent.
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn opt_u64(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, ConfigError> {
    match present(obj, key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ConfigError::new(key, format!("must be a non-negative integer (got {v})"))
        }),
    }
}

fn opt_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ConfigError> {
    match present(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| ConfigError::new(key, format!("must be a string (got {v})"))),
    }
}

fn parse_pools(value: Option<&Value>, base_dir: &Path) -> Result<Vec<PoolConfig>, ConfigError> {
    let obj = match value {
        None | Some(Value::Null) => {
            return Err(ConfigError::new(
                "pools",
                "required: an object mapping each tier to its endpoints",
            ))
        }
        Some(Value::Object(obj)) => obj,
        Some(other) => {
            return Err(ConfigError::new(
                "pools",
                format!("must be an object mapping each tier to its endpoints (got {other})"),
            ))
        }
    };
    if obj.is_empty() {
        return Err(ConfigError::new("pools", "must name at least one pool"));
    }
    let mut pools = Vec::with_capacity(obj.len());
    for (name, spec) in obj {
        let field = format!("pools.{name}");
        if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ConfigError::new(
                field,
                "pool names must be non-empty and contain no spaces",
            ));
        }
        let source = match spec {
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(ConfigError::new(
                        field,
                        "empty pool: list at least one ip:port",
                    ));
                }
                let mut addrs: Vec<String> = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let item_field = format!("{field}[{i}]");
                    let s = item.as_str().ok_or_else(|| {
                        ConfigError::new(
                            &item_field,
                            format!("must be an \"ip:port\" string (got {item})"),
                        )
                    })?;
                    let addr = parse_address(s).map_err(|m| ConfigError::new(&item_field, m))?;
                    if addrs.contains(&addr) {
                        return Err(ConfigError::new(
                            item_field,
                            format!("duplicate address {addr}"),
                        ));
                    }
                    addrs.push(addr);
                }
                PoolSource::Static(addrs)
            }
            Value::Object(file_obj) => {
                reject_unknown(file_obj, &["file"], &format!("{field}."))?;
                let file = match file_obj.get("file") {
                    Some(Value::String(s)) if !s.trim().is_empty() => s,
                    _ => {
                        return Err(ConfigError::new(
                            format!("{field}.file"),
                            "required: path of a file with one ip:port per line",
                        ))
                    }
                };
                PoolSource::File(base_dir.join(file))
            }
            other => {
                return Err(ConfigError::new(
                    field,
                    format!("must be a list of \"ip:port\" or {{\"file\": path}} (got {other})"),
                ))
            }
        };
        pools.push(PoolConfig {
            name: name.clone(),
            source,
        });
    }
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pools)
}

fn parse_metrics(value: Option<&Value>) -> Result<MetricNames, ConfigError> {
    let mut names = MetricNames::default();
    let obj = match value {
        None | Some(Value::Null) => return Ok(names),
        Some(Value::Object(obj)) => obj,
        Some(other) => {
            return Err(ConfigError::new(
                "metrics",
                format!("must be an object with waiting/running/kv_cache lists (got {other})"),
            ))
        }
    };
    reject_unknown(obj, METRICS_FIELDS, "metrics.")?;
    for (key, slot) in [
        ("waiting", &mut names.waiting),
        ("running", &mut names.running),
        ("kv_cache", &mut names.kv_cache),
    ] {
        let field = format!("metrics.{key}");
        let list = match present(obj, key) {
            None => continue,
            // A single name is accepted as a one-element list.
            Some(Value::String(s)) => vec![Value::String(s.clone())],
            Some(Value::Array(items)) => items.clone(),
            Some(other) => {
                return Err(ConfigError::new(
                    field,
                    format!("must be a list of metric names (got {other})"),
                ))
            }
        };
        if list.is_empty() && key != "kv_cache" {
            return Err(ConfigError::new(field, "must name at least one metric"));
        }
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            match item.as_str() {
                Some(name) if is_metric_name(name) => out.push(name.to_string()),
                _ => {
                    return Err(ConfigError::new(
                        format!("{field}[{i}]"),
                        format!("not a Prometheus metric name: {item}"),
                    ))
                }
            }
        }
        *slot = out;
    }
    Ok(names)
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Validates an endpoint address: an IP literal and a non-zero port (`10.0.0.7:8000`,
/// `[fd00::7]:8000`). Host names are refused: the filter hands the address to Envoy's
/// ORIGINAL_DST cluster, which needs an IP. Returns the canonical form.
pub fn parse_address(s: &str) -> Result<String, String> {
    let trimmed = s.trim();
    let addr: SocketAddr = trimmed.parse().map_err(|_| {
        format!("bad address {s:?}: expected ip:port, e.g. 10.0.0.7:8000 or [fd00::7]:8000")
    })?;
    if addr.port() == 0 {
        return Err(format!("bad address {s:?}: port must not be 0"));
    }
    Ok(addr.to_string())
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_config(text, Path::new("/etc/llm-router"))
    }

    fn err_field(text: &str) -> String {
        parse(text).unwrap_err().field
    }

    #[test]
    fn full_example_parses() {
        let cfg = parse(
            r#"{"pools": {"small": ["127.0.0.1:8101","127.0.0.1:8102"], "large": {"file": "endpoints-large.txt"}},
                "interval_ms": 500, "scrape_timeout_ms": 300,
                "push_url": "http://127.0.0.1:10000/.well-known/llm-router/load",
                "push_token_env": "LLM_ROUTER_PUSH_TOKEN", "push_token_file": null,
                "metrics": {"waiting": ["vllm:num_requests_waiting"], "running": ["vllm:num_requests_running"],
                            "kv_cache": ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"]},
                "metrics_path": "/metrics"}"#,
        )
        .unwrap();
        assert_eq!(cfg.pools.len(), 2);
        assert_eq!(cfg.pools[0].name, "large");
        assert_eq!(
            cfg.pools[0].source,
            PoolSource::File(PathBuf::from("/etc/llm-router/endpoints-large.txt"))
        );
        assert_eq!(
            cfg.pools[1].source,
            PoolSource::Static(vec!["127.0.0.1:8101".into(), "127.0.0.1:8102".into()])
        );
        assert_eq!(cfg.interval, Duration::from_millis(500));
        assert_eq!(cfg.scrape_timeout, Duration::from_millis(300));
        assert_eq!(cfg.push.host, "127.0.0.1");
        assert_eq!(cfg.push.port, 10000);
        assert_eq!(cfg.push.path, "/.well-known/llm-router/load");
        assert_eq!(cfg.token, TokenSource::Env("LLM_ROUTER_PUSH_TOKEN".into()));
        assert_eq!(cfg.metrics, MetricNames::default());
        assert_eq!(cfg.metrics_path, "/metrics");
    }

    #[test]
    fn shipped_examples_parse() {
        let cfg = parse(include_str!("../examples/sidecar.json")).unwrap();
        assert_eq!(
            cfg.pools[1].source,
            PoolSource::Static(vec![
                "127.0.0.1:8101".into(),
                "127.0.0.1:8102".into(),
                "127.0.0.1:8103".into()
            ])
        );
        assert_eq!(
            cfg.pools[0].source,
            PoolSource::Static(vec!["127.0.0.1:8201".into(), "127.0.0.1:8202".into()])
        );
        let cfg = parse(include_str!("../examples/sidecar-file-pool.json")).unwrap();
        assert_eq!(
            cfg.token,
            TokenSource::File("/run/secrets/llm-router-push-token".into())
        );
        assert_eq!(
            parse_pool_file(include_str!("../examples/endpoints-large.txt")).unwrap(),
            vec!["127.0.0.1:8201".to_string(), "127.0.0.1:8202".to_string()]
        );
    }

    #[test]
    fn defaults_apply() {
        let cfg = parse(r#"{"pools": {"small": ["10.0.0.1:8000"]}}"#).unwrap();
        assert_eq!(cfg.interval, Duration::from_millis(DEFAULT_INTERVAL_MS));
        assert_eq!(
            cfg.scrape_timeout,
            Duration::from_millis(DEFAULT_SCRAPE_TIMEOUT_MS)
        );
        assert_eq!(cfg.push.url, DEFAULT_PUSH_URL);
        assert_eq!(cfg.token, TokenSource::Env(DEFAULT_TOKEN_ENV.into()));
        assert_eq!(cfg.metrics.kv_cache.len(), 2);
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = parse(r#"{"pools": {"small": ["10.0.0.1:8000"]}, "intervall_ms": 5}"#).unwrap_err();
        assert_eq!(e.field, "intervall_ms");
        assert!(e.message.contains("unknown field"), "{e}");
        assert_eq!(
            err_field(r#"{"pools": {"small": ["10.0.0.1:8000"]}, "metrics": {"queue": ["x"]}}"#),
            "metrics.queue"
        );
        assert_eq!(
            err_field(r#"{"pools": {"large": {"file": "a", "watch": true}}}"#),
            "pools.large.watch"
        );
    }

    #[test]
    fn bad_addresses_are_named() {
        let e =
            parse(r#"{"pools": {"small": ["10.0.0.1:8000", "model-server:8000"]}}"#).unwrap_err();
        assert_eq!(e.field, "pools.small[1]");
        assert!(e.message.contains("model-server:8000"), "{e}");
        assert_eq!(
            err_field(r#"{"pools": {"small": ["10.0.0.1"]}}"#),
            "pools.small[0]"
        );
        assert_eq!(
            err_field(r#"{"pools": {"small": ["10.0.0.1:0"]}}"#),
            "pools.small[0]"
        );
        assert_eq!(
            err_field(r#"{"pools": {"small": ["10.0.0.1:99999"]}}"#),
            "pools.small[0]"
        );
        assert_eq!(
            err_field(r#"{"pools": {"small": [8000]}}"#),
            "pools.small[0]"
        );
        assert_eq!(
            err_field(r#"{"pools": {"small": ["10.0.0.1:1", "10.0.0.1:1"]}}"#),
            "pools.small[1]"
        );
        let ok = parse(r#"{"pools": {"small": ["[::1]:8000", " 10.0.0.2:8000 "]}}"#).unwrap();
        assert_eq!(
            ok.pools[0].source,
            PoolSource::Static(vec!["[::1]:8000".into(), "10.0.0.2:8000".into()])
        );
    }

    #[test]
    fn empty_or_missing_pools_are_errors() {
        let e = parse(r#"{"pools": {"small": []}}"#).unwrap_err();
        assert_eq!(e.field, "pools.small");
        assert!(e.message.contains("empty pool"), "{e}");
        assert_eq!(err_field(r#"{"pools": {}}"#), "pools");
        assert_eq!(err_field(r#"{"interval_ms": 100}"#), "pools");
        assert_eq!(err_field(r#"{"pools": ["10.0.0.1:8000"]}"#), "pools");
        assert_eq!(
            err_field(r#"{"pools": {"small": "10.0.0.1:8000"}}"#),
            "pools.small"
        );
        assert_eq!(err_field(r#"{"pools": {"large": {}}}"#), "pools.large.file");
        assert_eq!(
            err_field(r#"{"pools": {"large": {"file": ""}}}"#),
            "pools.large.file"
        );
    }

    #[test]
    fn scalar_fields_are_checked() {
        let p = r#""pools": {"s": ["10.0.0.1:8000"]}"#;
        assert_eq!(
            err_field(&format!(r#"{{{p}, "interval_ms": "500"}}"#)),
            "interval_ms"
        );
        assert_eq!(
            err_field(&format!(r#"{{{p}, "interval_ms": 0}}"#)),
            "interval_ms"
        );
        assert_eq!(
            err_field(&format!(r#"{{{p}, "interval_ms": -1}}"#)),
            "interval_ms"
        );
        assert_eq!(
            err_field(&format!(r#"{{{p}, "scrape_timeout_ms": 0}}"#)),
            "scrape_timeout_ms"
        );
        assert_eq!(
            err_field(&format!(r#"{{{p}, "push_url": "https://gw/load"}}"#)),
            "push_url"
        );
        assert_eq!(
            err_field(&format!(r#"{{{p}, "push_url": "http://:80/x"}}"#)),
            "push_url"
        );
        assert_eq!(
            err_field(&format!(r#"{{{p}, "push_url": "http://h:x/"}}"#)),
            "push_url"
        );
        assert_eq!(
            err_field(&format!(r#"{{{p}, "metrics_path": "metrics"}}"#)),
            "metrics_path"
        );
        assert_eq!(
            err_field(&format!(r#"{{{p}, "metrics": {{"waiting": []}}}}"#)),
            "metrics.waiting"
        );
        assert_eq!(
            err_field(&format!(
                r#"{{{p}, "metrics": {{"running": ["ok", "bad name"]}}}}"#
            )),
            "metrics.running[1]"
        );
        assert_eq!(
            err_field(&format!(
                r#"{{{p}, "push_token_env": "A", "push_token_file": "/run/token"}}"#
            )),
            "push_token_file"
        );
        assert_eq!(err_field("[1, 2]"), "(top level)");
        assert_eq!(err_field("{"), "(file)");
    }

    #[test]
    fn metric_overrides() {
        let cfg = parse(
            r#"{"pools": {"s": ["10.0.0.1:8000"]},
                "metrics": {"waiting": ["tgi_queue_size"], "running": "tgi_batch_current_size", "kv_cache": []}}"#,
        )
        .unwrap();
        assert_eq!(cfg.metrics.waiting, vec!["tgi_queue_size"]);
        assert_eq!(cfg.metrics.running, vec!["tgi_batch_current_size"]);
        assert!(cfg.metrics.kv_cache.is_empty());
        // Partial override keeps the other defaults.
        let cfg =
            parse(r#"{"pools": {"s": ["10.0.0.1:8000"]}, "metrics": {"waiting": ["q"]}}"#).unwrap();
        assert_eq!(cfg.metrics.running, vec!["vllm:num_requests_running"]);
    }

    #[test]
    fn push_urls() {
        let t = parse_push_url("http://localhost/load").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("localhost", 80, "/load")
        );
        let t = parse_push_url("http://[::1]:10000").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 10000, "/")
        );
        assert_eq!(t.authority, "[::1]:10000");
        let t = parse_push_url("http://127.0.0.1:10000?x=1").unwrap();
        assert_eq!(t.path, "/?x=1");
    }

    #[test]
    fn token_resolution() {
        let no_file = |_: &Path| -> std::io::Result<String> { Err(std::io::Error::other("no")) };
        let env = TokenSource::Env("TOK".into());
        assert_eq!(
            resolve_token(&env, |_| Some(" s3cret\n".into()), no_file).unwrap(),
            "s3cret"
        );
        let e = resolve_token(&env, |_| None, no_file).unwrap_err();
        assert_eq!(e.field, "push_token_env");
        assert!(e.message.contains("TOK"), "{e}");
        assert_eq!(
            resolve_token(&env, |_| Some("  ".into()), no_file)
                .unwrap_err()
                .field,
            "push_token_env"
        );
        assert!(resolve_token(&env, |_| Some("a b".into()), no_file).is_err());
        let file = TokenSource::File("/run/secrets/token".into());
        assert_eq!(
            resolve_token(&file, |_| None, |_| Ok("abc\n".into())).unwrap(),
            "abc"
        );
        let e = resolve_token(&file, |_| None, no_file).unwrap_err();
        assert_eq!(e.field, "push_token_file");
        assert!(e.message.contains("/run/secrets/token"), "{e}");
    }

    #[test]
    fn pool_files() {
        let text = "# large pool\n10.0.0.1:8000\n\n  10.0.0.2:8000  # second\n10.0.0.1:8000\n";
        assert_eq!(
            parse_pool_file(text).unwrap(),
            vec!["10.0.0.1:8000".to_string(), "10.0.0.2:8000".to_string()]
        );
        assert_eq!(
            parse_pool_file("# nothing yet\n").unwrap(),
            Vec::<String>::new()
        );
        let e = parse_pool_file("10.0.0.1:8000\nhost:80\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
    }
}
