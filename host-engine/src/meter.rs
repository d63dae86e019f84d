//! Cost metering (opt-in, `VmFactory::metered`): wasm instructions (wasmtime fuel) and host
//! calls by name, per guest call. Deterministic figures for the cost report (`host-sim cost`)
//! and its budget test; off in production, where the imports are not wrapped.

use anyhow::Result;
use wasmtime::{Caller, Extern, Func, Linker, Module, Store, Val};

use crate::state::VmState;

pub use crate::cost::{CallCost, Meter};

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
