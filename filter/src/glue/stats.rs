//! Metrics defined lazily per label combination and cached by `Key` (small indices), so a
//! request that hits an existing series neither formats a name nor calls `define_metric`.

use super::abi;
use crate::metrics::{Catalog, Key, Kind, Metric};
use log::warn;
use std::cell::RefCell;
use std::collections::HashMap;

pub struct Stats {
    catalog: RefCell<Catalog>,
    ids: RefCell<HashMap<Key, u32>>,
}

impl Stats {
    pub fn new(catalog: Catalog) -> Stats {
        Stats {
            catalog: RefCell::new(catalog),
            ids: RefCell::new(HashMap::new()),
        }
    }

    pub fn catalog(&self) -> std::cell::Ref<'_, Catalog> {
        self.catalog.borrow()
    }

    /// Label index of an endpoint address (the catalog grows up to its bound).
    pub fn endpoint_label(&self, address: &str) -> u16 {
        self.catalog.borrow_mut().endpoint(address)
    }

    fn id(&self, key: Key) -> Option<u32> {
        if let Some(id) = self.ids.borrow().get(&key) {
            return Some(*id);
        }
        let name = self.catalog.borrow().name(&key);
        let ty = match key.metric.kind() {
            Kind::Counter => abi::metric::COUNTER,
            Kind::Gauge => abi::metric::GAUGE,
            Kind::Histogram => abi::metric::HISTOGRAM,
        };
        match abi::define_metric(ty, &name) {
            Ok(id) => {
                self.ids.borrow_mut().insert(key, id);
                Some(id)
            }
            Err(status) => {
                warn!("llm-router: cannot define metric {name}: {status:?}");
                None
            }
        }
    }

    pub fn inc(&self, metric: Metric, labels: &[u16]) {
        self.add(metric, labels, 1);
    }

    pub fn add(&self, metric: Metric, labels: &[u16], n: u64) {
        if n == 0 {
            return;
        }
        if let Some(id) = self.id(Key::new(metric, labels)) {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            if let Err(status) = abi::increment_metric(id, n) {
                warn!("llm-router: cannot increment {}: {status:?}", metric.base());
            }
        }
    }

    pub fn record(&self, metric: Metric, labels: &[u16], value: u64) {
        if let Some(id) = self.id(Key::new(metric, labels)) {
            if let Err(status) = abi::record_metric(id, value) {
                warn!("llm-router: cannot record {}: {status:?}", metric.base());
            }
        }
    }
}
