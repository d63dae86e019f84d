;; A tiny Proxy-Wasm 0.2.1 guest for host-engine's failure tests. Request headers: `x-trap`
;; traps (unreachable), `x-loop` loops forever (until the host's fuel runs out), anything else
;; continues. A plugin configuration of exactly 3 bytes (`bad`) is rejected.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 1024) "x-trap")
  (data (i32.const 1040) "x-loop")
  (data (i32.const 1056) "trap_guest: configuration rejected")
  (global $heap (mut i32) (i32.const 16384))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (if (result i32) (i32.eq (local.get $size) (i32.const 3))
      (then
        (drop (call $log (i32.const 4) (i32.const 1056) (i32.const 34)))
        (i32.const 0))
      (else (i32.const 1))))
  (func $has (param $name i32) (result i32)
    (i32.eqz (call $get_header (i32.const 0) (local.get $name) (i32.const 6)
      (i32.const 256) (i32.const 260))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (call $has (i32.const 1024)) (then unreachable))
    (if (call $has (i32.const 1040)) (then (loop $forever (br $forever))))
    (i32.const 0))
)
