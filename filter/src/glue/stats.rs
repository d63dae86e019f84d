//! Metrics defined lazily per label combination and cached by `Key` (small indices), so a
//! request that hits an existing series neither formats a name nor calls `define_metric`.

use super::abi;
use crate::metrics::{Catalog, Key, Kind, Metric};
use log::warn;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub struct Stats {
    catalog: RefCell<Catalog>,
    /// Metric ids by `packed` key: a few dozen entries looked up several times a request, so
    /// a multiply hash instead of SipHash (the keys are our own indices, not attacker input).
    ids: RefCell<HashMap<u64, u32, BuildHasherDefault<PackedHasher>>>,
}

/// A `Key` as one integer: the metric's discriminant above its three 16-bit labels.
fn packed(key: &Key) -> u64 {
    let [a, b, c] = key.labels;
    ((key.metric as u64) << 48) | (u64::from(a) << 32) | (u64::from(b) << 16) | u64::from(c)
}

/// Hashes the one `u64` of a packed key (Fibonacci multiply, high half folded into the low
/// bits that pick the bucket); other input is folded in the same way, byte by byte.
#[derive(Default)]
struct PackedHasher(u64);

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for PackedHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let h = (self.0.rotate_left(29) ^ n).wrapping_mul(GOLDEN);
        self.0 = h ^ (h >> 32);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Stats {
    pub fn new(catalog: Catalog) -> Stats {
        Stats {
            catalog: RefCell::new(catalog),
            ids: RefCell::new(HashMap::default()),
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
        if let Some(id) = self.ids.borrow().get(&packed(&key)) {
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
                self.ids.borrow_mut().insert(packed(&key), id);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_keys_are_distinct_per_metric_and_label() {
        let a = Key::new(Metric::Requests, &[1, 2, 3]);
        let b = Key::new(Metric::ModelSelected, &[1, 2, 3]);
        let c = Key::new(Metric::Requests, &[1, 3, 2]);
        let d = Key::new(Metric::Requests, &[u16::MAX, u16::MAX, u16::MAX]);
        let all = [packed(&a), packed(&b), packed(&c), packed(&d)];
        for (i, x) in all.iter().enumerate() {
            for y in all.iter().skip(i + 1) {
                assert_ne!(x, y);
            }
        }
        let mut map: HashMap<u64, u32, BuildHasherDefault<PackedHasher>> = HashMap::default();
        for (i, k) in all.iter().enumerate() {
            map.insert(*k, i as u32);
        }
        for (i, k) in all.iter().enumerate() {
            assert_eq!(map.get(k), Some(&(i as u32)));
        }
    }
}
