;; A tiny Proxy-Wasm 0.2.1 guest that makes unary gRPC calls (grpc.health.v1.Health/Check, an
;; empty request), for the gRPC tests of host-engine, host-sim and llm-router-extproc.
;;
;; Plugin configuration: one flag byte then the upstream name of the root context's calls.
;; Flag `T`: a tick period of 50 ms, and each tick with no root call in flight makes one
;; (the answer goes to shared data: `root-answer` = the response bytes, `root-close` = the
;; close code as two digits, `root-status` = a failed hostcall's status as one digit).
;;
;; Request headers: `x-grpc: UPSTREAM` makes a call from the stream and pauses the request
;; (StopIteration); a failed hostcall adds `x-grpc-status: S` and continues. With
;; `x-grpc-cancel` the call is cancelled at once and the request continues. The answer adds
;; `x-grpc-answer: HEX(response)` or `x-grpc-close: CC` + `x-grpc-message: MSG` to the request
;; headers and continues the request; with `x-grpc-trap` the answer callback traps instead.
;; Every delivered answer counts in the counter `grpc_deliveries`. Calls time out after 1 s.
;; `raw_grpc_call` / `raw_grpc_cancel` pass their arguments straight to the hostcalls (ABI
;; property tests).
(module
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_call"
    (func $grpc_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_cancel" (func $grpc_cancel (param i32) (result i32)))
  (import "env" "proxy_get_status" (func $get_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $set_tick (param i32) (result i32)))
  (import "env" "proxy_set_shared_data"
    (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $inc_metric (param i32 i64) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 1024) "x-grpc")
  (data (i32.const 1040) "grpc.health.v1.Health")
  (data (i32.const 1072) "Check")
  (data (i32.const 1088) "x-grpc-answer")
  (data (i32.const 1104) "x-grpc-close")
  (data (i32.const 1120) "x-grpc-message")
  (data (i32.const 1136) "x-grpc-status")
  (data (i32.const 1152) "x-grpc-cancel")
  (data (i32.const 1168) "x-grpc-trap")
  (data (i32.const 1184) "grpc_deliveries")
  (data (i32.const 1200) "root-answer")
  (data (i32.const 1216) "root-close")
  (data (i32.const 1232) "root-status")
  (data (i32.const 1248) "0123456789abcdef")
  (global $heap (mut i32) (i32.const 16384))
  (global $up_ptr (mut i32) (i32.const 0))
  (global $up_len (mut i32) (i32.const 0))
  (global $root_token (mut i32) (i32.const 0))
  (global $metric (mut i32) (i32.const 0))
  (func (export "proxy_abi_version_0_2_1"))
  (func $malloc (export "malloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (i32.store (i32.const 260) (i32.const 0))
    (drop (call $get_buffer (i32.const 7) (i32.const 0) (local.get $size)
      (i32.const 256) (i32.const 260)))
    (if (i32.gt_u (i32.load (i32.const 260)) (i32.const 0))
      (then
        (if (i32.eq (i32.load8_u (i32.load (i32.const 256))) (i32.const 84))
          (then (drop (call $set_tick (i32.const 50)))))
        (global.set $up_ptr (i32.add (i32.load (i32.const 256)) (i32.const 1)))
        (global.set $up_len (i32.sub (i32.load (i32.const 260)) (i32.const 1)))))
    (drop (call $define_metric (i32.const 0) (i32.const 1184) (i32.const 15) (i32.const 272)))
    (global.set $metric (i32.load (i32.const 272)))
    (i32.const 1))
  ;; Health/Check to upstream (ptr, len); the token lands at 264. Returns the hostcall status.
  (func $call (param $ptr i32) (param $len i32) (result i32)
    (call $grpc_call (local.get $ptr) (local.get $len) (i32.const 1040) (i32.const 21)
      (i32.const 1072) (i32.const 5) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
      (i32.const 1000) (i32.const 264)))
  (func $has (param $name i32) (param $len i32) (result i32)
    (i32.eqz (call $get_header (i32.const 0) (local.get $name) (local.get $len)
      (i32.const 280) (i32.const 284))))
  ;; Two decimal digits of $n at 512.
  (func $digits (param $n i32)
    (i32.store8 (i32.const 512) (i32.add (i32.const 48) (i32.div_u (local.get $n) (i32.const 10))))
    (i32.store8 (i32.const 513) (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10)))))
  (func (export "proxy_on_tick") (param $root i32)
    (local $status i32)
    (if (i32.or (global.get $root_token) (i32.eqz (global.get $up_len))) (then (return)))
    (local.set $status (call $call (global.get $up_ptr) (global.get $up_len)))
    (if (local.get $status)
      (then
        (i32.store8 (i32.const 512) (i32.add (i32.const 48) (local.get $status)))
        (drop (call $set_shared (i32.const 1232) (i32.const 11) (i32.const 512) (i32.const 1)
          (i32.const 0))))
      (else (global.set $root_token (i32.load (i32.const 264))))))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (local $status i32)
    (if (i32.eqz (call $has (i32.const 1024) (i32.const 6))) (then (return (i32.const 0))))
    (local.set $status (call $call (i32.load (i32.const 280)) (i32.load (i32.const 284))))
    (if (local.get $status)
      (then
        (i32.store8 (i32.const 512) (i32.add (i32.const 48) (local.get $status)))
        (drop (call $add_header (i32.const 0) (i32.const 1136) (i32.const 13)
          (i32.const 512) (i32.const 1)))
        (return (i32.const 0))))
    (if (call $has (i32.const 1152) (i32.const 13))
      (then
        (drop (call $grpc_cancel (i32.load (i32.const 264))))
        (return (i32.const 0))))
    (i32.const 1))
  (func (export "proxy_on_grpc_receive") (param $ctx i32) (param $token i32) (param $size i32)
    (local $data i32) (local $len i32) (local $out i32) (local $i i32) (local $b i32)
    (drop (call $inc_metric (global.get $metric) (i64.const 1)))
    (i32.store (i32.const 260) (i32.const 0))
    (drop (call $get_buffer (i32.const 5) (i32.const 0) (local.get $size)
      (i32.const 256) (i32.const 260)))
    (local.set $data (i32.load (i32.const 256)))
    (local.set $len (i32.load (i32.const 260)))
    (if (i32.eq (local.get $ctx) (i32.const 1))
      (then
        (drop (call $set_shared (i32.const 1200) (i32.const 11) (local.get $data)
          (local.get $len) (i32.const 0)))
        (global.set $root_token (i32.const 0))
        (return)))
    (if (call $has (i32.const 1168) (i32.const 11)) (then unreachable))
    (local.set $out (call $malloc (i32.shl (local.get $len) (i32.const 1))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $b (i32.load8_u (i32.add (local.get $data) (local.get $i))))
        (i32.store8 (i32.add (local.get $out) (i32.shl (local.get $i) (i32.const 1)))
          (i32.load8_u (i32.add (i32.const 1248) (i32.shr_u (local.get $b) (i32.const 4)))))
        (i32.store8 (i32.add (local.get $out) (i32.add (i32.shl (local.get $i) (i32.const 1)) (i32.const 1)))
          (i32.load8_u (i32.add (i32.const 1248) (i32.and (local.get $b) (i32.const 15)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (drop (call $add_header (i32.const 0) (i32.const 1088) (i32.const 13) (local.get $out)
      (i32.shl (local.get $len) (i32.const 1))))
    (drop (call $continue (i32.const 0))))
  (func (export "raw_grpc_call")
    (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    (call $grpc_call (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)
      (local.get 5) (local.get 6) (local.get 7) (local.get 8) (local.get 9) (local.get 10)
      (local.get 11)))
  (func (export "raw_grpc_cancel") (param i32) (result i32) (call $grpc_cancel (local.get 0)))
  (func (export "proxy_on_grpc_close") (param $ctx i32) (param $token i32) (param $code i32)
    (drop (call $inc_metric (global.get $metric) (i64.const 1)))
    (i32.store (i32.const 260) (i32.const 0))
    (drop (call $get_status (i32.const 268) (i32.const 256) (i32.const 260)))
    (call $digits (i32.load (i32.const 268)))
    (if (i32.eq (local.get $ctx) (i32.const 1))
      (then
        (drop (call $set_shared (i32.const 1216) (i32.const 10) (i32.const 512) (i32.const 2)
          (i32.const 0)))
        (global.set $root_token (i32.const 0))
        (return)))
    (if (call $has (i32.const 1168) (i32.const 11)) (then unreachable))
    (drop (call $add_header (i32.const 0) (i32.const 1104) (i32.const 12) (i32.const 512)
      (i32.const 2)))
    (drop (call $add_header (i32.const 0) (i32.const 1120) (i32.const 14)
      (i32.load (i32.const 256)) (i32.load (i32.const 260))))
    (drop (call $continue (i32.const 0))))
)
