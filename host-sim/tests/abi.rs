//! host-sim's own tests: ABI edge cases against a small hand-written guest (tests/wat).

use anyhow::{anyhow, Result};
use host_sim::{abi, Host, HostBuilder, LogLevel};

const GUEST: &str = include_str!("wat/abi_guest.wat");

fn builder() -> HostBuilder {
    Host::builder().wat(GUEST).plugin_config("{}")
}

fn host(workers: usize) -> Result<Host> {
    let mut h = builder().workers(workers).build()?;
    h.start()?;
    Ok(h)
}

fn call(h: &mut Host, w: usize, f: &str, args: &[i64]) -> Result<i64> {
    h.worker(w)
        .call_export(f, args)?
        .ok_or_else(|| anyhow!("{f} returned nothing"))
}

fn mode(h: &mut Host, w: usize, m: i64) -> Result<()> {
    h.worker(w).call_export("set_mode", &[m])?;
    Ok(())
}

#[test]
fn configure_failure_carries_guest_logs() -> Result<()> {
    let mut h = Host::builder().wat(GUEST).build()?;
    let err = h
        .start()
        .err()
        .ok_or_else(|| anyhow!("start should fail"))?;
    let msg = format!("{err:#}");
    assert!(msg.contains("proxy_on_configure"), "{msg}");
    assert!(msg.contains("field `tiers` is missing"), "{msg}");
    let ce = err
        .downcast_ref::<host_sim::ConfigureError>()
        .ok_or_else(|| anyhow!("not a ConfigureError"))?;
    assert_eq!(ce.worker, 0);
    Ok(())
}

#[test]
fn plugin_configuration_buffer_is_readable() -> Result<()> {
    let mut h = builder().plugin_config(r#"{"a":1}"#).build()?;
    h.start()?;
    assert_eq!(h.shared_data_str("cfg").as_deref(), Some(r#"{"a":1}"#));
    Ok(())
}

#[test]
fn header_map_serialization_round_trip() -> Result<()> {
    let mut h = host(1)?;
    mode(&mut h, 0, 1)?;
    let ex = h
        .worker(0)
        .request()
        .method("GET")
        .path("/p")
        .header("X-Mixed-Case", "v1")
        .header("empty", "")
        .send();
    let up = ex.upstream().ok_or_else(|| anyhow!("no upstream"))?;
    assert_eq!(
        up.headers,
        ex.original_headers(),
        "get pairs + set pairs is the identity"
    );
    assert!(ex.passthrough());
    assert_eq!(
        up.header("x-mixed-case"),
        Some("v1"),
        "names are lowercased"
    );
    ex.finish()?;
    // The bytes the guest received are exactly the documented format.
    let (bytes, _) = h
        .shared_data_get("hdrs")
        .ok_or_else(|| anyhow!("no hdrs"))?;
    let expected = abi::serialize_pairs(&[
        (":authority", "gateway.local"),
        (":path", "/p"),
        (":method", "GET"),
        (":scheme", "http"),
        ("x-mixed-case", "v1"),
        ("empty", ""),
    ]);
    assert_eq!(bytes, expected);
    assert_eq!(&bytes[0..4], &6u32.to_le_bytes());
    // And a map serialized by hand in the guest is parsed by the host.
    mode(&mut h, 0, 2)?;
    let ex = h.worker(0).request().path("/q").send();
    let up = ex.upstream().ok_or_else(|| anyhow!("no upstream"))?;
    assert_eq!(
        up.headers.pairs(),
        vec![("x-wat".to_string(), "yes".to_string())]
    );
    assert!(
        ex.route_cache_cleared(),
        "0.2.1: modified request headers clear the route cache"
    );
    Ok(())
}

#[test]
fn shared_data_cas_rules_across_two_vms() -> Result<()> {
    let mut h = host(2)?;
    assert_eq!(
        call(&mut h, 0, "sd_get_cas", &[])?,
        -1,
        "missing key: NotFound"
    );
    // A set with a cas on a missing key succeeds.
    assert_eq!(call(&mut h, 0, "sd_set", &[12345])?, 0);
    let cas0 = call(&mut h, 1, "sd_get_cas", &[])?;
    assert!(cas0 > 0);
    // The other VM sees the same entry; a matching cas works and bumps the cas.
    assert_eq!(call(&mut h, 1, "sd_set", &[cas0])?, 0);
    let cas1 = call(&mut h, 0, "sd_get_cas", &[])?;
    assert!(cas1 > cas0, "every set increments the cas");
    // The stale cas now mismatches.
    assert_eq!(
        call(&mut h, 0, "sd_set", &[cas0])?,
        abi::Status::CasMismatch as i64
    );
    // cas 0 is unconditional.
    assert_eq!(call(&mut h, 1, "sd_set", &[0])?, 0);
    let cas2 = call(&mut h, 1, "sd_get_cas", &[])?;
    assert!(cas2 > cas1);
    assert_eq!(
        h.shared_data_get("k").map(|(v, c)| (v, c as i64)),
        Some((b"v".to_vec(), cas2))
    );
    Ok(())
}

#[test]
fn interleaved_cas_increments_from_four_vms_stay_correct() -> Result<()> {
    const N: i64 = 50;
    let mut h = host(4)?;
    h.shared_data_set("ctr", &0i32.to_le_bytes());
    let mut done = [0i64; 4];
    let mut rounds = 0;
    // Interleave call by call: every VM reads, then every VM tries to write, so all but one
    // write per round hit CasMismatch and retry.
    while done.iter().any(|d| *d < N) {
        rounds += 1;
        assert!(rounds < 10_000, "no progress");
        for (w, d) in done.iter().enumerate() {
            if *d < N {
                call(&mut h, w, "cas_step", &[])?; // read
            }
        }
        for (w, d) in done.iter_mut().enumerate() {
            if *d < N {
                *d = call(&mut h, w, "cas_step", &[])?; // write or retry
            }
        }
    }
    let (v, _) = h.shared_data_get("ctr").ok_or_else(|| anyhow!("no ctr"))?;
    let value = i32::from_le_bytes([v[0], v[1], v[2], v[3]]);
    assert_eq!(value as i64, 4 * N);
    let retries: i64 = (0..4)
        .map(|w| call(&mut h, w, "get_cas_retries", &[]))
        .sum::<Result<i64>>()?;
    assert!(
        retries > 0,
        "the interleaving must have produced CAS conflicts"
    );
    Ok(())
}

#[test]
fn request_headers_unavailable_after_continue() -> Result<()> {
    let mut h = host(1)?;
    // Headers continued: a header write from the body callback fails with BadArgument.
    mode(&mut h, 0, 0)?;
    let ex = h
        .worker(0)
        .request()
        .method("POST")
        .path("/")
        .body("x")
        .send();
    assert!(ex.upstream().is_some_and(|u| !u.headers.contains("x-late")));
    ex.finish()?;
    assert_eq!(
        call(&mut h, 0, "get_last", &[])?,
        abi::Status::BadArgument as i64
    );
    // Headers held (Pause): the write works and reaches upstream with the body.
    mode(&mut h, 0, 7)?;
    let ex = h
        .worker(0)
        .request()
        .method("POST")
        .path("/")
        .body("x")
        .send();
    let up = ex.upstream().ok_or_else(|| anyhow!("no upstream"))?;
    assert_eq!(up.header("x-late"), Some("1"));
    assert!(up.complete);
    ex.finish()?;
    assert_eq!(call(&mut h, 0, "get_last", &[])?, 0);
    Ok(())
}

#[test]
fn headers_pause_without_allow_option_is_stop_all() -> Result<()> {
    let mut h = builder().allow_on_headers_stop_iteration(false).build()?;
    h.start()?;
    mode(&mut h, 0, 7)?;
    let ex = h
        .worker(0)
        .request()
        .method("POST")
        .path("/")
        .body_chunks(&["ab", "cd"])
        .send();
    assert!(ex.upstream().is_none());
    assert!(
        ex.stalled(),
        "Envoy: StopAllIterationAndWatermark, the body never reaches the filter"
    );
    ex.finish()?;
    assert_eq!(call(&mut h, 0, "get_body_calls", &[])?, 0);
    Ok(())
}

#[test]
fn send_local_response_stops_the_request() -> Result<()> {
    let mut h = host(1)?;
    mode(&mut h, 0, 3)?;
    let mut ex = h
        .worker(0)
        .request()
        .method("POST")
        .path("/v1/chat/completions")
        .body_chunks(&["{}", "  "])
        .send();
    assert!(
        ex.upstream().is_none(),
        "a local reply never reaches upstream"
    );
    let lr = ex.local_reply().ok_or_else(|| anyhow!("no local reply"))?;
    assert_eq!(lr.status, 429);
    assert_eq!(lr.details, "rate_limited");
    assert_eq!(lr.body_str(), "slow down");
    assert_eq!(lr.headers.get("x-reason"), Some("quota"));
    let client = ex
        .client_response()
        .ok_or_else(|| anyhow!("client got nothing"))?;
    assert_eq!(client.status, 429);
    assert!(client.local && client.complete);
    assert_eq!(client.body, b"slow down");
    assert!(
        ex.response(200).send().is_err(),
        "no upstream response after a local reply"
    );
    ex.finish()?;
    assert_eq!(
        call(&mut h, 0, "get_body_calls", &[])?,
        0,
        "no body callback after it"
    );
    Ok(())
}

#[test]
fn ticks_fire_as_the_clock_advances() -> Result<()> {
    let mut h = host(2)?;
    assert_eq!(h.worker(0).tick_period_ms(), 1000);
    h.advance_ms(999)?;
    assert_eq!(call(&mut h, 0, "get_ticks", &[])?, 0);
    h.advance_ms(1)?;
    assert_eq!(call(&mut h, 0, "get_ticks", &[])?, 1);
    assert_eq!(call(&mut h, 1, "get_ticks", &[])?, 1);
    h.advance_ms(5000)?;
    assert_eq!(call(&mut h, 0, "get_ticks", &[])?, 6);
    // Both clocks follow the simulated one.
    let wall = h.wall_clock_ms() as i64;
    assert_eq!(call(&mut h, 0, "now_ms", &[])?, wall);
    assert_eq!(call(&mut h, 1, "wasi_now_ms", &[])?, wall);
    Ok(())
}

#[test]
fn a_trap_fails_only_its_vm() -> Result<()> {
    let mut h = host(2)?;
    mode(&mut h, 0, 4)?;
    mode(&mut h, 1, 4)?;
    h.worker(0).call_export("arm", &[])?;
    let ex = h.worker(0).request().path("/").send();
    assert!(
        ex.trap().is_some_and(|t| t.contains("unreachable")),
        "{:?}",
        ex.trap()
    );
    assert_eq!(
        ex.client_response().map(|c| c.status),
        Some(503),
        "fail closed"
    );
    assert!(ex.upstream().is_none());
    ex.finish()?;
    assert!(h.worker(0).failed().is_some());
    assert_eq!(h.traps().len(), 1);
    assert_eq!(h.traps()[0].function, "proxy_on_request_headers");
    assert!(h.worker(0).request().path("/").try_send().is_err());
    // The other VM keeps working.
    let ex = h.worker(1).request().path("/").send();
    assert!(ex.passthrough());
    ex.finish()?;
    assert!(h.worker(1).failed().is_none());
    assert!(
        h.worker(0).call_export("get_ticks", &[]).is_err(),
        "a failed VM takes no calls"
    );
    Ok(())
}

#[test]
fn fail_open_passes_requests_through_a_failed_vm() -> Result<()> {
    let mut h = builder().fail_open(true).build()?;
    h.start()?;
    mode(&mut h, 0, 4)?;
    h.worker(0).call_export("arm", &[])?;
    let ex = h.worker(0).request().path("/a").send();
    assert!(ex.trap().is_some());
    assert!(ex.upstream().is_some());
    ex.finish()?;
    let ex = h.worker(0).request().path("/b").send();
    assert!(ex.passthrough());
    Ok(())
}

#[test]
fn foreign_functions() -> Result<()> {
    let mut h = host(1)?;
    mode(&mut h, 0, 6)?;
    let ex = h.worker(0).request().path("/").send();
    assert!(ex.route_cache_cleared());
    assert_eq!(ex.clear_route_cache_calls(), 1);
    let calls = ex.foreign_calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].name, "nope");
    ex.finish()?;
    assert_eq!(
        call(&mut h, 0, "get_sizes", &[])?,
        0,
        "clear_route_cache: Ok"
    );
    assert_eq!(
        call(&mut h, 0, "get_last", &[])?,
        abi::Status::NotFound as i64
    );
    Ok(())
}

#[test]
fn property_lookup() -> Result<()> {
    let mut h = host(1)?;
    mode(&mut h, 0, 5)?;
    let ex = h
        .worker(0)
        .request()
        .path("/")
        .source_address("127.0.0.1:5555")
        .jwt_payload("jwt_payload", serde_json::json!({"tenant": "acme"}))
        .send();
    ex.finish()?;
    assert_eq!(h.shared_data_str("prop").as_deref(), Some("127.0.0.1:5555"));
    assert_eq!(
        h.shared_data_get("port").map(|v| v.0),
        Some(5555i64.to_le_bytes().to_vec())
    );
    assert_eq!(h.shared_data_str("jwt").as_deref(), Some("acme"));
    assert_eq!(
        call(&mut h, 0, "get_last", &[])?,
        abi::Status::NotFound as i64
    );
    Ok(())
}

#[test]
fn body_buffering_semantics() -> Result<()> {
    let mut h = host(1)?;
    mode(&mut h, 0, 8)?;
    let ex = h
        .worker(0)
        .request()
        .method("POST")
        .path("/")
        .body_chunks(&["ab", "cd", "ef"])
        .send();
    let up = ex.upstream().ok_or_else(|| anyhow!("no upstream"))?;
    // Replace (start 0, size = whole), then prepend (start 0, size 0), then append (start past end).
    assert_eq!(up.body_str(), "PFXREPLACEDPFX");
    assert_eq!(
        up.header("x-late"),
        Some("1"),
        "headers held until the body continued"
    );
    assert!(up.complete);
    assert!(
        up.content_length_mismatch(),
        "the guest rewrote the body but kept content-length"
    );
    ex.finish()?;
    assert_eq!(h.shared_data_str("body").as_deref(), Some("abcdef"));
    assert_eq!(
        call(&mut h, 0, "get_sizes", &[])?,
        2 + 4 + 6,
        "accumulated sizes"
    );
    assert_eq!(call(&mut h, 0, "get_body_calls", &[])?, 3);
    Ok(())
}

#[test]
fn response_chunks_report_pauses() -> Result<()> {
    let mut h = host(1)?;
    let mut ex = h.worker(0).request().path("/").send();
    let c = ex.respond(
        200,
        &[("content-type", "text/plain")],
        &[(0, b"a"), (250, b"b")],
    )?;
    assert_eq!(c.status, 200);
    assert_eq!(c.body, b"ab");
    assert!(c.complete);
    assert_eq!(c.chunks.len(), 2);
    assert_eq!(c.chunks[1].at_ms, 250);
    assert!(!c.chunks[0].paused);
    ex.finish()?;
    Ok(())
}

#[test]
fn http_calls_are_answered_by_the_test_or_time_out() -> Result<()> {
    let mut h = host(1)?;
    let token = call(&mut h, 0, "do_http_call", &[])?;
    assert_eq!(call(&mut h, 0, "get_last", &[])?, 0);
    let pending = h.pending_http_calls();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].upstream, "cluster");
    assert_eq!(pending[0].headers.get(":path"), Some("/x"));
    h.respond_http_call(0, token as u32, 200, &[("a", "b")], b"hello")?;
    assert_eq!(call(&mut h, 0, "get_http_resp", &[])?, 2 * 1000 + 5);
    call(&mut h, 0, "do_http_call", &[])?;
    h.advance_ms(500)?;
    assert_eq!(
        call(&mut h, 0, "get_http_resp", &[])?,
        0,
        "timeout: no headers"
    );
    assert!(h.pending_http_calls().is_empty());
    Ok(())
}

#[test]
fn metrics_follow_envoy_rules() -> Result<()> {
    let mut h = host(2)?;
    assert_eq!(call(&mut h, 0, "metrics", &[])?, 2);
    assert_eq!(
        call(&mut h, 0, "get_last", &[])?,
        abi::Status::BadArgument as i64,
        "counters only go up"
    );
    assert_eq!(
        call(&mut h, 1, "metrics", &[])?,
        4,
        "metrics are shared by all VMs"
    );
    assert_eq!(h.metric_value("wat_requests_total;tier=.=small;.;"), 4);
    assert_eq!(h.metric_sum("wat_requests_total", &[("tier", "small")]), 4);
    assert_eq!(h.metric_value("wat_gauge"), 2);
    let hist = h
        .metric("wat_hist")
        .ok_or_else(|| anyhow!("no histogram"))?;
    assert_eq!(hist.samples, vec![5, 7, 5, 7]);
    let stats = h.render_stats(true);
    assert!(
        stats.contains("wasmcustom.wat_requests_total;tier=.=small;.;: 4"),
        "{stats}"
    );
    let prom = h.render_prometheus();
    assert!(
        prom.contains("wat_requests_total{tier=\"small\"} 4"),
        "{prom}"
    );
    Ok(())
}

#[test]
fn wasi_env_random_and_stdout() -> Result<()> {
    let mk = |seed| -> Result<Host> {
        let mut h = builder().seed(seed).env("A", "1").env("B", "2").build()?;
        h.start()?;
        Ok(h)
    };
    let (mut a, mut b, mut c) = (mk(7)?, mk(7)?, mk(8)?);
    let ra = call(&mut a, 0, "rand", &[])?;
    assert_eq!(ra, call(&mut b, 0, "rand", &[])?, "same seed, same bytes");
    assert_ne!(ra, call(&mut c, 0, "rand", &[])?);
    assert_eq!(call(&mut a, 0, "env_count", &[])?, 2);
    assert_eq!(call(&mut a, 0, "hello", &[])?, 0);
    let logs = a.logs();
    let line = logs
        .iter()
        .find(|l| l.source == "stdout")
        .ok_or_else(|| anyhow!("no stdout line"))?;
    assert_eq!(line.message, "hello");
    assert_eq!(line.level, LogLevel::Info);
    Ok(())
}

#[test]
fn queues_notify_the_last_registrant() -> Result<()> {
    let mut h = host(2)?;
    h.enqueue("q", b"x")?;
    assert_eq!(call(&mut h, 1, "get_queue_ready", &[])?, 1);
    assert_eq!(call(&mut h, 0, "get_queue_ready", &[])?, 0);
    assert_eq!(h.queue_items("q"), vec![b"x".to_vec()]);
    Ok(())
}

#[test]
fn http_call_response_resumes_a_held_request_via_effective_context() -> Result<()> {
    let mut h = host(1)?;
    mode(&mut h, 0, 9)?;
    // No body: only proxy_continue_stream can release the held headers (a body callback
    // returning Continue would release them too, as in Envoy).
    let mut ex = h.worker(0).request().path("/").send();
    assert!(ex.upstream().is_none());
    assert!(ex.stalled());
    let calls = ex.host().pending_http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].context_id, 1, "made from the root context");
    let token = calls[0].token;
    ex.host().respond_http_call(0, token, 200, &[], b"")?;
    let up = ex.upstream().ok_or_else(|| anyhow!("not resumed"))?;
    assert!(up.complete);
    assert_eq!(
        up.header("x-late"),
        Some("1"),
        "header written through the effective context"
    );
    assert!(!ex.stalled());
    ex.finish()?;
    assert_eq!(
        call(&mut h, 0, "get_bad_ctx_status", &[])?,
        abi::Status::BadArgument as i64
    );
    Ok(())
}
