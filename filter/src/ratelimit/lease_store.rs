//! A tenant's lease in shared data: read (if it still belongs to the tenant), decided on,
//! written back with compare-and-swap.

use super::lease::Lease;
use super::tenants::Tenant;
use crate::store::{update, Step, Store, StoreError};

/// The lease under a key if it belongs to `owner`; `Err(())`: the slot went to another id.
pub fn owned(current: Option<&[u8]>, owner: Option<&str>) -> Result<Option<Lease>, ()> {
    let Some((lease, stored)) = current.and_then(Lease::decode) else {
        return Ok(None);
    };
    match owner {
        Some(id) if stored != id.as_bytes() => Err(()),
        None if !stored.is_empty() => Ok(None),
        _ => Ok(Some(lease)),
    }
}

/// One read-modify-write of a tenant's lease. `f` gets the lease (empty when there is none)
/// and decides; `Ok(None)`: the slot went to another id. Also says whether the lease was
/// new (absent or free), so the caller can put it into the index.
pub fn with_lease<T>(
    store: &dyn Store,
    t: &Tenant,
    now_ms: u64,
    idle_ms: u64,
    mut f: impl FnMut(Lease) -> (Option<Lease>, T),
) -> Result<Option<(T, bool)>, StoreError> {
    let owner = t.owner.as_deref();
    update(store, &t.key, |current| {
        let (lease, new) = match owned(current, owner) {
            Ok(Some(l)) => (l, l.is_free(now_ms, idle_ms)),
            Ok(None) => (Lease::empty(now_ms), true),
            Err(()) => return Step::Keep(None),
        };
        match f(lease) {
            (Some(next), out) => Step::Write(next.encode(owner), Some((out, new))),
            (None, out) => Step::Keep(Some((out, new))),
        }
    })
}
