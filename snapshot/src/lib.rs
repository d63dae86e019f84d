//! The load snapshot: what `llm-router-sidecar` POSTs to the gateway and what the filter reads.
//!
//! Defined once here so that the writer (the sidecar serialises it) and the reader (the filter
//! deserialises it) cannot drift apart:
//!
//! ```json
//! {"pools": {"<tier>": [{"address": "ip:port", "waiting": 0, "running": 3,
//!                        "kv_cache": 0.41, "healthy": true}]},
//!  "generated_at_ms": 1767225600000, "seq": 42}
//! ```
//!
//! Reading is lenient where the original format was: missing load fields are 0, a missing
//! `healthy` means healthy, unknown fields are ignored, and `generated_at_ms` / `seq` are
//! informational (the filter judges freshness by arrival time), so a value of another type there
//! reads as 0 instead of failing the push. Checks of the contents (addresses, limits) are the
//! reader's.

use serde::de::{Deserializer, IgnoredAny};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One model server's load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `ip:port`.
    pub address: String,
    /// Queued requests.
    #[serde(default)]
    pub waiting: u64,
    /// Requests being processed.
    #[serde(default)]
    pub running: u64,
    /// KV-cache usage as a fraction in [0, 1].
    #[serde(default)]
    pub kv_cache: f64,
    /// `false`: the sidecar could not scrape it (timeout, non-200, metrics missing); the load
    /// fields are then 0 and carry no information. Absent = healthy (the original format).
    #[serde(default = "yes")]
    pub healthy: bool,
}

fn yes() -> bool {
    true
}

/// The whole push body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadSnapshot {
    /// Pool (tier) name -> its endpoints, in the writer's order.
    pub pools: BTreeMap<String, Vec<Endpoint>>,
    /// Unix time in milliseconds when the snapshot was built (informational).
    #[serde(default, deserialize_with = "lenient_u64")]
    pub generated_at_ms: u64,
    /// 1 for the writer's first snapshot, then +1 per snapshot (informational).
    #[serde(default, deserialize_with = "lenient_u64")]
    pub seq: u64,
}

/// An informational number: anything that is not a `u64` reads as 0.
fn lenient_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Exact(u64),
        Other(IgnoredAny),
    }
    Ok(match Number::deserialize(deserializer)? {
        Number::Exact(n) => n,
        Number::Other(_) => 0,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_documented_format() {
        let mut pools = BTreeMap::new();
        pools.insert(
            "small".to_string(),
            vec![Endpoint {
                address: "10.0.0.1:8000".into(),
                waiting: 2,
                running: 3,
                kv_cache: 0.5,
                healthy: true,
            }],
        );
        pools.insert("large".to_string(), vec![]);
        let snap = LoadSnapshot {
            pools,
            generated_at_ms: 17,
            seq: 4,
        };
        assert_eq!(
            serde_json::to_string(&snap).unwrap(),
            r#"{"pools":{"large":[],"small":[{"address":"10.0.0.1:8000","waiting":2,"running":3,"kv_cache":0.5,"healthy":true}]},"generated_at_ms":17,"seq":4}"#
        );
    }

    #[test]
    fn reads_what_it_writes_and_the_lenient_forms() {
        let snap: LoadSnapshot = serde_json::from_str(
            r#"{"pools":{"s":[{"address":"10.0.0.1:8000"}]},"seq":"x","extra":1}"#,
        )
        .unwrap();
        assert_eq!(
            snap.pools["s"],
            vec![Endpoint {
                address: "10.0.0.1:8000".into(),
                waiting: 0,
                running: 0,
                kv_cache: 0.0,
                healthy: true,
            }]
        );
        assert_eq!((snap.seq, snap.generated_at_ms), (0, 0));
        let back: LoadSnapshot =
            serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap();
        assert_eq!(back, snap);
        assert!(serde_json::from_str::<LoadSnapshot>(r#"{"seq":1}"#).is_err());
        assert!(
            serde_json::from_str::<LoadSnapshot>(r#"{"pools":{"s":[{"waiting":1}]}}"#).is_err()
        );
    }
}
