//! Requests this proxy sent to each endpoint of a pool since the current snapshot.
//!
//! One record per pool (its key is named after the configured tier, so the number of keys is
//! bounded by the configuration), holding the snapshot version and the count per address.
//! Shared data has no delete, so state must never be keyed by something that comes and goes:
//! an endpoint that leaves the pool simply drops out of the record the next time it is
//! rewritten, and a new snapshot version starts an empty record (older counts are part of the
//! newer snapshot's load). The record therefore never holds more than one pool's addresses
//! with requests in flight.

use super::{Endpoint, MAX_ENDPOINTS_PER_POOL};
use std::collections::{HashMap, HashSet};

/// Longest address kept (an `ip:port` is at most about 60 bytes; snapshots are checked).
const MAX_ADDRESS: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolInFlight {
    /// Snapshot version the counts belong to.
    pub version: u64,
    /// (address, requests in flight), only addresses with a count above zero.
    pub counts: Vec<(String, u32)>,
}

impl PoolInFlight {
    /// `version` (8 bytes LE), then per entry: address length (1 byte), address, count (4
    /// bytes LE).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.counts.len() * 24);
        out.extend_from_slice(&self.version.to_le_bytes());
        for (address, count) in &self.counts {
            let Ok(len) = u8::try_from(address.len()) else {
                continue;
            };
            out.push(len);
            out.extend_from_slice(address.as_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
        out
    }

    /// Reads a record; anything malformed (truncated, not UTF-8, too many entries) is `None`,
    /// which the caller treats as an empty record.
    pub fn decode(bytes: &[u8]) -> Option<PoolInFlight> {
        let (version, mut rest) = bytes.split_first_chunk::<8>()?;
        let mut counts = Vec::new();
        while let Some((&len, tail)) = rest.split_first() {
            if counts.len() >= MAX_ENDPOINTS_PER_POOL {
                return None;
            }
            let (address, tail) = tail.split_at_checked(usize::from(len))?;
            let (count, tail) = tail.split_first_chunk::<4>()?;
            let address = std::str::from_utf8(address).ok()?.to_string();
            counts.push((address, u32::from_le_bytes(*count)));
            rest = tail;
        }
        Some(PoolInFlight {
            version: u64::from_le_bytes(*version),
            counts,
        })
    }

    /// The in-flight count of each endpoint of `pool` (same order) under snapshot `version`.
    pub fn per_endpoint(&self, version: u64, pool: &[Endpoint]) -> Vec<u64> {
        if self.version != version || self.counts.is_empty() {
            return vec![0; pool.len()];
        }
        let by_address: HashMap<&str, u32> =
            self.counts.iter().map(|(a, c)| (a.as_str(), *c)).collect();
        pool.iter()
            .map(|e| {
                by_address
                    .get(e.address.as_str())
                    .map_or(0, |c| u64::from(*c))
            })
            .collect()
    }

    /// After one more request went to `address` under snapshot `version`: counts of another
    /// version are dropped, and so are addresses not in `pool` (an address not in it is not
    /// counted).
    pub fn plus_one(&self, version: u64, address: &str, pool: &[Endpoint]) -> PoolInFlight {
        let listed: HashSet<&str> = pool.iter().map(|e| e.address.as_str()).collect();
        let mut counts: Vec<(String, u32)> = if self.version == version {
            self.counts
                .iter()
                .filter(|(a, _)| listed.contains(a.as_str()))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let room = counts.len() < MAX_ENDPOINTS_PER_POOL && listed.contains(address);
        match counts.iter_mut().find(|(a, _)| a == address) {
            Some((_, c)) => *c = c.saturating_add(1),
            None if address.len() <= MAX_ADDRESS && room => {
                counts.push((address.to_string(), 1));
            }
            None => {}
        }
        PoolInFlight { version, counts }
    }

    /// After a request sent to `address` under `version` ended. `None` when nothing changes
    /// (a newer snapshot already started a new record, or the address is not counted).
    pub fn minus_one(&self, version: u64, address: &str) -> Option<PoolInFlight> {
        if self.version != version {
            return None;
        }
        let i = self.counts.iter().position(|(a, _)| a == address)?;
        let mut next = self.clone();
        match next.counts.get_mut(i) {
            Some((_, c)) if *c > 1 => *c -= 1,
            _ => {
                next.counts.remove(i);
            }
        }
        Some(next)
    }
}
