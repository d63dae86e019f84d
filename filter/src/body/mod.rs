//! OpenAI-style request bodies: what the router needs from them, and the one edit it makes
//! (the `model` field), done in place so every other byte of the body is kept.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::ops::Range;

/// Why a body could not be inspected. `label()` is a bounded set (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidBody {
    Empty,
    TooLarge,
    NotJson,
    NotObject,
    /// Valid JSON object, but a field the router reads has the wrong type (or a duplicate key,
    /// which upstream parsers resolve differently from ours).
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
            InvalidBody::InvalidField => {
                "The request body has a field of the wrong type or a duplicated field."
            }
        }
    }
}

/// What the router reads from a request body.
#[derive(Debug, Default, PartialEq)]
pub struct RequestInfo<'a> {
    /// The requested model, as sent.
    pub model: Option<Cow<'a, str>>,
    /// Byte range of the `model` value (including its quotes) in the body.
    pub model_span: Option<Range<usize>>,
    /// Prompt text segments: message contents, `prompt` strings, `input` strings.
    pub segments: Vec<Cow<'a, str>>,
    /// Number of chat messages (each carries a few tokens of framing).
    pub messages: u64,
    /// Tokens given directly as token ids (`prompt`/`input` as integer arrays).
    pub token_ids: u64,
    /// Image parts of chat content.
    pub images: u64,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
    pub stream: bool,
    /// The body has a `stream_options` member (whatever its value).
    pub has_stream_options: bool,
    /// `stream_options.include_usage` is true.
    pub include_usage: bool,
    /// Byte offset just after the opening `{` of the top-level object (for insertions).
    pub object_start: usize,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<Vec<WireMessage<'a>>>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    /// `None`: absent; `Some(include_usage)`: present (possibly `null`).
    #[serde(default, deserialize_with = "present_stream_options")]
    stream_options: Option<Option<bool>>,
}

fn present_stream_options<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<bool>>, D::Error> {
    let v: Option<WireStreamOptions> = Option::deserialize(d)?;
    Ok(Some(v.and_then(|o| o.include_usage)))
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<WireToolCall<'a>>>,
}

#[derive(Deserialize)]
struct WireToolCall<'a> {
    #[serde(borrow, default)]
    function: Option<WireFunction<'a>>,
}

#[derive(Deserialize)]
struct WireFunction<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireStreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct WirePart<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// Reads a request body. `body` is the whole body (the caller enforces the size limit).
pub fn inspect(body: &[u8]) -> Result<RequestInfo<'_>, InvalidBody> {
    let first = body.iter().position(|b| !b.is_ascii_whitespace());
    let Some(first) = first else {
        return Err(InvalidBody::Empty);
    };
    if body.get(first) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => InvalidBody::NotObject,
                Err(_) => InvalidBody::NotJson,
            },
        );
    }
    let wire: Wire = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => InvalidBody::InvalidField,
        _ => InvalidBody::NotJson,
    })?;

    let mut info = RequestInfo {
        object_start: first + 1,
        max_tokens: wire.max_completion_tokens.or(wire.max_tokens),
        stream: wire.stream.unwrap_or(false),
        has_stream_options: wire.stream_options.is_some(),
        include_usage: wire.stream_options.flatten().unwrap_or(false),
        ..RequestInfo::default()
    };

    if let Some(raw) = wire.model {
        info.model = Some(decode_str(raw).ok_or(InvalidBody::InvalidField)?);
        info.model_span = Some(span_of(body, raw.get()));
    }
    if let Some(messages) = wire.messages {
        info.messages = messages.len() as u64;
        // Usually one text segment per message: grow once.
        info.segments.reserve(messages.len());
        for m in messages {
            if let Some(content) = m.content {
                add_content(&mut info, content)?;
            }
            for call in m.tool_calls.into_iter().flatten() {
                if let Some(f) = call.function {
                    info.segments.extend(f.name);
                    info.segments.extend(f.arguments);
                }
            }
        }
    }
    for raw in [wire.prompt, wire.input].into_iter().flatten() {
        add_prompt(&mut info, raw)?;
    }
    Ok(info)
}

/// Chat content: a string, or an array of parts (`{"type":"text","text":...}`, images, ...).
fn add_content<'a>(info: &mut RequestInfo<'a>, raw: &'a RawValue) -> Result<(), InvalidBody> {
    match raw.get().as_bytes().first() {
        Some(b'"') => info
            .segments
            .push(decode_str(raw).ok_or(InvalidBody::InvalidField)?),
        Some(b'[') => {
            let parts: Vec<WirePart> =
                serde_json::from_str(raw.get()).map_err(|_| InvalidBody::InvalidField)?;
            for p in parts {
                match (p.kind.as_deref(), p.text) {
                    (_, Some(text)) => info.segments.push(text),
                    (Some("image_url" | "image" | "input_image"), None) => info.images += 1,
                    _ => {}
                }
            }
        }
        // null (assistant tool-call turns) and anything else carry no prompt text.
        _ => {}
    }
    Ok(())
}

/// `prompt` / `input`: a string, an array of strings, an array of token ids, or an array of
/// arrays of token ids.
fn add_prompt<'a>(info: &mut RequestInfo<'a>, raw: &'a RawValue) -> Result<(), InvalidBody> {
    match raw.get().as_bytes().first() {
        Some(b'"') => info
            .segments
            .push(decode_str(raw).ok_or(InvalidBody::InvalidField)?),
        Some(b'[') => {
            let items: Vec<&RawValue> =
                serde_json::from_str(raw.get()).map_err(|_| InvalidBody::InvalidField)?;
            for item in items {
                match item.get().as_bytes().first() {
                    Some(b'"') => info
                        .segments
                        .push(decode_str(item).ok_or(InvalidBody::InvalidField)?),
                    Some(b'[') => {
                        let ids: Vec<serde::de::IgnoredAny> = serde_json::from_str(item.get())
                            .map_err(|_| InvalidBody::InvalidField)?;
                        info.token_ids += ids.len() as u64;
                    }
                    Some(b'0'..=b'9') => info.token_ids += 1,
                    _ => return Err(InvalidBody::InvalidField),
                }
            }
        }
        Some(b'n') => {} // null
        _ => return Err(InvalidBody::InvalidField),
    }
    Ok(())
}

/// A JSON string value, borrowed when it has no escapes.
///
/// One parse either way: deserializing a `&str` first and falling back to `String` would scan
/// an escaped string twice, and the failed attempt formats the whole string into its error.
fn decode_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let s = raw.get();
    if !s.starts_with('"') {
        return None;
    }
    serde_json::from_str::<JsonStr>(s).ok().map(|JsonStr(v)| v)
}

/// A JSON string, borrowed from the input when it has no escapes, decoded otherwise.
#[derive(Deserialize)]
struct JsonStr<'a>(#[serde(borrow)] Cow<'a, str>);

/// Byte range of `inner` (a sub-slice handed out by serde_json) within `outer`.
fn span_of(outer: &[u8], inner: &str) -> Range<usize> {
    let start = (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize);
    start..start + inner.len()
}

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
        info.messages * 4 + 3
    } else {
        0
    };
    text + framing + info.token_ids + info.images * 85
}

/// The body with its top-level `model` set to `model`: the old value's bytes are replaced,
/// or a `"model"` member is inserted first when the body had none. Everything else is kept
/// byte for byte.
pub fn with_model(body: &[u8], info: &RequestInfo, model: &str) -> Vec<u8> {
    let quoted = json_string(model);
    let mut out = Vec::with_capacity(body.len() + quoted.len() + 10);
    match &info.model_span {
        Some(span) => {
            out.extend_from_slice(body.get(..span.start).unwrap_or_default());
            out.extend_from_slice(quoted.as_bytes());
            out.extend_from_slice(body.get(span.end..).unwrap_or_default());
        }
        None => {
            let (head, tail) = body.split_at(info.object_start.min(body.len()));
            out.extend_from_slice(head);
            out.extend_from_slice(b"\"model\":");
            out.extend_from_slice(quoted.as_bytes());
            if tail.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'}') {
                out.push(b',');
            }
            out.extend_from_slice(tail);
        }
    }
    out
}

/// The body with `"stream_options":{"include_usage":true}` added as its first member (for
/// streaming requests that do not ask for usage; used only when the body has no
/// `stream_options` at all, so no key is duplicated).
pub fn with_include_usage(body: &[u8], object_start: usize) -> Vec<u8> {
    let (head, tail) = body.split_at(object_start.min(body.len()));
    let mut out = Vec::with_capacity(body.len() + 48);
    out.extend_from_slice(head);
    out.extend_from_slice(b"\"stream_options\":{\"include_usage\":true}");
    if tail.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(tail);
    out
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

#[cfg(test)]
mod tests;
