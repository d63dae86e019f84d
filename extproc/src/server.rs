//! Wiring: listeners, health, engine start, ext_proc, metrics/push, reload, drain.
//!
//! Order: the listeners are bound first (so a taken port fails at once, naming its flag); the
//! health service answers `liveness` at once and `readiness` / the ExternalProcessor service
//! only after the engine started; on shutdown readiness goes NOT_SERVING, the listeners stop
//! accepting and open streams get `drain` to finish.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::engine::{EngineError, FilterEngine};
use crate::facts::ConfigFacts;
use crate::reload::Watcher;
use crate::service::{ExtProc, Shared};
use crate::tls::Material;

/// Accepted connections with TCP_NODELAY: ext_proc answers are small HTTP/2 frames written one
/// after another (headers response, then body chunks); with Nagle's algorithm each one waits
/// for the ACK of the previous, which the gateway delays (40 ms on Linux), on every request.
pub fn accepted(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        if let Ok(tcp) = &conn {
            if let Err(e) = tcp.set_nodelay(true) {
                log::debug!("TCP_NODELAY: {e}");
            }
        }
        conn
    })
}

/// The gRPC service name the health service reports beside `liveness` and `readiness`.
pub const EXT_PROC_SERVICE: &str = "envoy.service.ext_proc.v3.ExternalProcessor";

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub grpc_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub tls: Option<Material>,
    pub plugin_config_path: PathBuf,
    pub plugin_config: Vec<u8>,
    pub drain: Duration,
    pub reload_period: Duration,
    /// OTLP/gRPC collector for the server's spans (`--otlp-endpoint`); None: no tracing.
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug)]
pub enum ServeError {
    Bind {
        flag: &'static str,
        addr: SocketAddr,
        why: String,
    },
    Engine(EngineError),
    Tls(String),
    Grpc(String),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Bind { flag, addr, why } => write!(f, "{flag} {addr}: {why}"),
            ServeError::Engine(e) => write!(f, "starting the filter: {e}"),
            ServeError::Tls(why) => write!(f, "TLS: {why}"),
            ServeError::Grpc(why) => write!(f, "gRPC server: {why}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// Listeners bound, nothing served yet.
pub struct Bound {
    grpc: TcpListener,
    health: TcpListener,
    metrics: TcpListener,
    options: ServeOptions,
}

/// Binds a listener; the error names the flag that gave the address.
pub(crate) async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|e| ServeError::Bind {
        flag,
        addr,
        why: e.to_string(),
    })
}

impl Bound {
    pub async fn bind(options: ServeOptions) -> Result<Bound, ServeError> {
        Ok(Bound {
            grpc: bind("--grpc-addr", options.grpc_addr).await?,
            health: bind("--health-addr", options.health_addr).await?,
            metrics: bind("--metrics-addr", options.metrics_addr).await?,
            options,
        })
    }

    /// (ext_proc, health, metrics) addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> [SocketAddr; 3] {
        let a = |l: &TcpListener| l.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        [a(&self.grpc), a(&self.health), a(&self.metrics)]
    }

    /// Starts the engine with `start` (on a blocking thread), serves until `shutdown`, then
    /// drains. Returns an error when the engine cannot start or the gRPC server fails.
    pub async fn run<E, F>(
        self,
        start: F,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError>
    where
        E: FilterEngine,
        F: FnOnce() -> Result<E, EngineError> + Send + 'static,
    {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let (reporter, health_service) = tonic_health::server::health_reporter();
        set_ready(&reporter, ServingStatus::NotServing).await;
        reporter
            .set_service_status("liveness", ServingStatus::Serving)
            .await;
        let health = tokio::spawn(
            Server::builder()
                .add_service(health_service)
                .serve_with_incoming_shutdown(accepted(self.health), stopped()),
        );

        let engine = tokio::task::spawn_blocking(start)
            .await
            .map_err(|e| ServeError::Engine(EngineError(e.to_string())))?
            .map_err(ServeError::Engine)?;
        let options = self.options;
        let facts = ConfigFacts::from_config(&options.plugin_config);
        let tracer = match &options.otlp_endpoint {
            Some(e) => Some(crate::otlp::Exporter::start(e).map_err(ServeError::Grpc)?),
            None => None,
        };
        let shared = Arc::new(Shared::new(engine, facts).with_tracer(tracer));

        let mut builder = Server::builder();
        if let Some(tls) = &options.tls {
            let identity = Identity::from_pem(&tls.cert_pem, &tls.key_pem);
            builder = builder
                .tls_config(ServerTlsConfig::new().identity(identity))
                .map_err(|e| ServeError::Tls(e.to_string()))?;
        }
        let grpc = tokio::spawn(
            builder
                .add_service(ExternalProcessorServer::from_arc(Arc::new(ExtProc::new(
                    shared.clone(),
                ))))
                .serve_with_incoming_shutdown(accepted(self.grpc), stopped()),
        );
        let metrics = tokio::spawn(crate::http::serve(self.metrics, shared.clone(), stopped()));
        let watcher = Watcher::new(
            options.plugin_config_path.clone(),
            options.plugin_config.clone(),
        );
        let reload = tokio::spawn(watcher.run(shared.clone(), options.reload_period, stopped()));
        set_ready(&reporter, ServingStatus::Serving).await;
        log::info!("serving ext_proc on {}", options.grpc_addr);

        let grpc_failed = tokio::select! {
            _ = shutdown => None,
            result = grpc => Some(result),
        };
        set_ready(&reporter, ServingStatus::NotServing).await;
        let _ = stop_tx.send(true);
        let _ = tokio::join!(metrics, reload);
        if let Some(result) = grpc_failed {
            health.abort();
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ServeError::Grpc(e.to_string())),
                Err(e) => Err(ServeError::Grpc(e.to_string())),
            };
        }
        drain(&shared, options.drain).await;
        health.abort();
        Ok(())
    }
}

async fn set_ready(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("readiness", status).await;
    reporter.set_service_status(EXT_PROC_SERVICE, status).await;
}

/// Waits until no ext_proc stream is open, or the deadline passes.
async fn drain<E: FilterEngine>(shared: &Shared<E>, deadline: Duration) {
    use std::sync::atomic::Ordering;
    let open = || shared.counters.streams_active.load(Ordering::Relaxed);
    let waited = tokio::time::timeout(deadline, async {
        while open() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    match waited {
        Ok(()) => log::info!("drained: no stream open"),
        Err(_) => log::warn!(
            "drain deadline passed with {} stream(s) open; they are cut",
            open()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::accepted;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn accepted_connections_have_nodelay() -> Result<(), Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let incoming = accepted(listener);
        tokio::pin!(incoming);
        let _client = tokio::net::TcpStream::connect(addr).await?;
        let server_side = incoming.next().await.ok_or("no connection accepted")??;
        assert!(server_side.nodelay()?);
        Ok(())
    }
}
