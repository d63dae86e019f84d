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
