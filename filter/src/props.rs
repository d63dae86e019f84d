//! Properties of the request-side pure modules (`body`, `path`, `tokens`) under arbitrary
//! input, as functions that return `Err(what failed)`: the crate's seeded property tests run
//! them a few thousand times, and the long-running fuzz harness can call the same functions
//! with its own inputs. A panic inside one of them is itself a finding (the filter would trap).
//!
//! Also a small seeded PRNG and a generator of hostile OpenAI-style bodies, shared by both.

use crate::body;
use crate::path;
use crate::tokens::estimate_tokens;

/// Model name written by [`check_body`]'s rewrite (quotes and non-ASCII to exercise escaping).
const NEW_MODEL: &str = "fuzz-\"model\"-\u{e9}";

/// Properties of `body::inspect`, `with_model`, `with_include_usage` and `locate_model` on one
/// body:
/// - a body that `serde_json` reads as an object is never classified `Empty`/`NotJson`/`NotObject`;
/// - after `with_model`, the body is valid JSON with exactly one top-level `model` member, whose
///   value is the new model, and it reads (`inspect`) the same as before apart from the model;
/// - `with_include_usage` on that output (when the body had no `stream_options`) yields a body
///   that still has exactly that one model and asks for usage, the same body as the two edits
///   composed as prefixes of the original (`model_edit`, `include_usage_edit`);
/// - a JSON object refused with `InvalidField` can still have its model rewritten.
pub fn check_body(body: &[u8]) -> Result<(), String> {
    // What Python's json reads as an object (UTF-8 text, lone surrogate escapes allowed).
    let is_object = std::str::from_utf8(body).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
        && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let info = match body::inspect(body) {
        Ok(info) => info,
        Err(why) => {
            if is_object && why != body::InvalidBody::InvalidField {
                return Err(format!("a JSON object classified {why:?}"));
            }
            if let Some(loc) = body::locate_model(body) {
                one_model(&body::with_model(body, &loc, NEW_MODEL))?;
            } else if is_object {
                return Err("locate_model refused a JSON object".into());
            }
            return Ok(());
        }
    };
    if !is_object {
        return Err("inspect accepted a body serde_json refuses".into());
    }
    let before = body::prompt_tokens(&info);
    let out = body::with_model(body, &info, NEW_MODEL);
    one_model(&out)?;
    let again = body::inspect(&out).map_err(|e| format!("rewritten body refused: {e:?}"))?;
    let same = again.max_tokens == info.max_tokens
        && again.n == info.n
        && again.stream == info.stream
        && again.has_stream_options == info.has_stream_options
        && body::prompt_tokens(&again) == before;
    if !same {
        return Err(format!(
            "rewrite changed the reading: {info:?} -> {again:?}"
        ));
    }
    if !info.has_stream_options {
        let both = body::with_include_usage(&out, info.object_start);
        one_model(&both)?;
        // The plan's two edits of the original, composed as prefixes, give the same body.
        let model = body::model_edit(body, &info, NEW_MODEL);
        let composed = body::include_usage_edit(body, Some(model), info.object_start);
        if composed.apply(body) != both {
            return Err("the composed prefix edits differ from the edits applied in turn".into());
        }
        let read = body::inspect(&both).map_err(|e| format!("usage injection: {e:?}"))?;
        if !read.include_usage || !read.has_stream_options {
            return Err("usage injection not read back".into());
        }
    }
    Ok(())
}

/// `out` is valid JSON with exactly one top-level `model` member, equal to [`NEW_MODEL`].
fn one_model(out: &[u8]) -> Result<(), String> {
    let show = || {
        String::from_utf8_lossy(out)
            .chars()
            .take(300)
            .collect::<String>()
    };
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(out) {
        return Err(format!("rewrite is not JSON ({e}): {}", show()));
    }
    let spans = body::locate_model(out)
        .map(|i| i.model_spans)
        .unwrap_or_default();
    let [span] = spans.as_slice() else {
        return Err(format!(
            "{} model members after rewrite: {}",
            spans.len(),
            show()
        ));
    };
    let value = out
        .get(span.clone())
        .and_then(|v| serde_json::from_slice::<String>(v).ok());
    if value.as_deref() != Some(NEW_MODEL) {
        return Err(format!("model not rewritten: {}", show()));
    }
    Ok(())
}

/// Properties of `path::normalize` / `path::matches_prefixes` on one raw path: the normal
/// form is rooted, has no empty, `.` or `..` segment, and whenever it has an API prefix the
/// raw path is matched.
pub fn check_path(raw: &[u8], prefixes: &[String]) -> Result<(), String> {
    let n = path::normalize(raw);
    let bad =
        !n.starts_with('/') || n.contains("//") || n.split('/').any(|s| s == "." || s == "..");
    if bad {
        return Err(format!("normalize({raw:?}) = {n:?}"));
    }
    let direct = prefixes.iter().any(|p| crate::path::has_prefix(&n, p));
    if direct && !path::matches_prefixes(prefixes, raw) {
        return Err(format!(
            "{raw:?} normalises to API path {n:?} but is not matched"
        ));
    }
    Ok(())
}

/// Properties of `tokens::estimate_tokens` on `text` split at `cut` (a byte index, moved back
/// to a character boundary): 0 only for empty text, at most two tokens per byte, and appending
/// never lowers the estimate by more than a rounding step or two.
pub fn check_tokens(text: &str, cut: usize) -> Result<(), String> {
    let est = estimate_tokens(text);
    if (est == 0) != text.is_empty() {
        return Err(format!("estimate {est} for {text:?}"));
    }
    if est > (text.len() as u64).saturating_mul(2).saturating_add(1) {
        return Err(format!(
            "estimate {est} above 2 per byte for {} bytes",
            text.len()
        ));
    }
    let mut cut = cut.min(text.len());
    while !text.is_char_boundary(cut) {
        cut = cut.saturating_sub(1);
    }
    let (a, b) = text.split_at(cut);
    let parts = estimate_tokens(a).max(estimate_tokens(b));
    if est.saturating_add(3) < parts {
        return Err(format!(
            "estimate {est} below a part's {parts}: {a:?} + {b:?}"
        ));
    }
    Ok(())
}

/// A small seeded PRNG (xorshift64*), deterministic across platforms.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64().checked_rem(n).unwrap_or(0)
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64().to_le_bytes().first().copied().unwrap_or(0)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len() as u64) as usize)
    }
}

const KEYS: [&str; 20] = [
    "model",
    "model",
    "mod\\u0065l",
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
    "temperature",
    "suffix",
    "content",
    "tool_calls",
    "include_usage",
];

const SCALARS: [&str; 30] = [
    "null",
    "true",
    "false",
    "0",
    "1",
    "100",
    "100.0",
    "1e2",
    "1E+2",
    "-1",
    "-0",
    "1.5",
    "0.0",
    "1e400",
    "18446744073709551616",
    "\"100\"",
    "\" 7 \"",
    "\"true\"",
    "\"off\"",
    "\"yes\"",
    "\"\"",
    "\"gpt-4o\"",
    "\"a\\\"b\"",
    "\"\\u00e9\\n\"",
    "\"   \\n\\n\\t  \"",
    "\"hello world\"",
    "\"\\ud83d\\ude00\"",
    "{}",
    "[]",
    "\"1.0\"",
];

/// A random OpenAI-like JSON body (valid JSON most of the time; duplicated and wrongly typed
/// members on purpose), at most a few kB.
pub fn openai_body(rng: &mut Rng) -> Vec<u8> {
    let mut out = String::new();
    value(rng, &mut out, 0, true);
    out.into_bytes()
}

fn value(rng: &mut Rng, out: &mut String, depth: u32, object: bool) {
    let choice = if object { 0 } else { rng.below(10) };
    match choice {
        0 | 1 if depth < 4 => {
            out.push('{');
            for i in 0..rng.below(7) {
                if i > 0 {
                    out.push(',');
                }
                if rng.below(4) == 0 {
                    out.push_str(" \n");
                }
                out.push('"');
                out.push_str(rng.pick(&KEYS).copied().unwrap_or("model"));
                out.push_str("\":");
                value(rng, out, depth + 1, false);
            }
            out.push('}');
        }
        2 | 3 if depth < 4 => {
            out.push('[');
            for i in 0..rng.below(5) {
                if i > 0 {
                    out.push(',');
                }
                value(rng, out, depth + 1, false);
            }
            out.push(']');
        }
        4 => {
            // Long text: words, whitespace runs, punctuation.
            out.push('"');
            for _ in 0..rng.below(60) {
                let piece = [
                    "lorem ", "    ", "\\n\\n", "\\t", "{}", "日本", "\\u0000", "x",
                ];
                out.push_str(rng.pick(&piece).copied().unwrap_or(" "));
            }
            out.push('"');
        }
        _ => out.push_str(rng.pick(&SCALARS).copied().unwrap_or("null")),
    }
}

/// Mutates `bytes` in place: a few random byte flips, insertions, deletions or duplications.
pub fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..=rng.below(3) {
        let len = bytes.len() as u64;
        let at = rng.below(len.saturating_add(1)) as usize;
        match rng.below(4) {
            0 => {
                if let Some(b) = bytes.get_mut(at) {
                    *b = rng.byte();
                }
            }
            1 => bytes.insert(at.min(bytes.len()), rng.byte()),
            2 => {
                let end = at.saturating_add(rng.below(8) as usize).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            _ => {
                let end = at.saturating_add(rng.below(16) as usize).min(bytes.len());
                let copy: Vec<u8> = bytes.get(at.min(end)..end).unwrap_or_default().to_vec();
                let to = rng.below(bytes.len() as u64 + 1) as usize;
                bytes.splice(to..to, copy);
            }
        }
    }
}

#[cfg(test)]
mod tests;
