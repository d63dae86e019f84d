//! A minimal blocking HTTP/1.1 client over std::net for plain `http://`: one request per
//! connection (`Connection: close`), a hard deadline over connect + write + read, bodies framed
//! by Content-Length, chunked transfer encoding, or end of stream.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Upper bound on a response body (a vLLM /metrics page is ~100 KiB).
pub const MAX_BODY: usize = 16 << 20;
const MAX_HEAD: usize = 64 << 10;

#[derive(Debug)]
pub enum HttpError {
    /// No connection could be made (refused, unreachable, ...).
    Connect(io::Error),
    /// The deadline passed.
    Timeout,
    Io(io::Error),
    /// The peer's answer is not HTTP/1.x as expected.
    Protocol(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Connect(e) => write!(f, "connect failed: {e}"),
            HttpError::Timeout => write!(f, "timed out"),
            HttpError::Io(e) => write!(f, "I/O error: {e}"),
            HttpError::Protocol(m) => write!(f, "bad HTTP response: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

pub struct Request<'a> {
    pub method: &'a str,
    /// Value of the Host header.
    pub host: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// Sends `req` to the first of `addrs` that accepts a connection; everything must finish
/// within `timeout`.
pub fn send(
    addrs: &[SocketAddr],
    req: &Request<'_>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(addrs, deadline)?;
    let _ = stream.set_nodelay(true);

    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: llm-router-sidecar/{}\r\nConnection: close\r\n",
        req.method,
        req.path,
        req.host,
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in req.headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    if !req.body.is_empty() || req.method != "GET" {
        head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(req.body);
    stream
        .set_write_timeout(Some(remaining(deadline)?))
        .map_err(HttpError::Io)?;
    stream.write_all(&out).map_err(io_err)?;
    read_response(&mut stream, deadline, req.method == "HEAD")
}

fn connect(addrs: &[SocketAddr], deadline: Instant) -> Result<TcpStream, HttpError> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(addr, remaining(deadline)?) {
            Ok(s) => return Ok(s),
            Err(e) if is_timeout(&e) => return Err(HttpError::Timeout),
            Err(e) => last = Some(e),
        }
    }
    Err(HttpError::Connect(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "no address to connect to")
    })))
}

fn remaining(deadline: Instant) -> Result<Duration, HttpError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(HttpError::Timeout)
    } else {
        Ok(left)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

fn io_err(e: io::Error) -> HttpError {
    if is_timeout(&e) {
        HttpError::Timeout
    } else {
        HttpError::Io(e)
    }
}

/// Reads more bytes into `buf`; returns how many (0 at end of stream).
fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<usize, HttpError> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        stream
            .set_read_timeout(Some(remaining(deadline)?))
            .map_err(HttpError::Io)?;
        match stream.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        }
    }
}

fn read_response(
    stream: &mut TcpStream,
    deadline: Instant,
    head_only: bool,
) -> Result<Response, HttpError> {
    let mut buf = Vec::new();
    loop {
        // Find the end of the response head.
        let head_end = loop {
            if let Some(pos) = find(&buf, b"\r\n\r\n") {
                break pos + 4;
            }
            if buf.len() > MAX_HEAD {
                return Err(HttpError::Protocol("response head too large".into()));
            }
            if read_more(stream, &mut buf, deadline)? == 0 {
                return Err(HttpError::Protocol(if buf.is_empty() {
                    "connection closed without a response".into()
                } else {
                    "connection closed inside the response head".into()
                }));
            }
        };
        let head = parse_head(&buf[..head_end])?;
        if (100..200).contains(&head.status) {
            // Interim response (e.g. 100 Continue): the real one follows.
            buf.drain(..head_end);
            continue;
        }
        let mut body_buf = buf.split_off(head_end);
        let no_body = head_only || head.status == 204 || head.status == 304;
        let body = if no_body {
            Vec::new()
        } else if head.chunked {
            loop {
                if let Some(body) = decode_chunked(&body_buf)? {
                    break body;
                }
                check_size(body_buf.len())?;
                if read_more(stream, &mut body_buf, deadline)? == 0 {
                    return Err(HttpError::Protocol(
                        "connection closed inside a chunked body".into(),
                    ));
                }
            }
        } else if let Some(len) = head.content_length {
            check_size(len)?;
            while body_buf.len() < len {
                if read_more(stream, &mut body_buf, deadline)? == 0 {
                    return Err(HttpError::Protocol(format!(
                        "connection closed after {} of {len} body bytes",
                        body_buf.len()
                    )));
                }
            }
            body_buf.truncate(len);
            body_buf
        } else {
            while read_more(stream, &mut body_buf, deadline)? > 0 {
                check_size(body_buf.len())?;
            }
            body_buf
        };
        return Ok(Response {
            status: head.status,
            body,
        });
    }
}

fn check_size(len: usize) -> Result<(), HttpError> {
    if len > MAX_BODY {
        Err(HttpError::Protocol(format!(
            "body larger than {MAX_BODY} bytes"
        )))
    } else {
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
}

fn parse_head(raw: &[u8]) -> Result<Head, HttpError> {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Protocol(format!(
            "unexpected status line {status_line:?}"
        )));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..1000).contains(s))
        .ok_or_else(|| HttpError::Protocol(format!("unexpected status line {status_line:?}")))?;
    let mut head = Head {
        status,
        content_length: None,
        chunked: false,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(
                value
                    .parse()
                    .map_err(|_| HttpError::Protocol(format!("bad content-length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    Ok(head)
}

/// Decodes a complete chunked body. `Ok(None)`: more bytes are needed.
pub fn decode_chunked(data: &[u8]) -> Result<Option<Vec<u8>>, HttpError> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_len) = find(&data[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&data[pos..pos + line_len]);
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Protocol(format!("bad chunk size {size_text:?}")))?;
        pos += line_len + 2;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some(len) = find(&data[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += len + 2;
                if len == 0 {
                    return Ok(Some(out));
                }
            }
        }
        check_size(out.len().saturating_add(size))?;
        if data.len() < pos + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&data[pos..pos + size]);
        if &data[pos + size..pos + size + 2] != b"\r\n" {
            return Err(HttpError::Protocol("chunk not followed by CRLF".into()));
        }
        pos += size + 2;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    #[test]
    fn chunked_decoding() {
        let full = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n";
        assert_eq!(
            decode_chunked(full).unwrap().unwrap(),
            b"Wikipedia in\r\n\r\nchunks.".to_vec()
        );
        for cut in 0..full.len() {
            assert_eq!(decode_chunked(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(decode_chunked(b"zz\r\n").is_err());
        assert!(decode_chunked(b"2\r\nabc\r\n").is_err());
    }

    #[test]
    fn head_parsing() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX: y\r\n\r\n").unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                content_length: Some(12),
                chunked: false
            }
        );
        let h = parse_head(b"HTTP/1.1 204 No Content\r\ntransfer-encoding: gzip, Chunked\r\n\r\n")
            .unwrap();
        assert!(h.chunked);
        assert_eq!(h.status, 204);
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    /// Serves one connection with `reply`, returns what the client sent.
    fn one_shot(reply: &'static [u8]) -> (SocketAddr, thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            while find(&got, b"\r\n\r\n").is_none() {
                let n = s.read(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
            s.write_all(reply).unwrap();
            got
        });
        (addr, handle)
    }

    fn get(addr: SocketAddr, timeout: Duration) -> Result<Response, HttpError> {
        let req = Request {
            method: "GET",
            host: "example",
            path: "/metrics",
            headers: &[("Accept", "text/plain")],
            body: b"",
        };
        send(&[addr], &req, timeout)
    }

    #[test]
    fn content_length_and_chunked_responses() {
        let (addr, h) = one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        let r = get(addr, Duration::from_secs(5)).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, b"hello".as_slice()));
        let sent = String::from_utf8(h.join().unwrap()).unwrap();
        assert!(
            sent.starts_with("GET /metrics HTTP/1.1\r\nHost: example\r\n"),
            "{sent}"
        );
        assert!(sent.contains("Accept: text/plain\r\n"), "{sent}");

        let (addr, _h) = one_shot(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        );
        let r = get(addr, Duration::from_secs(5)).unwrap();
        assert_eq!(r.body, b"abc".to_vec());

        let (addr, _h) = one_shot(b"HTTP/1.0 500 Internal Server Error\r\n\r\nboom");
        let r = get(addr, Duration::from_secs(5)).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (500, b"boom".as_slice()));
    }

    #[test]
    fn no_content_does_not_wait_for_close() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _h = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut chunk = [0u8; 4096];
            let _ = s.read(&mut chunk);
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            thread::sleep(Duration::from_secs(3)); // keeps the connection open
        });
        let started = Instant::now();
        let r = get(addr, Duration::from_secs(2)).unwrap();
        assert_eq!(r.status, 204);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn deadline_and_refusal() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _h = thread::spawn(move || {
            let (_s, _) = listener.accept().unwrap();
            thread::sleep(Duration::from_secs(3));
        });
        let started = Instant::now();
        assert!(matches!(
            get(addr, Duration::from_millis(200)),
            Err(HttpError::Timeout)
        ));
        assert!(started.elapsed() < Duration::from_secs(1));

        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(matches!(
            get(closed, Duration::from_secs(1)),
            Err(HttpError::Connect(_))
        ));
    }
}
