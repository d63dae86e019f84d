//! Reads the real token `usage` of a response without holding the response back: a JSON body
//! (kept only up to a bound, parsed at its end) or a server-sent-event stream (scanned chunk by
//! chunk as it passes; usage comes in the last data event).

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

impl Usage {
    /// Tokens the request really used: `total_tokens`, or the sum when a server leaves it out.
    pub fn total(&self) -> u64 {
        self.total_tokens
            .max(self.prompt_tokens.saturating_add(self.completion_tokens))
    }
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<Usage>,
}

/// `usage` of a complete JSON response body, if it has one.
pub fn json_usage(body: &[u8]) -> Option<Usage> {
    serde_json::from_slice::<WithUsage>(body).ok()?.usage
}

/// Longest SSE line kept while waiting for its end; a longer line is skipped (it cannot be
/// the small final usage event anyway).
const MAX_LINE: usize = 256 * 1024;

/// Incremental scanner of a `text/event-stream` response.
#[derive(Debug, Default)]
pub struct SseScanner {
    line: Vec<u8>,
    skipping_long_line: bool,
    /// A `data:` event with content has been seen (time to first token).
    pub saw_data: bool,
    /// Data events seen (about one per generated token).
    pub events: u64,
    pub usage: Option<Usage>,
    pub done: bool,
}

impl SseScanner {
    /// Feeds the next chunk of the stream. Returns true when this chunk completed the first
    /// data event.
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        let before = self.saw_data;
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(nl);
            rest = tail.get(1..).unwrap_or_default();
            if self.skipping_long_line {
                self.skipping_long_line = false;
                self.line.clear();
                continue;
            }
            if self.line.is_empty() {
                self.handle_line(head);
            } else {
                self.line.extend_from_slice(head);
                let line = std::mem::take(&mut self.line);
                self.handle_line(&line);
            }
        }
        if !rest.is_empty() && !self.skipping_long_line {
            if self.line.len() + rest.len() > MAX_LINE {
                self.line.clear();
                self.skipping_long_line = true;
            } else {
                self.line.extend_from_slice(rest);
            }
        }
        !before && self.saw_data
    }

    fn handle_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        if data.is_empty() {
            return;
        }
        self.saw_data = true;
        self.events += 1;
        // Only the event that carries usage is parsed; token events are skipped cheaply.
        if contains(data, b"\"usage\"") {
            if let Some(u) = json_usage(data) {
                self.usage = Some(u);
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests;
