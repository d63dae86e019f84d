//! Cost metering (opt-in, `VmFactory::metered`): wasm instructions (wasmtime fuel) and host
//! calls by name, per guest call. Deterministic figures for the cost report (`host-sim cost`)
//! and its budget test; off in production, where the imports are not wrapped.

use std::collections::BTreeMap;

use anyhow::Result;
use wasmtime::{Caller, Extern, Func, Linker, Module, Store, Val};

use crate::state::VmState;

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
    fn count(&mut self, import: &str) {
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

/// A linker for one store whose every import of `module` counts its calls in the store's
/// `Meter` before running the definition from `base`.
pub fn counting_linker(
    base: &Linker<VmState>,
    store: &mut Store<VmState>,
    module: &Module,
) -> Result<Linker<VmState>> {
    let mut linker: Linker<VmState> = Linker::new(module.engine());
    for import in module.imports() {
        let (m, name) = (import.module(), import.name());
        let ext = base
            .get(&mut *store, m, name)
            .map_err(|e| anyhow::anyhow!("import {m}.{name}: {e}"))?;
        let Extern::Func(inner) = ext else {
            linker.define(&mut *store, m, name, ext)?;
            continue;
        };
        let ty = inner.ty(&*store);
        let label = name.to_string();
        let wrapped = Func::new(
            &mut *store,
            ty,
            move |mut caller: Caller<'_, VmState>, params: &[Val], results: &mut [Val]| {
                if let Some(meter) = caller.data_mut().meter.as_mut() {
                    meter.count(&label);
                }
                inner.call(&mut caller, params, results)
            },
        );
        linker.define(&mut *store, m, name, wrapped)?;
    }
    Ok(linker)
}
