//! Command line: `llm-router-extproc --wasm FILE --plugin-config FILE [--grpc-addr ADDR]
//! [--health-addr ADDR] [--metrics-addr ADDR] [--plaintext | --tls-cert F --tls-key F]
//! [--workers N] [--env NAME]... [--fail-open] [--drain-seconds N] [--memory-limit-mb N]
//! [--grpc-cluster NAME=URL]... [--otlp-endpoint URL]`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

pub const USAGE: &str = "usage: llm-router-extproc --wasm FILE --plugin-config FILE \
[--grpc-addr ADDR] [--health-addr ADDR] [--metrics-addr ADDR] \
[--plaintext | --tls-cert FILE --tls-key FILE] [--workers N] [--env NAME]... \
[--fail-open] [--drain-seconds N] [--memory-limit-mb N] [--grpc-cluster NAME=URL]... \
[--otlp-endpoint URL]
       llm-router-extproc quota --redis URL [...]   (the global-limits quota service; quota --help)

  --grpc-cluster NAME=URL  the target of the module's gRPC calls (proxy_grpc_call) to upstream
                           NAME, as an Envoy cluster of that name would be; repeatable, one per
                           name. URL is http://HOST[:PORT] (plaintext HTTP/2) or
                           https://HOST[:PORT] (TLS, verified against the system's roots).
                           Calls to names not given fail in the module as for an unknown
                           cluster (ParseFailure).
  --otlp-endpoint URL      export a span per request over OTLP/gRPC to this collector
                           (http://HOST:PORT); default OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
                           OTEL_EXPORTER_OTLP_ENDPOINT; none: no spans (docs/tracing.md).";

/// How the gRPC listeners speak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// A self-signed certificate generated at start (gateways connect without verification).
    SelfSigned,
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    Plaintext,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub wasm: PathBuf,
    pub plugin_config: PathBuf,
    pub grpc_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub tls: Tls,
    pub workers: usize,
    /// Names of environment variables passed to the module (Envoy's `host_env_keys`).
    pub env: Vec<String>,
    /// A stream whose VM trapped passes through unchanged instead of getting a 503.
    pub fail_open: bool,
    /// How long open streams may run after SIGTERM.
    pub drain_seconds: u64,
    pub memory_limit_mb: usize,
    /// `--grpc-cluster NAME=URL`: targets of the module's gRPC calls.
    pub grpc_clusters: grpc_call::Clusters,
    /// OTLP/gRPC collector for spans (`http://host:4317`); without it (and without
    /// OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT) the server emits no spans.
    pub otlp_endpoint: Option<String>,
}

/// A command-line problem; the message names the flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    Help,
    Missing(&'static str),
    NoValue(String),
    Invalid {
        flag: String,
        value: String,
        why: String,
    },
    Unknown(String),
    Conflict(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Help => f.write_str(USAGE),
            CliError::Missing(flag) => write!(f, "{flag} is required\n{USAGE}"),
            CliError::NoValue(flag) => write!(f, "{flag} needs a value"),
            CliError::Invalid { flag, value, why } => write!(f, "{flag} {value:?}: {why}"),
            CliError::Unknown(arg) => write!(f, "unknown argument {arg:?}\n{USAGE}"),
            CliError::Conflict(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for CliError {}

pub(crate) fn addr(flag: &str, value: &str) -> Result<SocketAddr, CliError> {
    value.parse().map_err(|_| CliError::Invalid {
        flag: flag.to_string(),
        value: value.to_string(),
        why: "expected IP:PORT, e.g. 127.0.0.1:9002".into(),
    })
}

pub(crate) fn number(flag: &str, value: &str, min: u64, max: u64) -> Result<u64, CliError> {
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(CliError::Invalid {
            flag: flag.to_string(),
            value: value.to_string(),
            why: format!("expected a whole number from {min} to {max}"),
        }),
    }
}

fn env_name(value: &str) -> Result<String, CliError> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !value.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(value.to_string())
    } else {
        Err(CliError::Invalid {
            flag: "--env".into(),
            value: value.to_string(),
            why: "expected an environment variable name (letters, digits, _)".into(),
        })
    }
}

fn otlp_endpoint(value: &str) -> Result<String, CliError> {
    let rest = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"))
        .unwrap_or(value);
    let host_port = rest.trim_end_matches('/');
    if host_port.is_empty() || host_port.contains(['/', ' ']) || !host_port.contains(':') {
        return Err(CliError::Invalid {
            flag: "--otlp-endpoint".into(),
            value: value.to_string(),
            why: "expected a collector address such as http://127.0.0.1:4317".into(),
        });
    }
    Ok(value.trim_end_matches('/').to_string())
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Options, CliError> {
    let mut args = args.into_iter();
    let (mut wasm, mut config, mut cert, mut key) = (None, None, None, None);
    let mut opts = Options {
        wasm: PathBuf::new(),
        plugin_config: PathBuf::new(),
        grpc_addr: addr("--grpc-addr", "127.0.0.1:9002")?,
        health_addr: addr("--health-addr", "127.0.0.1:9003")?,
        metrics_addr: addr("--metrics-addr", "127.0.0.1:9090")?,
        tls: Tls::SelfSigned,
        workers: 2,
        env: Vec::new(),
        fail_open: false,
        drain_seconds: 30,
        memory_limit_mb: 256,
        grpc_clusters: grpc_call::Clusters::default(),
        otlp_endpoint: None,
    };
    let mut plaintext = false;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let takes_value = !matches!(
            flag.as_str(),
            "--plaintext" | "--fail-open" | "--help" | "-h"
        );
        let value = if takes_value {
            match inline.or_else(|| args.next()) {
                Some(v) => v,
                None => return Err(CliError::NoValue(flag)),
            }
        } else {
            String::new()
        };
        match flag.as_str() {
            "--help" | "-h" => return Err(CliError::Help),
            "--wasm" => wasm = Some(PathBuf::from(value)),
            "--plugin-config" => config = Some(PathBuf::from(value)),
            "--grpc-addr" => opts.grpc_addr = addr(&flag, &value)?,
            "--health-addr" => opts.health_addr = addr(&flag, &value)?,
            "--metrics-addr" => opts.metrics_addr = addr(&flag, &value)?,
            "--tls-cert" => cert = Some(PathBuf::from(value)),
            "--tls-key" => key = Some(PathBuf::from(value)),
            "--plaintext" => plaintext = true,
            "--fail-open" => opts.fail_open = true,
            "--workers" => opts.workers = number(&flag, &value, 1, 256)? as usize,
            "--drain-seconds" => opts.drain_seconds = number(&flag, &value, 0, 3600)?,
            "--memory-limit-mb" => {
                opts.memory_limit_mb = number(&flag, &value, 16, 65536)? as usize
            }
            "--env" => opts.env.push(env_name(&value)?),
            "--grpc-cluster" => {
                let invalid = |why: String| CliError::Invalid {
                    flag: flag.clone(),
                    value: value.clone(),
                    why,
                };
                let cluster = grpc_call::parse_cluster(&value).map_err(invalid)?;
                opts.grpc_clusters.add(cluster).map_err(invalid)?;
            }
            "--otlp-endpoint" => opts.otlp_endpoint = Some(otlp_endpoint(&value)?),
            _ => return Err(CliError::Unknown(arg)),
        }
    }
    opts.wasm = wasm.ok_or(CliError::Missing("--wasm"))?;
    opts.plugin_config = config.ok_or(CliError::Missing("--plugin-config"))?;
    opts.tls = tls_choice(plaintext, cert, key)?;
    distinct_addrs([opts.grpc_addr, opts.health_addr, opts.metrics_addr])?;
    Ok(opts)
}

/// `--plaintext` | `--tls-cert F --tls-key F` | neither (a self-signed certificate).
pub(crate) fn tls_choice(
    plaintext: bool,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Tls, CliError> {
    match (plaintext, cert, key) {
        (true, None, None) => Ok(Tls::Plaintext),
        (true, _, _) => Err(CliError::Conflict(
            "--plaintext cannot be combined with --tls-cert/--tls-key".into(),
        )),
        (false, Some(cert), Some(key)) => Ok(Tls::Files { cert, key }),
        (false, Some(_), None) => Err(CliError::Missing("--tls-key")),
        (false, None, Some(_)) => Err(CliError::Missing("--tls-cert")),
        (false, None, None) => Ok(Tls::SelfSigned),
    }
}

pub(crate) fn distinct_addrs(addrs: [SocketAddr; 3]) -> Result<(), CliError> {
    if addrs[0] == addrs[1] || addrs[0] == addrs[2] || addrs[1] == addrs[2] {
        return Err(CliError::Conflict(
            "--grpc-addr, --health-addr and --metrics-addr must differ".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;
