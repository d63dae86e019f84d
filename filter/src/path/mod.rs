//! Request paths as the servers behind the gateway will read them, so that no spelling of an
//! API path walks around inspection (`/v1/chat%2Fcompletions`, `//v1/chat/completions`,
//! `/x/../v1/chat/completions`, ...).
//!
//! Two functions: [`normalize`] gives THE path (one percent-decoding, the usual server
//! reading) for comparisons that need one answer (the push path, `path_prefix` rules), and
//! [`matches_prefixes`] answers "is this an API path" conservatively: yes when ANY plausible
//! reading of the raw bytes matches (no decoding, decoded once, twice, three times; dot
//! segments resolved or not; `\` read as `/` or not; cut at a decoded `?`, `#` or `;` or not).
//! Over-matching only means a request is inspected that need not be; under-matching would let
//! it past the limits and rules.

use std::borrow::Cow;

/// Decoding rounds tried by [`matches_prefixes`] (`%25252F` is three rounds from `/`).
const MAX_ROUNDS: usize = 4;

/// The path a server reads from a raw `:path`: query (`?...`) and fragment (`#...`) dropped,
/// percent-escapes decoded once (`%2F` and `%2f` are `/`, `%2E` is `.`; malformed escapes such
/// as `%zz` or a trailing `%` are kept as they are), then `//` runs merged into one `/` and `.`
/// and `..` segments resolved (never above the root). Bytes that are not UTF-8 after decoding
/// become U+FFFD. The result always starts with `/`; a trailing `/` is kept.
pub fn normalize(raw: &[u8]) -> String {
    if let Some(path) = plain(path_part(raw)) {
        return path.to_string();
    }
    normalize_slow(raw)
}

/// [`normalize`] without the plain-path shortcut (the reference the shortcut must match).
fn normalize_slow(raw: &[u8]) -> String {
    let decoded = percent_decode(path_part(raw));
    resolve(&String::from_utf8_lossy(&decoded), true)
}

/// Whether any plausible reading of the raw `:path` bytes has one of `prefixes` as a path
/// prefix (see [`has_prefix`]; the module doc lists the readings). Never
/// panics, whatever the bytes.
pub fn matches_prefixes(prefixes: &[String], raw: &[u8]) -> bool {
    if let Some(path) = plain(path_part(raw)) {
        return prefixes.iter().any(|p| has_prefix(path, p));
    }
    matches_prefixes_slow(prefixes, raw)
}

/// [`matches_prefixes`] without the plain-path shortcut (the reference it must match).
fn matches_prefixes_slow(prefixes: &[String], raw: &[u8]) -> bool {
    let matches = |path: &str| prefixes.iter().any(|p| has_prefix(path, p));
    let mut current: Cow<[u8]> = Cow::Borrowed(path_part(raw));
    for _ in 0..MAX_ROUNDS {
        let text = String::from_utf8_lossy(&current);
        if readings(&text).any(|p| matches(&p)) {
            return true;
        }
        let next = percent_decode(&current);
        if next == current.as_ref() {
            break;
        }
        current = Cow::Owned(next);
    }
    false
}

/// `path` itself when every reading of it is the path as it is (the usual case, and no
/// allocation): it starts with `/`, is printable ASCII without `%`, a backslash or `;` (nothing to
/// decode, convert or cut), has no `//` (nothing to merge) and no `.` or `..` segment (nothing
/// to resolve).
fn plain(path: &[u8]) -> Option<&str> {
    if path.first() != Some(&b'/') {
        return None;
    }
    let clean = path
        .iter()
        .all(|&b| b.is_ascii_graphic() && !matches!(b, b'%' | b'\\' | b';'));
    if !clean {
        return None;
    }
    let mut segments = path.split(|&b| b == b'/').skip(1).peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if (seg.is_empty() && !last) || seg == b"." || seg == b".." {
            return None;
        }
    }
    std::str::from_utf8(path).ok()
}

/// The path without query and fragment; an absolute-form target (`http://host/p`) without
/// its scheme and authority.
fn path_part(raw: &[u8]) -> &[u8] {
    let end = raw
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(raw.len());
    let path = raw.get(..end).unwrap_or_default();
    for scheme in [&b"http://"[..], &b"https://"[..]] {
        if path.len() >= scheme.len()
            && path
                .get(..scheme.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
        {
            let rest = path.get(scheme.len()..).unwrap_or_default();
            let slash = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
            return rest.get(slash..).unwrap_or_default();
        }
    }
    path
}

/// The readings of one decoded path: as is, with `\` as `/`, each cut at a `?`, `#` or `;`
/// that decoding produced, and each with dot segments resolved or only slashes merged.
fn readings(text: &str) -> impl Iterator<Item = String> + '_ {
    let slashed = (text.contains('\\')).then(|| text.replace('\\', "/"));
    [Some(text.to_string()), slashed]
        .into_iter()
        .flatten()
        .flat_map(|t| {
            let cut = t
                .find(['?', '#', ';'])
                .and_then(|i| t.get(..i))
                .map(str::to_string);
            [Some(t), cut].into_iter().flatten()
        })
        .flat_map(|t| [resolve(&t, true), resolve(&t, false)])
}

/// Decodes `%XX` escapes (either case of hex digits); anything else is copied.
fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0usize;
    while let Some(&b) = s.get(i) {
        let hex = |j: usize| s.get(j).and_then(|&c| char::from(c).to_digit(16));
        match (b, hex(i.saturating_add(1)), hex(i.saturating_add(2))) {
            (b'%', Some(hi), Some(lo)) => {
                // Two hex digits: at most 0xFF.
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'%'));
                i = i.saturating_add(3);
            }
            _ => {
                out.push(b);
                i = i.saturating_add(1);
            }
        }
    }
    out
}

/// `path` with `//` runs merged and, when `dots`, `.` and `..` segments resolved. Always
/// starts with `/`; a trailing `/` (or a final `.`/`..` segment) leaves a trailing `/`.
fn resolve(path: &str, dots: bool) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in path.split('/') {
        trailing = false;
        match seg {
            "" => trailing = true,
            "." if dots => trailing = true,
            ".." if dots => {
                segments.pop();
                trailing = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len().saturating_add(1));
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    out
}

/// Segment-aware prefix match: `/v1/completions` matches `/v1/completions` and
/// `/v1/completions/x`, not `/v1/completionsfoo`.
pub fn has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
