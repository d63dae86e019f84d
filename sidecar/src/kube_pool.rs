//! From an InferencePool and pods to endpoints per tier (pure; the watching is in
//! `kube_source`).
//!
//! An endpoint is `podIP:port` for every Ready pod the pool's selector matches and every
//! target port of the pool. Pods are grouped by the value of the tier label; pods without it
//! (or with an empty value) belong to the default tier.

use crate::config::PoolApi;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// What the sidecar needs of an InferencePool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// Pods whose labels include all of these belong to the pool.
    pub selector: BTreeMap<String, String>,
    /// Ports the model servers listen on, in the pool's order.
    pub ports: Vec<u16>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct V1Spec {
    selector: V1Selector,
    target_ports: Vec<V1Port>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct V1Selector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct V1Port {
    number: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct V1Alpha2Spec {
    selector: BTreeMap<String, String>,
    target_port_number: i64,
}

/// Reads `spec` of an InferencePool object (the object's JSON without `metadata`). The error
/// says what is wrong with it.
pub fn parse_pool_spec(api: PoolApi, object: &serde_json::Value) -> Result<PoolSpec, String> {
    let spec = object
        .get("spec")
        .ok_or_else(|| "the InferencePool has no spec".to_string())?;
    let (selector, ports) = match api {
        PoolApi::V1 => {
            let s = V1Spec::deserialize(spec).map_err(|e| format!("spec: {e}"))?;
            let ports = s.target_ports.iter().map(|p| p.number).collect::<Vec<_>>();
            (s.selector.match_labels, ports)
        }
        PoolApi::V1Alpha2 => {
            let s = V1Alpha2Spec::deserialize(spec).map_err(|e| format!("spec: {e}"))?;
            (s.selector, vec![s.target_port_number])
        }
    };
    if selector.is_empty() {
        // An empty selector would select every pod of the namespace: surely not meant.
        return Err("spec.selector has no labels".to_string());
    }
    let mut kept: Vec<u16> = Vec::with_capacity(ports.len());
    for port in ports {
        match u16::try_from(port) {
            Ok(p) if p != 0 => {
                if !kept.contains(&p) {
                    kept.push(p);
                }
            }
            _ => return Err(format!("spec: target port {port} is not in 1..65535")),
        }
    }
    if kept.is_empty() {
        return Err("spec: no target port".to_string());
    }
    Ok(PoolSpec {
        selector,
        ports: kept,
    })
}

/// Whether a pod takes traffic: condition `Ready` is `True`, it has an IP, and it is not
/// being deleted.
pub fn is_ready(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(status) = &pod.status else {
        return false;
    };
    status.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn selected(pod: &Pod, selector: &BTreeMap<String, String>) -> bool {
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The endpoints of each tier: Ready pods matched by `spec`, sorted by pod name, times the
/// pool's ports. A tier appears only if it has at least one matched pod (Ready or not).
pub fn tier_endpoints<'a>(
    spec: &PoolSpec,
    pods: impl IntoIterator<Item = &'a Pod>,
    tier_label: &str,
    default_tier: &str,
) -> BTreeMap<String, Vec<String>> {
    let mut matched: Vec<&Pod> = pods
        .into_iter()
        .filter(|p| selected(p, &spec.selector))
        .collect();
    matched.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut tiers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pod in matched {
        let tier = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(tier_label))
            .filter(|t| !t.is_empty())
            .map_or(default_tier, String::as_str);
        let list = tiers.entry(tier.to_string()).or_default();
        if !is_ready(pod) {
            continue;
        }
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        let Some(ip) = ip else { continue };
        for port in &spec.ports {
            let address = SocketAddr::new(ip, *port).to_string();
            if !list.contains(&address) {
                list.push(address);
            }
        }
    }
    tiers
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, labels: serde_json::Value, ip: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "status": {"podIP": ip, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}
            ]}
        }))
        .unwrap()
    }

    fn spec(ports: &[u16]) -> PoolSpec {
        PoolSpec {
            selector: [("app".to_string(), "vllm".to_string())].into(),
            ports: ports.to_vec(),
        }
    }

    #[test]
    fn both_api_versions_are_read() {
        let v1 = json!({"spec": {"selector": {"matchLabels": {"app": "vllm"}},
                                 "targetPorts": [{"number": 8000}, {"number": 8001}],
                                 "endpointPickerRef": {"name": "epp", "port": {"number": 9002}}}});
        assert_eq!(
            parse_pool_spec(PoolApi::V1, &v1).unwrap(),
            spec(&[8000, 8001])
        );
        let alpha = json!({"spec": {"selector": {"app": "vllm"}, "targetPortNumber": 8000,
                                    "extensionRef": {"name": "epp"}}});
        assert_eq!(
            parse_pool_spec(PoolApi::V1Alpha2, &alpha).unwrap(),
            spec(&[8000])
        );
    }

    #[test]
    fn bad_specs_say_why() {
        let e = |api, v: serde_json::Value| parse_pool_spec(api, &v).unwrap_err();
        assert!(e(PoolApi::V1, json!({})).contains("no spec"));
        assert!(e(
            PoolApi::V1,
            json!({"spec": {"selector": {"matchLabels": {}}, "targetPorts": [{"number": 1}]}})
        )
        .contains("no labels"));
        assert!(e(
            PoolApi::V1,
            json!({"spec": {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": []}})
        )
        .contains("no target port"));
        assert!(e(PoolApi::V1, json!({"spec": {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 70000}]}}))
            .contains("70000"));
        assert!(
            e(PoolApi::V1Alpha2, json!({"spec": {"selector": {"a": "b"}}}))
                .contains("targetPortNumber")
        );
    }

    #[test]
    fn ready_matched_pods_times_ports_grouped_by_tier() {
        let pods = [
            pod(
                "b",
                json!({"app": "vllm", "tier": "large"}),
                "10.0.0.2",
                true,
            ),
            pod(
                "a",
                json!({"app": "vllm", "tier": "large"}),
                "10.0.0.1",
                true,
            ),
            pod("c", json!({"app": "vllm"}), "10.0.0.3", true),
            pod("d", json!({"app": "vllm", "tier": ""}), "fd00::4", true),
            pod(
                "e",
                json!({"app": "vllm", "tier": "small"}),
                "10.0.0.5",
                false,
            ),
            pod(
                "f",
                json!({"app": "other", "tier": "small"}),
                "10.0.0.6",
                true,
            ),
        ];
        let tiers = tier_endpoints(&spec(&[8000, 8001]), &pods, "tier", "pool");
        let expected: BTreeMap<String, Vec<String>> = [
            (
                "large",
                vec![
                    "10.0.0.1:8000",
                    "10.0.0.1:8001",
                    "10.0.0.2:8000",
                    "10.0.0.2:8001",
                ],
            ),
            (
                "pool",
                vec![
                    "10.0.0.3:8000",
                    "10.0.0.3:8001",
                    "[fd00::4]:8000",
                    "[fd00::4]:8001",
                ],
            ),
            // Matched but not Ready: the tier is known, with no endpoint.
            ("small", vec![]),
        ]
        .into_iter()
        .map(|(t, a)| (t.to_string(), a.into_iter().map(String::from).collect()))
        .collect();
        assert_eq!(tiers, expected);
    }

    #[test]
    fn not_ready_pods_are_left_out() {
        let mut deleting = pod("a", json!({"app": "vllm"}), "10.0.0.1", true);
        deleting.metadata.deletion_timestamp =
            serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap();
        assert!(!is_ready(&deleting));
        assert!(!is_ready(&pod("b", json!({"app": "vllm"}), "", true)));
        assert!(!is_ready(&pod(
            "c",
            json!({"app": "vllm"}),
            "10.0.0.3",
            false
        )));
        let no_status: Pod = serde_json::from_value(json!({"metadata": {"name": "d"}})).unwrap();
        assert!(!is_ready(&no_status));
        assert!(is_ready(&pod(
            "e",
            json!({"app": "vllm"}),
            "10.0.0.5",
            true
        )));
    }
}
