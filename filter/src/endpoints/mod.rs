//! Load-aware endpoint picking from the load snapshot a sidecar pushes in.
//!
//! The snapshot lists, per pool (a pool is named like the tier it serves), each model server
//! with its queue (`waiting`), `running` requests and KV-cache use. Per request the pool's
//! endpoints are filtered (unhealthy; saturated: queue at `max_queue` or KV cache at
//! `max_kv_cache`), scored, and the lowest score wins, ties broken at random. Requests this
//! proxy sent to an endpoint since the snapshot count as queued there, so a burst between two
//! snapshots spreads out instead of piling onto the one endpoint that looked idle.

mod inflight;

pub use inflight::PoolInFlight;

use crate::config::{Criticality, Endpoints};
use std::collections::HashSet;
use std::net::SocketAddr;

/// Most endpoints kept per pool (a larger snapshot is refused as malformed).
pub const MAX_ENDPOINTS_PER_POOL: usize = 1024;
pub const MAX_POOLS: usize = 64;

/// One endpoint's load, as the sidecar pushes it (the wire type is shared with the sidecar).
pub use llm_router_snapshot::Endpoint;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// (pool name, endpoints), in the snapshot's order.
    pub pools: Vec<(String, Vec<Endpoint>)>,
}

impl Snapshot {
    /// Parses and checks a pushed snapshot; the error says what is wrong (for the 400 reply).
    ///
    /// Addresses are rewritten in their canonical `ip:port` form (they become a header value,
    /// a metric label and an in-flight key); an address listed twice in one pool is kept once
    /// (its first entry).
    pub fn parse(body: &[u8]) -> Result<Snapshot, String> {
        // `generated_at_ms`, `seq` and other fields are accepted and ignored: staleness is judged
        // by arrival time at the proxy, which needs no clock agreement with the sidecar.
        let wire: llm_router_snapshot::LoadSnapshot =
            serde_json::from_slice(body).map_err(|e| format!("malformed snapshot: {e}"))?;
        if wire.pools.len() > MAX_POOLS {
            return Err(format!("more than {MAX_POOLS} pools"));
        }
        let mut pools = Vec::with_capacity(wire.pools.len());
        for (name, eps) in wire.pools {
            let shown = shorten(&name);
            if eps.len() > MAX_ENDPOINTS_PER_POOL {
                return Err(format!(
                    "pool {shown}: more than {MAX_ENDPOINTS_PER_POOL} endpoints"
                ));
            }
            let mut seen = HashSet::with_capacity(eps.len());
            let mut kept = Vec::with_capacity(eps.len());
            for mut e in eps {
                let Ok(addr) = e.address.parse::<SocketAddr>() else {
                    return Err(format!(
                        "pool {shown}: address {:?} is not ip:port",
                        shorten(&e.address)
                    ));
                };
                if !e.kv_cache.is_finite() || e.kv_cache < 0.0 {
                    return Err(format!("pool {shown}: {addr}: bad kv_cache"));
                }
                if seen.insert(addr) {
                    e.address = addr.to_string();
                    kept.push(e);
                }
            }
            pools.push((name, kept));
        }
        Ok(Snapshot { pools })
    }

    pub fn pool(&self, name: &str) -> Option<&[Endpoint]> {
        self.pools
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, e)| e.as_slice())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 403: the source is not loopback.
    NotLoopback,
    /// 403: missing or wrong bearer token (or none configured).
    BadToken,
}

/// A push is accepted only from loopback and with the configured bearer token.
///
/// `source_address` is Envoy's `source.address`. It is the TCP peer only when the connection
/// manager sets `use_remote_address: true` (the shipped configs and Istio gateways do); with
/// the default `false` Envoy takes it from `x-forwarded-for`, which a client controls. (The
/// filter cannot check `x-forwarded-for` itself: with `use_remote_address: true` Envoy appends
/// the host's own address for loopback peers, so a genuine local push carries a non-loopback
/// hop.)
pub fn authorize(
    source_address: Option<&str>,
    authorization: Option<&str>,
    token: Option<&str>,
) -> Result<(), Refusal> {
    let loopback = source_address
        .and_then(|s| s.parse::<SocketAddr>().ok())
        .is_some_and(|a| a.ip().is_loopback());
    if !loopback {
        return Err(Refusal::NotLoopback);
    }
    let presented = authorization.and_then(|h| {
        let (scheme, rest) = h.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    match (token, presented) {
        (Some(t), Some(p)) if !t.is_empty() && constant_time_eq(t.as_bytes(), p.as_bytes()) => {
            Ok(())
        }
        _ => Err(Refusal::BadToken),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pick {
    /// Index into the pool of the endpoint to use.
    Endpoint(usize),
    /// Every usable endpoint is saturated and the request is sheddable: answer 429 overloaded.
    Shed,
    /// No usable endpoint (none healthy): leave it to the gateway's load balancing.
    NoEndpoint,
    /// The gateway allowed only a subset of endpoints and no healthy one of the pool is in it:
    /// answer 503 (the Inference Extension's subset-hint rule).
    NotInSubset,
}

/// Environment variable with which a host says it may hand over subset hints (the ext_proc
/// server sets it in every VM it runs). Envoy in-proxy has none: without it the filter does not
/// ask for the hint property on each request (a host call saved).
pub const SUBSET_HINTS_ENV: &str = "LLM_ROUTER_SUBSET_HINTS";

/// The endpoints a gateway allows for one request (the Inference Extension's subset hint,
/// `ip:port` separated by commas), canonical like snapshot addresses. Entries that are not
/// `ip:port` are dropped; at most `MAX_ENDPOINTS_PER_POOL` are read.
pub fn parse_subset(list: &str) -> Vec<SocketAddr> {
    list.split(',')
        .filter_map(|a| a.trim().parse::<SocketAddr>().ok())
        .take(MAX_ENDPOINTS_PER_POOL)
        .collect()
}

fn allowed(e: &Endpoint, subset: Option<&[SocketAddr]>) -> bool {
    match subset {
        None => true,
        Some(list) => e
            .address
            .parse::<SocketAddr>()
            .is_ok_and(|a| list.contains(&a)),
    }
}

/// Whether an endpoint cannot take more work (`extra` = requests sent since the snapshot).
pub fn saturated(e: &Endpoint, extra: u64, cfg: &Endpoints) -> bool {
    e.waiting.saturating_add(extra) >= cfg.max_queue || e.kv_cache >= cfg.max_kv_cache
}

/// Lower is better: queue (with requests sent since the snapshot) and KV cache, each as a
/// fraction of its saturation point, with running requests as a light tie-breaker. Always a
/// finite number, whatever the snapshot says (each term is capped).
pub fn score(e: &Endpoint, extra: u64, cfg: &Endpoints) -> f64 {
    const CAP: f64 = 1e12;
    let finite = |x: f64| if x.is_nan() { CAP } else { x.clamp(0.0, CAP) };
    let queue = e.waiting.saturating_add(extra) as f64 / cfg.max_queue.max(1) as f64;
    let kv = e.kv_cache / cfg.max_kv_cache;
    finite(queue) + finite(kv) + finite(e.running as f64 * 0.01)
}

/// A name from a snapshot, cut for an error message.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", s.get(..i).unwrap_or_default()),
        None => s.to_string(),
    }
}

/// Scores within this of the best count as a tie.
const TIE: f64 = 1e-9;

/// Prefix affinity of one request (`endpoints.prefix`): per endpoint of the pool (same
/// order), the fraction (0..=1) of the request's blocks found sent there before, and the
/// weights of that match and of the load score.
#[derive(Debug, Clone, Copy)]
pub struct Affinity<'a> {
    pub matched: &'a [f64],
    pub weight: f64,
    pub load_weight: f64,
}

/// A pick, and whether prefix affinity changed it (the endpoint is not one load alone would
/// have picked).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub pick: Pick,
    pub affinity_changed: bool,
}

/// Picks an endpoint. `extra(i)` is the number of requests sent to endpoint `i` since the
/// snapshot; `subset` the endpoints the gateway allows (`None`: all); `roll` is a random
/// number for tie-breaking.
pub fn pick(
    pool: &[Endpoint],
    extra: impl Fn(usize) -> u64,
    cfg: &Endpoints,
    criticality: Criticality,
    subset: Option<&[SocketAddr]>,
    roll: u64,
) -> Pick {
    pick_with(pool, extra, cfg, criticality, subset, roll, None).pick
}

/// [`pick`] with prefix affinity: score = `load_weight` x load score - `weight` x matched
/// fraction, lowest wins. Affinity only ranks endpoints that are not saturated: when every
/// usable endpoint is saturated (a request that is not sheddable still goes to one), load
/// alone decides, so a saturated endpoint never wins on affinity.
pub fn pick_with(
    pool: &[Endpoint],
    extra: impl Fn(usize) -> u64,
    cfg: &Endpoints,
    criticality: Criticality,
    subset: Option<&[SocketAddr]>,
    roll: u64,
    affinity: Option<&Affinity>,
) -> Decision {
    let plain = |pick| Decision {
        pick,
        affinity_changed: false,
    };
    let healthy: Vec<(usize, u64)> = pool
        .iter()
        .enumerate()
        .filter(|(_, e)| e.healthy && allowed(e, subset))
        .map(|(i, _)| (i, extra(i)))
        .collect();
    if healthy.is_empty() {
        return plain(match subset {
            Some(_) => Pick::NotInSubset,
            None => Pick::NoEndpoint,
        });
    }
    let open: Vec<(usize, u64)> = healthy
        .iter()
        .copied()
        .filter(|(i, x)| pool.get(*i).is_some_and(|e| !saturated(e, *x, cfg)))
        .collect();
    let (candidates, affinity) = if open.is_empty() {
        if criticality == Criticality::Sheddable {
            return plain(Pick::Shed);
        }
        (healthy, None)
    } else {
        (open, affinity)
    };
    let scored: Vec<(usize, f64)> = candidates
        .iter()
        .filter_map(|(i, x)| pool.get(*i).map(|e| (*i, score(e, *x, cfg))))
        .collect();
    let by_load = ties(&scored);
    let Some(a) = affinity else {
        return plain(choose(&by_load, roll));
    };
    let combined: Vec<(usize, f64)> = scored
        .iter()
        .map(|(i, s)| {
            let m = a.matched.get(*i).copied().unwrap_or(0.0);
            let m = if m.is_finite() {
                m.clamp(0.0, 1.0)
            } else {
                0.0
            };
            (*i, a.load_weight * s - a.weight * m)
        })
        .collect();
    let pick = choose(&ties(&combined), roll);
    Decision {
        pick,
        affinity_changed: matches!(pick, Pick::Endpoint(i) if !by_load.contains(&i)),
    }
}

/// The endpoints whose score is within `TIE` of the best.
fn ties(scored: &[(usize, f64)]) -> Vec<usize> {
    let best = scored.iter().map(|(_, s)| *s).fold(f64::INFINITY, f64::min);
    scored
        .iter()
        .filter(|(_, s)| *s <= best + TIE)
        .map(|(i, _)| *i)
        .collect()
}

/// One of `ties`, by `roll`.
fn choose(ties: &[usize], roll: u64) -> Pick {
    let n = ties.len() as u64;
    if n == 0 {
        return Pick::NoEndpoint;
    }
    let k = usize::try_from(roll % n).unwrap_or(0);
    ties.get(k)
        .copied()
        .map_or(Pick::NoEndpoint, Pick::Endpoint)
}

/// Criticality of a request: the `models` entry's, lowered (never raised) by the optional
/// criticality header.
pub fn criticality(from_model: Criticality, header: Option<&str>) -> Criticality {
    let asked = match header.map(|h| h.trim().to_ascii_lowercase()).as_deref() {
        Some("sheddable") => Criticality::Sheddable,
        Some("standard") => Criticality::Standard,
        Some("critical") => Criticality::Critical,
        _ => return from_model,
    };
    asked.min(from_model)
}

/// Snapshot metadata stored beside it: a version that changes with every push, and the
/// proxy's time of arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub version: u64,
    pub received_ms: u64,
}

impl Meta {
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let (a, b) = out.split_at_mut(8);
        a.copy_from_slice(&self.version.to_le_bytes());
        b.copy_from_slice(&self.received_ms.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Meta> {
        if bytes.len() != 16 {
            return None;
        }
        Some(Meta {
            version: u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?),
            received_ms: u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?),
        })
    }

    pub fn is_stale(&self, now_ms: u64, cfg: &Endpoints) -> bool {
        now_ms.saturating_sub(self.received_ms) > cfg.stale_after_ms
    }
}

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
