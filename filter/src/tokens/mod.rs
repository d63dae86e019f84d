//! Prompt token estimation from text (no vocabulary shipped in the filter).
//!
//! Interim implementation: replaced by the calibrated estimator.

/// Estimated number of BPE tokens (cl100k/o200k-like) in `text`.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}
