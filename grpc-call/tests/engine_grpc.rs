//! The production engine performing a guest's `proxy_grpc_call`s for real through
//! [`GrpcClient`], against a real tonic-health server this test starts: the guest is
//! `host-engine/tests/wat/grpc_guest.wat` (calls `grpc.health.v1.Health/Check` from ticks and
//! from paused requests and shows each answer in the request headers or shared data).

use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use grpc_call::{Clusters, GrpcClient};
use host_engine::{Engine, EngineOptions, GrpcTransportRef, HeaderPairs, Step, StreamProps};
use tokio::runtime::Runtime;

const GUEST: &str = include_str!("../../host-engine/tests/wat/grpc_guest.wat");
/// What Health/Check answers for a serving server: `status: SERVING` (field 1 = 1).
const SERVING_HEX: &str = "0801";

/// A real gRPC health server on a free loopback port (it serves until the runtime ends).
fn health_server(rt: &Runtime) -> Result<String> {
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

/// A listener that accepts connections and never answers (calls to it can only time out).
fn black_hole() -> Result<String> {
    let listener = StdListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    Ok(format!("http://{addr}"))
}

/// A loopback address nothing listens on.
fn closed_port() -> Result<String> {
    let addr = StdListener::bind("127.0.0.1:0")?.local_addr()?;
    Ok(format!("http://{addr}"))
}

struct Setup {
    rt: Runtime,
    engine: Engine,
}

/// An engine with `workers` VMs of the guest, plugin configuration `config`, and the clusters
/// `health` (the health server), `hole` (never answers) and `down` (refuses connections).
fn setup(config: &str, workers: usize) -> Result<Setup> {
    let rt = Runtime::new()?;
    let health = health_server(&rt)?;
    let args = [
        format!("health={health}"),
        format!("hole={}", black_hole()?),
        format!("down={}", closed_port()?),
    ];
    let clusters = Clusters::parse(&args).map_err(|e| anyhow!(e))?;
    let client = {
        let _guard = rt.enter();
        GrpcClient::on_current_runtime(clusters).map_err(|e| anyhow!(e))?
    };
    let engine = Engine::start(EngineOptions {
        wasm: GUEST.as_bytes().to_vec(),
        plugin_config: config.as_bytes().to_vec(),
        workers,
        grpc: Some(GrpcTransportRef(Arc::new(client))),
        ..EngineOptions::default()
    })
    .map_err(|e| anyhow!("{e}"))?;
    Ok(Setup { rt, engine })
}

fn request(extra: &[(&str, &str)]) -> HeaderPairs {
    let mut h = vec![(":path", "/"), (":method", "GET"), (":authority", "a")];
    h.extend_from_slice(extra);
    h.into_iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// The headers a Continue step sends upstream.
fn sent_headers(step: Step) -> Result<HeaderPairs> {
    match step {
        Step::Continue {
            headers: Some(h), ..
        } => Ok(h),
        other => bail!("expected the request to continue with its headers, got {other:?}"),
    }
}

fn header(h: &HeaderPairs, name: &str) -> Option<String> {
    h.iter()
        .find(|(k, _)| k.as_slice() == name.as_bytes())
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// Waits (at most 10 s) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("timed out waiting for {what}")
}

#[test]
fn a_paused_request_resumes_with_the_answer_of_its_call() -> Result<()> {
    let s = setup("Nhealth", 1)?;
    let mut stream = s.engine.open_stream(StreamProps::default());
    let h = sent_headers(stream.request_headers(request(&[("x-grpc", "health")]), true))?;
    assert_eq!(
        header(&h, "x-grpc-answer").as_deref(),
        Some(SERVING_HEX),
        "{h:?}"
    );
    assert_eq!(header(&h, "x-grpc-close"), None);
    stream.finish();
    assert_eq!(s.engine.metric_value("grpc_deliveries"), 1);
    drop(s.rt);
    Ok(())
}

#[test]
fn ticks_fire_on_real_time_and_the_root_context_gets_its_answer() -> Result<()> {
    let s = setup("Thealth", 2)?;
    eventually("the root context's answer in shared data", || {
        s.engine
            .shared_data_get("root-answer")
            .is_some_and(|(v, _)| v == [0x08, 0x01])
    })?;
    Ok(())
}

#[test]
fn failures_reach_the_guest_as_envoy_reports_them() -> Result<()> {
    let s = setup("Nhealth", 1)?;
    // An upstream the host has no mapping for: the hostcall fails with ParseFailure (4), as
    // Envoy's grpcCall for an unknown cluster; nothing is delivered later.
    let mut unknown = s.engine.open_stream(StreamProps::default());
    let h = sent_headers(unknown.request_headers(request(&[("x-grpc", "nope")]), true))?;
    assert_eq!(header(&h, "x-grpc-status").as_deref(), Some("4"), "{h:?}");
    unknown.finish();
    // A target that refuses connections: UNAVAILABLE (14).
    let mut down = s.engine.open_stream(StreamProps::default());
    let h = sent_headers(down.request_headers(request(&[("x-grpc", "down")]), true))?;
    assert_eq!(header(&h, "x-grpc-close").as_deref(), Some("14"), "{h:?}");
    down.finish();
    // A target that never answers: DEADLINE_EXCEEDED (4) after the guest's 1 s timeout.
    let mut hole = s.engine.open_stream(StreamProps::default());
    let h = sent_headers(hole.request_headers(request(&[("x-grpc", "hole")]), true))?;
    assert_eq!(header(&h, "x-grpc-close").as_deref(), Some("04"), "{h:?}");
    hole.finish();
    assert_eq!(s.engine.metric_value("grpc_deliveries"), 2);
    Ok(())
}

#[test]
fn each_answer_goes_to_the_context_that_made_the_call() -> Result<()> {
    let s = setup("Nhealth", 1)?;
    // Two streams on the one VM wait at once: the slow one's close must not reach the fast one.
    let mut slow = s.engine.open_stream(StreamProps::default());
    let waiting = std::thread::spawn(move || {
        let step = slow.request_headers(request(&[("x-grpc", "hole")]), true);
        slow.finish();
        step
    });
    let mut fast = s.engine.open_stream(StreamProps::default());
    let h = sent_headers(fast.request_headers(request(&[("x-grpc", "health")]), true))?;
    assert_eq!(
        header(&h, "x-grpc-answer").as_deref(),
        Some(SERVING_HEX),
        "{h:?}"
    );
    assert_eq!(header(&h, "x-grpc-close"), None, "{h:?}");
    fast.finish();
    let step = waiting
        .join()
        .map_err(|_| anyhow!("the slow stream's thread panicked"))?;
    let h = sent_headers(step)?;
    assert_eq!(header(&h, "x-grpc-close").as_deref(), Some("04"), "{h:?}");
    assert_eq!(header(&h, "x-grpc-answer"), None, "{h:?}");
    Ok(())
}

#[test]
fn a_cancelled_call_is_never_delivered() -> Result<()> {
    let s = setup("Nhealth", 1)?;
    let mut cancelled = s.engine.open_stream(StreamProps::default());
    let cancel = [("x-grpc", "health"), ("x-grpc-cancel", "1")];
    let h = sent_headers(cancelled.request_headers(request(&cancel), true))?;
    assert_eq!(header(&h, "x-grpc-answer"), None, "{h:?}");
    cancelled.finish();
    // A later call on the same VM is answered; only it was delivered.
    let mut next = s.engine.open_stream(StreamProps::default());
    let h = sent_headers(next.request_headers(request(&[("x-grpc", "health")]), true))?;
    assert_eq!(
        header(&h, "x-grpc-answer").as_deref(),
        Some(SERVING_HEX),
        "{h:?}"
    );
    next.finish();
    assert_eq!(s.engine.metric_value("grpc_deliveries"), 1);
    Ok(())
}

#[test]
fn a_trap_in_the_answer_callback_fails_the_stream_and_the_vm_is_recreated() -> Result<()> {
    let s = setup("Nhealth", 1)?;
    let mut bad = s.engine.open_stream(StreamProps::default());
    match bad.request_headers(request(&[("x-grpc", "health"), ("x-grpc-trap", "1")]), true) {
        Step::Trapped {
            continue_unchanged: false,
            message,
        } => assert!(message.contains("proxy_on_grpc_receive"), "{message}"),
        other => bail!("expected a fail-closed trap, got {other:?}"),
    }
    bad.finish();
    let mut next = s.engine.open_stream(StreamProps::default());
    let h = sent_headers(next.request_headers(request(&[("x-grpc", "health")]), true))?;
    assert_eq!(
        header(&h, "x-grpc-answer").as_deref(),
        Some(SERVING_HEX),
        "{h:?}"
    );
    next.finish();
    let stats = s.engine.stats();
    assert_eq!((stats.traps, stats.vm_reloads), (1, 1), "{stats:?}");
    Ok(())
}
