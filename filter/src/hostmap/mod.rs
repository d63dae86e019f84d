//! The Proxy-Wasm wire formats of header maps and property paths, as bytes.
//!
//! The proxy-wasm SDK decodes header maps with `String::from_utf8(..).unwrap()`: one header
//! value with a byte >= 0x80 (obs-text, which Envoy passes through) traps the VM and takes the
//! filter down for every request on that worker. This module decodes without assumptions: names
//! and values stay bytes, a malformed map (lengths past its end) yields what could be read.

/// Header names and values as the host gives them.
pub type RawPair = (Vec<u8>, Vec<u8>);

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(raw)).ok()
}

/// Decodes a serialized header map: `count`, then `count` pairs of (name length, value
/// length), then each name and value followed by a NUL byte. Never panics; stops at the
/// first pair that does not fit in `bytes`.
pub fn decode(bytes: &[u8]) -> Vec<RawPair> {
    let mut out = Vec::with_capacity(count(bytes));
    out.extend(pairs(bytes).map(|(k, v)| (k.to_vec(), v.to_vec())));
    out
}

/// The number of pairs a serialized map can hold: its count, unless the buffer is too short
/// for it (each pair takes at least 8 bytes of sizes and 2 NULs: a count the buffer cannot hold
/// is a lie, and must not size an allocation).
fn count(bytes: &[u8]) -> usize {
    u32_at(bytes, 0).map_or(0, |c| c.min(bytes.len() / 10))
}

/// The pairs of a serialized header map as slices of it (no copy), as [`decode`] reads them.
pub fn pairs(bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let count = count(bytes);
    let mut data = 4 + count * 8;
    (0..count).map_while(move |i| {
        let sizes = 4 + i * 8;
        let name_len = u32_at(bytes, sizes)?;
        let value_len = u32_at(bytes, sizes + 4)?;
        let name = take(bytes, &mut data, name_len)?;
        let value = take(bytes, &mut data, value_len)?;
        Some((name, value))
    })
}

/// The first value of header `name` (ASCII case-insensitive) in a serialized header map.
pub fn find<'a>(bytes: &'a [u8], name: &str) -> Option<&'a [u8]> {
    pairs(bytes)
        .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v)
}

/// `len` bytes at `*at`, then skips them and their NUL terminator.
fn take<'a>(bytes: &'a [u8], at: &mut usize, len: usize) -> Option<&'a [u8]> {
    let end = at.checked_add(len)?;
    let slice = bytes.get(*at..end)?;
    *at = end.checked_add(1)?;
    Some(slice)
}

/// Encodes a header map in the same format (for local replies).
pub fn encode<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let size: usize = pairs
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 10)
        .sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&len32(pairs.len()).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&len32(k.as_ref().len()).to_le_bytes());
        out.extend_from_slice(&len32(v.as_ref().len()).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A property path (`["source", "address"]`) as the host takes it: segments joined by NUL.
pub fn property_path<S: AsRef<str>>(segments: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(s.as_ref().as_bytes());
    }
    out
}

/// Header pairs as text for the pure decision code. Bytes that are not UTF-8 become U+FFFD:
/// such a value can never equal a configured value (those are validated printable ASCII), and
/// a tenant id containing one is not a trackable id.
pub fn to_text(pairs: Vec<RawPair>) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|(k, v)| (into_string(k), into_string(v)))
        .collect()
}

/// Bytes as a `String`, without a copy when they are valid UTF-8.
pub fn into_string(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests;
