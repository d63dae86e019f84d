//! Host side of endpoint picking: the pushed snapshot and the per-pool in-flight record in
//! shared data, and the snapshot parsed once per version per VM.

use super::host::SharedData;
use crate::config::{Criticality, Endpoints, Prefix};
use crate::endpoints::{self, Affinity, Endpoint, Meta, Pick, PoolInFlight, Snapshot};
use crate::prefix;
use crate::store::{update, update_after, Step, Store, StoreError};
use log::warn;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

const META_KEY: &str = "llm_router/ep/meta";
const SNAPSHOT_KEY: &str = "llm_router/ep/snapshot";

/// One record per pool (a configured tier name): shared data has no delete, so nothing is
/// keyed by an endpoint address (see `endpoints::PoolInFlight`).
fn inflight_key(pool: &str) -> String {
    format!("llm_router/ep/pool-inflight/{pool}")
}

/// Per-VM cache of the parsed snapshot, keyed by its version.
#[derive(Default)]
pub struct SnapshotCache {
    cached: RefCell<Option<(u64, Rc<Snapshot>)>>,
}

/// Why no endpoint was named (index into `metrics::FALLBACK_REASON`).
pub enum Fallback {
    NoSnapshot = 0,
    Stale = 1,
    NoEndpoint = 2,
}

pub enum Outcome {
    /// Send to this address; release `Ticket` when the request ends.
    Picked {
        address: String,
        ticket: Ticket,
        /// With `endpoints.prefix`: what affinity found and did.
        affinity: Option<AffinityOutcome>,
    },
    Shed,
    /// The gateway's subset hint allows no usable endpoint of the pool: answer 503.
    NotInSubset,
    Fallback(Fallback),
}

/// Prefix affinity of a picked request.
pub struct AffinityOutcome {
    /// Blocks of the request's prefix found sent to the picked endpoint before.
    pub matched_blocks: usize,
    /// Affinity changed the pick (load alone would have picked another endpoint).
    pub changed: bool,
}

/// An in-flight count to give back when the request ends.
pub struct Ticket {
    key: String,
    address: String,
    version: u64,
}

/// Stores a pushed snapshot (already validated) for every worker: the snapshot first, then
/// its new version and arrival time (readers re-read the snapshot when the version moves).
pub fn store_snapshot(body: &[u8], now_ms: u64) -> Result<(), StoreError> {
    SharedData.set(SNAPSHOT_KEY, body, 0)?;
    update(&SharedData, META_KEY, |current| {
        let version = current.and_then(Meta::decode).map_or(0, |m| m.version);
        let meta = Meta {
            version: version.wrapping_add(1),
            received_ms: now_ms,
        };
        Step::Write(meta.encode().to_vec(), ())
    })
}

impl SnapshotCache {
    fn current(&self, version: u64) -> Option<Rc<Snapshot>> {
        if let Some((v, snap)) = &*self.cached.borrow() {
            if *v == version {
                return Some(snap.clone());
            }
        }
        let bytes = match SharedData.get(SNAPSHOT_KEY) {
            Ok(Some((b, _))) => b,
            _ => return None,
        };
        let snap = Rc::new(Snapshot::parse(&bytes).ok()?);
        *self.cached.borrow_mut() = Some((version, snap.clone()));
        Some(snap)
    }

    /// Picks an endpoint of `pool` for a request and counts it in flight. `chain` is the
    /// request's prefix hash chain (empty: no affinity).
    #[allow(clippy::too_many_arguments)]
    pub fn pick(
        &self,
        cfg: &Endpoints,
        pool: &str,
        criticality: Criticality,
        subset: Option<&[SocketAddr]>,
        now_ms: u64,
        roll: u64,
        chain: &prefix::Chain,
    ) -> Outcome {
        let meta = match SharedData.get(META_KEY) {
            Ok(Some((b, _))) => Meta::decode(&b),
            _ => None,
        };
        let Some(meta) = meta else {
            return Outcome::Fallback(Fallback::NoSnapshot);
        };
        if meta.is_stale(now_ms, cfg) {
            return Outcome::Fallback(Fallback::Stale);
        }
        let Some(snap) = self.current(meta.version) else {
            return Outcome::Fallback(Fallback::NoSnapshot);
        };
        let Some(endpoints) = snap.pool(pool) else {
            return Outcome::Fallback(Fallback::NoEndpoint);
        };
        let key = inflight_key(pool);
        // Read once: the scoring uses it, and so does the count of the pick (its
        // compare-and-swap reads again only if another worker wrote in between).
        let read = SharedData.get(&key).ok().flatten();
        let in_flight = read
            .as_ref()
            .and_then(|(b, _)| PoolInFlight::decode(b))
            .unwrap_or_default();
        let counts = in_flight.per_endpoint(meta.version, endpoints);
        let extra = |i: usize| counts.get(i).copied().unwrap_or(0);
        let mut affinity = cfg
            .prefix
            .as_ref()
            .filter(|_| !chain.is_empty())
            .map(|p| Affine::find(p, pool, endpoints, chain));
        let matched = affinity.as_ref().map(|a| a.matched.as_slice());
        let weights = matched.zip(cfg.prefix.as_ref()).map(|(m, p)| Affinity {
            matched: m,
            weight: p.weight,
            load_weight: p.load_weight,
        });
        let decision = endpoints::pick_with(
            endpoints,
            extra,
            cfg,
            criticality,
            subset,
            roll,
            weights.as_ref(),
        );
        match decision.pick {
            Pick::Endpoint(i) => {
                let Some(e) = endpoints.get(i) else {
                    return Outcome::Fallback(Fallback::NoEndpoint);
                };
                count_in(&key, read, meta.version, &e.address, endpoints);
                let affinity = affinity
                    .take()
                    .map(|a| a.remember(i, chain, now_ms, decision));
                Outcome::Picked {
                    address: e.address.clone(),
                    ticket: Ticket {
                        key,
                        address: e.address.clone(),
                        version: meta.version,
                    },
                    affinity,
                }
            }
            Pick::Shed => Outcome::Shed,
            Pick::NoEndpoint => Outcome::Fallback(Fallback::NoEndpoint),
            Pick::NotInSubset => Outcome::NotInSubset,
        }
    }
}

/// One request's view of the prefix index and what its lookup found.
struct Affine {
    tags: Vec<u64>,
    shards: usize,
    pool: u32,
    look: prefix::Lookup,
    matched: Vec<f64>,
}

impl Affine {
    fn find(cfg: &Prefix, pool: &str, endpoints: &[Endpoint], chain: &prefix::Chain) -> Affine {
        let tags: Vec<u64> = endpoints
            .iter()
            .map(|e| prefix::endpoint_tag(cfg.seed, &e.address))
            .collect();
        let shards = prefix::shard_count(cfg.index_entries);
        let pool = prefix::pool_tag(cfg.seed, pool);
        let view = prefix::View {
            shards,
            pool,
            endpoints: &tags,
        };
        let look = prefix::lookup(&SharedData, &view, &chain.points);
        let matched = prefix::matched_fractions(
            &look.hits,
            endpoints.len(),
            chain.len(),
            chain.shared,
            cfg.min_match_blocks,
        );
        Affine {
            tags,
            shards,
            pool,
            look,
            matched,
        }
    }

    /// Writes the pick into the index.
    fn remember(
        self,
        picked: usize,
        chain: &prefix::Chain,
        now_ms: u64,
        decision: endpoints::Decision,
    ) -> AffinityOutcome {
        let matched_blocks = prefix::matched_blocks(&self.look.hits, picked);
        let view = prefix::View {
            shards: self.shards,
            pool: self.pool,
            endpoints: &self.tags,
        };
        let now_s = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
        if let Some(&tag) = self.tags.get(picked) {
            prefix::record(&SharedData, &view, &chain.points, self.look, tag, now_s);
        }
        AffinityOutcome {
            matched_blocks,
            changed: decision.affinity_changed,
        }
    }
}

impl Ticket {
    /// The request ended (answered, failed or cancelled): it is no longer in flight.
    pub fn release(self) {
        let result = update(&SharedData, &self.key, |current| {
            let record = current.and_then(PoolInFlight::decode);
            match record.and_then(|r| r.minus_one(self.version, &self.address)) {
                Some(next) => Step::Write(next.encode(), ()),
                None => Step::Keep(()),
            }
        });
        if let Err(err) = result {
            warn!("llm-router: cannot release in-flight request: {err:?}");
        }
    }
}

/// Counts one more request in flight to `address` in the pool's record (`read`: the record as
/// the pick read it).
fn count_in(
    key: &str,
    read: Option<(Vec<u8>, u32)>,
    version: u64,
    address: &str,
    pool: &[Endpoint],
) {
    let result = update_after(&SharedData, key, read, |current| {
        let record = current.and_then(PoolInFlight::decode).unwrap_or_default();
        Step::Write(record.plus_one(version, address, pool).encode(), ())
    });
    if let Err(err) = result {
        warn!("llm-router: cannot count in-flight request: {err:?}");
    }
}
