//! The Kubernetes pool source against a mocked API server: pods appear, become Ready, change
//! tier, go away; the InferencePool changes and disappears; both InferencePool API versions.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::mock_api::{pod, pool, Kind, MockApi};
use llm_router_sidecar::config::KubeSettings;
use llm_router_sidecar::kube_source::KubeSource;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const V1: &str = "inference.networking.k8s.io/v1";
const V1ALPHA2: &str = "inference.networking.x-k8s.io/v1alpha2";

fn settings() -> KubeSettings {
    KubeSettings {
        inference_pool: "vllm-pool".into(),
        namespace: Some("llm".into()),
        tier_label: "llm-router.io/tier".into(),
        default_tier: "vllm-pool".into(),
        api: None,
    }
}

async fn source(api: &MockApi) -> KubeSource {
    let config = kube::Config::new(api.url().parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    KubeSource::start(client, settings())
}

fn tiers(list: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    list.iter()
        .map(|(t, a)| (t.to_string(), a.iter().map(|s| s.to_string()).collect()))
        .collect()
}

/// Polls the source until it reports `expected` (the watch is asynchronous).
async fn wait_for(source: &mut KubeSource, expected: &BTreeMap<String, Vec<String>>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = source.current();
        if &now == expected {
            return;
        }
        if Instant::now() > deadline {
            panic!("expected {expected:?}, still {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn pods_appear_become_ready_change_tier_and_go_away() {
    let api = MockApi::start(V1).await;
    api.apply(Kind::Pool, pool(V1, "vllm-pool", &[8000]));
    api.apply(Kind::Pod, pod("small-a", "10.0.0.1", Some("small"), true));
    api.apply(Kind::Pod, pod("large-a", "10.0.0.2", Some("large"), false));
    api.apply(Kind::Pod, pod("plain", "10.0.0.3", None, true));
    let mut other = pod("other-app", "10.0.0.9", Some("small"), true);
    other["metadata"]["labels"]["app"] = serde_json::json!("other");
    api.apply(Kind::Pod, other);
    let mut src = source(&api).await;

    // Tier labels split one pool; a pod without the label serves the default tier; a pod the
    // selector does not match is ignored; a pod that is not Ready has no endpoint yet.
    wait_for(
        &mut src,
        &tiers(&[
            ("large", &[]),
            ("small", &["10.0.0.1:8000"]),
            ("vllm-pool", &["10.0.0.3:8000"]),
        ]),
    )
    .await;

    // A new pod appears (not Ready yet), then becomes Ready; the other large pod too.
    api.apply(Kind::Pod, pod("small-b", "10.0.0.4", Some("small"), false));
    api.apply(Kind::Pod, pod("large-a", "10.0.0.2", Some("large"), true));
    wait_for(
        &mut src,
        &tiers(&[
            ("large", &["10.0.0.2:8000"]),
            ("small", &["10.0.0.1:8000"]),
            ("vllm-pool", &["10.0.0.3:8000"]),
        ]),
    )
    .await;
    api.apply(Kind::Pod, pod("small-b", "10.0.0.4", Some("small"), true));
    wait_for(
        &mut src,
        &tiers(&[
            ("large", &["10.0.0.2:8000"]),
            ("small", &["10.0.0.1:8000", "10.0.0.4:8000"]),
            ("vllm-pool", &["10.0.0.3:8000"]),
        ]),
    )
    .await;

    // Goes NotReady, is deleted, changes tier.
    api.apply(Kind::Pod, pod("small-a", "10.0.0.1", Some("small"), false));
    api.delete(Kind::Pod, "large-a");
    api.apply(Kind::Pod, pod("plain", "10.0.0.3", Some("large"), true));
    wait_for(
        &mut src,
        &tiers(&[("large", &["10.0.0.3:8000"]), ("small", &["10.0.0.4:8000"])]),
    )
    .await;

    // The pool gains a target port: every Ready pod serves on both.
    api.apply(Kind::Pool, pool(V1, "vllm-pool", &[8000, 8001]));
    wait_for(
        &mut src,
        &tiers(&[
            ("large", &["10.0.0.3:8000", "10.0.0.3:8001"]),
            ("small", &["10.0.0.4:8000", "10.0.0.4:8001"]),
        ]),
    )
    .await;

    // Another pool of the namespace does not matter; deleting ours leaves no endpoint.
    api.apply(Kind::Pool, pool(V1, "unrelated", &[9000]));
    api.delete(Kind::Pool, "vllm-pool");
    wait_for(&mut src, &BTreeMap::new()).await;
    api.apply(Kind::Pool, pool(V1, "vllm-pool", &[8000]));
    wait_for(
        &mut src,
        &tiers(&[("large", &["10.0.0.3:8000"]), ("small", &["10.0.0.4:8000"])]),
    )
    .await;
}

#[tokio::test]
async fn the_older_v1alpha2_pool_api_is_found_and_read() {
    let api = MockApi::start(V1ALPHA2).await;
    api.apply(Kind::Pool, pool(V1ALPHA2, "vllm-pool", &[8200]));
    api.apply(Kind::Pod, pod("a", "10.0.1.1", None, true));
    api.apply(Kind::Pod, pod("b", "10.0.1.2", Some("large"), true));
    let mut src = source(&api).await;
    wait_for(
        &mut src,
        &tiers(&[
            ("large", &["10.0.1.2:8200"]),
            ("vllm-pool", &["10.0.1.1:8200"]),
        ]),
    )
    .await;
}

#[tokio::test]
async fn no_endpoints_until_the_pool_exists() {
    let api = MockApi::start(V1).await;
    api.apply(Kind::Pod, pod("a", "10.0.2.1", None, true));
    let mut src = source(&api).await;
    // Give the watches time to list: still nothing, as there is no InferencePool.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(src.current(), BTreeMap::new());
    api.apply(Kind::Pool, pool(V1, "vllm-pool", &[8000]));
    wait_for(&mut src, &tiers(&[("vllm-pool", &["10.0.2.1:8000"])])).await;
}

fn vllm_page(waiting: u32, running: u32, kv: f64) -> String {
    format!(
        "# TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{model_name=\"m\"}} {waiting}\n\
         vllm:num_requests_running{{model_name=\"m\"}} {running}\n\
         vllm:kv_cache_usage_perc{{model_name=\"m\"}} {kv}\n"
    )
}

/// The binary, pointed at the mocked API server by a kubeconfig, pushes the tiers of the
/// InferencePool's Ready pods with each pod's load, as the gateway receives it.
#[tokio::test]
async fn the_sidecar_pushes_the_pools_tiers_with_their_load() {
    use common::mock_api::serve;
    // Two model servers on distinct loopback IPs and the same port (the pool's targetPort).
    let (small, _) = serve("127.0.0.2:0".parse().unwrap(), |_| {
        (200, vllm_page(2, 5, 0.25))
    })
    .await;
    let port = small.port();
    let large: std::net::SocketAddr = format!("127.0.0.3:{port}").parse().unwrap();
    serve(large, |_| (200, vllm_page(0, 1, 0.5))).await;
    let (gateway, mut pushes) =
        serve("127.0.0.1:0".parse().unwrap(), |_| (204, String::new())).await;

    let api = MockApi::start(V1).await;
    api.apply(Kind::Pool, pool(V1, "vllm-pool", &[port]));
    api.apply(Kind::Pod, pod("small-0", "127.0.0.2", Some("small"), true));
    api.apply(Kind::Pod, pod("large-0", "127.0.0.3", Some("large"), true));
    api.apply(Kind::Pod, pod("large-1", "127.0.0.4", Some("large"), false));

    let dir = std::env::temp_dir().join(format!("llm-router-sidecar-kube-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let cluster = serde_json::json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "mock",
        "clusters": [{"name": "mock", "cluster": {"server": api.url()}}],
        "users": [{"name": "mock", "user": {}}],
        "contexts": [{"name": "mock", "context": {"cluster": "mock", "user": "mock", "namespace": "llm"}}]
    });
    std::fs::write(&kubeconfig, cluster.to_string()).unwrap();
    let config = dir.join("sidecar.json");
    let sidecar_config = serde_json::json!({
        "kubernetes": {"tier_label": "llm-router.io/tier"},
        "push_url": format!("http://{gateway}/.well-known/llm-router/load"),
        "push_token_env": "LLM_ROUTER_SIDECAR_KUBE_TEST_TOKEN"
    });
    std::fs::write(&config, sidecar_config.to_string()).unwrap();

    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_llm-router-sidecar"))
            .arg("--config")
            .arg(&config)
            .args(["--inference-pool", "vllm-pool", "--once"])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("LLM_ROUTER_SIDECAR_KUBE_TEST_TOKEN", "s3cret")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let (method, path, headers, body) = pushes.try_recv().unwrap();
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("POST", "/.well-known/llm-router/load")
    );
    assert_eq!(headers["authorization"], "Bearer s3cret");
    let snapshot: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        snapshot["pools"],
        serde_json::json!({
            "small": [{"address": format!("127.0.0.2:{port}"), "waiting": 2, "running": 5, "kv_cache": 0.25, "healthy": true}],
            "large": [{"address": format!("127.0.0.3:{port}"), "waiting": 0, "running": 1, "kv_cache": 0.5, "healthy": true}]
        }),
        "{stderr}"
    );
    assert!(stderr.contains("InferencePool llm/vllm-pool"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without credentials for a cluster the sidecar stops at startup and says why.
#[test]
fn no_cluster_credentials_is_a_configuration_error() {
    let dir =
        std::env::temp_dir().join(format!("llm-router-sidecar-nokube-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("sidecar.json");
    std::fs::write(&config, r#"{"kubernetes": {"inference_pool": "vllm"}}"#).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_llm-router-sidecar"))
        .arg("--config")
        .arg(&config)
        .args(["--once", "--no-push"])
        .env("KUBECONFIG", dir.join("missing-kubeconfig"))
        .env("HOME", &dir)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("kubernetes: cannot configure a Kubernetes client"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
