//! Unary calls with raw bytes on tokio, one lazily connected channel per target.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use host_engine::{grpc_code, grpc_limits, GrpcAnswer, GrpcCallInfo, GrpcReply, GrpcTransport};
use tokio::runtime::{Handle, Runtime};
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{
    AsciiMetadataKey, AsciiMetadataValue, BinaryMetadataKey, BinaryMetadataValue,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use crate::clusters::{Cluster, Clusters};
use crate::codec::RawCodec;

/// How long connecting to a target may take when the call has no shorter timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Inner {
    clusters: Clusters,
    handle: Handle,
    /// Owned when the client made its own runtime (host-sim); dropped with the last clone.
    _runtime: Option<Runtime>,
    channels: Mutex<HashMap<String, Channel>>,
}

/// Performs unary gRPC calls to the targets of a [`Clusters`] mapping. Cheap to clone.
#[derive(Clone)]
pub struct GrpcClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GrpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GrpcClient{:?}", self.inner.clusters.names())
    }
}

impl GrpcClient {
    /// A client whose calls run on the tokio runtime of the caller (the ext_proc server).
    pub fn on_current_runtime(clusters: Clusters) -> Result<GrpcClient, String> {
        let handle = Handle::try_current().map_err(|e| format!("no tokio runtime: {e}"))?;
        Ok(GrpcClient::with(clusters, handle, None))
    }

    /// A client with a runtime of its own (one worker thread), for hosts without one
    /// (host-sim): use [`GrpcClient::call_blocking`].
    pub fn with_own_runtime(clusters: Clusters) -> Result<GrpcClient, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("llm-router-grpc")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the gRPC client's runtime: {e}"))?;
        let handle = runtime.handle().clone();
        Ok(GrpcClient::with(clusters, handle, Some(runtime)))
    }

    fn with(clusters: Clusters, handle: Handle, runtime: Option<Runtime>) -> GrpcClient {
        GrpcClient {
            inner: Arc::new(Inner {
                clusters,
                handle,
                _runtime: runtime,
                channels: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn clusters(&self) -> &Clusters {
        &self.inner.clusters
    }

    /// Performs `call` (to the target its `upstream` names) and returns its outcome; never
    /// fails otherwise. `timeout_ms` 0 means no timeout.
    pub async fn call(&self, call: &GrpcCallInfo) -> GrpcAnswer {
        let Some(cluster) = self.inner.clusters.get(&call.upstream) else {
            let why = format!("no target for gRPC cluster {}", call.upstream);
            return GrpcAnswer::err(grpc_code::UNAVAILABLE, why);
        };
        let timeout = (call.timeout_ms > 0).then(|| Duration::from_millis(call.timeout_ms.into()));
        let started = tokio::time::Instant::now();
        let work = self.unary(cluster, call, timeout);
        let result = match timeout {
            Some(t) => match tokio::time::timeout(t, work).await {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded("deadline exceeded")),
            },
            None => work.await,
        };
        match result {
            Ok(bytes) => GrpcAnswer::Ok(bytes.to_vec()),
            // The deadline is the caller's: a transport timer that gave up at the same moment
            // (the connect timeout is capped by it, and tonic reports its timers as CANCELLED)
            // still answers DEADLINE_EXCEEDED, as Envoy does.
            Err(_) if timeout.is_some_and(|t| started.elapsed() >= t) => {
                answer_of(&Status::deadline_exceeded("deadline exceeded"))
            }
            Err(status) => answer_of(&status),
        }
    }

    /// [`GrpcClient::call`] from a thread that is not on the client's runtime, waiting for
    /// the outcome (host-sim drives the guest from the test thread).
    pub fn call_blocking(&self, call: &GrpcCallInfo) -> GrpcAnswer {
        if Handle::try_current().is_ok() {
            return GrpcAnswer::err(
                grpc_code::INTERNAL,
                "call_blocking from inside a tokio runtime",
            );
        }
        self.inner.handle.block_on(self.call(call))
    }

    async fn unary(
        &self,
        cluster: &Cluster,
        call: &GrpcCallInfo,
        timeout: Option<Duration>,
    ) -> Result<Bytes, Status> {
        let path = PathAndQuery::try_from(format!("/{}/{}", call.service, call.method))
            .map_err(|_| Status::internal("invalid gRPC service or method name"))?;
        let channel = self.channel(cluster, timeout)?;
        let mut request = Request::new(Bytes::from(call.message.clone()));
        for (k, v) in call.initial_metadata.iter_bytes() {
            add_metadata(&mut request, k, v);
        }
        if let Some(t) = timeout {
            request.set_timeout(t);
        }
        let mut grpc = Grpc::new(channel).max_decoding_message_size(grpc_limits::MAX_MESSAGE_BYTES);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("connecting to {}: {e}", cluster.url)))?;
        let response = grpc.unary(request, path, RawCodec).await?;
        Ok(response.into_inner())
    }

    /// The channel of `cluster`, made (connecting lazily) on first use.
    fn channel(&self, cluster: &Cluster, timeout: Option<Duration>) -> Result<Channel, Status> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(&cluster.name) {
            return Ok(c.clone());
        }
        let connect = timeout.map_or(CONNECT_TIMEOUT, |t| t.min(CONNECT_TIMEOUT));
        let mut endpoint = Endpoint::from_shared(cluster.url.clone())
            .map_err(|e| Status::unavailable(format!("bad target {}: {e}", cluster.url)))?
            .connect_timeout(connect)
            .tcp_nodelay(true);
        if cluster.tls() {
            let tls = match &cluster.ca_pem {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Status::unavailable(format!("TLS for {}: {e}", cluster.url)))?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(cluster.name.clone(), channel.clone());
        Ok(channel)
    }
}

/// Copies one metadata pair onto the request (`-bin` keys carry raw bytes); pairs gRPC cannot
/// carry are left out.
fn add_metadata(request: &mut Request<Bytes>, key: &[u8], value: &[u8]) {
    let m = request.metadata_mut();
    if key.ends_with(b"-bin") {
        if let Ok(k) = BinaryMetadataKey::from_bytes(key) {
            m.append_bin(k, BinaryMetadataValue::from_bytes(value));
            return;
        }
    } else if let (Ok(k), Ok(v)) = (
        AsciiMetadataKey::from_bytes(key),
        AsciiMetadataValue::try_from(value),
    ) {
        m.append(k, v);
        return;
    }
    log::debug!(
        "gRPC metadata {} left out: not valid gRPC metadata",
        String::from_utf8_lossy(key)
    );
}

/// A failed call's answer. Transport failures (refused, reset, TLS) are UNAVAILABLE, as Envoy
/// reports an unreachable cluster.
fn answer_of(status: &Status) -> GrpcAnswer {
    let code = match status.code() {
        Code::Unknown if is_transport_error(status) => grpc_code::UNAVAILABLE,
        c => c as i32 as u32,
    };
    GrpcAnswer::err(code, status.message())
}

fn is_transport_error(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        source = e.source();
    }
    status.message().contains("transport error")
}

impl GrpcTransport for GrpcClient {
    fn clusters(&self) -> Vec<String> {
        self.inner.clusters.names()
    }

    fn start(&self, call: GrpcCallInfo, reply: GrpcReply) {
        let client = self.clone();
        self.inner.handle.spawn(async move {
            let answer = client.call(&call).await;
            reply.send(answer);
        });
    }
}
