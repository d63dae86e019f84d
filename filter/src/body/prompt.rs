//! Collecting everything the model server turns into prompt tokens: chat messages (contents,
//! names, tool calls), `prompt` / `input`, tool and function definitions, and the other text
//! that a chat template may render. Shapes the router does not know are counted from their raw
//! JSON text (an over-estimate, the safe side), never skipped.

use super::json::{self, string};
use super::scan::{each_element, elements, members, Element, Raw};
use super::{InvalidBody, RequestInfo};
use std::borrow::Cow;

/// Content part types counted as one image-sized media item (not by their bytes: a base64
/// payload is not prompt text).
const MEDIA_PARTS: [&str; 9] = [
    "image_url",
    "image",
    "input_image",
    "image_pil",
    "image_embeds",
    "input_audio",
    "audio_url",
    "video_url",
    "video",
];

/// Any value as prompt text: strings decoded, objects and arrays as their raw JSON text,
/// `null`, booleans and numbers as nothing.
pub(super) fn loose<'a>(segments: &mut Vec<Cow<'a, str>>, raw: Raw<'a>) {
    match json::kind(raw) {
        b'"' => segments.push(string(raw).unwrap_or(Cow::Borrowed(raw.get()))),
        b'{' | b'[' => segments.push(Cow::Borrowed(raw.get())),
        _ => {}
    }
}

/// `messages`: an array of message objects.
pub(super) fn messages<'a>(info: &mut RequestInfo<'a>, raw: Raw<'a>) -> Result<(), InvalidBody> {
    each_element(raw, &mut |m| message(info, m)).map_err(|e| e.unwrap_or(InvalidBody::InvalidField))
}

/// One message, read member by member (not skipped over first).
fn message<'a>(info: &mut RequestInfo<'a>, raw: &mut Element<'a>) -> Result<(), InvalidBody> {
    if raw.kind() != b'{' {
        return Err(InvalidBody::InvalidField);
    }
    info.messages = info.messages.saturating_add(1);
    let first = info.segments.len();
    let segments = &mut info.segments;
    let mut role = "";
    // Other members a template may render (`name`, `reasoning_content`, a legacy
    // `function_call`, ...); `role` is part of the per-message framing.
    let [content, tool_calls] = raw
        .members(["content", "tool_calls"], &mut |k, v| {
            if k == "role" {
                role = v.get();
            } else if !matches!(k, "content" | "tool_calls") {
                loose(segments, v);
            }
        })
        .map_err(|_| InvalidBody::InvalidField)?;
    // The prefix hash's hook: this message's role, its text is `segments[first..]`. Past
    // `MAX_TURNS` the last turn holds the rest (memory stays bounded for a hostile body).
    if info.turns.len() < super::MAX_TURNS {
        info.turns.push(super::Turn { role, first });
    }
    if let Some(c) = content {
        self::content(info, c);
    }
    if let Some(calls) = tool_calls {
        self::tool_calls(info, calls);
    }
    Ok(())
}

/// Chat content: a string, or an array of parts (`{"type":"text","text":...}`, images, ...).
fn content<'a>(info: &mut RequestInfo<'a>, raw: Raw<'a>) {
    if json::kind(raw) != b'[' {
        return loose(&mut info.segments, raw);
    }
    let parsed = each_element(raw, &mut |part| {
        if part.kind() != b'{' {
            loose(&mut info.segments, part.raw());
            return Ok::<(), ()>(());
        }
        let Ok([kind, text]) = part.members(["type", "text"], &mut |_, _| {}) else {
            return Ok(());
        };
        let kind = kind.and_then(string);
        if let Some(text) = text {
            loose(&mut info.segments, text);
        } else if kind.as_deref().is_some_and(|k| MEDIA_PARTS.contains(&k)) {
            info.images = info.images.saturating_add(1);
        } else {
            loose(&mut info.segments, part.raw());
        }
        Ok(())
    });
    if parsed.is_err() {
        loose(&mut info.segments, raw);
    }
}

/// `tool_calls` of an assistant message: `[{"function": {"name", "arguments"}}]`.
fn tool_calls<'a>(info: &mut RequestInfo<'a>, raw: Raw<'a>) {
    if json::kind(raw) != b'[' {
        return loose(&mut info.segments, raw);
    }
    let segments = &mut info.segments;
    let _ = elements(raw, &mut |call| {
        let function = match members(call, ["function"], &mut |_, _| {}) {
            Ok([Some(f)]) if json::kind(f) == b'{' => f,
            _ => {
                loose(segments, call);
                return Ok::<(), ()>(());
            }
        };
        match members(function, ["name", "arguments"], &mut |_, _| {}) {
            Ok(fields) => fields
                .into_iter()
                .flatten()
                .for_each(|v| loose(segments, v)),
            Err(_) => loose(segments, function),
        }
        Ok(())
    });
}

/// `prompt` (completions) or `input` (embeddings, responses): a string, an array of strings,
/// of token ids, of arrays of token ids, or (responses) of message-like objects.
pub(super) fn prompt<'a>(info: &mut RequestInfo<'a>, raw: Raw<'a>) -> Result<(), InvalidBody> {
    match json::kind(raw) {
        b'"' => loose(&mut info.segments, raw),
        b'[' => {
            elements(raw, &mut |item| prompt_item(info, item))
                .map_err(|e| e.unwrap_or(InvalidBody::InvalidField))?;
        }
        b'n' => {}
        _ => return Err(InvalidBody::InvalidField),
    }
    Ok(())
}

fn prompt_item<'a>(info: &mut RequestInfo<'a>, item: Raw<'a>) -> Result<(), InvalidBody> {
    match json::kind(item) {
        b'"' | b'{' => loose(&mut info.segments, item),
        b'-' | b'0'..=b'9' => info.token_ids = info.token_ids.saturating_add(1),
        b'[' => {
            let (ids, segments) = (&mut info.token_ids, &mut info.segments);
            elements(item, &mut |id| {
                match json::kind(id) {
                    b'-' | b'0'..=b'9' => *ids = ids.saturating_add(1),
                    _ => loose(segments, id),
                }
                Ok::<(), ()>(())
            })
            .map_err(|_| InvalidBody::InvalidField)?;
        }
        _ => return Err(InvalidBody::InvalidField),
    }
    Ok(())
}

/// `tools` (`[{"type": "function", "function": {...}}]`, `wrapped`) or the legacy `functions`
/// (`[{...}]`): name, description and the parameters schema as JSON text of each.
pub(super) fn tools<'a>(info: &mut RequestInfo<'a>, raw: Raw<'a>, wrapped: bool) {
    if json::kind(raw) != b'[' {
        return loose(&mut info.segments, raw);
    }
    let (count, segments) = (&mut info.tools, &mut info.segments);
    let _ = elements(raw, &mut |tool| {
        *count = count.saturating_add(1);
        let function = if wrapped {
            match members(tool, ["function"], &mut |_, _| {}) {
                Ok([Some(f)]) => f,
                _ => {
                    loose(segments, tool);
                    return Ok::<(), ()>(());
                }
            }
        } else {
            tool
        };
        match members(
            function,
            ["name", "description", "parameters"],
            &mut |_, _| {},
        ) {
            Ok(fields) => fields
                .into_iter()
                .flatten()
                .for_each(|v| loose(segments, v)),
            Err(_) => loose(segments, function),
        }
        Ok(())
    });
}
