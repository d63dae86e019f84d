//! Wiring of `llm-router-extproc quota`: listeners (bound first, so a taken port fails at once
//! naming its flag), gRPC health, the Quota and RateLimitService services on one port,
//! `/metrics`, a 1 s Redis ping (the up gauge and the Quota service's health status follow
//! Redis while nobody calls), graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

use super::config::Limits;
use super::proto::{QuotaServer, SERVICE_NAME};
use super::rls::Rls;
use super::script::Store;
use super::service::{Backend, QuotaService};
use super::stats::QuotaStats;
use crate::server::{accepted, ServeError};
use crate::tls::Material;

pub const RLS_SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";

pub struct QuotaServe {
    pub store: Store,
    pub limits: Option<Limits>,
    pub tls: Option<Material>,
    /// How long in-flight calls may run after the shutdown signal.
    pub drain: Duration,
}

/// Listeners bound, nothing served yet.
pub struct QuotaBound {
    grpc: TcpListener,
    health: TcpListener,
    metrics: TcpListener,
}

async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|e| ServeError::Bind {
        flag,
        addr,
        why: e.to_string(),
    })
}

impl QuotaBound {
    pub async fn bind(
        grpc: SocketAddr,
        health: SocketAddr,
        metrics: SocketAddr,
    ) -> Result<Self, ServeError> {
        Ok(QuotaBound {
            grpc: bind("--grpc-addr", grpc).await?,
            health: bind("--health-addr", health).await?,
            metrics: bind("--metrics-addr", metrics).await?,
        })
    }

    /// (gRPC, health, metrics) addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> [SocketAddr; 3] {
        let a = |l: &TcpListener| l.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        [a(&self.grpc), a(&self.health), a(&self.metrics)]
    }

    /// Serves until `shutdown`, then stops accepting and lets calls in flight finish.
    pub async fn run(
        self,
        serve: QuotaServe,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let stats = Arc::new(QuotaStats::default());
        let backend = Backend {
            store: serve.store,
            stats: stats.clone(),
        };
        let (reporter, health_service) = tonic_health::server::health_reporter();
        for name in ["liveness", "readiness", RLS_SERVICE] {
            reporter
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        reporter
            .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
            .await;
        let health = tokio::spawn(
            Server::builder()
                .add_service(health_service)
                .serve_with_incoming_shutdown(accepted(self.health), stopped()),
        );
        let ping = tokio::spawn(ping_loop(backend.clone(), reporter.clone(), stopped()));

        let mut builder = Server::builder();
        if let Some(tls) = &serve.tls {
            let identity = Identity::from_pem(&tls.cert_pem, &tls.key_pem);
            builder = builder
                .tls_config(ServerTlsConfig::new().identity(identity))
                .map_err(|e| ServeError::Tls(e.to_string()))?;
        }
        let rls = Rls {
            backend: backend.clone(),
            limits: serve.limits.map(Arc::new),
        };
        let grpc = tokio::spawn(
            builder
                .add_service(QuotaServer::from_arc(Arc::new(QuotaService(backend))))
                .add_service(RateLimitServiceServer::new(rls))
                .serve_with_incoming_shutdown(accepted(self.grpc), stopped()),
        );
        let metrics = tokio::spawn(serve_metrics(self.metrics, stats, stopped()));
        log::info!("quota service: serving");

        let mut grpc = grpc;
        let failed = tokio::select! {
            _ = shutdown => None,
            result = &mut grpc => Some(result),
        };
        reporter
            .set_service_status("readiness", ServingStatus::NotServing)
            .await;
        let _ = stop_tx.send(true);
        let _ = tokio::join!(metrics, ping);
        let result = match failed {
            Some(result) => result,
            // Stopped accepting; calls in flight get `drain` to finish.
            None => match tokio::time::timeout(serve.drain, &mut grpc).await {
                Ok(result) => result,
                Err(_) => {
                    log::warn!("quota service: drain deadline passed; open calls are cut");
                    grpc.abort();
                    Ok(Ok(()))
                }
            },
        };
        health.abort();
        log::info!("quota service: stopped");
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServeError::Grpc(e.to_string())),
            Err(e) => Err(ServeError::Grpc(e.to_string())),
        }
    }
}

/// Pings Redis every second; logs each change between up and down once.
async fn ping_loop(
    backend: Backend,
    reporter: tonic_health::server::HealthReporter,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let mut was_up: Option<bool> = None;
    loop {
        let up = match backend.store.ping().await {
            Ok(()) => true,
            Err(e) => {
                if was_up != Some(false) {
                    log::warn!("quota service: {e}; calls answer UNAVAILABLE until it is back");
                }
                false
            }
        };
        backend.stats.set_redis_up(up);
        if was_up != Some(up) {
            if up {
                log::info!("quota service: Redis is up");
            }
            let status = if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status(SERVICE_NAME, status).await;
            was_up = Some(up);
        }
        tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, text: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r
}

fn metrics_reply(req: &Request<Incoming>, stats: &QuotaStats) -> Reply {
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "not found\n".into());
    }
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    let mut r = reply(StatusCode::OK, stats.render());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

async fn serve_metrics(
    listener: TcpListener,
    stats: Arc<QuotaStats>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("metrics listener: {e}");
                    continue;
                }
            },
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let r = metrics_reply(&req, &stats);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc);
            if let Err(e) = conn.await {
                log::debug!("metrics connection from {peer}: {e}");
            }
        });
    }
}
