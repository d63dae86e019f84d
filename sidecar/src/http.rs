//! The HTTP client: hyper-util's pooled HTTP/1.1 client over plain `http://` (model servers'
//! `/metrics`, the gateway listener), with one deadline over the whole exchange (connect,
//! request, complete body) and a cap on the body size.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// Upper bound on a response body (a vLLM /metrics page is ~100 KiB).
pub const MAX_BODY: usize = 16 << 20;
/// Idle keep-alive connections are closed after this (endpoints come and go).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One client for the process: connections to each model server and to the gateway are kept
/// alive between cycles.
pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(1)
        .build(connector)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// No connection could be made (refused, unreachable, name not resolved, ...).
    Connect(String),
    /// The deadline passed.
    Timeout,
    /// The body is larger than [`MAX_BODY`].
    TooLarge,
    /// The connection broke or the answer is not HTTP/1.x.
    Transport(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Connect(e) => write!(f, "connect failed: {e}"),
            HttpError::Timeout => write!(f, "timed out"),
            HttpError::TooLarge => write!(f, "response body larger than {MAX_BODY} bytes"),
            HttpError::Transport(e) => write!(f, "{e}"),
        }
    }
}

impl StdError for HttpError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Sends `request`; the answer, body included, must be complete within `timeout`.
pub async fn send(
    client: &HttpClient,
    request: hyper::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    tokio::time::timeout(timeout, exchange(client, request))
        .await
        .unwrap_or(Err(HttpError::Timeout))
}

async fn exchange(
    client: &HttpClient,
    request: hyper::Request<Full<Bytes>>,
) -> Result<Response, HttpError> {
    let response = client.request(request).await.map_err(|e| {
        if e.is_connect() {
            HttpError::Connect(causes(&e))
        } else {
            HttpError::Transport(causes(&e))
        }
    })?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                HttpError::TooLarge
            } else {
                HttpError::Transport(causes(e.as_ref()))
            }
        })?
        .to_bytes();
    Ok(Response {
        status,
        body: body.to_vec(),
    })
}

/// An error with its causes, e.g. `client error (Connect): tcp connect error: Connection
/// refused (os error 111)`.
fn causes(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.ends_with(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server that answers one connection with `reply` after `delay`.
    async fn one_shot(reply: Vec<u8>, delay: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            tokio::time::sleep(delay).await;
            let _ = stream.write_all(&reply).await;
        });
        format!("http://{addr}/metrics")
    }

    fn get(url: &str) -> hyper::Request<Full<Bytes>> {
        hyper::Request::get(url).body(Full::default()).unwrap()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn content_length_and_chunked_bodies() {
        rt().block_on(async {
            let c = client();
            let url = one_shot(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
                Duration::ZERO,
            )
            .await;
            let r = send(&c, get(&url), Duration::from_secs(2)).await.unwrap();
            assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
            let url = one_shot(
                b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                    .to_vec(),
                Duration::ZERO,
            )
            .await;
            let r = send(&c, get(&url), Duration::from_secs(2)).await.unwrap();
            assert_eq!((r.status, r.body.as_slice()), (503, &b"abcde"[..]));
        });
    }

    #[test]
    fn deadline_refusal_and_garbage() {
        rt().block_on(async {
            let c = client();
            let url = one_shot(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
                Duration::from_millis(500),
            )
            .await;
            let started = std::time::Instant::now();
            let r = send(&c, get(&url), Duration::from_millis(100)).await;
            assert_eq!(r, Err(HttpError::Timeout));
            assert!(started.elapsed() < Duration::from_millis(400));

            let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = closed.local_addr().unwrap();
            drop(closed);
            let r = send(&c, get(&format!("http://{addr}/")), Duration::from_secs(2)).await;
            match r {
                Err(HttpError::Connect(e)) => assert!(e.contains("refused"), "{e}"),
                other => panic!("expected a connect error, got {other:?}"),
            }

            let url = one_shot(b"SSH-2.0-OpenSSH\r\n".to_vec(), Duration::ZERO).await;
            let r = send(&c, get(&url), Duration::from_secs(2)).await;
            assert!(matches!(r, Err(HttpError::Transport(_))), "{r:?}");
        });
    }
}
