//! Walking JSON text that has already been validated (`strict.rs` checked the whole body and
//! handed out the values of its top-level members): objects member by member and arrays
//! element by element, with no second validation and no re-parse per nesting level. Strings
//! are skipped 64 bytes per step (`bytes::find`).
//!
//! The text is trusted to be strict JSON (no control characters in strings, valid escapes);
//! on anything else these functions return `Err`/`None` rather than guess, and never panic.
//! `tests_diff.rs` holds them to what serde_json reads from the same text.

use std::borrow::Cow;

/// The text of one JSON value, validated (`strict.rs`), without surrounding whitespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Raw<'a>(pub &'a str);

impl<'a> Raw<'a> {
    pub fn get(self) -> &'a str {
        self.0
    }

    /// First byte (`{`, `[`, `"`, `t`, `f`, `n`, `-` or a digit).
    pub fn kind(self) -> u8 {
        self.0.as_bytes().first().copied().unwrap_or(b' ')
    }
}

/// The string starting at `at` (its opening quote): the index past its closing quote, and
/// whether it holds an escape.
fn skip_string(b: &[u8], at: usize) -> Option<(usize, bool)> {
    let mut i = at.saturating_add(1);
    let mut escaped = false;
    loop {
        i = super::text::find_quote_or_backslash(b, i)?;
        if *b.get(i)? == b'"' {
            return Some((i.saturating_add(1), escaped));
        }
        // `\` and the escaped byte (the four hex digits of `\u` hold no quote nor backslash).
        escaped = true;
        i = i.saturating_add(2);
    }
}

/// Index of the first byte at or after `at` that is not JSON whitespace.
#[inline]
fn ws(b: &[u8], mut at: usize) -> usize {
    while matches!(b.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at = at.saturating_add(1);
    }
    at
}

/// The index past the value starting at `at` (no recursion: nesting is counted).
fn skip_value(b: &[u8], at: usize) -> Option<usize> {
    match *b.get(at)? {
        b'"' => skip_string(b, at).map(|(end, _)| end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                match *b.get(i)? {
                    b'"' => i = skip_string(b, i)?.0,
                    b'{' | b'[' => {
                        depth = depth.saturating_add(1);
                        i = i.saturating_add(1);
                    }
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        i = i.saturating_add(1);
                        if depth == 0 {
                            return Some(i);
                        }
                    }
                    _ => i = i.saturating_add(1),
                }
            }
        }
        _ => {
            let mut i = at;
            while !matches!(
                b.get(i),
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            ) {
                i = i.saturating_add(1);
            }
            Some(i)
        }
    }
}

/// The members of the object `raw`: for each name in `keys`, the value of its last member;
/// `each` also sees every member (duplicates included), in order. Keys are compared after
/// unescaping; a key with a lone surrogate escape is read as U+FFFD (none of ours).
/// `Err` when `raw` is not an object.
pub(super) fn members<'a, const N: usize>(
    raw: Raw<'a>,
    keys: [&str; N],
    each: &mut dyn FnMut(&str, Raw<'a>),
) -> Result<[Option<Raw<'a>>; N], ()> {
    object(raw.0, keys, each).map(|(slots, _)| slots)
}

/// [`members`] of the object at the start of `text` (more text may follow it), and the
/// index past its closing brace.
fn object<'a, const N: usize>(
    text: &'a str,
    keys: [&str; N],
    each: &mut dyn FnMut(&str, Raw<'a>),
) -> Result<([Option<Raw<'a>>; N], usize), ()> {
    let b = text.as_bytes();
    let mut slots = [None; N];
    if b.first() != Some(&b'{') {
        return Err(());
    }
    let mut i = ws(b, 1);
    if b.get(i) == Some(&b'}') {
        return Ok((slots, i.saturating_add(1)));
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return Err(());
        }
        let (end, escaped) = skip_string(b, i).ok_or(())?;
        let key_text = text
            .get(i.saturating_add(1)..end.saturating_sub(1))
            .ok_or(())?;
        let key: Cow<str> = if escaped {
            super::text::unescape_text(key_text).map_or(Cow::Borrowed("\u{fffd}"), Cow::Owned)
        } else {
            Cow::Borrowed(key_text)
        };
        i = ws(b, end);
        if b.get(i) != Some(&b':') {
            return Err(());
        }
        i = ws(b, i.saturating_add(1));
        let value_end = skip_value(b, i).ok_or(())?;
        let value = Raw(text.get(i..value_end).ok_or(())?);
        if let Some(slot) = keys
            .iter()
            .position(|k| *k == key)
            .and_then(|k| slots.get_mut(k))
        {
            *slot = Some(value);
        }
        each(&key, value);
        i = ws(b, value_end);
        match b.get(i) {
            Some(b',') => i = ws(b, i.saturating_add(1)),
            Some(b'}') => return Ok((slots, i.saturating_add(1))),
            _ => return Err(()),
        }
    }
}

/// Calls `each` on every element of the array `raw`, stopping at its first error. Not an
/// array is `Err(None)`.
pub(super) fn elements<'a, E>(
    raw: Raw<'a>,
    each: &mut dyn FnMut(Raw<'a>) -> Result<(), E>,
) -> Result<(), Option<E>> {
    each_element(raw, &mut |e| each(e.raw()))
}

/// One element of an array being walked: its text runs from its first byte on to the end of
/// the array, and where it ends is found once, by whichever of [`Element::raw`] and
/// [`Element::members`] comes first (an object element read member by member is not
/// skipped over beforehand as well).
pub(super) struct Element<'a> {
    text: &'a str,
    end: Option<usize>,
}

impl<'a> Element<'a> {
    /// First byte (`{`, `[`, `"`, `t`, `f`, `n`, `-` or a digit).
    pub fn kind(&self) -> u8 {
        self.text.as_bytes().first().copied().unwrap_or(b' ')
    }

    /// The element's text (empty if it cannot be skipped: the walk then fails).
    pub fn raw(&mut self) -> Raw<'a> {
        let end = match self.end {
            Some(end) => Some(end),
            None => skip_value(self.text.as_bytes(), 0),
        };
        self.end = end;
        Raw(end.and_then(|e| self.text.get(..e)).unwrap_or_default())
    }

    /// [`members`] of the element (`Err` when it is not an object).
    pub fn members<const N: usize>(
        &mut self,
        keys: [&str; N],
        each: &mut dyn FnMut(&str, Raw<'a>),
    ) -> Result<[Option<Raw<'a>>; N], ()> {
        let (slots, end) = object(self.text, keys, each)?;
        self.end = Some(end);
        Ok(slots)
    }
}

/// [`elements`], handing out each element as an [`Element`].
pub(super) fn each_element<'a, E>(
    raw: Raw<'a>,
    each: &mut dyn FnMut(&mut Element<'a>) -> Result<(), E>,
) -> Result<(), Option<E>> {
    let (text, b) = (raw.0, raw.0.as_bytes());
    if b.first() != Some(&b'[') {
        return Err(None);
    }
    let mut i = ws(b, 1);
    if b.get(i) == Some(&b']') {
        return Ok(());
    }
    loop {
        let mut element = Element {
            text: text.get(i..).ok_or(None)?,
            end: None,
        };
        each(&mut element).map_err(Some)?;
        let end = match element.end {
            Some(end) => i.saturating_add(end),
            None => skip_value(b, i).ok_or(None)?,
        };
        i = ws(b, end);
        match b.get(i) {
            Some(b',') => i = ws(b, i.saturating_add(1)),
            Some(b']') => return Ok(()),
            _ => return Err(None),
        }
    }
}
