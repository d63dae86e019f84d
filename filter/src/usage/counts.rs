//! The counts of a `usage` object, read as leniently as the servers that write them.

use super::Usage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Prompt,
    Completion,
    Total,
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    prompt: Option<u64>,
    completion: Option<u64>,
    total: Option<u64>,
}

impl Counts {
    pub(crate) fn set(&mut self, f: Field, v: Option<u64>) {
        match f {
            Field::Prompt => self.prompt = v,
            Field::Completion => self.completion = v,
            Field::Total => self.total = v,
        }
    }

    pub(crate) fn usage(&self) -> Option<Usage> {
        if self.prompt.is_none() && self.completion.is_none() && self.total.is_none() {
            return None;
        }
        Some(Usage {
            prompt_tokens: self.prompt.unwrap_or(0),
            completion_tokens: self.completion.unwrap_or(0),
            total_tokens: self.total.unwrap_or(0),
        })
    }
}

/// A token count read the way Python servers read numbers: `12`, `12.0`, `1.2e1`, `"12"`.
/// Fractions round up; negative, non-finite and non-numeric values are no count; huge ones
/// saturate.
pub(crate) fn lenient_count(raw: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    let digits = s.strip_prefix('+').unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Some(digits.bytes().fold(0u64, |acc, d| {
            acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        }));
    }
    if !s.bytes().any(|b| b.is_ascii_digit()) {
        // "inf", "nan", "infinity": numbers to Rust, not to JSON.
        return None;
    }
    let v: f64 = s.parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    // `as` saturates at u64::MAX.
    Some(v.ceil() as u64)
}
