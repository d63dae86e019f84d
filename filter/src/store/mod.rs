//! The proxy's shared data as the filter's state needs it: get/set with Envoy's
//! compare-and-swap rules, and one read-modify-write loop that every shared counter and bucket
//! goes through.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    CasMismatch,
    Other(String),
}

/// `proxy_get_shared_data` / `proxy_set_shared_data`, shared by every VM of one `vm_id`.
pub trait Store {
    /// The value and its CAS (`None` when the key is missing).
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// Writes when `cas` matches the entry's (0 = unconditional; a missing key always takes it).
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

/// How many times a compare-and-swap is retried before giving up (contention between workers
/// is short-lived; this bounds the work of one request).
pub const MAX_CAS_RETRIES: usize = 32;

/// Envoy accepts a set with a non-zero CAS on a missing key and refuses it on an existing one
/// (unless the CAS matches): with a CAS no live entry carries, a set means "create if absent",
/// so two workers creating the same key cannot overwrite each other.
pub const CREATE_CAS: u32 = u32::MAX;

/// What a read-modify-write step decides.
pub enum Step<T> {
    /// Write this value (if nobody wrote in between; else the step runs again) and return `T`.
    Write(Vec<u8>, T),
    /// Leave the value as it is and return `T`.
    Keep(T),
}

/// Reads `key`, lets `step` decide from the current value (`None` = missing), and writes its
/// result with compare-and-swap, re-reading and retrying when another worker wrote in between.
pub fn update<T>(
    store: &dyn Store,
    key: &str,
    step: impl FnMut(Option<&[u8]>) -> Step<T>,
) -> Result<T, StoreError> {
    let read = store.get(key)?;
    update_after(store, key, read, step)
}

/// [`update`] starting from what the caller has just read of `key` (`read`: what
/// [`Store::get`] returned), which saves the first read. A value that is no longer current
/// fails the compare-and-swap and is read again, so the result is the same as [`update`]'s.
pub fn update_after<T>(
    store: &dyn Store,
    key: &str,
    read: Option<(Vec<u8>, u32)>,
    mut step: impl FnMut(Option<&[u8]>) -> Step<T>,
) -> Result<T, StoreError> {
    let mut current = read;
    for attempt in 0..MAX_CAS_RETRIES {
        if attempt > 0 {
            current = store.get(key)?;
        }
        let (value, cas) = match &current {
            Some((bytes, cas)) => (Some(bytes.as_slice()), *cas),
            None => (None, CREATE_CAS),
        };
        match step(value) {
            Step::Keep(out) => return Ok(out),
            Step::Write(next, out) => match store.set(key, &next, cas) {
                Ok(()) => return Ok(out),
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(e),
            },
        }
    }
    Err(StoreError::Other(format!(
        "{key}: still contended after {MAX_CAS_RETRIES} tries"
    )))
}

#[cfg(test)]
mod tests;
