//! Reading JSON the way the model servers (Python: `json` + pydantic in lax mode) read it:
//! objects walked member by member with the LAST duplicate winning, numbers and booleans
//! coerced as pydantic's lax mode coerces them. Values stay borrowed raw JSON text until
//! something needs them, so nothing is copied and nothing recurses on the input's nesting.

use super::scan::Raw;
use serde::de::{self, Deserializer as _, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// A JSON string, borrowed from the input when it has no escapes, decoded otherwise.
#[cfg(test)]
#[derive(Deserialize)]
pub(super) struct JsonStr<'a>(#[serde(borrow)] pub Cow<'a, str>);

/// First byte of a raw JSON value (`{`, `[`, `"`, `t`, `f`, `n`, `-` or a digit).
pub(super) fn kind(raw: Raw) -> u8 {
    raw.kind()
}

/// The members of the JSON object `json`: for each name in `keys`, the value of its last
/// member; `each` also sees every member (duplicates included), in order. Keys are compared
/// after unescaping (`"mod\u0065l"` is `model`, as in Python).
pub(super) fn members<'a, const N: usize>(
    json: &'a str,
    keys: [&str; N],
    each: &mut dyn FnMut(&str, &'a RawValue),
) -> Result<[Option<&'a RawValue>; N], serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(json);
    let mut recheck = false;
    let slots = (&mut de).deserialize_map(ObjectVisitor {
        keys,
        each,
        recheck: &mut recheck,
    })?;
    de.end()?;
    if recheck {
        // Keys are read as bytes, which skips the control character check; an escaped key
        // holding one may have had it raw, so check the text the strict way.
        serde_json::from_str::<de::IgnoredAny>(json)?;
    }
    Ok(slots)
}

struct ObjectVisitor<'k, 'f, 'a, const N: usize> {
    keys: [&'k str; N],
    each: &'f mut dyn FnMut(&str, &'a RawValue),
    recheck: &'f mut bool,
}

impl<'de, const N: usize> Visitor<'de> for ObjectVisitor<'_, '_, 'de, N> {
    type Value = [Option<&'de RawValue>; N];

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut slots = [None; N];
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if key.iter().any(|&b| b < 0x20) {
                match key {
                    Cow::Borrowed(_) => {
                        return Err(de::Error::custom("control character in a key"))
                    }
                    Cow::Owned(_) => *self.recheck = true,
                }
            }
            let value: &'de RawValue = map.next_value()?;
            // A key with a lone surrogate escape (Python accepts it) is none of ours.
            let key = std::str::from_utf8(&key).unwrap_or("\u{fffd}");
            if let Some(slot) = self
                .keys
                .iter()
                .position(|k| *k == key)
                .and_then(|i| slots.get_mut(i))
            {
                *slot = Some(value);
            }
            (self.each)(key, value);
        }
        Ok(slots)
    }
}

/// An object key as bytes, unescaped: borrowed when it has no escapes. Read as bytes so that
/// lone surrogate escapes (`"\ud800"`, valid for Python's json) do not fail the whole body.
struct Key<'a>(Cow<'a, [u8]>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_vec())))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v.as_bytes())))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.as_bytes().to_vec())))
    }
}

/// A JSON string value, borrowed when it has no escapes; `None` for any other JSON type, and
/// for a string with a lone surrogate escape (`"\ud800"`: valid JSON, not a Rust string).
///
/// `raw` was validated (`strict.rs`) when it was handed out, so only the escapes are decoded
/// here (no second parse of the text): `str_for_tests` holds this to serde_json's reading.
pub(super) fn string(raw: Raw<'_>) -> Option<Cow<'_, str>> {
    if kind(raw) != b'"' {
        return None;
    }
    let text = raw.get().trim_end_matches([' ', '\t', '\n', '\r']);
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    super::text::decode(inner)
}

/// The reading `string` must match: serde_json's own.
#[cfg(test)]
pub(super) fn string_by_serde(raw: &RawValue) -> Option<Cow<'_, str>> {
    if raw.get().as_bytes().first() != Some(&b'"') {
        return None;
    }
    serde_json::from_str::<JsonStr>(raw.get())
        .ok()
        .map(|JsonStr(v)| v)
}

/// A non-negative integer field as pydantic's lax mode reads it: `null` is absent; integers,
/// floats without a fractional part (`100.0`, `1e2`), numeric strings (`"100"`, `" 1e2 "`) and
/// booleans (as 0/1) are accepted. Values past `u64::MAX` saturate. Negative, fractional or
/// other values are `Err`.
pub(super) fn lax_uint(raw: Raw) -> Result<Option<u64>, ()> {
    match kind(raw) {
        b'n' => Ok(None),
        b't' => Ok(Some(1)),
        b'f' => Ok(Some(0)),
        b'"' => {
            let s = string(raw).ok_or(())?;
            number(s.trim()).map(Some)
        }
        _ => number(raw.get()).map(Some),
    }
}

/// A boolean field as pydantic's lax mode reads it: `null` is absent; `true`/`false`, the
/// numbers 0 and 1 and the strings `0 1 true false t f yes no y n on off` (any case).
pub(super) fn lax_bool(raw: Raw) -> Result<Option<bool>, ()> {
    match kind(raw) {
        b'n' => Ok(None),
        b't' => Ok(Some(true)),
        b'f' => Ok(Some(false)),
        b'"' => {
            let s = string(raw).ok_or(())?;
            match s.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "t" | "yes" | "y" | "on" => Ok(Some(true)),
                "0" | "false" | "f" | "no" | "n" | "off" => Ok(Some(false)),
                _ => Err(()),
            }
        }
        _ => match number(raw.get())? {
            0 => Ok(Some(false)),
            1 => Ok(Some(true)),
            _ => Err(()),
        },
    }
}

/// The value of a decimal number text (`[+-]digits[.digits][(e|E)[+-]digits]`) when it is a
/// non-negative whole number, exactly (no floating point), saturating at `u64::MAX`.
fn number(s: &str) -> Result<u64, ()> {
    let b = s.as_bytes();
    let mut i = 0usize;
    let negative = match b.first() {
        Some(b'-') => {
            i = 1;
            true
        }
        Some(b'+') => {
            i = 1;
            false
        }
        _ => false,
    };
    let digits_from = |i: usize| -> usize {
        b.get(i..)
            .unwrap_or_default()
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let int_len = digits_from(i);
    let int = b.get(i..i.saturating_add(int_len)).unwrap_or_default();
    i = i.saturating_add(int_len);
    let mut frac: &[u8] = &[];
    if b.get(i) == Some(&b'.') {
        let n = digits_from(i.saturating_add(1));
        frac = b
            .get(i.saturating_add(1)..i.saturating_add(1).saturating_add(n))
            .unwrap_or_default();
        i = i.saturating_add(1).saturating_add(n);
    }
    if int.is_empty() && frac.is_empty() {
        return Err(());
    }
    let mut exp: i64 = 0;
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i = i.saturating_add(1);
        let exp_negative = match b.get(i) {
            Some(b'-') => {
                i = i.saturating_add(1);
                true
            }
            Some(b'+') => {
                i = i.saturating_add(1);
                false
            }
            _ => false,
        };
        let n = digits_from(i);
        if n == 0 {
            return Err(());
        }
        for &d in b.get(i..i.saturating_add(n)).unwrap_or_default() {
            // Clamped far beyond any meaningful exponent: 1e999999999 still saturates.
            exp = (exp * 10 + i64::from(d - b'0')).min(1_000_000_000);
        }
        if exp_negative {
            exp = -exp;
        }
        i = i.saturating_add(n);
    }
    if i != b.len() {
        return Err(());
    }
    // The digits of int and frac in a row; the decimal point sits `point` digits in.
    let point = (int.len() as i64).saturating_add(exp);
    let all = int.iter().chain(frac.iter());
    let mut value: u64 = 0;
    for (pos, &d) in all.enumerate() {
        let digit = u64::from(d - b'0');
        if (pos as i64) < point {
            value = value.saturating_mul(10).saturating_add(digit);
        } else if digit != 0 {
            return Err(()); // a fractional part
        }
    }
    let total = int.len().saturating_add(frac.len()) as i64;
    if point > total && value != 0 {
        // Trailing zeros implied by the exponent.
        for _ in total..point.min(total.saturating_add(40)) {
            value = value.saturating_mul(10);
        }
    }
    if negative && value != 0 {
        return Err(());
    }
    Ok(value)
}

#[cfg(test)]
pub(super) fn number_for_tests(s: &str) -> Result<u64, ()> {
    number(s)
}
