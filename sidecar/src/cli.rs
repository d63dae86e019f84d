//! Command-line arguments (pure).

use crate::config::KubeOverrides;
use std::path::PathBuf;

pub const USAGE: &str = "\
llm-router-sidecar: scrapes model servers' Prometheus /metrics and pushes a load snapshot
to the llm-router filter in Envoy.

USAGE:
    llm-router-sidecar --config <FILE> [--once] [--print] [--no-push]
                       [--inference-pool <NAME>] [--namespace <NS>] [--tier-label <KEY>]

OPTIONS:
    -c, --config <FILE>  JSON configuration (pools, kubernetes, interval_ms, scrape_timeout_ms,
                         push_url, push_token_env | push_token_file, metrics, metrics_path);
                         see README.md
        --inference-pool <NAME>
                         watch this InferencePool's Ready pods (sets kubernetes.inference_pool)
        --namespace <NS> its namespace (sets kubernetes.namespace; default: the pod's own)
        --tier-label <KEY>
                         pod label naming a pod's tier (sets kubernetes.tier_label; default
                         llm-router.io/tier); pods without it serve kubernetes.default_tier
        --once           scrape and push one snapshot, then exit: 0 if the push was accepted
                         (or --no-push), 1 if it failed
        --print          also write each snapshot as one JSON line to stdout
        --no-push        do not push (no token needed); use with --print to inspect load
    -h, --help           print this help
    -V, --version        print the version

The push token is read from the environment variable named by push_token_env (default
LLM_ROUTER_PUSH_TOKEN) or from push_token_file, never from the command line.

EXIT STATUS:
    0  stopped by SIGTERM/SIGINT, or --once succeeded
    1  --once and the push failed
    2  bad arguments or configuration, or no push token
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub config: PathBuf,
    pub once: bool,
    pub print: bool,
    pub push: bool,
    /// `--inference-pool`, `--namespace`, `--tier-label`.
    pub kube: KubeOverrides,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Options),
    Help,
    Version,
}

pub fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut config: Option<PathBuf> = None;
    let mut once = false;
    let mut print = false;
    let mut push = true;
    let mut kube = KubeOverrides::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--once" => once = true,
            "--print" => print = true,
            "--no-push" => push = false,
            "-c" | "--config" => {
                let value = iter
                    .next()
                    .ok_or_else(|| format!("{arg} needs a file path"))?;
                config = Some(PathBuf::from(value));
            }
            "--inference-pool" | "--namespace" | "--tier-label" => {
                let value = iter.next().ok_or_else(|| format!("{arg} needs a value"))?;
                set_kube(&mut kube, arg, value);
            }
            other => {
                if let Some((flag, value)) = other
                    .split_once('=')
                    .filter(|(flag, _)| KUBE_FLAGS.contains(flag))
                {
                    set_kube(&mut kube, flag, value);
                } else if let Some(value) = other.strip_prefix("--config=") {
                    config = Some(PathBuf::from(value));
                } else if other.contains("token") {
                    return Err(format!(
                        "unknown argument {other:?}: the push token is never taken from the command line; \
                         set push_token_env (default LLM_ROUTER_PUSH_TOKEN) or push_token_file in the configuration"
                    ));
                } else {
                    return Err(format!("unknown argument {other:?}"));
                }
            }
        }
    }
    let config = config.ok_or_else(|| "missing --config <FILE>".to_string())?;
    if config.as_os_str().is_empty() {
        return Err("--config needs a file path".into());
    }
    Ok(Command::Run(Options {
        config,
        once,
        print,
        push,
        kube,
    }))
}

const KUBE_FLAGS: [&str; 3] = ["--inference-pool", "--namespace", "--tier-label"];

fn set_kube(kube: &mut KubeOverrides, flag: &str, value: &str) {
    let slot = match flag {
        "--inference-pool" => &mut kube.inference_pool,
        "--namespace" => &mut kube.namespace,
        _ => &mut kube.tier_label,
    };
    *slot = Some(value.to_string());
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn parses_flags() {
        assert_eq!(
            parse_args(&args(&["--config", "a.json", "--once", "--print"])).unwrap(),
            Command::Run(Options {
                config: "a.json".into(),
                once: true,
                print: true,
                push: true,
                kube: KubeOverrides::default(),
            })
        );
        assert_eq!(
            parse_args(&args(&["--no-push", "--config=b.json"])).unwrap(),
            Command::Run(Options {
                config: "b.json".into(),
                once: false,
                print: false,
                push: false,
                kube: KubeOverrides::default(),
            })
        );
        let Command::Run(opts) = parse_args(&args(&[
            "-c",
            "a.json",
            "--inference-pool",
            "vllm",
            "--namespace=llm",
            "--tier-label",
            "example.com/tier",
        ]))
        .unwrap() else {
            panic!("not a run command")
        };
        assert_eq!(
            opts.kube,
            KubeOverrides {
                inference_pool: Some("vllm".into()),
                namespace: Some("llm".into()),
                tier_label: Some("example.com/tier".into()),
            }
        );
        assert_eq!(parse_args(&args(&["--once", "-h"])).unwrap(), Command::Help);
        assert_eq!(parse_args(&args(&["-V"])).unwrap(), Command::Version);
    }

    #[test]
    fn errors() {
        assert!(parse_args(&args(&[])).unwrap_err().contains("--config"));
        assert!(parse_args(&args(&["--config"])).is_err());
        assert!(parse_args(&args(&["-c", "a", "--bogus"]))
            .unwrap_err()
            .contains("--bogus"));
        assert!(parse_args(&args(&["-c", "a", "--token", "x"]))
            .unwrap_err()
            .contains("never taken from the command line"));
        assert!(parse_args(&args(&["-c", "a", "--tier-label"]))
            .unwrap_err()
            .contains("--tier-label needs a value"));
    }
}
