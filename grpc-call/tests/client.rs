//! The client on its own: https targets against a real TLS tonic-health server, and what a
//! call sees when the target is down, with [`GrpcClient::call_blocking`] (host-sim's way).

use anyhow::{anyhow, bail, Result};
use grpc_call::{Cluster, Clusters, GrpcClient};
use host_engine::{grpc_code, GrpcAnswer, GrpcCallInfo, Headers};
use tokio::runtime::Runtime;
use tonic::transport::{Identity, ServerTlsConfig};

/// A tonic-health server with TLS for `localhost`; returns its port and certificate (PEM).
fn tls_health_server(rt: &Runtime) -> Result<(u16, Vec<u8>)> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert = certified.cert.pem().into_bytes();
    let key = certified.signing_key.serialize_pem().into_bytes();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let port = listener.local_addr()?.port();
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(&cert, &key));
    let mut server = tonic::transport::Server::builder().tls_config(tls)?;
    rt.spawn(async move {
        let (_reporter, service) = tonic_health::server::health_reporter();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = server
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    Ok((port, cert))
}

fn check(upstream: &str) -> GrpcCallInfo {
    GrpcCallInfo {
        worker: 0,
        token: 1,
        context_id: 1,
        upstream: upstream.into(),
        service: "grpc.health.v1.Health".into(),
        method: "Check".into(),
        initial_metadata: Headers::from_pairs(&[("x-tenant", "a"), ("trace-bin", "\u{1}")]),
        message: Vec::new(),
        timeout_ms: 5000,
    }
}

#[test]
fn https_targets_are_verified_and_called() -> Result<()> {
    let rt = Runtime::new()?;
    let (port, cert) = tls_health_server(&rt)?;
    let url = format!("https://localhost:{port}");
    let mut clusters = Clusters::parse(&[format!("system-roots={url}")]).map_err(|e| anyhow!(e))?;
    clusters
        .add(Cluster {
            name: "own-ca".into(),
            url,
            ca_pem: Some(cert),
        })
        .map_err(|e| anyhow!(e))?;
    let client = GrpcClient::with_own_runtime(clusters).map_err(|e| anyhow!(e))?;
    assert_eq!(
        client.call_blocking(&check("own-ca")),
        GrpcAnswer::Ok(vec![0x08, 0x01])
    );
    // The same server is not trusted by the system's roots: the call fails, UNAVAILABLE.
    match client.call_blocking(&check("system-roots")) {
        GrpcAnswer::Err { code, .. } => assert_eq!(code, grpc_code::UNAVAILABLE),
        ok => bail!("a self-signed certificate was accepted: {ok:?}"),
    }
    Ok(())
}

#[test]
fn a_service_the_server_does_not_have_is_unimplemented() -> Result<()> {
    let rt = Runtime::new()?;
    let (port, cert) = tls_health_server(&rt)?;
    let mut clusters = Clusters::default();
    clusters
        .add(Cluster {
            name: "h".into(),
            url: format!("https://localhost:{port}"),
            ca_pem: Some(cert),
        })
        .map_err(|e| anyhow!(e))?;
    let client = GrpcClient::with_own_runtime(clusters).map_err(|e| anyhow!(e))?;
    let mut call = check("h");
    call.service = "llm_router.quota.v1.Quota".into();
    call.method = "Take".into();
    match client.call_blocking(&call) {
        GrpcAnswer::Err { code, .. } => assert_eq!(code, grpc_code::UNIMPLEMENTED),
        ok => bail!("expected UNIMPLEMENTED, got {ok:?}"),
    }
    Ok(())
}
