//! What a test observes on a [`Host`]: metrics (and their Envoy and Prometheus renderings),
//! logs, traps, shared data and queues, foreign calls.

use anyhow::Result;
use host_engine::state::lock;
use host_engine::{ForeignCall, LogLine, Metric, TrapRecord};

use crate::host::Host;

impl Host {
    /// A metric by the exact name the guest defined.
    pub fn metric(&self, name: &str) -> Option<Metric> {
        lock(&self.core.shared).metrics.metrics.get(name).cloned()
    }

    /// Value of a counter or gauge (sample count of a histogram); 0 when undefined.
    pub fn metric_value(&self, name: &str) -> i64 {
        self.metric(name).map(|m| m.value).unwrap_or(0)
    }

    /// All metrics, sorted by name.
    pub fn metrics(&self) -> Vec<Metric> {
        lock(&self.core.shared)
            .metrics
            .metrics
            .values()
            .cloned()
            .collect()
    }

    /// Sum of the values of every metric whose base name (before `;` tags) is `base` and whose
    /// tags include all of `tags`.
    pub fn metric_sum(&self, base: &str, tags: &[(&str, &str)]) -> i64 {
        self.metrics()
            .iter()
            .filter(|m| m.base_name() == base)
            .filter(|m| {
                let mt = m.tags();
                tags.iter()
                    .all(|(k, v)| mt.iter().any(|(mk, mv)| mk == k && mv == v))
            })
            .map(|m| m.value)
            .sum()
    }

    /// How many times the guests (all VMs) called `proxy_define_metric`.
    pub fn metric_define_calls(&self) -> u64 {
        lock(&self.core.shared).metrics.define_calls
    }

    /// Envoy `/stats` text (with the `wasmcustom.` prefix when `prefix` is true).
    pub fn render_stats(&self, prefix: bool) -> String {
        lock(&self.core.shared).metrics.render_envoy(prefix)
    }

    /// Prometheus text after Istio-style tag extraction.
    pub fn render_prometheus(&self) -> String {
        lock(&self.core.shared).metrics.render_prometheus()
    }

    /// Every log line so far (all workers, `proxy_log` and WASI stdout/stderr).
    pub fn logs(&self) -> Vec<LogLine> {
        lock(&self.core.shared).logs.clone()
    }

    /// Log messages containing `needle`.
    pub fn logs_containing(&self, needle: &str) -> Vec<String> {
        lock(&self.core.shared)
            .logs
            .iter()
            .filter(|l| l.message.contains(needle))
            .map(|l| l.message.clone())
            .collect()
    }

    pub fn clear_logs(&mut self) {
        lock(&self.core.shared).logs.clear();
    }

    /// Every trap so far.
    pub fn traps(&self) -> Vec<TrapRecord> {
        lock(&self.core.shared).traps.clone()
    }

    /// Why worker `w` failed, if it did.
    pub fn worker_failed(&self, w: usize) -> Option<String> {
        self.core.vm(w).and_then(|vm| vm.failed.clone())
    }

    /// Shared data of this host's vm_id: (value, cas).
    pub fn shared_data_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let s = lock(&self.core.shared);
        s.shared_data
            .get(&(s.vm_id.clone(), key.to_string()))
            .cloned()
    }

    /// Shared data as UTF-8 text.
    pub fn shared_data_str(&self, key: &str) -> Option<String> {
        self.shared_data_get(key)
            .map(|(v, _)| String::from_utf8_lossy(&v).into_owned())
    }

    /// Writes shared data unconditionally (as another proxy component would).
    pub fn shared_data_set(&mut self, key: &str, value: &[u8]) {
        let mut s = lock(&self.core.shared);
        let cas = s.next_cas();
        let k = (s.vm_id.clone(), key.to_string());
        s.shared_data.insert(k, (value.to_vec(), cas));
    }

    /// All shared-data keys of this vm_id, sorted.
    pub fn shared_data_keys(&self) -> Vec<String> {
        let s = lock(&self.core.shared);
        let mut keys: Vec<String> = s
            .shared_data
            .keys()
            .filter(|(vm, _)| *vm == s.vm_id)
            .map(|(_, k)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Enqueues onto a registered shared queue of this vm_id and delivers `proxy_on_queue_ready`.
    pub fn enqueue(&mut self, queue: &str, value: &[u8]) -> Result<()> {
        self.core.enqueue(queue, value)
    }

    /// Items waiting in a shared queue of this vm_id.
    pub fn queue_items(&self, queue: &str) -> Vec<Vec<u8>> {
        let s = lock(&self.core.shared);
        s.queue_tokens
            .get(&(s.vm_id.clone(), queue.to_string()))
            .and_then(|t| s.queues.get(t))
            .map(|q| q.items.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Foreign calls made outside any stream (root contexts).
    pub fn root_foreign_calls(&self) -> Vec<ForeignCall> {
        self.core
            .vms
            .iter()
            .flat_map(|vm| vm.store.data().foreign_calls.clone())
            .collect()
    }
}
