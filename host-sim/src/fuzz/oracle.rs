//! Independent readings the checks compare the filter against: the path a model server
//! reads, and the top-level members of a JSON body as a last-key-wins parser keeps them.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The path an HTTP server reads from a raw `:path` (the usual reading, per the product
/// contract): query and fragment dropped, percent-escapes decoded once, `//` merged, `.` and
/// `..` segments resolved.
pub fn server_path(raw: &[u8]) -> Vec<u8> {
    let end = raw
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(raw.len());
    let raw = &raw[..end];
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                decoded.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        decoded.push(raw[i]);
        i += 1;
    }
    let mut segs: Vec<&[u8]> = Vec::new();
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut out = Vec::with_capacity(decoded.len() + 1);
    for s in segs {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// `path` is `prefix` or below it.
pub fn under(path: &[u8], prefix: &str) -> bool {
    let p = prefix.trim_end_matches('/').as_bytes();
    path.starts_with(p) && (path.len() == p.len() || path[p.len()] == b'/')
}

/// Top-level members of a JSON object in order, duplicates kept; `None` if the text is not a
/// JSON object serde_json accepts.
pub fn top_members(body: &[u8]) -> Option<Vec<(String, Box<RawValue>)>> {
    struct Members(Vec<(String, Box<RawValue>)>);
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Members;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                out.push((k, v));
            }
            Ok(Members(out))
        }
    }
    impl<'de> Deserialize<'de> for Members {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Members, D::Error> {
            d.deserialize_map(V)
        }
    }
    serde_json::from_slice::<Members>(body).ok().map(|m| m.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_reading_of_paths() {
        let p = |s: &[u8]| String::from_utf8_lossy(&server_path(s)).into_owned();
        assert_eq!(p(b"/v1/chat%2Fcompletions?x#y"), "/v1/chat/completions");
        assert_eq!(p(b"//v1/./x/../chat/completions"), "/v1/chat/completions");
        assert_eq!(p(b"/v1/chat%252Fcompletions"), "/v1/chat%2Fcompletions");
        assert_eq!(p(b"/%2"), "/%2");
        assert_eq!(p(b"/a%"), "/a%");
        assert_eq!(p(b""), "/");
        assert!(under(b"/v1/chat/completions", "/v1/chat/completions"));
        assert!(under(b"/v1/chat/completions/x", "/v1/chat/completions"));
        assert!(!under(b"/v1/chat/completionsX", "/v1/chat/completions"));
    }

    #[test]
    fn members_keep_duplicates() {
        let m = top_members(br#"{"model":null, "a":1, "model":"x"}"#).unwrap_or_default();
        let keys: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["model", "a", "model"]);
        assert_eq!(m[2].1.get(), "\"x\"");
        assert!(top_members(b"[1]").is_none());
    }
}
