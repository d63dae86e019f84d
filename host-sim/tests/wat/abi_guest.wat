;; A small hand-written Proxy-Wasm 0.2.1 guest for host-sim's own ABI tests.
;; Behaviour of the request-headers callback is chosen by the global $mode (export set_mode).
;; Scratch slots: 256 = returned pointer, 260 = returned size, 264 = cas, 268 = token/id,
;; 272 = 8-byte value, 288.. = iovec. The heap (bump allocator) starts at 16384.
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $set_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_sd (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_sd (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $local (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_call_foreign_function" (func $ff (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick_period (param i32) (result i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $reg_q (param i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $def_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $inc_metric (param i32 i64) (result i32)))
  (import "env" "proxy_record_metric" (func $rec_metric (param i32 i64) (result i32)))
  (import "env" "proxy_get_metric" (func $get_metric (param i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_ctx (param i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env_sizes (param i32 i32) (result i32)))

  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 16384))
  (global $mode (mut i32) (i32.const 0))
  (global $last (mut i32) (i32.const -1))
  (global $body_calls (mut i32) (i32.const 0))
  (global $sizes (mut i32) (i32.const 0))
  (global $ticks (mut i32) (i32.const 0))
  (global $armed (mut i32) (i32.const 0))
  (global $queue_ready (mut i32) (i32.const 0))
  (global $http_resp (mut i32) (i32.const -1))
  (global $held_ctx (mut i32) (i32.const 0))
  (global $bad_ctx_status (mut i32) (i32.const -1))
  ;; CAS counter state machine
  (global $cas_state (mut i32) (i32.const 0))
  (global $cas_value (mut i32) (i32.const 0))
  (global $cas_cas (mut i32) (i32.const 0))
  (global $cas_done (mut i32) (i32.const 0))
  (global $cas_retries (mut i32) (i32.const 0))

  (data (i32.const 1024) "k") ;; k
  (data (i32.const 1033) "v") ;; v
  (data (i32.const 1042) "hdrs") ;; hdrs
  (data (i32.const 1054) "body") ;; body
  (data (i32.const 1066) "prop") ;; prop
  (data (i32.const 1078) "port") ;; port
  (data (i32.const 1090) "ctr") ;; ctr
  (data (i32.const 1101) "cfg") ;; cfg
  (data (i32.const 1112) "q") ;; q
  (data (i32.const 1121) "\01\00\00\00\05\00\00\00\03\00\00\00x-wat\00yes\00") ;; map1
  (data (i32.const 1151) "rate_limited") ;; details
  (data (i32.const 1171) "slow down") ;; slow
  (data (i32.const 1188) "\01\00\00\00\08\00\00\00\05\00\00\00x-reason\00quota\00") ;; map2
  (data (i32.const 1223) "source\00address") ;; p_addr
  (data (i32.const 1245) "source\00port") ;; p_port
  (data (i32.const 1264) "no\00such") ;; p_none
  (data (i32.const 1279) "metadata\00filter_metadata\00envoy.filters.http.jwt_authn\00jwt_payload\00tenant") ;; p_jwt
  (data (i32.const 1359) "jwt") ;; jwt
  (data (i32.const 1370) "clear_route_cache") ;; crc
  (data (i32.const 1395) "nope") ;; nope
  (data (i32.const 1407) "x-late") ;; x_late
  (data (i32.const 1421) "1") ;; one
  (data (i32.const 1430) "REPLACED") ;; replaced
  (data (i32.const 1446) "\03\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\02\00\00\00\0a\00\00\00\01\00\00\00:method\00GET\00:path\00/x\00:authority\00h\00") ;; callmap
  (data (i32.const 1516) "cluster") ;; cluster
  (data (i32.const 1531) "hello\0a") ;; hello
  (data (i32.const 1545) "wat_requests_total;tier=.=small;.;") ;; m_c
  (data (i32.const 1587) "wat_gauge") ;; m_g
  (data (i32.const 1604) "wat_hist") ;; m_h
  (data (i32.const 1620) "bad config: field `tiers` is missing") ;; nocfg
  (data (i32.const 1664) "PFX") ;; cbody

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "_initialize"))

  (func $alloc (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (global.get $heap) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (block $ok
      (br_if $ok (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
      (drop (memory.grow (i32.add (i32.div_u (i32.sub (global.get $heap) (i32.mul (memory.size) (i32.const 65536))) (i32.const 65536)) (i32.const 1)))))
    (local.get $p))

  (func (export "proxy_on_context_create") (param i32 i32))

  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $tick_period (i32.const 1000)))
    (drop (call $reg_q (i32.const 1112) (i32.const 1) (i32.const 268)))
    (i32.const 1))

  ;; Fails (returns 0) on an empty plugin configuration, after logging why.
  (func (export "proxy_on_configure") (param $ctx i32) (param $size i32) (result i32)
    (if (i32.eqz (local.get $size))
      (then
        (drop (call $log (i32.const 4) (i32.const 1620) (i32.const 36)))
        (return (i32.const 0))))
    (drop (call $get_buf (i32.const 7) (i32.const 0) (local.get $size) (i32.const 256) (i32.const 260)))
    (drop (call $set_sd (i32.const 1101) (i32.const 3) (i32.load (i32.const 256)) (i32.load (i32.const 260)) (i32.const 0)))
    (i32.const 1))

  (func (export "proxy_on_tick") (param i32)
    (global.set $ticks (i32.add (global.get $ticks) (i32.const 1))))

  (func (export "proxy_on_queue_ready") (param i32 i32)
    (global.set $queue_ready (i32.add (global.get $queue_ready) (i32.const 1))))

  (func (export "proxy_on_http_call_response") (param $ctx i32) (param $token i32) (param $nh i32) (param $nb i32) (param $nt i32)
    (global.set $http_resp (i32.add (i32.mul (local.get $nh) (i32.const 1000)) (local.get $nb)))
    ;; mode 9: resume the held request from the root context, through the effective context
    (if (global.get $held_ctx)
      (then
        (global.set $bad_ctx_status (call $set_ctx (i32.const 9999)))
        (drop (call $set_ctx (global.get $held_ctx)))
        (global.set $last (call $add_header (i32.const 0) (i32.const 1407) (i32.const 6) (i32.const 1421) (i32.const 1)))
        (drop (call $continue (i32.const 0)))
        (global.set $held_ctx (i32.const 0)))))

  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    ;; 1: serialize the request headers into shared data "hdrs" and set them back unchanged
    (if (i32.eq (global.get $mode) (i32.const 1))
      (then
        (global.set $last (call $get_pairs (i32.const 0) (i32.const 256) (i32.const 260)))
        (drop (call $set_sd (i32.const 1042) (i32.const 4) (i32.load (i32.const 256)) (i32.load (i32.const 260)) (i32.const 0)))
        (drop (call $set_pairs (i32.const 0) (i32.load (i32.const 256)) (i32.load (i32.const 260))))
        (return (i32.const 0))))
    ;; 2: replace all request headers with a hand-serialized map {x-wat: yes}
    (if (i32.eq (global.get $mode) (i32.const 2))
      (then
        (global.set $last (call $set_pairs (i32.const 0) (i32.const 1121) (i32.const 22)))
        (return (i32.const 0))))
    ;; 3: local reply 429
    (if (i32.eq (global.get $mode) (i32.const 3))
      (then
        (global.set $last (call $local (i32.const 429) (i32.const 1151) (i32.const 12)
          (i32.const 1171) (i32.const 9) (i32.const 1188) (i32.const 27) (i32.const -1)))
        (return (i32.const 1))))
    ;; 4: trap when armed
    (if (i32.eq (global.get $mode) (i32.const 4))
      (then (if (global.get $armed) (then unreachable))))
    ;; 5: properties: source.address -> "prop", source.port -> "port", jwt claim -> "jwt", missing -> $last
    (if (i32.eq (global.get $mode) (i32.const 5))
      (then
        (drop (call $get_prop (i32.const 1223) (i32.const 14) (i32.const 256) (i32.const 260)))
        (drop (call $set_sd (i32.const 1066) (i32.const 4) (i32.load (i32.const 256)) (i32.load (i32.const 260)) (i32.const 0)))
        (drop (call $get_prop (i32.const 1245) (i32.const 11) (i32.const 256) (i32.const 260)))
        (drop (call $set_sd (i32.const 1078) (i32.const 4) (i32.load (i32.const 256)) (i32.load (i32.const 260)) (i32.const 0)))
        (drop (call $get_prop (i32.const 1279) (i32.const 72) (i32.const 256) (i32.const 260)))
        (drop (call $set_sd (i32.const 1359) (i32.const 3) (i32.load (i32.const 256)) (i32.load (i32.const 260)) (i32.const 0)))
        (global.set $last (call $get_prop (i32.const 1264) (i32.const 7) (i32.const 256) (i32.const 260)))
        (return (i32.const 0))))
    ;; 6: foreign functions: clear_route_cache (status kept in $body_calls' place: $sizes) and an unknown one ($last)
    (if (i32.eq (global.get $mode) (i32.const 6))
      (then
        (global.set $sizes (call $ff (i32.const 1370) (i32.const 17) (i32.const 0) (i32.const 0) (i32.const 256) (i32.const 260)))
        (global.set $last (call $ff (i32.const 1395) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 256) (i32.const 260)))
        (return (i32.const 0))))
    ;; 9: hold the request until an http call (made from the root context) answers
    (if (i32.eq (global.get $mode) (i32.const 9))
      (then
        (global.set $held_ctx (local.get $ctx))
        (drop (call $set_ctx (i32.const 1)))
        (drop (call $http_call (i32.const 1516) (i32.const 7)
          (i32.const 1446) (i32.const 62) (i32.const 0) (i32.const 0)
          (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 268)))
        (return (i32.const 1))))
    ;; 7 and 8: hold the headers (Pause)
    (if (i32.and (i32.ge_u (global.get $mode) (i32.const 7)) (i32.le_u (global.get $mode) (i32.const 8)))
      (then (return (i32.const 1))))
    (i32.const 0))

  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (global.set $body_calls (i32.add (global.get $body_calls) (i32.const 1)))
    (global.set $sizes (i32.add (global.get $sizes) (local.get $size)))
    (global.set $last (call $add_header (i32.const 0) (i32.const 1407) (i32.const 6) (i32.const 1421) (i32.const 1)))
    ;; 8: buffer until end of stream, then save the whole body to "body", replace it, prepend, append
    (if (i32.eq (global.get $mode) (i32.const 8))
      (then
        (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
        (drop (call $get_buf (i32.const 0) (i32.const 0) (local.get $size) (i32.const 256) (i32.const 260)))
        (drop (call $set_sd (i32.const 1054) (i32.const 4) (i32.load (i32.const 256)) (i32.load (i32.const 260)) (i32.const 0)))
        (drop (call $set_buf (i32.const 0) (i32.const 0) (local.get $size) (i32.const 1430) (i32.const 8)))
        (drop (call $set_buf (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1664) (i32.const 3)))
        (drop (call $set_buf (i32.const 0) (i32.const 1000) (i32.const 0) (i32.const 1664) (i32.const 3)))
        (return (i32.const 0))))
    (i32.const 0))

  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32))

  ;; ---- exports the tests call directly ----
  (func (export "set_mode") (param i32) (global.set $mode (local.get 0)))
  (func (export "arm") (global.set $armed (i32.const 1)))
  (func (export "get_last") (result i32) (global.get $last))
  (func (export "get_body_calls") (result i32) (global.get $body_calls))
  (func (export "get_sizes") (result i32) (global.get $sizes))
  (func (export "get_ticks") (result i32) (global.get $ticks))
  (func (export "get_queue_ready") (result i32) (global.get $queue_ready))
  (func (export "get_http_resp") (result i32) (global.get $http_resp))
  (func (export "get_bad_ctx_status") (result i32) (global.get $bad_ctx_status))

  ;; set "k" = "v" with the given cas; returns the status
  (func (export "sd_set") (param $cas i32) (result i32)
    (call $set_sd (i32.const 1024) (i32.const 1) (i32.const 1033) (i32.const 1) (local.get $cas)))
  ;; cas of "k", or -status
  (func (export "sd_get_cas") (result i32)
    (local $s i32)
    (local.set $s (call $get_sd (i32.const 1024) (i32.const 1) (i32.const 256) (i32.const 260) (i32.const 264)))
    (if (result i32) (local.get $s) (then (i32.sub (i32.const 0) (local.get $s))) (else (i32.load (i32.const 264)))))

  ;; One step of "increment the shared counter ctr (4-byte LE) with a CAS retry loop":
  ;; state 0 reads value and cas; state 1 writes value+1 with that cas, and on CasMismatch
  ;; goes back to state 0 (retry). Returns the number of increments this VM completed.
  (func (export "cas_step") (result i32)
    (local $s i32)
    (if (i32.eqz (global.get $cas_state))
      (then
        (local.set $s (call $get_sd (i32.const 1090) (i32.const 3) (i32.const 256) (i32.const 260) (i32.const 264)))
        (if (i32.eqz (local.get $s))
          (then
            (global.set $cas_value (i32.load (i32.load (i32.const 256))))
            (global.set $cas_cas (i32.load (i32.const 264)))
            (global.set $cas_state (i32.const 1))))
        (return (global.get $cas_done))))
    (i32.store (i32.const 272) (i32.add (global.get $cas_value) (i32.const 1)))
    (local.set $s (call $set_sd (i32.const 1090) (i32.const 3) (i32.const 272) (i32.const 4) (global.get $cas_cas)))
    (global.set $cas_state (i32.const 0))
    (if (i32.eqz (local.get $s))
      (then (global.set $cas_done (i32.add (global.get $cas_done) (i32.const 1))))
      (else (if (i32.eq (local.get $s) (i32.const 8))
        (then (global.set $cas_retries (i32.add (global.get $cas_retries) (i32.const 1))))
        (else unreachable))))
    (global.get $cas_done))
  (func (export "get_cas_retries") (result i32) (global.get $cas_retries))

  (func (export "now_ms") (result i64)
    (drop (call $now (i32.const 272)))
    (i64.div_u (i64.load (i32.const 272)) (i64.const 1000000)))
  (func (export "wasi_now_ms") (result i64)
    (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 272)))
    (i64.div_u (i64.load (i32.const 272)) (i64.const 1000000)))
  (func (export "rand") (result i32)
    (drop (call $random (i32.const 272) (i32.const 4)))
    (i32.load (i32.const 272)))
  (func (export "env_count") (result i32)
    (drop (call $env_sizes (i32.const 272) (i32.const 276)))
    (i32.load (i32.const 272)))
  (func (export "hello") (result i32)
    (i32.store (i32.const 288) (i32.const 1531))
    (i32.store (i32.const 292) (i32.const 6))
    (call $fd_write (i32.const 1) (i32.const 288) (i32.const 1) (i32.const 296)))
  (func (export "do_http_call") (result i32)
    (global.set $last (call $http_call (i32.const 1516) (i32.const 7)
      (i32.const 1446) (i32.const 62) (i32.const 1171) (i32.const 9)
      (i32.const 0) (i32.const 0) (i32.const 500) (i32.const 268)))
    (i32.load (i32.const 268)))
  ;; counter +2 via increment, gauge set 3 then -1, histogram 5 and 7; returns the counter's value
  (func (export "metrics") (result i32)
    (local $c i32) (local $g i32) (local $h i32)
    (drop (call $def_metric (i32.const 0) (i32.const 1545) (i32.const 34) (i32.const 268)))
    (local.set $c (i32.load (i32.const 268)))
    (drop (call $def_metric (i32.const 1) (i32.const 1587) (i32.const 9) (i32.const 268)))
    (local.set $g (i32.load (i32.const 268)))
    (drop (call $def_metric (i32.const 2) (i32.const 1604) (i32.const 8) (i32.const 268)))
    (local.set $h (i32.load (i32.const 268)))
    (drop (call $inc_metric (local.get $c) (i64.const 2)))
    (global.set $last (call $inc_metric (local.get $c) (i64.const -1)))
    (drop (call $rec_metric (local.get $g) (i64.const 3)))
    (drop (call $inc_metric (local.get $g) (i64.const -1)))
    (drop (call $rec_metric (local.get $h) (i64.const 5)))
    (drop (call $rec_metric (local.get $h) (i64.const 7)))
    (drop (call $get_metric (local.get $c) (i32.const 272)))
    (i32.wrap_i64 (i64.load (i32.const 272))))
)
