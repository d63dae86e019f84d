#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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
    let cfg = parse(include_str!("../../examples/sidecar.json")).unwrap();
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
    let cfg = parse(include_str!("../../examples/sidecar-file-pool.json")).unwrap();
    assert_eq!(
        cfg.token,
        TokenSource::File("/run/secrets/llm-router-push-token".into())
    );
    assert_eq!(
        parse_pool_file(include_str!("../../examples/endpoints-large.txt")).unwrap(),
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
    let e = parse(r#"{"pools": {"small": ["10.0.0.1:8000", "model-server:8000"]}}"#).unwrap_err();
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
    let e = parse(r#"{"pools": {"large": {}}}"#).unwrap_err();
    assert_eq!(e.field, "pools.large");
    assert!(e.message.contains("missing field `file`"), "{e}");
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
    assert_eq!(err_field(" 7"), "(top level)");
    assert_eq!(err_field("[1,"), "(file)");
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

#[test]
fn kubernetes_section() {
    let cfg = parse(include_str!("../../examples/sidecar-kubernetes.json")).unwrap();
    assert!(cfg.pools.is_empty());
    assert_eq!(
        cfg.kubernetes,
        Some(KubeSettings {
            inference_pool: "vllm".into(),
            namespace: None,
            tier_label: "llm-router.io/tier".into(),
            default_tier: "vllm".into(),
            api: None,
        })
    );
    let cfg = parse(
        r#"{"pools": {"large": ["10.0.0.9:8000"]},
            "kubernetes": {"inference_pool": "pool-a", "namespace": "llm", "tier_label": "tier",
                           "default_tier": "small", "api_version": "inference.networking.x-k8s.io/v1alpha2"}}"#,
    )
    .unwrap();
    let kube = cfg.kubernetes.unwrap();
    assert_eq!(kube.namespace.as_deref(), Some("llm"));
    assert_eq!(kube.default_tier, "small");
    assert_eq!(kube.api, Some(PoolApi::V1Alpha2));
    assert_eq!(cfg.pools.len(), 1);
}

#[test]
fn kubernetes_errors_are_named() {
    let k = |inner: &str| err_field(&format!(r#"{{"kubernetes": {{{inner}}}}}"#));
    assert_eq!(
        k(r#""inference_pool": "p", "tierlabel": "x""#),
        "kubernetes.tierlabel"
    );
    assert_eq!(k(""), "kubernetes.inference_pool");
    assert_eq!(
        k(r#""inference_pool": "My Pool""#),
        "kubernetes.inference_pool"
    );
    assert_eq!(k(r#""inference_pool": 3"#), "kubernetes.inference_pool");
    assert_eq!(
        k(r#""inference_pool": "p", "namespace": "Bad_NS""#),
        "kubernetes.namespace"
    );
    assert_eq!(
        k(r#""inference_pool": "p", "tier_label": "a/b/""#),
        "kubernetes.tier_label"
    );
    assert_eq!(
        k(r#""inference_pool": "p", "tier_label": "-tier""#),
        "kubernetes.tier_label"
    );
    assert_eq!(
        k(r#""inference_pool": "p", "default_tier": "a b""#),
        "kubernetes.default_tier"
    );
    let e = parse(r#"{"kubernetes": {"inference_pool": "p", "api_version": "v1"}}"#).unwrap_err();
    assert_eq!(e.field, "kubernetes.api_version");
    assert!(e.message.contains("inference.networking.k8s.io/v1"), "{e}");
    // Neither pools nor kubernetes.
    let e = parse(r#"{"interval_ms": 100}"#).unwrap_err();
    assert_eq!(e.field, "pools");
    assert!(e.message.contains("kubernetes"), "{e}");
}

#[test]
fn flags_set_or_override_the_kubernetes_section() {
    let flags = KubeOverrides {
        inference_pool: Some("flag-pool".into()),
        namespace: Some("ns".into()),
        tier_label: Some("example.com/tier".into()),
    };
    let base = Path::new("/etc");
    let cfg = parse_config_with(r#"{}"#, base, &flags).unwrap();
    let kube = cfg.kubernetes.unwrap();
    assert_eq!(
        (
            kube.inference_pool.as_str(),
            kube.namespace.as_deref(),
            kube.tier_label.as_str()
        ),
        ("flag-pool", Some("ns"), "example.com/tier")
    );
    assert_eq!(kube.default_tier, "flag-pool");
    let text = r#"{"kubernetes": {"inference_pool": "file-pool", "tier_label": "t"}}"#;
    let only_label = KubeOverrides {
        tier_label: Some("other".into()),
        ..KubeOverrides::default()
    };
    let kube = parse_config_with(text, base, &only_label)
        .unwrap()
        .kubernetes
        .unwrap();
    assert_eq!(
        (kube.inference_pool.as_str(), kube.tier_label.as_str()),
        ("file-pool", "other")
    );
    let bad = KubeOverrides {
        tier_label: Some("bad label".into()),
        ..KubeOverrides::default()
    };
    assert_eq!(
        parse_config_with(text, base, &bad).unwrap_err().field,
        "--tier-label"
    );
    // A flag alone still needs the pool's name.
    assert_eq!(
        parse_config_with(r#"{}"#, base, &only_label)
            .unwrap_err()
            .field,
        "kubernetes.inference_pool"
    );
}
