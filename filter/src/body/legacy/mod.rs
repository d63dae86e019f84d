//! The request-body reader as it was before the one-walk reader (serde_json re-parsing every
//! nesting level it reads): kept for tests only, as the oracle the current reader is compared
//! with (`tests_diff.rs`).
#![allow(dead_code)]

use super::{InvalidBody, RequestInfo};
use serde_json::value::RawValue;
use std::ops::Range;

mod json;
mod prompt;

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
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(InvalidBody::NotJson);
    };
    if body.get(first) != Some(&b'{') {
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => InvalidBody::NotObject,
            Err(_) => InvalidBody::NotJson,
        });
    }
    let mut model_spans = Vec::new();
    let fields = json::members(text, TOP_LEVEL, &mut |key, value| {
        if key == "model" {
            model_spans.push(span_of(body, value.get()));
        }
    })
    .map_err(|_| InvalidBody::NotJson)?;
    let [model, messages, prompt, input, max_tokens, max_completion_tokens, n, best_of, stream, stream_options, tools, functions, extra @ ..] =
        fields;

    let uint = |raw: Option<&RawValue>| -> Result<Option<u64>, InvalidBody> {
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

/// `stream_options.include_usage` (`stream_options` may be `null` or `{}`).
fn include_usage(raw: &RawValue) -> Result<bool, InvalidBody> {
    match json::kind(raw) {
        b'n' => Ok(false),
        b'{' => {
            let [usage] = json::members(raw.get(), ["include_usage"], &mut |_, _| {})
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

/// Byte range of `inner` (a sub-slice handed out by serde_json) within `outer`.
fn span_of(outer: &[u8], inner: &str) -> Range<usize> {
    let start = (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize);
    start..start + inner.len()
}
