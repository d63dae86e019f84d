//! A mocked Kubernetes API server: answers API discovery, list and watch (a kept-open stream
//! of JSON lines) for InferencePools and Pods from an in-memory store that the test edits.

use futures_util::stream;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Pool,
    Pod,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<(Kind, String), Value>,
    /// (resourceVersion, kind, event type, object)
    events: Vec<(u64, Kind, &'static str, Value)>,
}

#[derive(Clone)]
pub struct MockApi {
    store: Arc<Mutex<Store>>,
    changed: Arc<watch::Sender<u64>>,
    /// The InferencePool API served: "inference.networking.k8s.io/v1" or the v1alpha2 one.
    pool_api: &'static str,
    pub addr: SocketAddr,
}

type Body = BoxBody<Bytes, Infallible>;

impl MockApi {
    /// Starts the server on the current tokio runtime.
    pub async fn start(pool_api: &'static str) -> MockApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (changed, _) = watch::channel(0);
        let api = MockApi {
            store: Arc::default(),
            changed: Arc::new(changed),
            pool_api,
            addr: listener.local_addr().unwrap(),
        };
        let server = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let api = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.answer(req)) }
                    });
                    let io = hyper_util::rt::TokioIo::new(tcp);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        api
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates or replaces an object (ADDED / MODIFIED for watchers).
    pub fn apply(&self, kind: Kind, mut object: Value) {
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let mut store = self.store.lock().unwrap();
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        object["metadata"]["namespace"] = json!("llm");
        let (api_version, kind_name) = match kind {
            Kind::Pool => (self.pool_api, "InferencePool"),
            Kind::Pod => ("v1", "Pod"),
        };
        object["apiVersion"] = json!(api_version);
        object["kind"] = json!(kind_name);
        let previous = store.objects.insert((kind, name), object.clone());
        let event = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        store.events.push((rv, kind, event, object));
        drop(store);
        self.changed.send_replace(rv);
    }

    pub fn delete(&self, kind: Kind, name: &str) {
        let mut store = self.store.lock().unwrap();
        let Some(mut object) = store.objects.remove(&(kind, name.to_string())) else {
            return;
        };
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        store.events.push((rv, kind, "DELETED", object));
        drop(store);
        self.changed.send_replace(rv);
    }

    fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), decode(v)))
            .collect();
        let pools_path = format!("/apis/{}/namespaces/llm/inferencepools", self.pool_api);
        let kind = if path == pools_path {
            Kind::Pool
        } else if path == "/api/v1/namespaces/llm/pods" {
            Kind::Pod
        } else if path == format!("/apis/{}", self.pool_api) {
            return json_response(200, &discovery(self.pool_api));
        } else {
            return json_response(
                404,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": format!("{path} not found")}),
            );
        };
        let name = query
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name="))
            .map(str::to_string);
        if query.get("watch").map(String::as_str) == Some("true") {
            let since = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            return self.watch(kind, name, since);
        }
        let store = self.store.lock().unwrap();
        let items: Vec<Value> = store
            .objects
            .iter()
            .filter(|((k, n), _)| *k == kind && name.as_ref().is_none_or(|want| want == n))
            .map(|(_, v)| v.clone())
            .collect();
        json_response(
            200,
            &json!({"apiVersion": "v1", "kind": "List",
                    "metadata": {"resourceVersion": store.rv.to_string()}, "items": items}),
        )
    }

    fn watch(&self, kind: Kind, name: Option<String>, since: u64) -> Response<Body> {
        let state = (self.clone(), self.changed.subscribe(), since);
        let events = stream::unfold(state, move |(api, mut changed, mut last)| {
            let name = name.clone();
            async move {
                loop {
                    let lines = {
                        let store = api.store.lock().unwrap();
                        let mut lines = String::new();
                        for (rv, k, event, object) in &store.events {
                            let matches = name
                                .as_ref()
                                .is_none_or(|want| object["metadata"]["name"] == json!(want));
                            if *rv > last && *k == kind && matches {
                                lines.push_str(
                                    &json!({"type": event, "object": object}).to_string(),
                                );
                                lines.push('\n');
                            }
                        }
                        last = store.rv;
                        lines
                    };
                    if !lines.is_empty() {
                        let frame = Ok::<_, Infallible>(Frame::data(Bytes::from(lines)));
                        return Some((frame, (api, changed, last)));
                    }
                    if changed.changed().await.is_err() {
                        return None;
                    }
                }
            }
        });
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(StreamBody::new(events).boxed())
            .unwrap()
    }
}

fn discovery(api_version: &str) -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version,
           "resources": [{"name": "inferencepools", "singularName": "inferencepool",
                          "namespaced": true, "kind": "InferencePool",
                          "verbs": ["get", "list", "watch"]}]})
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

/// Percent-decoding of the few characters selectors use.
fn decode(v: &str) -> String {
    v.replace("%3D", "=")
        .replace("%3d", "=")
        .replace("%2C", ",")
        .replace("%2F", "/")
}

/// A pod of the `vllm` app in namespace `llm`.
pub fn pod(name: &str, ip: &str, tier: Option<&str>, ready: bool) -> Value {
    let mut labels = json!({"app": "vllm"});
    if let Some(tier) = tier {
        labels["llm-router.io/tier"] = json!(tier);
    }
    json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]},
        "status": {"phase": "Running", "podIP": ip, "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }}
        ]}
    })
}

/// An InferencePool selecting `app=vllm`, in the shape of `api` (v1 or v1alpha2).
pub fn pool(api: &str, name: &str, ports: &[u16]) -> Value {
    let spec = if api.ends_with("/v1") {
        json!({"selector": {"matchLabels": {"app": "vllm"}},
               "targetPorts": ports.iter().map(|p| json!({"number": p})).collect::<Vec<_>>(),
               "endpointPickerRef": {"name": "epp", "port": {"number": 9002}}})
    } else {
        json!({"selector": {"app": "vllm"}, "targetPortNumber": ports[0],
               "extensionRef": {"name": "epp"}})
    };
    json!({"metadata": {"name": name}, "spec": spec})
}

/// What a plain HTTP server received: method, path, headers (lowercase names), body.
pub type Received = (String, String, BTreeMap<String, String>, Bytes);

/// Serves HTTP/1.1 on `addr`; `reply` answers each request (status, body); every request is
/// sent to the returned channel.
pub async fn serve(
    addr: SocketAddr,
    reply: impl Fn(&Received) -> (u16, String) + Send + Sync + 'static,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Received>) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let bound = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (reply, tx) = (Arc::clone(&reply), tx.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (reply, tx) = (Arc::clone(&reply), tx.clone());
                    async move {
                        let method = req.method().to_string();
                        let path = req.uri().path().to_string();
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let received = (method, path, headers, body);
                        let (status, text) = reply(&received);
                        let _ = tx.send(received);
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(text)))
                                .unwrap(),
                        )
                    }
                });
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (bound, rx)
}
