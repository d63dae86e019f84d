//! One fuzz case: a request (and maybe its response) as plain data, stored in the corpus as
//! JSON. Bytes are written as strings in which printable text stands for its UTF-8 bytes, `\\`
//! for a backslash and `\xHH` for a control byte or a byte that is not UTF-8, so any input
//! survives a round trip and a corpus file stays readable.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes that serialize as an escaped string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    pub fn escaped(&self) -> String {
        escape(&self.0)
    }
}

impl From<&[u8]> for Bytes {
    fn from(b: &[u8]) -> Self {
        Bytes(b.to_vec())
    }
}

impl From<&str> for Bytes {
    fn from(s: &str) -> Self {
        Bytes(s.as_bytes().to_vec())
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let hex = |out: &mut String, b: u8| out.push_str(&format!("\\x{b:02x}"));
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        hex(&mut out, b);
                    }
                }
                c => out.push(c),
            }
        }
        for &b in chunk.invalid() {
            hex(&mut out, b);
        }
    }
    out
}

pub fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let raw = text.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        match raw.get(i + 1) {
            Some(b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(b'x') => {
                let hex = text
                    .get(i + 2..i + 4)
                    .ok_or_else(|| format!("truncated \\x escape at {i}"))?;
                let b = u8::from_str_radix(hex, 16).map_err(|e| format!("\\x{hex}: {e}"))?;
                out.push(b);
                i += 4;
            }
            _ => return Err(format!("unknown escape at byte {i}")),
        }
    }
    Ok(out)
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&escape(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        unescape(&text).map(Bytes).map_err(serde::de::Error::custom)
    }
}

pub type Pairs = Vec<(Bytes, Bytes)>;

/// When the client goes away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cancel {
    #[default]
    Never,
    /// After sending the headers and this many body chunks (no end of stream).
    MidBody(usize),
    /// After the whole request, before any response.
    BeforeResponse,
    /// After the response headers and this many response body chunks.
    MidResponse(usize),
}

/// The model server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub status: u32,
    #[serde(default)]
    pub headers: Pairs,
    #[serde(default)]
    pub body: Bytes,
    /// Chunk boundaries (byte offsets) for the "as sent" delivery.
    #[serde(default)]
    pub cuts: Vec<usize>,
    #[serde(default)]
    pub trailers: Option<Pairs>,
}

/// One request through the filter, delivered twice: as sent (chunked at `cuts`, with every
/// header) on one host and canonically (one chunk, without client values of the filter's own
/// headers) on a twin host; the two must decide the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    /// The simulated clock moves this much before the request.
    #[serde(default)]
    pub advance_ms: u64,
    #[serde(default)]
    pub worker: usize,
    pub method: String,
    pub path: Bytes,
    #[serde(default = "default_source")]
    pub source: String,
    #[serde(default)]
    pub headers: Pairs,
    #[serde(default)]
    pub body: Bytes,
    #[serde(default)]
    pub cuts: Vec<usize>,
    #[serde(default)]
    pub trailers: Option<Pairs>,
    #[serde(default)]
    pub cancel: Cancel,
    #[serde(default)]
    pub response: Option<Response>,
    /// How the gRPC calls the filter makes during the case are answered, in turn (cycled;
    /// none: UNAVAILABLE).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc: Vec<GrpcPlan>,
    /// Shared-data values written before the request (as a corruption or another component
    /// would): (key, value), on both hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared: Vec<(String, Bytes)>,
}

/// The answer to one gRPC call of the filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrpcPlan {
    /// Status OK with these response bytes.
    Ok(Bytes),
    /// A non-OK status (any number, even one gRPC does not define) with this message.
    Status { code: u32, message: Bytes },
    /// No answer: the clock moves to the call's deadline (DEADLINE_EXCEEDED).
    Timeout,
}

fn default_source() -> String {
    "10.0.0.1:40000".into()
}

/// `body` split at `cuts` (sorted, deduplicated, inside the body): never an empty chunk.
pub fn split_at(body: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts
        .iter()
        .copied()
        .filter(|&c| c > 0 && c < body.len())
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut at = 0;
    for c in cuts {
        out.push(body[at..c].to_vec());
        at = c;
    }
    if at < body.len() {
        out.push(body[at..].to_vec());
    }
    out
}

fn lossy_pairs(pairs: &mut Pairs) {
    for (k, v) in pairs.iter_mut() {
        for b in [k, v] {
            b.0 = String::from_utf8_lossy(&b.0).into_owned().into_bytes();
        }
    }
}

impl Case {
    /// Makes the path and every header name and value (request, trailers, response) valid UTF-8, replacing
    /// invalid bytes by U+FFFD: lets a run look past a known non-UTF-8 header bug.
    pub fn text_headers_only(&mut self) {
        self.path.0 = String::from_utf8_lossy(&self.path.0)
            .into_owned()
            .into_bytes();
        lossy_pairs(&mut self.headers);
        if let Some(t) = self.trailers.as_mut() {
            lossy_pairs(t);
        }
        if let Some(r) = self.response.as_mut() {
            lossy_pairs(&mut r.headers);
            if let Some(t) = r.trailers.as_mut() {
                lossy_pairs(t);
            }
        }
    }

    /// Short one-line description for progress and failure output.
    pub fn summary(&self) -> String {
        let path = escape(&self.path.0);
        let path: String = path.chars().take(80).collect();
        format!(
            "worker {} +{}ms {} {} ({} headers, {} body bytes in {} chunks, cancel {:?}, response {})",
            self.worker,
            self.advance_ms,
            self.method,
            path,
            self.headers.len(),
            self.body.0.len(),
            split_at(&self.body.0, &self.cuts).len(),
            self.cancel,
            self.response
                .as_ref()
                .map_or("none".to_string(), |r| r.status.to_string()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_through_json() -> Result<(), String> {
        let all: Vec<u8> = (0..=255u8).collect();
        let text = serde_json::to_string(&Bytes(all.clone())).map_err(|e| e.to_string())?;
        let back: Bytes = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        assert_eq!(back.0, all);
        assert_eq!(escape(b"a\\b\xa1\n\xc3\xa9"), "a\\\\b\\xa1\\x0a\u{e9}");
        assert_eq!(
            unescape("\u{e9}\\x0a").map_err(|e| e.to_string())?,
            b"\xc3\xa9\n"
        );
        assert!(unescape("\\q").is_err());
        assert!(unescape("\\x4").is_err());
        Ok(())
    }

    #[test]
    fn split_never_yields_empty_chunks() {
        assert_eq!(
            split_at(b"abcdef", &[0, 2, 2, 9, 4]),
            vec![b"ab".to_vec(), b"cd".to_vec(), b"ef".to_vec()]
        );
        assert!(split_at(b"", &[1]).is_empty());
    }
}
