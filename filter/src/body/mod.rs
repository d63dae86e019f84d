//! OpenAI-style request bodies: what the router needs from them, and the one edit it makes
//! (the `model` field), done in place so every other byte of the body is kept.

use scan::Raw;
use std::borrow::Cow;
use std::ops::Range;

mod bytes;
mod json;
mod prompt;
mod scan;
mod strict;
mod text;

pub(crate) use text::find_quote_or_backslash;

/// Why a body could not be inspected. `label()` is a bounded set (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidBody {
    Empty,
    TooLarge,
    NotJson,
    NotObject,
    /// Valid JSON object, but a field the router reads has a value the model server would
    /// refuse too (a negative `max_tokens`, `messages` that is not an array, ...).
    InvalidField,
}

impl InvalidBody {
    pub fn label(self) -> &'static str {
        match self {
            InvalidBody::Empty => "empty",
            InvalidBody::TooLarge => "too_large",
            InvalidBody::NotJson => "not_json",
            InvalidBody::NotObject => "not_object",
            InvalidBody::InvalidField => "invalid_field",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            InvalidBody::Empty => "The request body is empty; expected a JSON object.",
            InvalidBody::TooLarge => "The request body exceeds the gateway's size limit.",
            InvalidBody::NotJson => "The request body is not valid JSON.",
            InvalidBody::NotObject => "The request body must be a JSON object.",
            InvalidBody::InvalidField => "The request body has a field of the wrong type.",
        }
    }
}

/// What the router reads from a request body.
#[derive(Debug, Default, PartialEq)]
pub struct RequestInfo<'a> {
    /// The requested model: the last top-level `model` member, when it is a string.
    pub model: Option<Cow<'a, str>>,
    /// Byte ranges of the values of EVERY top-level `model` member (any JSON type, duplicates
    /// included), in body order.
    pub model_spans: Vec<Range<usize>>,
    /// Prompt text segments: message contents, tool calls and definitions, `prompt`/`input`
    /// strings, schemas (some as raw JSON text).
    pub segments: Vec<Cow<'a, str>>,
    /// Number of chat messages (each carries a few tokens of framing).
    pub messages: u64,
    /// Chat messages in order, each with where its text starts in `segments` (for the prefix
    /// hash, `crate::prefix`).
    pub turns: Vec<Turn<'a>>,
    /// `segments[..conversation_end]` are the messages' and `prompt`/`input` text; tool
    /// definitions and other fields follow.
    pub conversation_end: usize,
    /// Number of tool/function definitions (each carries a few tokens of framing).
    pub tools: u64,
    /// Tokens given directly as token ids (`prompt`/`input` as integer arrays).
    pub token_ids: u64,
    /// Image (and other media) parts of chat content.
    pub images: u64,
    /// The completion limit by vLLM's rule: `max_completion_tokens`, else `max_tokens`, a 0
    /// counting as unset.
    pub max_tokens: Option<u64>,
    /// Completions generated per request: the larger of `n` and `best_of`, at least 1.
    pub n: u64,
    pub stream: bool,
    /// The body has a `stream_options` member (whatever its value).
    pub has_stream_options: bool,
    /// `stream_options.include_usage` is true.
    pub include_usage: bool,
    /// Byte offset just after the opening `{` of the top-level object (for insertions).
    pub object_start: usize,
}

/// Most chat messages listed in `RequestInfo::turns` (more than the prefix hash can reach:
/// 1024 blocks of 16 bytes, at least 2 bytes per message).
pub const MAX_TURNS: usize = 8192;

/// One chat message: its `role` as raw JSON text (`""` when absent) and the index in
/// `RequestInfo::segments` of its first text segment.
#[derive(Debug, Default, PartialEq)]
pub struct Turn<'a> {
    pub role: &'a str,
    pub first: usize,
}

/// Reads a request body. `body` is the whole body (the caller enforces the size limit).
///
/// Hostile bodies are read as the model server would read them: duplicate keys (at any depth)
/// resolve to the last one, numbers and booleans are coerced as pydantic's lax mode does
/// (`100.0`, `"100"`, `"true"`), fields the router does not read are skipped without recursion.
/// `InvalidField` is left for values the model server would refuse too (a negative or
/// fractional `max_tokens`, `messages` that is not an array, ...).
pub fn inspect(body: &[u8]) -> Result<RequestInfo<'_>, InvalidBody> {
    let first = body.iter().position(|b| !b.is_ascii_whitespace());
    let Some(first) = first else {
        return Err(InvalidBody::Empty);
    };
    if body.get(first) != Some(&b'{') {
        let Some(text) = bytes::utf8(body) else {
            return Err(InvalidBody::NotJson);
        };
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => InvalidBody::NotObject,
            Err(_) => InvalidBody::NotJson,
        });
    }
    let mut model_spans = Vec::new();
    // One strict pass validates the whole body (JSON as serde_json reads it, and UTF-8) and
    // hands out the top-level values; they are walked from here without a second validation.
    let (_, fields) = strict::members(body, TOP_LEVEL, &mut |key, value| {
        if key == "model" {
            model_spans.push(span_of(body, value.get()));
        }
    })
    .map_err(|()| InvalidBody::NotJson)?;
    let [model, messages, prompt, input, max_tokens, max_completion_tokens, n, best_of, stream, stream_options, tools, functions, extra @ ..] =
        fields;

    let uint = |raw: Option<Raw>| -> Result<Option<u64>, InvalidBody> {
        raw.map_or(Ok(None), |r| {
            json::lax_uint(r).map_err(|()| InvalidBody::InvalidField)
        })
    };
    let unset_if_zero = |v: Option<u64>| v.filter(|&v| v > 0);
    let mut info = RequestInfo {
        object_start: first + 1,
        model: model.and_then(json::string),
        model_spans,
        max_tokens: unset_if_zero(uint(max_completion_tokens)?)
            .or(unset_if_zero(uint(max_tokens)?)),
        n: uint(n)?
            .unwrap_or(1)
            .max(uint(best_of)?.unwrap_or(0))
            .max(1),
        stream: match stream {
            Some(raw) => json::lax_bool(raw)
                .map_err(|()| InvalidBody::InvalidField)?
                .unwrap_or(false),
            None => false,
        },
        ..RequestInfo::default()
    };
    if let Some(raw) = stream_options {
        info.has_stream_options = true;
        info.include_usage = include_usage(raw)?;
    }
    if let Some(raw) = messages {
        match json::kind(raw) {
            b'n' => {}
            b'[' => prompt::messages(&mut info, raw)?,
            _ => return Err(InvalidBody::InvalidField),
        }
    }
    for raw in [prompt, input].into_iter().flatten() {
        prompt::prompt(&mut info, raw)?;
    }
    info.conversation_end = info.segments.len();
    if let Some(raw) = tools {
        prompt::tools(&mut info, raw, true);
    }
    if let Some(raw) = functions {
        prompt::tools(&mut info, raw, false);
    }
    // `response_format`, `suffix`, `documents`, `chat_template`, `chat_template_kwargs`.
    for raw in extra.into_iter().flatten() {
        prompt::loose(&mut info.segments, raw);
    }
    Ok(info)
}

/// Top-level members the router reads, in the order `inspect` destructures them.
const TOP_LEVEL: [&str; 17] = [
    "model",
    "messages",
    "prompt",
    "input",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "best_of",
    "stream",
    "stream_options",
    "tools",
    "functions",
    "response_format",
    "suffix",
    "documents",
    "chat_template",
    "chat_template_kwargs",
];

/// The `model` members of a body that is a JSON object (whatever its other fields hold), for
/// [`with_model`]; `None` when the body is not a JSON object.
pub fn locate_model(body: &[u8]) -> Option<RequestInfo<'_>> {
    let text = std::str::from_utf8(body).ok()?;
    let first = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body.get(first) != Some(&b'{') {
        return None;
    }
    let mut model_spans = Vec::new();
    json::members(text, [], &mut |key, value| {
        if key == "model" {
            model_spans.push(span_of(body, value.get()));
        }
    })
    .ok()?;
    Some(RequestInfo {
        model_spans,
        object_start: first + 1,
        n: 1,
        ..RequestInfo::default()
    })
}

/// `stream_options.include_usage` (`stream_options` may be `null` or `{}`).
fn include_usage(raw: Raw) -> Result<bool, InvalidBody> {
    match json::kind(raw) {
        b'n' => Ok(false),
        b'{' => {
            let [usage] = scan::members(raw, ["include_usage"], &mut |_, _| {})
                .map_err(|_| InvalidBody::InvalidField)?;
            match usage {
                Some(u) => Ok(json::lax_bool(u)
                    .map_err(|()| InvalidBody::InvalidField)?
                    .unwrap_or(false)),
                None => Ok(false),
            }
        }
        _ => Err(InvalidBody::InvalidField),
    }
}

/// Byte range of `inner` (a sub-slice of `outer` handed out by the reader) within `outer`.
fn span_of(outer: &[u8], inner: &str) -> Range<usize> {
    let start = (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize);
    start..start + inner.len()
}

/// Tokens of framing per tool definition (the JSON keys and template text around it).
const TOOL_FRAMING: u64 = 10;

/// Prompt tokens of a request: estimated per text segment, plus chat framing (about 4 tokens
/// per message and 3 to prime the reply, as OpenAI counts them), images at a flat 85 tokens
/// (a low-detail tile) and token-id prompts counted exactly.
pub fn prompt_tokens(info: &RequestInfo) -> u64 {
    let text: u64 = info
        .segments
        .iter()
        .map(|s| crate::tokens::estimate_tokens(s))
        .sum();
    let framing = if info.messages > 0 {
        info.messages.saturating_mul(4).saturating_add(3)
    } else {
        0
    };
    text.saturating_add(framing)
        .saturating_add(info.tools.saturating_mul(TOOL_FRAMING))
        .saturating_add(info.token_ids)
        .saturating_add(info.images.saturating_mul(85))
}

/// A change to the start of a body: its first `cut` bytes become `with`, the rest is kept as
/// it is. Both edits the filter makes (`model`, `stream_options`) are of this kind, so the host
/// replaces a short prefix instead of copying the whole body in and out (Envoy:
/// `proxy_set_buffer_bytes` with start 0 and size `cut` drains that many bytes and prepends
/// `with`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub cut: usize,
    pub with: Vec<u8>,
}

impl Edit {
    /// The edited body.
    pub fn apply(&self, body: &[u8]) -> Vec<u8> {
        let rest = body.get(self.cut..).unwrap_or_default();
        let mut out = Vec::with_capacity(self.with.len().saturating_add(rest.len()));
        out.extend_from_slice(&self.with);
        out.extend_from_slice(rest);
        out
    }
}

/// The body with its top-level `model` set to `model`, so that every JSON parser reads the new
/// value whatever the original held (`null`, a number, duplicated members): the last `model`
/// member's value is replaced, earlier `model` members are removed (with their comma), and a
/// `"model"` member is inserted first when the body had none. Everything else is kept byte
/// for byte. `info` must come from `inspect(body)`.
pub fn with_model(body: &[u8], info: &RequestInfo, model: &str) -> Vec<u8> {
    model_edit(body, info, model).apply(body)
}

/// [`with_model`] as an [`Edit`]: the body up to the end of the last `model` value (or up to
/// the object's first byte, where the member is inserted) rewritten.
pub fn model_edit(body: &[u8], info: &RequestInfo, model: &str) -> Edit {
    let quoted = json_string(model);
    let Some((last, earlier)) = info.model_spans.split_last() else {
        let (head, tail) = body.split_at(info.object_start.min(body.len()));
        let mut with = Vec::with_capacity(head.len().saturating_add(quoted.len()) + 10);
        with.extend_from_slice(head);
        with.extend_from_slice(b"\"model\":");
        with.extend_from_slice(quoted.as_bytes());
        if tail.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'}') {
            with.push(b',');
        }
        return Edit {
            cut: head.len(),
            with,
        };
    };
    let mut with = Vec::with_capacity(last.start.saturating_add(quoted.len()));
    let mut at = 0usize;
    for span in earlier {
        match member_extent(body, span) {
            Some(cut) if cut.start >= at => {
                with.extend_from_slice(body.get(at..cut.start).unwrap_or_default());
                at = cut.end;
            }
            // Never for a body `inspect` accepted; replacing the value is still safe.
            _ => {
                with.extend_from_slice(body.get(at..span.start).unwrap_or_default());
                with.extend_from_slice(quoted.as_bytes());
                at = span.end;
            }
        }
    }
    with.extend_from_slice(body.get(at..last.start).unwrap_or_default());
    with.extend_from_slice(quoted.as_bytes());
    Edit {
        cut: last.end.min(body.len()),
        with,
    }
}

/// The bytes of the object member whose value spans `value`, from its key's opening quote
/// through the comma that follows it and the whitespace after that comma. `None` when the
/// bytes around `value` are not `"key" : value ,`.
fn member_extent(body: &[u8], value: &Range<usize>) -> Option<Range<usize>> {
    let is_ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let before = body.get(..value.start)?;
    let colon = before.iter().rposition(|b| !is_ws(b))?;
    if before.get(colon) != Some(&b':') {
        return None;
    }
    let close = before.get(..colon)?.iter().rposition(|b| !is_ws(b))?;
    if before.get(close) != Some(&b'"') {
        return None;
    }
    // The opening quote: the nearest quote before `close` not escaped by an odd number of
    // backslashes (a key holds no other unescaped quote).
    let mut open = close;
    loop {
        open = before.get(..open)?.iter().rposition(|&b| b == b'"')?;
        let slashes = before
            .get(..open)?
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if slashes % 2 == 0 {
            break;
        }
    }
    let after = body.get(value.end..)?;
    let comma = after.iter().position(|b| !is_ws(b))?;
    if after.get(comma) != Some(&b',') {
        return None;
    }
    let next = after
        .get(comma.saturating_add(1)..)?
        .iter()
        .position(|b| !is_ws(b))?;
    Some(
        open..value
            .end
            .saturating_add(comma)
            .saturating_add(1)
            .saturating_add(next),
    )
}

/// The body with `"stream_options":{"include_usage":true}` added as its first member (for
/// streaming requests that do not ask for usage; used only when the body has no
/// `stream_options` at all, so no key is duplicated).
pub fn with_include_usage(body: &[u8], object_start: usize) -> Vec<u8> {
    include_usage_edit(body, None, object_start).apply(body)
}

/// [`with_include_usage`] as an [`Edit`] of `body`, on top of `prior` (an edit of the same body
/// whose prefix holds `object_start`, as [`model_edit`]'s does).
pub fn include_usage_edit(body: &[u8], prior: Option<Edit>, object_start: usize) -> Edit {
    let Edit { cut, with } = prior.unwrap_or_else(|| {
        let head = body.get(..object_start).unwrap_or(body);
        Edit {
            cut: head.len(),
            with: head.to_vec(),
        }
    });
    let at = object_start.min(with.len());
    let (head, rest) = with.split_at(at);
    let tail = body.get(cut..).unwrap_or_default();
    let next = rest.iter().chain(tail).find(|b| !b.is_ascii_whitespace());
    let mut out = Vec::with_capacity(with.len() + 48);
    out.extend_from_slice(head);
    out.extend_from_slice(b"\"stream_options\":{\"include_usage\":true}");
    if next != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Edit { cut, with: out }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

#[cfg(test)]
mod legacy;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_diff;
#[cfg(test)]
mod tests_hostile;
#[cfg(test)]
mod tests_strict;
