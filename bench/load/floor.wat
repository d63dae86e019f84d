;; The floor of any Proxy-Wasm filter that routes on the request body (bench variant W).
;;
;; It does the least such a filter can do and nothing else: hold the request headers
;; (`allow_on_headers_stop_iteration`), let Envoy buffer the body, read the whole body into
;; the VM once, set the tier header, and have Envoy match the route again. No parsing, no
;; allocation, no metrics. What it costs over Envoy's `buffer` filter is what the Wasm
;; runtime charges for being there (a VM call per callback, a context per request, the body
;; copied across the ABI): no Wasm filter can cost less. `make bench` compiles it with
;; `cargo run -p llm-router-bench --bin floor-wasm`.
;;
;; The tier header and value match the shipped route table (`x-llm-model-type: small`);
;; bench/load/gen-configs.py checks that the routes still match on them.
(module
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value"
    (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_call_foreign_function"
    (func $call_foreign (param i32 i32 i32 i32 i32 i32) (result i32)))

  ;; 0..1 KiB: return slots; 1 KiB: constants; 64 KiB onwards: the one scratch buffer every
  ;; allocation gets (each is used once, before the next one is asked for).
  (memory (export "memory") 17)
  (data (i32.const 1024) "x-llm-model-type")
  (data (i32.const 1040) "small")
  (data (i32.const 1056) "clear_route_cache")
  (global $scratch i32 (i32.const 65536))

  (func (export "proxy_abi_version_0_2_1"))

  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $pages i32)
    ;; Pages needed past what the memory has: grow, or answer 0 (the host fails the call).
    (local.set $pages
      (i32.sub
        (i32.shr_u (i32.add (i32.add (global.get $scratch) (local.get $size)) (i32.const 65535))
                   (i32.const 16))
        (memory.size)))
    (if (i32.gt_s (local.get $pages) (i32.const 0))
      (then
        (if (i32.eq (memory.grow (local.get $pages)) (i32.const -1))
          (then (return (i32.const 0))))))
    (global.get $scratch))

  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))

  ;; Request headers: held until the body is here (1 = StopIteration).
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 1))

  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32)
    (result i32)
    ;; Not the end yet: Envoy keeps buffering (1 = StopIterationAndBuffer).
    (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
    ;; The whole body into the VM (buffer type 0 = request body); pointer and size at 0 and 4.
    (drop (call $get_buffer_bytes (i32.const 0) (i32.const 0) (local.get $size)
                                  (i32.const 0) (i32.const 4)))
    ;; The tier header on the request headers (map type 0).
    (drop (call $replace_header (i32.const 0) (i32.const 1024) (i32.const 16)
                                (i32.const 1040) (i32.const 5)))
    ;; Match the route again with the new header.
    (drop (call $call_foreign (i32.const 1056) (i32.const 17) (i32.const 0) (i32.const 0)
                              (i32.const 8) (i32.const 12)))
    (i32.const 0))

  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_trailers") (param i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))
