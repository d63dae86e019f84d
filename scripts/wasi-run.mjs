// Runs a wasm32-wasip1 command module (e.g. a libtest binary) under Node's WASI.
// Used as cargo's runner by scripts/test-wasm-unit.sh:
//   node --no-warnings scripts/wasi-run.mjs <module.wasm> [args...]
// The module gets the arguments, the environment, and the current directory preopened as ".".
// Imports outside WASI (the `env` functions that the linker was allowed to leave undefined,
// e.g. pthread_join in libtest, or proxy-wasm host calls) are stubbed with functions that
// trap when called, so a test that reaches one fails loudly instead of silently passing.
import { readFile } from 'node:fs/promises';
import process from 'node:process';
import { WASI } from 'node:wasi';

const [file, ...args] = process.argv.slice(2);
if (!file) {
  console.error('usage: node wasi-run.mjs <module.wasm> [args...]');
  process.exit(2);
}

const wasi = new WASI({
  version: 'preview1',
  args: [file, ...args],
  env: process.env,
  preopens: { '.': process.cwd() },
  returnOnExit: true,
});

const module = await WebAssembly.compile(await readFile(file));
const imports = { wasi_snapshot_preview1: wasi.wasiImport };
for (const imp of WebAssembly.Module.imports(module)) {
  if (imp.module === 'wasi_snapshot_preview1' || imp.kind !== 'function') continue;
  imports[imp.module] ??= {};
  imports[imp.module][imp.name] = () => {
    throw new Error(`wasi-run: host function ${imp.module}.${imp.name} is not available`);
  };
}

let code;
try {
  const instance = await WebAssembly.instantiate(module, imports);
  // A proxy-wasm library may also export `_initialize` (reactor entry point), which
  // wasi.start() refuses next to `_start`: hand it only what a command needs.
  const { _start, memory } = instance.exports;
  code = wasi.start({ exports: { _start, memory } });
} catch (err) {
  // A trap: with panic=abort a failing test aborts the whole binary (`unreachable`).
  console.error(`wasi-run: ${file}: ${err && err.message ? err.message : err}`);
  code = 134;
}
process.exit(code ?? 0);
