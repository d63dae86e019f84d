//! gRPC calls in simulated time, answered by the test, on a small guest
//! (`host-engine/tests/wat/grpc_guest.wat`: `x-grpc: UPSTREAM` calls Health/Check from the
//! request and pauses it; the answer lands in the request headers; ticks call from the root
//! context when the configuration starts with `T`). And real calls to a real tonic-health
//! server with `grpc_clusters` (`--grpc-cluster`).

use anyhow::{anyhow, bail, Result};
use host_sim::grpc_call::Clusters;
use host_sim::{grpc_code, GrpcCallInfo, Host, HostBuilder};

const GUEST: &str = include_str!("../../host-engine/tests/wat/grpc_guest.wat");

fn builder(config: &str) -> HostBuilder {
    Host::builder().wat(GUEST).plugin_config(config)
}

fn host(config: &str) -> Result<Host> {
    let mut h = builder(config).build()?;
    h.start()?;
    Ok(h)
}

fn only_call(h: &Host) -> Result<GrpcCallInfo> {
    match h.pending_grpc_calls().as_slice() {
        [one] => Ok(one.clone()),
        other => bail!("expected one pending gRPC call, got {other:?}"),
    }
}

#[test]
fn a_paused_request_continues_with_the_answer_delivered_to_its_context() -> Result<()> {
    let mut h = host("Nquota")?;
    let mut ex = h
        .worker(0)
        .request()
        .header("x-grpc", "quota")
        .header("x-meta", "m")
        .send();
    assert!(ex.stalled() && ex.upstream().is_none(), "the request waits");
    let call = only_call(ex.host())?;
    assert_eq!(
        (
            call.upstream.as_str(),
            call.service.as_str(),
            call.method.as_str()
        ),
        ("quota", "grpc.health.v1.Health", "Check")
    );
    assert_eq!(
        (call.context_id, call.timeout_ms, call.token % 2),
        (ex.context_id(), 1000, 1)
    );
    assert!(call.message.is_empty() && call.initial_metadata.is_empty());
    ex.host().respond_grpc_call(0, call.token, &[0x08, 0x02])?;
    let up = ex
        .upstream()
        .ok_or_else(|| anyhow!("the request should have continued"))?;
    assert_eq!(up.header("x-grpc-answer"), Some("0802"));
    assert_eq!(up.header("x-grpc-close"), None);
    assert!(ex.host().pending_grpc_calls().is_empty());
    // Answered once: a second answer is refused and delivers nothing.
    assert!(ex.host().respond_grpc_call(0, call.token, b"x").is_err());
    assert_eq!(ex.host().metric_value("grpc_deliveries"), 1);
    ex.finish()
}

#[test]
fn a_failed_call_closes_with_its_status_and_message() -> Result<()> {
    let mut h = host("Nquota")?;
    let mut ex = h.worker(0).request().header("x-grpc", "quota").send();
    let call = only_call(ex.host())?;
    ex.host()
        .fail_grpc_call(0, call.token, grpc_code::RESOURCE_EXHAUSTED, "over quota")?;
    let up = ex
        .upstream()
        .ok_or_else(|| anyhow!("the request should have continued"))?;
    assert_eq!(up.header("x-grpc-close"), Some("08"));
    assert_eq!(up.header("x-grpc-message"), Some("over quota"));
    ex.finish()
}

#[test]
fn a_call_times_out_as_deadline_exceeded_in_simulated_time() -> Result<()> {
    let mut h = host("Nquota")?;
    let mut ex = h.worker(0).request().header("x-grpc", "quota").send();
    let call = only_call(ex.host())?;
    ex.host().advance_ms(999)?;
    assert!(ex.stalled(), "not due yet");
    ex.host().advance_ms(1)?;
    let up = ex
        .upstream()
        .ok_or_else(|| anyhow!("the timeout should continue the request"))?;
    assert_eq!(up.header("x-grpc-close"), Some("04"));
    assert!(ex.host().respond_grpc_call(0, call.token, b"late").is_err());
    ex.finish()
}

#[test]
fn an_unknown_upstream_fails_the_hostcall_with_parse_failure() -> Result<()> {
    let mut h = builder("Nquota").grpc_upstreams(&["quota"]).build()?;
    h.start()?;
    let ex = h.worker(0).request().header("x-grpc", "elsewhere").send();
    let up = ex
        .upstream()
        .ok_or_else(|| anyhow!("the request should continue"))?;
    assert_eq!(up.header("x-grpc-status"), Some("4"));
    ex.finish()?;
    assert!(h.pending_grpc_calls().is_empty());
    Ok(())
}

#[test]
fn cancelled_calls_and_calls_of_ended_streams_are_never_delivered() -> Result<()> {
    let mut h = host("Nquota")?;
    let ex = h
        .worker(0)
        .request()
        .header("x-grpc", "quota")
        .header("x-grpc-cancel", "1")
        .send();
    assert!(ex.upstream().is_some());
    ex.finish()?;
    assert!(
        h.pending_grpc_calls().is_empty(),
        "proxy_grpc_cancel drops the call"
    );
    assert!(h.respond_grpc_call(0, 1, b"x").is_err());

    let mut ex = h.worker(0).request().header("x-grpc", "quota").send();
    let call = only_call(ex.host())?;
    ex.reset()?;
    assert!(
        h.pending_grpc_calls().is_empty(),
        "the stream's calls end with it"
    );
    assert!(h.respond_grpc_call(0, call.token, b"x").is_err());
    h.advance_ms(5000)?;
    assert_eq!(h.metric_value("grpc_deliveries"), 0);
    Ok(())
}

#[test]
fn ticks_call_from_the_root_context() -> Result<()> {
    let mut h = host("Tquota")?;
    assert!(h.pending_grpc_calls().is_empty());
    h.advance_ms(50)?;
    let call = only_call(&h)?;
    assert_eq!(call.context_id, 1);
    h.respond_grpc_call(0, call.token, &[0x08, 0x01])?;
    assert_eq!(
        h.shared_data_get("root-answer").map(|v| v.0),
        Some(vec![0x08, 0x01])
    );
    // The next tick calls again; that call times out on the root context.
    h.advance_ms(50)?;
    only_call(&h)?;
    h.advance_ms(1000)?;
    assert_eq!(h.shared_data_str("root-close").as_deref(), Some("04"));
    Ok(())
}

#[test]
fn a_trap_in_the_answer_callback_is_recorded_on_the_stream() -> Result<()> {
    let mut h = host("Nquota")?;
    let mut ex = h
        .worker(0)
        .request()
        .header("x-grpc", "quota")
        .header("x-grpc-trap", "1")
        .send();
    let call = only_call(ex.host())?;
    assert!(ex.host().respond_grpc_call(0, call.token, b"").is_err());
    let trap = ex
        .trap()
        .ok_or_else(|| anyhow!("the stream should carry the trap"))?;
    assert!(trap.contains("proxy_on_grpc_receive"), "{trap}");
    let traps = ex.host().traps();
    assert_eq!(traps.len(), 1);
    assert_eq!(traps[0].function, "proxy_on_grpc_receive");
    Ok(())
}

/// A real gRPC health server on a free loopback port, served by `rt`.
fn health_server(rt: &tokio::runtime::Runtime) -> Result<String> {
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    rt.spawn(async move {
        let (_reporter, service) = tonic_health::server::health_reporter();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    Ok(format!("http://{addr}"))
}

#[test]
fn grpc_clusters_make_the_calls_for_real() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let down = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let clusters = Clusters::parse(&[
        format!("health={}", health_server(&rt)?),
        format!("down=http://{down}"),
    ])
    .map_err(|e| anyhow!(e))?;
    let mut h = builder("Thealth").grpc_clusters(clusters).build()?;
    h.start()?;
    let ex = h.worker(0).request().header("x-grpc", "health").send();
    let up = ex
        .upstream()
        .ok_or_else(|| anyhow!("the answer should continue the request"))?;
    assert_eq!(up.header("x-grpc-answer"), Some("0801"));
    ex.finish()?;
    let ex = h.worker(0).request().header("x-grpc", "down").send();
    let up = ex
        .upstream()
        .ok_or_else(|| anyhow!("the failure should continue the request"))?;
    assert_eq!(up.header("x-grpc-close"), Some("14"));
    ex.finish()?;
    let ex = h.worker(0).request().header("x-grpc", "unmapped").send();
    assert_eq!(
        ex.upstream()
            .and_then(|u| u.header("x-grpc-status").map(str::to_string))
            .as_deref(),
        Some("4")
    );
    ex.finish()?;
    // A tick's call is made when the clock moves.
    h.advance_ms(50)?;
    assert_eq!(
        h.shared_data_get("root-answer").map(|v| v.0),
        Some(vec![0x08, 0x01])
    );
    assert!(h.pending_grpc_calls().is_empty());
    Ok(())
}

/// `raw_grpc_call` with the root context current; the hostcall's status.
fn raw_call(h: &mut Host, args: [i64; 12]) -> Result<i64> {
    h.worker(0)
        .call_export("raw_grpc_call", &args)?
        .ok_or_else(|| anyhow!("raw_grpc_call returned nothing"))
}

/// Health/Check with the service name (at 1040, 21 bytes) as the upstream too, no metadata,
/// an empty message, 1 s timeout, the token written at 264.
const VALID: [i64; 12] = [1040, 21, 1040, 21, 1072, 5, 0, 0, 0, 0, 1000, 264];

#[test]
fn arbitrary_grpc_call_arguments_never_break_the_host() -> Result<()> {
    let mut h = host("N")?;
    let mut rng = host_sim::fuzz::Rng::new(14);
    let ptrs = [
        0,
        100,
        1024,
        1040,
        16_384,
        131_000,
        131_071,
        131_072,
        -1,
        i32::MIN as i64,
    ];
    let lens = [0, 1, 5, 21, 1024, 1025, 65_536, 65_537, (4 << 20) + 1, -1];
    let mut made = 0;
    for i in 0..3000 {
        // Valid arguments with about one in eight replaced by an edge case or noise.
        let mut args = VALID;
        for (j, a) in args.iter_mut().enumerate() {
            if !rng.chance(1, 8) {
                continue;
            }
            *a = match (j, rng.below(3)) {
                (10, _) | (_, 0) => rng.next_u64() as i32 as i64,
                (j, _) if j % 2 == 0 || j == 11 => *rng.pick(&ptrs),
                _ => *rng.pick(&lens),
            };
        }
        let before = h.pending_grpc_calls().len();
        let status = raw_call(&mut h, args)?;
        assert!(
            [0, 2, 4, 6].contains(&status),
            "case {i}: {args:?} -> {status}"
        );
        let after = h.pending_grpc_calls();
        assert_eq!(
            after.len(),
            before + usize::from(status == 0),
            "case {i}: {args:?}"
        );
        if status == 0 {
            made += 1;
            let call = after.iter().max_by_key(|c| c.token).cloned();
            let call = call.ok_or_else(|| anyhow!("case {i}: no call"))?;
            // Names are read as (lossy) text of at most 1 KiB of guest bytes.
            assert!(call.upstream.chars().count() <= 1024 && call.message.len() <= 4 << 20);
            // Answer half of them (OK or a status), leave the others pending.
            match i % 4 {
                0 => h.respond_grpc_call(0, call.token, &[0x08, 0x01])?,
                1 => h.fail_grpc_call(0, call.token, (i % 17) as u32, "x")?,
                _ => {}
            }
        }
    }
    assert!(made > 50, "only {made} calls were accepted");
    assert!(h.traps().is_empty(), "{:?}", h.traps());
    Ok(())
}

#[test]
fn outstanding_calls_are_bounded_and_tokens_are_odd_and_distinct() -> Result<()> {
    let mut h = host("N")?;
    for _ in 0..1024 {
        assert_eq!(raw_call(&mut h, VALID)?, 0);
    }
    let calls = h.pending_grpc_calls();
    let mut tokens: Vec<u32> = calls.iter().map(|c| c.token).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), 1024);
    assert!(
        tokens.iter().all(|t| t % 2 == 1),
        "call tokens are odd as in Envoy"
    );
    // The 1025th is refused (InternalFailure) until one ends.
    assert_eq!(raw_call(&mut h, VALID)?, 10);
    let cancel = |h: &mut Host, t: u32| -> Result<Option<i64>> {
        h.worker(0).call_export("raw_grpc_cancel", &[t as i64])
    };
    assert_eq!(cancel(&mut h, tokens[0])?, Some(0));
    assert_eq!(
        cancel(&mut h, tokens[0])?,
        Some(1),
        "NotFound the second time"
    );
    assert_eq!(raw_call(&mut h, VALID)?, 0);
    // Oversized arguments are BadArgument before any memory is read.
    let mut big = VALID;
    big[9] = (4 << 20) + 1;
    assert_eq!(raw_call(&mut h, big)?, 2);
    Ok(())
}
