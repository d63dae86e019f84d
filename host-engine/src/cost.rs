//! The records of cost metering (`meter`): what each guest call cost. Kept apart from the
//! import wrapping in `meter`, which needs the VM state that holds these records.

use std::collections::BTreeMap;

/// What one guest call (an export such as `proxy_on_request_body`) cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallCost {
    /// The export called.
    pub export: String,
    /// The context it was called for.
    pub context: u32,
    /// Wasm instructions executed, as wasmtime's fuel counts them (about one per operator),
    /// including the guest's allocator when a host call hands it data.
    pub fuel: u64,
    /// Host calls made during it, by import name.
    pub host_calls: BTreeMap<String, u64>,
}

impl CallCost {
    /// Host calls made during this guest call, all names together.
    pub fn host_call_count(&self) -> u64 {
        self.host_calls.values().sum()
    }
}

/// The per-VM record: finished calls, and the host calls of the call in progress.
#[derive(Debug, Default)]
pub struct Meter {
    pub calls: Vec<CallCost>,
    pending: BTreeMap<String, u64>,
}

impl Meter {
    pub(crate) fn count(&mut self, import: &str) {
        match self.pending.get_mut(import) {
            Some(n) => *n += 1,
            None => {
                self.pending.insert(import.to_string(), 1);
            }
        }
    }

    /// Closes the call in progress.
    pub fn finish(&mut self, export: &str, context: u32, fuel: u64) {
        let host_calls = std::mem::take(&mut self.pending);
        self.calls.push(CallCost {
            export: export.to_string(),
            context,
            fuel,
            host_calls,
        });
    }
}
