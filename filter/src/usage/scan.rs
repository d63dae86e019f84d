//! An incremental JSON scanner with bounded memory: it is fed a document in chunks of any size
//! and keeps only what the accounting needs:
//!
//! - the last top-level `usage` object whose counts it can read (numbers read leniently:
//!   `12`, `12.0`, `1.2e1`, `"12"`; negative, non-finite or non-numeric counts are ignored);
//! - an estimate of the completion text it saw (`choices[].text`, and in `choices[].delta` or
//!   `choices[].message`: `content`, `reasoning_content`, `reasoning`, `refusal`,
//!   `tool_calls[].function.name` / `.arguments`, `function_call.name` / `.arguments`).
//!
//! It is a tokenizer, not a validator: it tracks strings (so nothing inside a string is taken
//! for structure), brackets and the keys on the few paths above. Containers off those paths
//! are skipped by counting brackets, so memory stays a few hundred bytes plus one text chunk,
//! whatever the document's size or nesting. The result does not depend on how the document was
//! split into chunks.

use super::counts::{lenient_count, Counts, Field};
use super::Usage;
use crate::body::find_quote_or_backslash;
use crate::tokens::estimate_tokens;

/// Text is estimated in chunks of this many bytes (and at the end of every string), so a huge
/// completion string needs no more memory than this.
pub(crate) const TEXT_CHUNK: usize = 16 * 1024;
/// Longest key compared against the names above (longer keys are none of them).
const KEY_MAX: usize = 24;
/// Longest number (or numeric string) read as a usage count.
const NUM_MAX: usize = 40;

/// Containers on the paths of interest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Root,
    Choices,
    Choice,
    Message,
    ToolCalls,
    ToolCall,
    Function,
    Usage,
}

impl Role {
    fn is_object(self) -> bool {
        !matches!(self, Role::Choices | Role::ToolCalls)
    }
}

/// What the value of the current object member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Other,
    Usage,
    Choices,
    Message,
    Text,
    ToolCalls,
    Function,
    Count(Field),
}

fn classify(role: Role, key: &[u8]) -> Member {
    match (role, key) {
        (Role::Root, b"usage") => Member::Usage,
        (Role::Root, b"choices") => Member::Choices,
        (Role::Choice, b"delta" | b"message") => Member::Message,
        (Role::Choice, b"text") => Member::Text,
        (Role::Message, b"content" | b"reasoning_content" | b"reasoning" | b"refusal") => {
            Member::Text
        }
        (Role::Message, b"tool_calls") => Member::ToolCalls,
        (Role::Message, b"function_call") | (Role::ToolCall, b"function") => Member::Function,
        (Role::Function, b"name" | b"arguments") => Member::Text,
        (Role::Usage, b"prompt_tokens") => Member::Count(Field::Prompt),
        (Role::Usage, b"completion_tokens") => Member::Count(Field::Completion),
        (Role::Usage, b"total_tokens") => Member::Count(Field::Total),
        _ => Member::Other,
    }
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    role: Role,
    expect_key: bool,
    member: Member,
}

impl Frame {
    fn new(role: Role) -> Frame {
        Frame {
            role,
            expect_key: role.is_object(),
            member: Member::Other,
        }
    }

    /// The role of a container that starts as the current value, if it is on a path.
    fn child(&self, object: bool) -> Option<Role> {
        if self.role.is_object() {
            match (self.member, object) {
                (Member::Usage, true) => Some(Role::Usage),
                (Member::Choices, false) => Some(Role::Choices),
                (Member::Message, true) => Some(Role::Message),
                (Member::ToolCalls, false) => Some(Role::ToolCalls),
                (Member::Function, true) => Some(Role::Function),
                _ => None,
            }
        } else {
            match (self.role, object) {
                (Role::Choices, true) => Some(Role::Choice),
                (Role::ToolCalls, true) => Some(Role::ToolCall),
                _ => None,
            }
        }
    }

    /// What a scalar that starts here is (array elements are never of interest).
    fn scalar(&self) -> Member {
        if self.role.is_object() && !self.expect_key {
            self.member
        } else {
            Member::Other
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Before the document's first byte: only an object is of interest.
    Start,
    /// Between tokens.
    Between,
    Str,
    Scalar,
    /// The top-level object closed; the rest is ignored.
    Done,
    /// Not an object, or broken beyond use; the rest is ignored.
    Failed,
}

/// Where the characters of the current string or scalar go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Skip,
    Key,
    Num(Field),
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    No,
    Backslash,
    /// `\u` and the hex digits read so far with their value.
    Hex(u8, u32),
}

#[derive(Debug)]
pub(crate) struct Scan {
    mode: Mode,
    sink: Sink,
    escape: Escape,
    /// A `\uD8xx` high surrogate waiting for its low half.
    high: Option<u32>,
    /// Frames on the paths of interest (at most 8: the roles above nest no deeper).
    stack: Vec<Frame>,
    /// Depth inside a container off those paths (skipped by counting brackets).
    deep: u64,
    key: Vec<u8>,
    key_long: bool,
    num: Vec<u8>,
    num_long: bool,
    text: Vec<u8>,
    counts: Counts,
    /// The last readable top-level `usage` (of this or an earlier document).
    pub(crate) usage: Option<Usage>,
    /// Estimated tokens of the completion text seen so far (all documents).
    pub(crate) estimate: u64,
    /// Whether completion text is read and estimated at all (off: text strings are skipped
    /// like any other value, and `estimate` stays 0).
    pub(crate) wants_text: bool,
}

impl Default for Scan {
    fn default() -> Self {
        Scan {
            mode: Mode::Start,
            sink: Sink::Skip,
            escape: Escape::No,
            high: None,
            stack: Vec::new(),
            deep: 0,
            key: Vec::new(),
            key_long: false,
            num: Vec::new(),
            num_long: false,
            text: Vec::new(),
            counts: Counts::default(),
            usage: None,
            estimate: 0,
            wants_text: true,
        }
    }
}

impl Scan {
    /// Inside a document that has not ended yet.
    pub(crate) fn in_document(&self) -> bool {
        matches!(self.mode, Mode::Between | Mode::Str | Mode::Scalar)
    }

    /// Ends the current document (complete or not) and gets ready for the next one; what was
    /// found (usage, estimate) is kept. Pending text is estimated.
    pub(crate) fn reset_document(&mut self) {
        self.flush_text(true);
        let usage = self.usage;
        let estimate = self.estimate;
        let text = std::mem::take(&mut self.text);
        let wants_text = self.wants_text;
        *self = Scan {
            usage,
            estimate,
            text,
            wants_text,
            ..Scan::default()
        };
    }

    /// Heap bytes held (for the tests of the memory bound).
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        self.text.capacity()
            + self.key.capacity()
            + self.num.capacity()
            + self.stack.capacity() * std::mem::size_of::<Frame>()
    }

    pub(crate) fn feed(&mut self, input: &[u8]) {
        let mut i = 0;
        while i < input.len() {
            i = match self.mode {
                Mode::Done | Mode::Failed => return,
                Mode::Str if self.sink == Sink::Skip => self.skip_string(input, i),
                Mode::Str => self.decode_string(input, i),
                Mode::Scalar => self.scalar(input, i),
                Mode::Start | Mode::Between if self.deep > 0 => self.skip_deep(input, i),
                Mode::Start | Mode::Between => {
                    if let Some(&b) = input.get(i) {
                        self.structural(b);
                    }
                    i + 1
                }
            };
        }
    }

    fn structural(&mut self, b: u8) {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            return;
        }
        if self.mode == Mode::Start {
            if b == b'{' {
                self.stack.push(Frame::new(Role::Root));
                self.mode = Mode::Between;
            } else {
                self.mode = Mode::Failed;
            }
            return;
        }
        let Some(&top) = self.stack.last() else {
            self.mode = Mode::Done;
            return;
        };
        match b {
            b',' => self.set_top(|f| {
                f.expect_key = f.role.is_object();
                f.member = Member::Other;
            }),
            b':' => self.set_top(|f| f.expect_key = false),
            b'"' => {
                self.sink = if top.role.is_object() && top.expect_key {
                    self.key.clear();
                    self.key_long = false;
                    Sink::Key
                } else {
                    self.value_sink(top.scalar())
                };
                self.mode = Mode::Str;
            }
            b'{' | b'[' => {
                if let Member::Count(f) = top.scalar() {
                    self.counts.set(f, None);
                }
                // Without completion text to read, `choices` is skipped like any container off
                // the paths (bracket counting): `usage` is never inside it.
                let wanted = |role: &Role| self.wants_text || *role != Role::Choices;
                match top.child(b == b'{').filter(wanted) {
                    Some(role) => {
                        if role == Role::Usage {
                            self.counts = Counts::default();
                        }
                        self.stack.push(Frame::new(role));
                    }
                    None => self.deep = 1,
                }
            }
            b'}' | b']' => self.close(),
            _ => {
                self.sink = self.value_sink(top.scalar());
                self.mode = Mode::Scalar;
                if let Sink::Num(_) = self.sink {
                    self.push_num(&[b]);
                }
            }
        }
    }

    fn set_top(&mut self, f: impl FnOnce(&mut Frame)) {
        if let Some(top) = self.stack.last_mut() {
            f(top);
        }
    }

    fn value_sink(&mut self, member: Member) -> Sink {
        match member {
            Member::Text if self.wants_text => Sink::Text,
            Member::Count(f) => {
                self.num.clear();
                self.num_long = false;
                Sink::Num(f)
            }
            _ => Sink::Skip,
        }
    }

    fn close(&mut self) {
        if let Some(frame) = self.stack.pop() {
            if frame.role == Role::Usage {
                if let Some(u) = self.counts.usage() {
                    self.usage = Some(u);
                }
            }
        }
        if self.stack.is_empty() {
            self.mode = Mode::Done;
        }
    }

    /// Skips a container off the paths: strings are still tokenized so that brackets inside
    /// them do not count.
    fn skip_deep(&mut self, input: &[u8], from: usize) -> usize {
        let rest = input.get(from..).unwrap_or_default();
        for (k, &b) in rest.iter().enumerate() {
            match b {
                b'"' => {
                    self.sink = Sink::Skip;
                    self.mode = Mode::Str;
                    return from + k + 1;
                }
                b'{' | b'[' => self.deep = self.deep.saturating_add(1),
                b'}' | b']' => {
                    self.deep = self.deep.saturating_sub(1);
                    if self.deep == 0 {
                        return from + k + 1;
                    }
                }
                _ => {}
            }
        }
        input.len()
    }

    fn skip_string(&mut self, input: &[u8], mut i: usize) -> usize {
        if self.escape == Escape::Backslash {
            self.escape = Escape::No;
            i += 1;
        }
        match find_quote_or_backslash(input, i) {
            None => input.len(),
            Some(p) => {
                if input.get(p) == Some(&b'\\') {
                    self.escape = Escape::Backslash;
                } else {
                    self.mode = Mode::Between;
                }
                p + 1
            }
        }
    }

    /// A string whose characters are kept (key, count or text), escapes decoded.
    fn decode_string(&mut self, input: &[u8], mut i: usize) -> usize {
        while let Some(&b) = input.get(i) {
            match self.escape {
                Escape::Backslash => {
                    self.escape = Escape::No;
                    let c = match b {
                        b'u' => {
                            self.escape = Escape::Hex(0, 0);
                            i += 1;
                            continue;
                        }
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        other => char::from(other),
                    };
                    self.pending_high();
                    self.push_char(c);
                    i += 1;
                }
                Escape::Hex(n, acc) => match char::from(b).to_digit(16) {
                    Some(d) => {
                        i += 1;
                        let acc = acc * 16 + d;
                        if n == 3 {
                            self.escape = Escape::No;
                            self.push_unit(acc);
                        } else {
                            self.escape = Escape::Hex(n + 1, acc);
                        }
                    }
                    None => {
                        // A broken escape: a replacement character, and the byte is read again.
                        self.escape = Escape::No;
                        self.pending_high();
                        self.push_char(char::REPLACEMENT_CHARACTER);
                    }
                },
                Escape::No => {
                    let rest = input.get(i..).unwrap_or_default();
                    let p = find_quote_or_backslash(rest, 0).unwrap_or(rest.len());
                    if p > 0 {
                        self.pending_high();
                        self.push_bytes(rest.get(..p).unwrap_or_default());
                    }
                    i += p;
                    match rest.get(p) {
                        Some(b'\\') => {
                            self.escape = Escape::Backslash;
                            i += 1;
                        }
                        Some(_) => {
                            self.end_string();
                            return i + 1;
                        }
                        None => {}
                    }
                }
            }
        }
        i
    }

    fn end_string(&mut self) {
        self.pending_high();
        self.mode = Mode::Between;
        let frame = self.stack.last_mut();
        match (self.sink, frame) {
            (Sink::Key, Some(frame)) => {
                frame.member = if self.key_long {
                    Member::Other
                } else {
                    classify(frame.role, &self.key)
                };
            }
            (Sink::Num(f), _) => self.end_num(f),
            (Sink::Text, _) => self.flush_text(true),
            _ => {}
        }
        self.sink = Sink::Skip;
    }

    fn scalar(&mut self, input: &[u8], i: usize) -> usize {
        let rest = input.get(i..).unwrap_or_default();
        let end = rest.iter().position(|&b| {
            matches!(
                b,
                b' ' | b'\t' | b'\n' | b'\r' | b',' | b':' | b'}' | b']' | b'"' | b'{' | b'['
            )
        });
        let p = end.unwrap_or(rest.len());
        if let Sink::Num(_) = self.sink {
            self.push_num(rest.get(..p).unwrap_or_default());
        }
        if end.is_some() {
            if let Sink::Num(f) = self.sink {
                self.end_num(f);
            }
            self.sink = Sink::Skip;
            self.mode = Mode::Between;
        }
        i + p
    }

    fn end_num(&mut self, f: Field) {
        let v = if self.num_long {
            None
        } else {
            lenient_count(&self.num)
        };
        self.counts.set(f, v);
    }

    fn push_num(&mut self, bytes: &[u8]) {
        if self.num.len() + bytes.len() > NUM_MAX {
            self.num_long = true;
        } else {
            self.num.extend_from_slice(bytes);
        }
    }

    fn pending_high(&mut self) {
        if self.high.take().is_some() {
            self.push_char(char::REPLACEMENT_CHARACTER);
        }
    }

    /// One UTF-16 code unit from a `\u` escape.
    fn push_unit(&mut self, unit: u32) {
        if let Some(high) = self.high.take() {
            if (0xDC00..=0xDFFF).contains(&unit) {
                let c = 0x10000 + ((high - 0xD800) << 10) + (unit - 0xDC00);
                self.push_char(char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER));
                return;
            }
            self.push_char(char::REPLACEMENT_CHARACTER);
        }
        if (0xD800..=0xDBFF).contains(&unit) {
            self.high = Some(unit);
        } else {
            self.push_char(char::from_u32(unit).unwrap_or(char::REPLACEMENT_CHARACTER));
        }
    }

    fn push_char(&mut self, c: char) {
        let mut buf = [0u8; 4];
        self.push_bytes(c.encode_utf8(&mut buf).as_bytes());
    }

    fn push_bytes(&mut self, mut bytes: &[u8]) {
        match self.sink {
            Sink::Skip => {}
            Sink::Key => {
                if self.key.len() + bytes.len() > KEY_MAX {
                    self.key_long = true;
                } else {
                    self.key.extend_from_slice(bytes);
                }
            }
            Sink::Num(_) => self.push_num(bytes),
            Sink::Text => {
                // Filled to exactly TEXT_CHUNK before each flush, so the cuts (and the
                // estimate) depend on the text only, never on how it was chunked.
                while !bytes.is_empty() {
                    let room = TEXT_CHUNK.saturating_sub(self.text.len()).max(1);
                    let (now, later) = bytes.split_at(room.min(bytes.len()));
                    self.text.extend_from_slice(now);
                    bytes = later;
                    if self.text.len() >= TEXT_CHUNK {
                        self.flush_text(false);
                    }
                }
            }
        }
    }

    /// Estimates the kept text: all of it, or (mid-string) up to its last whole character.
    fn flush_text(&mut self, all: bool) {
        if self.text.is_empty() {
            return;
        }
        let cut = match std::str::from_utf8(&self.text) {
            Ok(_) => self.text.len(),
            Err(e) if e.error_len().is_none() && !all => e.valid_up_to(),
            Err(_) => self.text.len(),
        };
        let head = self.text.get(..cut).unwrap_or_default();
        let tokens = estimate_tokens(&String::from_utf8_lossy(head));
        self.estimate = self.estimate.saturating_add(tokens);
        self.text.drain(..cut);
    }
}
