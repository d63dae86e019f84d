//! Reads the real token `usage` of a response without holding the response back: a JSON body
//! or a server-sent-event stream, both scanned chunk by chunk as they pass, with bounded
//! memory whatever their size (see `scan`). When a stream carries no usage
//! (`stream_options.include_usage` off), the completion text it streamed is estimated instead.

mod counts;
mod scan;

use scan::Scan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    /// Tokens the request really used: `total_tokens`, or the sum when a server leaves it out.
    pub fn total(&self) -> u64 {
        self.total_tokens
            .max(self.prompt_tokens.saturating_add(self.completion_tokens))
    }
}

/// `usage` of a complete JSON response body, if it has one (see `JsonUsageScanner`).
pub fn json_usage(body: &[u8]) -> Option<Usage> {
    let mut s = JsonUsageScanner::default();
    s.feed(body);
    s.finish()
}

/// Incremental reader of a non-streaming JSON response: the body is fed as it passes and
/// never kept, so a response of any size yields its `usage` with bounded memory.
///
/// The last top-level `usage` object with at least one readable count wins (`"usage": null`
/// never erases one). Counts are read leniently (`12`, `12.0`, `"12"`); a negative,
/// non-finite or non-numeric count reads as absent (0), a huge one saturates.
#[derive(Debug, Default)]
pub struct JsonUsageScanner {
    // Boxed: the scanner lives in per-request state that is mostly something else.
    scan: Box<Scan>,
}

impl JsonUsageScanner {
    /// A scanner that reads only `usage`: completion text is skipped unread (about a quarter
    /// of the scan of a short answer), and `completion_estimate` stays 0. For a caller that
    /// has no use for the estimate (no tenants to charge).
    pub fn usage_only() -> JsonUsageScanner {
        let mut scan = Box::<Scan>::default();
        scan.wants_text = false;
        JsonUsageScanner { scan }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        self.scan.feed(chunk);
    }

    /// The usage found (call at the end of the body; the body may be cut short).
    pub fn finish(&mut self) -> Option<Usage> {
        self.scan.reset_document();
        self.scan.usage
    }

    /// Estimated tokens of the completion text (`choices[].message.content`, `.text`, tool
    /// calls); complete after `finish`.
    pub fn completion_estimate(&self) -> u64 {
        self.scan.estimate
    }
}

/// Incremental scanner of a `text/event-stream` response.
///
/// Lines end at `\n`, `\r\n` or a bare `\r` (the SSE rules; a `\r\n` split across two chunks
/// is one line end). Lines are never kept: the value of a `data:` line goes straight into a
/// JSON scanner, so a line of any length costs no memory and a usage object in (or after) a
/// huge event is still found. Data lines of one event are joined by `\n`, as the SSE rules
/// say; a blank line ends the event.
#[derive(Debug, Default)]
pub struct SseScanner {
    line: Line,
    /// The previous chunk ended in `\r`: a `\n` first in this one ends no line.
    after_cr: bool,
    field: Vec<u8>,
    /// Bytes of the current data line's value, and its first bytes (to see `[DONE]`).
    data_len: u64,
    head: Vec<u8>,
    json: Box<Scan>,
    /// The event's previous data line left its value unfinished: a `\n` joins the next one.
    join: bool,
    /// A `data:` event with content has been seen (time to first token).
    pub saw_data: bool,
    /// Data lines with content seen (about one per generated token).
    pub events: u64,
    /// The last usage object a data event carried.
    pub usage: Option<Usage>,
    pub done: bool,
    /// Estimated tokens of the streamed completion text (`choices[].delta.content`,
    /// `choices[].text`, reasoning and tool-call text), for streams without usage. Text of an
    /// event still arriving is added when the event (or `finish`) completes it.
    pub completion_estimate: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Nothing read on this line yet.
    #[default]
    Empty,
    /// Reading the field name.
    Field,
    /// Right after `data:` (one space may follow).
    DataStart,
    Data,
    /// A comment, another field, or a field name longer than any of interest.
    Ignore,
}

const DONE: &[u8] = b"[DONE]";
/// Longest field name looked at (`data`).
const FIELD_MAX: usize = 8;

impl SseScanner {
    /// Feeds the next chunk of the stream. Returns true when this chunk completed the first
    /// data event.
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        let before = self.saw_data;
        let mut rest = chunk;
        while let Some((&b, tail)) = rest.split_first() {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                rest = tail;
                continue;
            }
            if matches!(self.line, Line::Data | Line::Ignore) {
                let end = rest
                    .iter()
                    .position(|&c| c == b'\n' || c == b'\r')
                    .unwrap_or(rest.len());
                let (value, after) = rest.split_at(end);
                if self.line == Line::Data {
                    self.data(value);
                }
                rest = after;
                if let Some((&eol, tail)) = rest.split_first() {
                    self.end_line();
                    self.after_cr = eol == b'\r';
                    rest = tail;
                }
                continue;
            }
            rest = tail;
            match b {
                b'\n' | b'\r' => {
                    self.end_line();
                    self.after_cr = b == b'\r';
                }
                _ => self.line_byte(b),
            }
        }
        self.sync();
        !before && self.saw_data
    }

    /// The stream ended: a last line without its line end still counts, and text of an
    /// unfinished event is estimated.
    pub fn finish(&mut self) {
        if self.line != Line::Empty {
            self.end_line();
        }
        self.json.reset_document();
        self.sync();
    }

    fn sync(&mut self) {
        self.usage = self.json.usage;
        self.completion_estimate = self.json.estimate;
    }

    fn line_byte(&mut self, b: u8) {
        match self.line {
            Line::Empty | Line::Field => {
                if b == b':' {
                    self.line = if self.field == b"data" {
                        if std::mem::take(&mut self.join) {
                            self.json.feed(b"\n");
                        }
                        Line::DataStart
                    } else {
                        Line::Ignore
                    };
                } else if self.field.len() < FIELD_MAX {
                    self.field.push(b);
                    self.line = Line::Field;
                } else {
                    self.line = Line::Ignore;
                }
            }
            Line::DataStart => {
                self.line = Line::Data;
                if b != b' ' {
                    self.data(&[b]);
                }
            }
            // Line ends are handled by the caller; these read whole runs.
            Line::Data => self.data(&[b]),
            Line::Ignore => {}
        }
    }

    fn data(&mut self, value: &[u8]) {
        if self.head.len() <= DONE.len() {
            let room = DONE.len() + 1 - self.head.len();
            self.head
                .extend_from_slice(value.get(..room.min(value.len())).unwrap_or_default());
        }
        self.data_len = self
            .data_len
            .saturating_add(u64::try_from(value.len()).unwrap_or(u64::MAX));
        self.json.feed(value);
    }

    fn end_line(&mut self) {
        match self.line {
            // A blank line ends the event.
            Line::Empty => {
                self.join = false;
                self.json.reset_document();
            }
            Line::DataStart | Line::Data => {
                if self.head == DONE {
                    self.done = true;
                } else if self.data_len > 0 {
                    self.saw_data = true;
                    self.events = self.events.saturating_add(1);
                }
                if self.json.in_document() {
                    // The event's next data line continues this value (joined by a `\n`).
                    self.join = true;
                } else {
                    self.json.reset_document();
                }
            }
            Line::Field | Line::Ignore => {}
        }
        self.line = Line::Empty;
        self.field.clear();
        self.head.clear();
        self.data_len = 0;
    }
}

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
