//! The Kubernetes pool source: watches one InferencePool and the pods of its namespace (kube
//! watchers feeding reflector stores, in background tasks) and, every cycle, turns what the
//! stores hold into endpoints per tier (`kube_pool`).

use crate::config::{KubeSettings, PoolApi};
use crate::kube_pool::{parse_pool_spec, tier_endpoints};
use crate::logging;
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How long to wait before asking the API server again which InferencePool API it serves.
const DISCOVERY_RETRY: Duration = Duration::from_secs(5);

/// The InferencePool's store, once the API version is known.
struct PoolStore {
    api: PoolApi,
    store: Store<DynamicObject>,
}

#[derive(Default)]
struct Shared {
    pool: Mutex<Option<PoolStore>>,
    pool_synced: AtomicBool,
    pods_synced: AtomicBool,
}

pub struct KubeSource {
    settings: KubeSettings,
    namespace: String,
    pods: Store<Pod>,
    shared: Arc<Shared>,
    /// The last state logged ("ok" or why there are no endpoints) and the last endpoints.
    last_state: String,
    last: BTreeMap<String, Vec<String>>,
}

impl KubeSource {
    /// Starts watching (background tasks on the current tokio runtime).
    pub fn start(client: Client, settings: KubeSettings) -> KubeSource {
        let namespace = settings
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let shared = Arc::new(Shared::default());
        let (pods, writer) = reflector::store::<Pod>();
        let pod_api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let stream = reflector::reflector(
            writer,
            watcher::watcher(pod_api, watcher::Config::default()),
        );
        let synced = Arc::clone(&shared);
        let what = format!("pods in namespace {namespace}");
        tokio::spawn(drive(stream, what, move || {
            synced.pods_synced.store(true, Ordering::Release)
        }));
        tokio::spawn(watch_pool(
            client,
            settings.clone(),
            namespace.clone(),
            Arc::clone(&shared),
        ));
        KubeSource {
            settings,
            namespace,
            pods,
            shared,
            last_state: String::new(),
            last: BTreeMap::new(),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "InferencePool {}/{} (tier label {}, default tier {})",
            self.namespace,
            self.settings.inference_pool,
            self.settings.tier_label,
            self.settings.default_tier
        )
    }

    /// The endpoints of each tier now. Logs changes (of the pool's state and of endpoints).
    pub fn current(&mut self) -> BTreeMap<String, Vec<String>> {
        let (state, tiers) = match self.compute() {
            Ok(tiers) => ("ok".to_string(), tiers),
            Err(why) => (why, BTreeMap::new()),
        };
        if state != self.last_state {
            if state == "ok" {
                logging::info(&format!("{}: watching", self.describe()));
            } else if state.starts_with("waiting") {
                logging::info(&format!("{}: no endpoints yet: {state}", self.describe()));
            } else {
                logging::warn(&format!("{}: no endpoints: {state}", self.describe()));
            }
            self.last_state = state;
        }
        if tiers != self.last {
            for line in changes(&self.last, &tiers) {
                logging::info(&format!(
                    "InferencePool {}: {line}",
                    self.settings.inference_pool
                ));
            }
            self.last = tiers.clone();
        }
        tiers
    }

    /// Waits until both watches have listed once (so that the first snapshot is complete),
    /// at most `limit`. Returns whether they did.
    pub async fn wait_synced(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let pool_synced = self
                .shared
                .pool
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
                && self.shared.pool_synced.load(Ordering::Acquire);
            if pool_synced && self.shared.pods_synced.load(Ordering::Acquire) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn compute(&self) -> Result<BTreeMap<String, Vec<String>>, String> {
        let name = &self.settings.inference_pool;
        let object = {
            let guard = self
                .shared
                .pool
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(pool) = guard.as_ref() else {
                return Err("waiting for the API server to serve InferencePools".into());
            };
            if !self.shared.pool_synced.load(Ordering::Acquire) {
                return Err("waiting for the first list of InferencePools".into());
            }
            let found = pool
                .store
                .state()
                .into_iter()
                .find(|o| o.metadata.name.as_deref() == Some(name.as_str()));
            let Some(object) = found else {
                return Err(format!("InferencePool {name} not found"));
            };
            (pool.api, object)
        };
        let spec = parse_pool_spec(object.0, &object.1.data)
            .map_err(|e| format!("InferencePool {name} is not usable: {e}"))?;
        if !self.shared.pods_synced.load(Ordering::Acquire) {
            return Err("waiting for the first list of pods".into());
        }
        let pods = self.pods.state();
        Ok(tier_endpoints(
            &spec,
            pods.iter().map(AsRef::as_ref),
            &self.settings.tier_label,
            &self.settings.default_tier,
        ))
    }
}

/// Log lines for what changed between two endpoint maps.
fn changes(
    old: &BTreeMap<String, Vec<String>>,
    new: &BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    let mut lines = Vec::new();
    let empty = Vec::new();
    for tier in old
        .keys()
        .chain(new.keys().filter(|t| !old.contains_key(*t)))
    {
        let before = old.get(tier).unwrap_or(&empty);
        let after = new.get(tier).unwrap_or(&empty);
        if before == after && old.contains_key(tier) == new.contains_key(tier) {
            continue;
        }
        let added: Vec<&str> = after
            .iter()
            .filter(|a| !before.contains(a))
            .map(String::as_str)
            .collect();
        let removed: Vec<&str> = before
            .iter()
            .filter(|a| !after.contains(a))
            .map(String::as_str)
            .collect();
        let mut line = format!("tier {tier}: {} endpoint(s)", after.len());
        if !added.is_empty() {
            line.push_str(&format!(", added {}", added.join(" ")));
        }
        if !removed.is_empty() {
            line.push_str(&format!(", removed {}", removed.join(" ")));
        }
        if !new.contains_key(tier) {
            line.push_str(" (no pod of this tier left)");
        }
        lines.push(line);
    }
    lines
}

/// Finds which InferencePool API the cluster serves (or takes the configured one), then
/// watches the pool into a store.
async fn watch_pool(
    client: Client,
    settings: KubeSettings,
    namespace: String,
    shared: Arc<Shared>,
) {
    let api = match settings.api {
        Some(api) => api,
        None => discover(&client).await,
    };
    let resource = ApiResource {
        group: api.group().into(),
        version: api.version().into(),
        api_version: api.api_version(),
        kind: "InferencePool".into(),
        plural: "inferencepools".into(),
    };
    let writer = Writer::<DynamicObject>::new(resource.clone());
    *shared.pool.lock().unwrap_or_else(PoisonError::into_inner) = Some(PoolStore {
        api,
        store: writer.as_reader(),
    });
    let pool_api: Api<DynamicObject> = Api::namespaced_with(client, &namespace, &resource);
    let config =
        watcher::Config::default().fields(&format!("metadata.name={}", settings.inference_pool));
    let stream = reflector::reflector(writer, watcher::watcher(pool_api, config));
    let what = format!("InferencePool {namespace}/{}", settings.inference_pool);
    drive(stream, what, move || {
        shared.pool_synced.store(true, Ordering::Release)
    })
    .await;
}

/// Asks the API server until it serves one of the InferencePool APIs (v1 first).
async fn discover(client: &Client) -> PoolApi {
    let mut logged = false;
    loop {
        for api in PoolApi::ALL {
            if let Ok(list) = client.list_api_group_resources(&api.api_version()).await {
                if list.resources.iter().any(|r| r.name == "inferencepools") {
                    logging::info(&format!("watching InferencePools of {}", api.api_version()));
                    return api;
                }
            }
        }
        if !logged {
            logging::warn(&format!(
                "the API server serves neither {} nor {} InferencePools (is the Gateway API \
                 Inference Extension CRD installed?); asking again every {} s",
                PoolApi::V1.api_version(),
                PoolApi::V1Alpha2.api_version(),
                DISCOVERY_RETRY.as_secs()
            ));
            logged = true;
        }
        tokio::time::sleep(DISCOVERY_RETRY).await;
    }
}

/// Runs a reflector stream forever (the watcher retries with backoff); calls `on_synced` when
/// the first complete list is in the store, and logs failures once until they recover.
async fn drive<K, S>(stream: S, what: String, on_synced: impl Fn())
where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let stream = stream.default_backoff();
    futures_util::pin_mut!(stream);
    let mut failing: Option<String> = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                if let Some(error) = failing.take() {
                    logging::info(&format!("watching {what} works again (after: {error})"));
                }
                if matches!(event, Event::InitDone) {
                    on_synced();
                }
            }
            Err(e) => {
                let message = e.to_string();
                if failing.as_deref() != Some(message.as_str()) {
                    logging::warn(&format!(
                        "watching {what} failed: {message}; retrying with backoff \
                         (RBAC: the sidecar needs get/list/watch on pods and inferencepools)"
                    ));
                    failing = Some(message);
                }
            }
        }
    }
}
