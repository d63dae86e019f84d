//! Validating a request body as strict JSON in one pass, without recursion, and handing out
//! its top-level members (what `json::members` read with serde_json before: the same bodies
//! accepted, the same members; `tests_strict.rs` holds the two together on hostile input).
//!
//! The rules are serde_json's, as `json::members` used it on text checked to be UTF-8
//! (checked here: each run of non-ASCII bytes in a string by `std::str::from_utf8`; there are
//! none elsewhere in valid JSON): an object with JSON whitespace (space, tab, line feed, carriage return) around it;
//! strings without raw control characters (below 0x20), with escapes `\" \\ \/ \b \f \n \r \t`
//! and `\u` with four hex digits (a lone surrogate is accepted, as Python accepts it); numbers
//! `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`; `true`, `false`, `null`; no trailing
//! commas; any nesting depth below the top level (serde_json skips values without recursion
//! and without a depth limit). Strings, nearly all of a prompt's bytes, are scanned 64 bytes
//! per step (`bytes::find`).

use super::bytes::{find, NonAscii, StringStop};
use super::scan::Raw;
use std::borrow::Cow;
use std::ops::Range;

/// The members of the JSON object `body` (the whole body): for each name in `keys`, the
/// value of its last member; `each` also sees every member (duplicates included), in order.
/// Keys are compared after unescaping; a key with a lone surrogate escape is read as U+FFFD
/// (none of ours). `Err` when `body` is not exactly one valid JSON object in valid UTF-8.
/// Returns the body as text too.
pub(super) fn members<'a, const N: usize>(
    body: &'a [u8],
    keys: [&str; N],
    each: &mut dyn FnMut(&str, Raw<'a>),
) -> Result<(&'a str, [Option<Raw<'a>>; N]), ()> {
    let found = validate(body)?;
    let text = checked_text(body);
    let mut slots = [None; N];
    for (key_text, escaped, value) in found {
        let value = Raw(text.get(value).ok_or(())?);
        let key_text = text.get(key_text).ok_or(())?;
        let key: Cow<str> = if escaped {
            super::text::unescape_text(key_text).map_or(Cow::Borrowed("\u{fffd}"), Cow::Owned)
        } else {
            Cow::Borrowed(key_text)
        };
        if let Some(slot) = keys
            .iter()
            .position(|k| *k == key)
            .and_then(|k| slots.get_mut(k))
        {
            *slot = Some(value);
        }
        each(&key, value);
    }
    Ok((text, slots))
}

/// `body` as text, once [`validate`] accepted it.
fn checked_text(body: &[u8]) -> &str {
    // SAFETY: `validate` accepted `body`, so every byte >= 0x80 in it lies in a string (the
    // grammar accepts nothing but ASCII bytes anywhere else), and each maximal run of such
    // bytes in a string (between ASCII bytes, which never belong to a multi-byte sequence)
    // was checked with `std::str::from_utf8`: `body` is valid UTF-8. (Tests check it again.)
    debug_assert!(std::str::from_utf8(body).is_ok());
    unsafe { std::str::from_utf8_unchecked(body) }
}

/// One top-level member: its key's text between the quotes, whether the key holds an escape,
/// the value's text.
type Found = (Range<usize>, bool, Range<usize>);

/// Checks that `b` is one valid JSON object in valid UTF-8; its top-level members.
fn validate(b: &[u8]) -> Result<Vec<Found>, ()> {
    let mut found = Vec::new();
    let mut i = ws(b, 0);
    if byte(b, i) != b'{' {
        return Err(());
    }
    i = ws(b, i.saturating_add(1));
    // Containers open inside the value being read (`true` for an object).
    let mut stack = Vec::new();
    if byte(b, i) == b'}' {
        i = i.saturating_add(1);
    } else {
        loop {
            let (value_at, key_text, escaped) = key(b, i)?;
            let end = value(b, value_at, &mut stack)?;
            found.push((key_text, escaped, value_at..end));
            i = ws(b, end);
            match byte(b, i) {
                b',' => i = ws(b, i.saturating_add(1)),
                b'}' => {
                    i = i.saturating_add(1);
                    break;
                }
                _ => return Err(()),
            }
        }
    }
    if ws(b, i) != b.len() {
        return Err(());
    }
    Ok(found)
}

/// The byte at `i`, 0 past the end (0 is never valid where it is looked at).
#[inline(always)]
fn byte(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

/// Index of the first byte at or after `at` that is not JSON whitespace.
#[inline(always)]
fn ws(b: &[u8], mut at: usize) -> usize {
    while matches!(b.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at = at.saturating_add(1);
    }
    at
}

/// An object member's key at `at` (its opening quote), its colon and the whitespace after:
/// (where the value starts, the key's text between its quotes, whether it holds an escape).
fn key(b: &[u8], at: usize) -> Result<(usize, Range<usize>, bool), ()> {
    if byte(b, at) != b'"' {
        return Err(());
    }
    let (end, escaped) = string(b, at)?;
    let i = ws(b, end);
    if byte(b, i) != b':' {
        return Err(());
    }
    let inner = at.saturating_add(1)..end.saturating_sub(1);
    Ok((ws(b, i.saturating_add(1)), inner, escaped))
}

/// The string whose opening quote is at `at`: the index past its closing quote, and whether
/// it holds an escape. Its bytes >= 0x80 must be valid UTF-8 (each run of them between ASCII
/// bytes is checked by `std::str::from_utf8`).
#[inline]
fn string(b: &[u8], at: usize) -> Result<(usize, bool), ()> {
    let mut i = at.saturating_add(1);
    let mut escaped = false;
    loop {
        i = find(b, i, StringStop).ok_or(())?;
        match byte(b, i) {
            b'"' => return Ok((i.saturating_add(1), escaped)),
            b'\\' => {
                escaped = true;
                i = escape(b, i.saturating_add(1))?;
            }
            0x80.. => {
                let end = find(b, i, NonAscii(false)).unwrap_or(b.len());
                std::str::from_utf8(b.get(i..end).ok_or(())?).map_err(|_| ())?;
                i = end;
            }
            _ => return Err(()), // a control character
        }
    }
}

/// The escape whose letter is at `at` (after the backslash): the index past it.
fn escape(b: &[u8], at: usize) -> Result<usize, ()> {
    match byte(b, at) {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(at.saturating_add(1)),
        b'u' => {
            let hex = b
                .get(at.saturating_add(1)..at.saturating_add(5))
                .ok_or(())?;
            if hex.iter().all(u8::is_ascii_hexdigit) {
                Ok(at.saturating_add(5))
            } else {
                Err(())
            }
        }
        _ => Err(()),
    }
}

/// The number at `at`: the index past it.
fn number(b: &[u8], mut i: usize) -> Result<usize, ()> {
    let digits = |mut i: usize| {
        while byte(b, i).is_ascii_digit() {
            i = i.saturating_add(1);
        }
        i
    };
    if byte(b, i) == b'-' {
        i = i.saturating_add(1);
    }
    match byte(b, i) {
        b'0' => {
            i = i.saturating_add(1);
            if byte(b, i).is_ascii_digit() {
                return Err(()); // a leading zero
            }
        }
        b'1'..=b'9' => i = digits(i.saturating_add(1)),
        _ => return Err(()),
    }
    if byte(b, i) == b'.' {
        let end = digits(i.saturating_add(1));
        if end == i.saturating_add(1) {
            return Err(());
        }
        i = end;
    }
    if matches!(byte(b, i), b'e' | b'E') {
        i = i.saturating_add(1);
        if matches!(byte(b, i), b'+' | b'-') {
            i = i.saturating_add(1);
        }
        let end = digits(i);
        if end == i {
            return Err(());
        }
        i = end;
    }
    Ok(i)
}

/// The value at `at` (its first byte): the index past it. Nesting is kept on `stack`, not
/// on the call stack.
fn value(b: &[u8], mut i: usize, stack: &mut Vec<bool>) -> Result<usize, ()> {
    stack.clear();
    loop {
        // A value starts at `i`.
        match byte(b, i) {
            b'"' => i = string(b, i)?.0,
            b'-' | b'0'..=b'9' => i = number(b, i)?,
            c @ (b't' | b'f' | b'n') => {
                let word: &[u8] = match c {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                if b.get(i..i.saturating_add(word.len())) != Some(word) {
                    return Err(());
                }
                i = i.saturating_add(word.len());
            }
            open @ (b'[' | b'{') => {
                let object = open == b'{';
                let close = if object { b'}' } else { b']' };
                i = ws(b, i.saturating_add(1));
                if byte(b, i) == close {
                    i = i.saturating_add(1);
                } else {
                    stack.push(object);
                    if object {
                        i = key(b, i)?.0;
                    }
                    continue;
                }
            }
            _ => return Err(()),
        }
        // A value ended at `i`: close the containers it ends, or go on to the next element.
        loop {
            let Some(&object) = stack.last() else {
                return Ok(i);
            };
            i = ws(b, i);
            match (byte(b, i), object) {
                (b',', _) => {
                    i = ws(b, i.saturating_add(1));
                    if object {
                        i = key(b, i)?.0;
                    }
                    break;
                }
                (b']', false) | (b'}', true) => {
                    stack.pop();
                    i = i.saturating_add(1);
                }
                _ => return Err(()),
            }
        }
    }
}
