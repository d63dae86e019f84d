//! The byte-level text work under the JSON readers: finding quotes and backslashes
//! (`bytes::find`), and decoding the escapes of a JSON string that has been validated (`strict.rs`).

use std::borrow::Cow;

use super::bytes::{find, Either};

/// Index of the first `"` or `\` in `b` at or after `from`.
#[inline]
pub(crate) fn find_quote_or_backslash(b: &[u8], from: usize) -> Option<usize> {
    find(b, from, Either(b'"', b'\\'))
}

/// `inner` (the text between the quotes of a valid JSON string) decoded: borrowed when it has
/// no escape. `None` for a lone surrogate.
pub(super) fn decode(inner: &str) -> Option<Cow<'_, str>> {
    match find_backslash(inner.as_bytes(), 0) {
        None => Some(Cow::Borrowed(inner)),
        Some(first) => unescape(inner, first).map(Cow::Owned),
    }
}

/// Index of the first backslash in `b` at or after `from`.
fn find_backslash(b: &[u8], from: usize) -> Option<usize> {
    find(b, from, Either(b'\\', b'\\'))
}

/// `inner` (the text between the quotes of a valid JSON string) with its escapes decoded;
/// `None` for a lone surrogate.
pub(super) fn unescape_text(inner: &str) -> Option<String> {
    match find_backslash(inner.as_bytes(), 0) {
        None => Some(inner.to_string()),
        Some(first) => unescape(inner, first),
    }
}

/// `inner` (the text between the quotes of a valid JSON string) with its escapes decoded; the
/// first backslash is at `first`. `None` for a lone surrogate.
fn unescape(inner: &str, first: usize) -> Option<String> {
    let b = inner.as_bytes();
    let mut out = String::with_capacity(inner.len());
    let (mut at, mut slash) = (0usize, first);
    loop {
        out.push_str(inner.get(at..slash)?);
        let esc = *b.get(slash.saturating_add(1))?;
        at = slash.saturating_add(2);
        let c = match esc {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(b, at)?;
                at = at.saturating_add(4);
                match hi {
                    0xD800..=0xDBFF => {
                        if b.get(at..at.saturating_add(2)) != Some(b"\\u".as_slice()) {
                            return None;
                        }
                        let lo = hex4(b, at.saturating_add(2))?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return None;
                        }
                        at = at.saturating_add(6);
                        let c = 0x1_0000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        char::from_u32(c)?
                    }
                    _ => char::from_u32(hi)?,
                }
            }
            _ => return None,
        };
        out.push(c);
        match find_backslash(b, at) {
            Some(next) => slash = next,
            None => {
                out.push_str(inner.get(at..)?);
                return Some(out);
            }
        }
    }
}

/// The four hex digits at `at` of `b`.
fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let digits = b.get(at..at.saturating_add(4))?;
    digits.iter().try_fold(0u32, |n, &d| {
        let v = char::from(d).to_digit(16)?;
        Some(n << 4 | v)
    })
}
