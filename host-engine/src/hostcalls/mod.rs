//! The `env` (Proxy-Wasm 0.2.1) and `wasi_snapshot_preview1` imports, with Envoy's semantics.

use wasmtime::{Caller, Extern, Linker, Memory};

use crate::abi::{self, buffer, map, stream, LogLevel, Status};
use crate::metrics::MetricKind;
use crate::state::{lock, Access, CallResponse, PendingCall, PendingGrpc, VmState};
use crate::types::{
    ForeignCall, GrpcCallInfo, Headers, HttpCallInfo, LocalReply, LogLine, PropValue,
};

type C<'a> = Caller<'a, VmState>;
type R = wasmtime::Result<i32>;

/// `proc_exit` unwinds the guest with this error.
#[derive(Debug)]
pub struct ProcExit(pub i32);

impl std::fmt::Display for ProcExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "proc_exit({})", self.0)
    }
}

impl std::error::Error for ProcExit {}

fn ok() -> R {
    Ok(Status::Ok.code())
}

fn st(s: Status) -> R {
    Ok(s.code())
}

fn memory(caller: &mut C) -> Option<Memory> {
    if let Some(m) = caller.data().memory {
        return Some(m);
    }
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => {
            caller.data_mut().memory = Some(m);
            Some(m)
        }
        _ => None,
    }
}

fn read(caller: &mut C, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let m = memory(caller)?;
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    m.data(&*caller)
        .get(p..p.checked_add(l)?)
        .map(|s| s.to_vec())
}

fn read_str(caller: &mut C, ptr: i32, len: i32) -> Option<String> {
    read(caller, ptr, len).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn write(caller: &mut C, ptr: i32, data: &[u8]) -> bool {
    let Some(m) = memory(caller) else {
        return false;
    };
    let p = ptr as u32 as usize;
    match m.data_mut(&mut *caller).get_mut(p..p + data.len()) {
        Some(dst) => {
            dst.copy_from_slice(data);
            true
        }
        None => false,
    }
}

fn write_u32(caller: &mut C, ptr: i32, v: u32) -> bool {
    write(caller, ptr, &v.to_le_bytes())
}

fn write_u64(caller: &mut C, ptr: i32, v: u64) -> bool {
    write(caller, ptr, &v.to_le_bytes())
}

/// Copies `data` into guest memory allocated with the guest's allocator and writes the pointer
/// and size (cpp-host `copyToPointerSize`; empty data writes a null pointer and size 0).
fn copy_out(caller: &mut C, data: &[u8], ptr_ptr: i32, size_ptr: i32) -> R {
    let mut ptr = 0i32;
    if !data.is_empty() {
        let Some(alloc) = caller.data().alloc.clone() else {
            return st(Status::InvalidMemoryAccess);
        };
        ptr = alloc.call(&mut *caller, data.len() as i32)?;
        if ptr == 0 || !write(caller, ptr, data) {
            return st(Status::InvalidMemoryAccess);
        }
    }
    if !write_u32(caller, ptr_ptr, ptr as u32) || !write_u32(caller, size_ptr, data.len() as u32) {
        return st(Status::InvalidMemoryAccess);
    }
    ok()
}

macro_rules! read_or_fail {
    ($caller:expr, $ptr:expr, $len:expr) => {
        match read($caller, $ptr, $len) {
            Some(v) => v,
            None => return st(Status::InvalidMemoryAccess),
        }
    };
}

macro_rules! str_or_fail {
    ($caller:expr, $ptr:expr, $len:expr) => {
        match read_str($caller, $ptr, $len) {
            Some(v) => v,
            None => return st(Status::InvalidMemoryAccess),
        }
    };
}

fn now_ms(state: &VmState) -> u64 {
    lock(&state.shared).elapsed_ms()
}

mod control;
mod maps;
mod props;
mod wasi;

/// Registers every import. Unknown imports of a module are left to the caller
/// (`define_unknown_imports_as_traps`).
pub(crate) fn add_to_linker(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    control::register(l)?;
    maps::register(l)?;
    props::register(l)?;
    wasi::register(l)
}

/// Sets the response that `proxy_on_http_call_response` reads.
pub(crate) fn set_call_response(d: &mut VmState, r: Option<CallResponse>) {
    d.call_response = r;
}
