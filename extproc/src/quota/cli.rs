//! `llm-router-extproc quota --redis URL [--grpc-addr ADDR] [--health-addr ADDR]
//! [--metrics-addr ADDR] [--plaintext | --tls-cert F --tls-key F] [--plugin-config FILE]
//! [--redis-timeout-ms N]`, in the style of the ext_proc server's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{addr, distinct_addrs, number, tls_choice, CliError, Tls};

pub const USAGE: &str = "usage: llm-router-extproc quota --redis URL [--grpc-addr ADDR] \
[--health-addr ADDR] [--metrics-addr ADDR] [--plaintext | --tls-cert FILE --tls-key FILE] \
[--plugin-config FILE] [--redis-timeout-ms N]

The global-limits quota service: token buckets in Redis behind the llm_router.quota.v1.Quota
gRPC API (for the filter's leases) and Envoy's envoy.service.ratelimit.v3.RateLimitService,
both on --grpc-addr.

  --redis URL              Redis to keep the buckets in: redis://[:PASSWORD@]HOST:PORT[/DB],
                           rediss:// for TLS (not built in), redis+unix:///PATH. Required.
  --grpc-addr ADDR         Quota and RateLimitService (default 0.0.0.0:9004)
  --health-addr ADDR       grpc.health.v1 (default 0.0.0.0:9005): `liveness`, `readiness`,
                           and llm_router.quota.v1.Quota (NOT_SERVING while Redis is down)
  --metrics-addr ADDR      Prometheus text on GET /metrics (default 0.0.0.0:9091)
  --plaintext              gRPC without TLS (default: TLS with a self-signed certificate)
  --tls-cert F --tls-key F gRPC TLS with this certificate chain and key (PEM)
  --plugin-config FILE     the filter's JSON configuration: tenants.default and
                           tenants.limits give the rate-limit service its limits
                           (without it, ShouldRateLimit answers FAILED_PRECONDITION)
  --redis-timeout-ms N     bound of every Redis call, 1-60000 (default 200); a call
                           that takes longer answers UNAVAILABLE";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaOptions {
    pub redis: String,
    pub grpc_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub tls: Tls,
    pub plugin_config: Option<PathBuf>,
    pub redis_timeout: Duration,
}

/// Parses the arguments after `quota`.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<QuotaOptions, CliError> {
    let mut args = args.into_iter();
    let (mut redis, mut cert, mut key) = (None, None, None);
    let mut opts = QuotaOptions {
        redis: String::new(),
        grpc_addr: addr("--grpc-addr", "0.0.0.0:9004")?,
        health_addr: addr("--health-addr", "0.0.0.0:9005")?,
        metrics_addr: addr("--metrics-addr", "0.0.0.0:9091")?,
        tls: Tls::SelfSigned,
        plugin_config: None,
        redis_timeout: Duration::from_millis(200),
    };
    let mut plaintext = false;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let takes_value = !matches!(flag.as_str(), "--plaintext" | "--help" | "-h");
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
            "--redis" => redis = Some(redis_url(&value)?),
            "--grpc-addr" => opts.grpc_addr = addr(&flag, &value)?,
            "--health-addr" => opts.health_addr = addr(&flag, &value)?,
            "--metrics-addr" => opts.metrics_addr = addr(&flag, &value)?,
            "--tls-cert" => cert = Some(PathBuf::from(value)),
            "--tls-key" => key = Some(PathBuf::from(value)),
            "--plaintext" => plaintext = true,
            "--plugin-config" => opts.plugin_config = Some(PathBuf::from(value)),
            "--redis-timeout-ms" => {
                opts.redis_timeout = Duration::from_millis(number(&flag, &value, 1, 60_000)?)
            }
            _ => return Err(CliError::Unknown(arg)),
        }
    }
    opts.redis = redis.ok_or(CliError::Missing("--redis"))?;
    opts.tls = tls_choice(plaintext, cert, key)?;
    distinct_addrs([opts.grpc_addr, opts.health_addr, opts.metrics_addr])?;
    Ok(opts)
}

fn redis_url(value: &str) -> Result<String, CliError> {
    match redis::parse_redis_url(value) {
        Some(_) if redis::Client::open(value).is_ok() => Ok(value.to_string()),
        _ => Err(CliError::Invalid {
            flag: "--redis".into(),
            value: value.to_string(),
            why: "expected a Redis URL, e.g. redis://127.0.0.1:6379".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &str) -> Result<QuotaOptions, CliError> {
        parse(args.split_whitespace().map(str::to_string))
    }

    #[test]
    fn defaults_and_flags() {
        let Ok(o) = run("--redis redis://127.0.0.1:6379") else {
            unreachable!("refused")
        };
        assert_eq!(o.grpc_addr.to_string(), "0.0.0.0:9004");
        assert_eq!(o.health_addr.to_string(), "0.0.0.0:9005");
        assert_eq!(o.metrics_addr.to_string(), "0.0.0.0:9091");
        assert_eq!(o.redis_timeout, Duration::from_millis(200));
        assert_eq!(o.tls, Tls::SelfSigned);
        let Ok(o) = run(
            "--redis=redis://r:6379/2 --plaintext --plugin-config p.json --redis-timeout-ms 50",
        ) else {
            unreachable!("refused")
        };
        assert_eq!(o.tls, Tls::Plaintext);
        assert_eq!(o.plugin_config, Some(PathBuf::from("p.json")));
        assert_eq!(o.redis_timeout, Duration::from_millis(50));
    }

    #[test]
    fn errors_name_the_flag() {
        for (args, flag) in [
            ("--plaintext", "--redis"),
            ("--redis http://x", "--redis"),
            (
                "--redis redis://x --redis-timeout-ms 0",
                "--redis-timeout-ms",
            ),
            ("--redis redis://x --grpc-addr 9004", "--grpc-addr"),
            ("--redis redis://x --tls-cert c", "--tls-key"),
            (
                "--redis redis://x --metrics-addr 0.0.0.0:9004",
                "--metrics-addr",
            ),
            ("--redis redis://x --wasm m", "--wasm"),
            ("--redis", "--redis"),
        ] {
            match run(args) {
                Ok(o) => unreachable!("{args} was accepted: {o:?}"),
                Err(e) => assert!(e.to_string().contains(flag), "{args}: {e}"),
            }
        }
    }
}
