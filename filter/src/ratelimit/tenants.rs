//! Who a request is charged to: a configured tenant, `anonymous`, or an unconfigured id.
//!
//! Unconfigured ids (under `unknown: default`) get buckets of their own in a bounded table of
//! `max_tracked_tenants` slots in shared data. An id hashes to a few neighbouring slots; it
//! takes one that is empty or whose bucket is full again (a full bucket carries no state, so
//! forgetting it changes nothing for its owner). So a spray of ids holds slots only while the
//! sprayer's own buckets are drained, and real tenants find a slot again as soon as the
//! sprayed buckets refill; only when every probed slot is busy does an id share `overflow`.

use super::lease::Lease;
use super::{Limits, State, Store, StoreError, GLOBAL_PREFIX, PREFIX};
use crate::config::{TenantSource, Tenants, UnknownTenant};
use crate::store::CREATE_CAS;

/// Longest tenant id that gets a bucket of its own; longer or unusual ids share `overflow`.
pub const MAX_TENANT_ID_LEN: usize = 128;

/// Slots an id may use (neighbours of its hash): bounds the host calls of a new id.
const PROBES: u64 = 8;

/// Claim attempts when other workers take the probed slots at the same moment.
const CLAIM_TRIES: usize = 3;

/// Who is charged for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Shared-data key of the buckets.
    pub key: String,
    /// Metric label value (configured tenant, `default`, `anonymous` or `overflow`).
    pub label: String,
    pub limits: Limits,
    /// For a slot of an unconfigured id: the id the slot must still hold when it is charged
    /// (it may have been reclaimed in between).
    pub owner: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Tenant(Tenant),
    /// `unknown: reject` and the id is not configured.
    Rejected,
}

/// Per-proxy buckets and global leases live under different keys, so a configuration that
/// switches between the two never reads one as the other.
fn prefix(cfg: &Tenants) -> &'static str {
    if cfg.global.is_some() {
        GLOBAL_PREFIX
    } else {
        PREFIX
    }
}

fn fixed(cfg: &Tenants, key: &str, label: &str, limits: Limits) -> Tenant {
    Tenant {
        key: format!("{}{key}", prefix(cfg)),
        label: label.to_string(),
        limits,
        owner: None,
    }
}

/// The shared `overflow` bucket of unconfigured ids that get no slot.
pub fn overflow(cfg: &Tenants) -> Tenant {
    fixed(cfg, "overflow", "overflow", cfg.default)
}

/// Resolves a tenant id (from a header or a JWT claim; `None` when the request has none).
pub fn resolve(
    cfg: &Tenants,
    id: Option<&str>,
    store: &dyn Store,
    now_ms: u64,
) -> Result<Resolved, StoreError> {
    resolve_and_read(cfg, id, store, now_ms).map(|(r, _)| r)
}

/// What a slot read while resolving held (its value and CAS), for the charge that follows.
pub type SlotRead = Option<(Vec<u8>, u32)>;

/// [`resolve`], and for a tenant found in its slot what the slot held when it was read, so
/// that charging it starts from that read instead of reading the slot again (`None`: nothing
/// read, or the slot was just claimed).
pub fn resolve_and_read(
    cfg: &Tenants,
    id: Option<&str>,
    store: &dyn Store,
    now_ms: u64,
) -> Result<(Resolved, SlotRead), StoreError> {
    let id = id.map(str::trim).filter(|s| !s.is_empty());
    let Some(id) = id else {
        let limits = configured(cfg, "anonymous").unwrap_or(cfg.default);
        let t = fixed(cfg, "t/anonymous", "anonymous", limits);
        return Ok((Resolved::Tenant(t), None));
    };
    if let Some(limits) = configured(cfg, id) {
        let t = fixed(cfg, &format!("t/{id}"), id, limits);
        return Ok((Resolved::Tenant(t), None));
    }
    if cfg.unknown == UnknownTenant::Reject {
        return Ok((Resolved::Rejected, None));
    }
    if id.len() > MAX_TENANT_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok((Resolved::Tenant(overflow(cfg)), None));
    }
    let (t, read) = slot_for(cfg, id, store, now_ms)?;
    Ok((Resolved::Tenant(t), read))
}

pub(super) fn configured(cfg: &Tenants, id: &str) -> Option<Limits> {
    cfg.limits.iter().find(|(n, _)| n == id).map(|(_, l)| *l)
}

fn slot_key(cfg: &Tenants, index: u64) -> String {
    format!("{}u/{index}", prefix(cfg))
}

/// A slot's record: its owner, and whether it may go to another id (a per-proxy bucket that
/// is full again; a lease that is free). `None`: unreadable.
fn slot_state<'a>(cfg: &Tenants, value: &'a [u8], now_ms: u64) -> Option<(&'a [u8], bool)> {
    match &cfg.global {
        None => {
            let (state, owner) = State::decode_record(value)?;
            Some((owner, state.is_full(&cfg.default, now_ms)))
        }
        Some(g) => {
            let (lease, owner) = Lease::decode(value)?;
            Some((owner, lease.is_free(now_ms, g.idle_ms)))
        }
    }
}

/// The record that claims a slot for `id`.
fn claim_record(cfg: &Tenants, id: &str, now_ms: u64) -> Vec<u8> {
    match &cfg.global {
        None => State::full(&cfg.default, now_ms).encode_record(Some(id)),
        Some(_) => Lease::empty(now_ms).encode(Some(id)),
    }
}

/// FNV-1a: a stable hash (the same in every VM and across restarts).
fn hash(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The slot holding `id` (with what it held when read), or a free one claimed for it, or
/// `overflow`.
fn slot_for(
    cfg: &Tenants,
    id: &str,
    store: &dyn Store,
    now_ms: u64,
) -> Result<(Tenant, SlotRead), StoreError> {
    let slots = u64::from(cfg.max_tracked_tenants);
    if slots == 0 {
        return Ok((overflow(cfg), None));
    }
    let own = |key: String| Tenant {
        key,
        label: "default".into(),
        limits: cfg.default,
        owner: Some(id.to_string()),
    };
    let start = hash(id) % slots;
    for _ in 0..CLAIM_TRIES {
        let mut free: Option<(String, u32)> = None;
        for i in 0..PROBES.min(slots) {
            let key = slot_key(cfg, (start + i) % slots);
            match store.get(&key)? {
                Some((value, cas)) => {
                    let Some((owner, reclaimable)) = slot_state(cfg, &value, now_ms) else {
                        free = free.or(Some((key, cas)));
                        continue;
                    };
                    if owner == id.as_bytes() {
                        return Ok((own(key), Some((value, cas))));
                    }
                    if free.is_none() && reclaimable {
                        free = Some((key, cas));
                    }
                }
                None => free = free.or(Some((key, CREATE_CAS))),
            }
        }
        let Some((key, cas)) = free else {
            return Ok((overflow(cfg), None));
        };
        let record = claim_record(cfg, id, now_ms);
        match store.set(&key, &record, cas) {
            Ok(()) => return Ok((own(key), None)),
            // Another worker wrote the slot (perhaps for this same id): look again.
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok((overflow(cfg), None))
}

/// The shared-data path of a JWT claim, as Envoy's property API takes it (segments).
pub fn jwt_claim_path(source: &TenantSource) -> Option<Vec<String>> {
    match source {
        TenantSource::JwtClaim { claim, payload_key } => Some(vec![
            "metadata".into(),
            "filter_metadata".into(),
            "envoy.filters.http.jwt_authn".into(),
            payload_key.clone(),
            claim.clone(),
        ]),
        TenantSource::Header(_) => None,
    }
}
