//! The plain-HTTP endpoint on `--metrics-addr`: `GET /metrics` (the filter's metrics and the
//! server's), and the filter's push path, handed to the filter as an HTTP stream whose source
//! address is the peer, so the filter's own push handler answers it (204/403/400/...).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::engine::{FilterEngine, FilterStream, Headers, Step, StreamProps};
use crate::service::Shared;

/// Push snapshots are small; anything larger is refused before the filter sees it.
const MAX_PUSH_BYTES: usize = 4 * 1024 * 1024;

pub type Reply = Response<Full<Bytes>>;

fn plain(status: StatusCode, text: &str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(text.to_string())));
    *r.status_mut() = status;
    r
}

/// Serves connections until `shutdown` resolves.
pub async fn serve<E: FilterEngine>(
    listener: TcpListener,
    shared: Arc<Shared<E>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    accept_loop(listener, shutdown, move |req, peer| {
        let shared = shared.clone();
        async move { handle(req, peer, shared).await }
    })
    .await
}

/// The accept loop of a plain HTTP/1 endpoint (this one, and the quota service's
/// `/metrics`): every connection served by `handler` until `shutdown` resolves.
pub async fn accept_loop<H, F>(
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Reply> + Send + 'static,
{
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
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let reply = handler(req, peer);
                async move { Ok::<_, Infallible>(reply.await) }
            });
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc);
            if let Err(e) = conn.await {
                log::debug!("metrics connection from {peer}: {e}");
            }
        });
    }
}

async fn handle<E: FilterEngine>(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared<E>>,
) -> Reply {
    let path = req.uri().path().to_string();
    if path == "/metrics" {
        if req.method() != Method::GET {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        let text = {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || {
                let mut text = shared.engine.prometheus();
                text.push_str(&shared.counters.render(&shared.engine.stats()));
                text
            })
            .await
            .unwrap_or_default()
        };
        let mut r = plain(StatusCode::OK, &text);
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return r;
    }
    if path != shared.facts().push_path {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    shared.counters.inc(|c| &c.push_requests);
    let headers = request_headers(&req);
    let body = match Limited::new(req.into_body(), MAX_PUSH_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "push body too large\n"),
    };
    let answered =
        tokio::task::spawn_blocking(move || through_filter(&shared.engine, peer, headers, body))
            .await;
    match answered {
        Ok(Some(reply)) => reply,
        Ok(None) => plain(
            StatusCode::NOT_FOUND,
            "the filter does not serve this path\n",
        ),
        Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "filter engine failed\n"),
    }
}

/// The request as Envoy would give it to the filter: pseudo-headers first, names lower case.
fn request_headers(req: &Request<Incoming>) -> Headers {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let authority = req
        .headers()
        .get(hyper::header::HOST)
        .map(|h| h.as_bytes().to_vec())
        .unwrap_or_else(|| b"localhost".to_vec());
    let mut headers: Headers = vec![
        (
            b":method".to_vec(),
            req.method().as_str().as_bytes().to_vec(),
        ),
        (b":path".to_vec(), path.into_bytes()),
        (b":authority".to_vec(), authority),
        (b":scheme".to_vec(), b"http".to_vec()),
    ];
    for (name, value) in req.headers() {
        if name != hyper::header::HOST {
            headers.push((name.as_str().as_bytes().to_vec(), value.as_bytes().to_vec()));
        }
    }
    headers
}

/// Runs one HTTP request through the filter; Some(reply) when the filter answered it.
fn through_filter<E: FilterEngine>(
    engine: &E,
    peer: SocketAddr,
    headers: Headers,
    body: Vec<u8>,
) -> Option<Reply> {
    let mut stream = engine.open_stream(StreamProps {
        source_address: Some(peer.to_string()),
        destination_address: None,
        properties: Vec::new(),
    });
    let mut step = stream.request_headers(headers, body.is_empty());
    if !body.is_empty() && !matches!(step, Step::Reply { .. } | Step::Trapped { .. }) {
        step = stream.request_body(body, true);
    }
    stream.finish();
    match step {
        Step::Reply {
            status,
            headers,
            body,
        } => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = StatusCode::from_u16(u16::try_from(status).unwrap_or(500))
                .unwrap_or(StatusCode::BAD_GATEWAY);
            for (name, value) in headers {
                if let (Ok(n), Ok(v)) = (
                    hyper::header::HeaderName::from_bytes(&name),
                    hyper::header::HeaderValue::from_bytes(&value),
                ) {
                    r.headers_mut().append(n, v);
                }
            }
            Some(r)
        }
        Step::Trapped { .. } => Some(plain(StatusCode::SERVICE_UNAVAILABLE, "filter failed\n")),
        Step::Hold | Step::Continue { .. } => None,
    }
}
