//! Compiles `bench/load/floor.wat` (the Proxy-Wasm floor, bench variant W) to a `.wasm` file.
//!
//! Usage: floor-wasm [IN.wat] OUT.wasm   (IN defaults to this crate's load/floor.wat)

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn default_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("load/floor.wat")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (input, output) = match args.as_slice() {
        [out] => (default_source(), PathBuf::from(out)),
        [inp, out] => (PathBuf::from(inp), PathBuf::from(out)),
        _ => {
            eprintln!("usage: floor-wasm [IN.wat] OUT.wasm");
            return ExitCode::from(2);
        }
    };
    let bytes = match wat::parse_file(&input) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("floor-wasm: {}: {e}", input.display());
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(&output, &bytes) {
        eprintln!("floor-wasm: writing {}: {e}", output.display());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::default_source;

    #[test]
    fn the_floor_compiles_and_exports_the_callbacks_envoy_calls() {
        let bytes = wat::parse_file(default_source()).expect("floor.wat compiles");
        assert_eq!(bytes.get(..4), Some(&b"\0asm"[..]));
        let has = |name: &str| bytes.windows(name.len()).any(|w| w == name.as_bytes());
        for export in [
            "proxy_abi_version_0_2_1",
            "proxy_on_memory_allocate",
            "proxy_on_context_create",
            "proxy_on_request_headers",
            "proxy_on_request_body",
            "proxy_on_delete",
        ] {
            assert!(has(export), "floor.wat does not export {export}");
        }
    }
}
