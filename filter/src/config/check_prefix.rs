//! `endpoints.prefix`: bounds and defaults of prefix-cache affinity.

use super::raw::RawPrefix;
use super::{err, ConfigError, Prefix};

pub const DEFAULT_BLOCK_BYTES: u64 = 256;
pub const MIN_BLOCK_BYTES: u64 = 16;
pub const MAX_BLOCK_BYTES: u64 = 65_536;
pub const DEFAULT_MAX_BLOCKS: u64 = 128;
pub const MAX_MAX_BLOCKS: u64 = 1024;
pub const DEFAULT_INDEX_ENTRIES: u64 = 16_384;
pub const MIN_INDEX_ENTRIES: u64 = 16;
pub const MAX_INDEX_ENTRIES: u64 = 1_048_576;
pub const DEFAULT_WEIGHT: f64 = 2.0;
pub const DEFAULT_LOAD_WEIGHT: f64 = 1.0;
pub const MAX_WEIGHT: f64 = 100.0;
/// Default hash seed; a deployment may set its own (every proxy of it must use the same).
pub const DEFAULT_SEED: u64 = 0x6c6c_6d2d_726f_7574;
/// Estimated bytes per token when a block is given in tokens.
const BYTES_PER_TOKEN: u64 = 4;

fn bounded(
    field: &str,
    v: Option<u64>,
    default: u64,
    lo: u64,
    hi: u64,
) -> Result<u64, ConfigError> {
    let v = v.unwrap_or(default);
    if v < lo || v > hi {
        return err(field, format!("must be in [{lo}, {hi}]"));
    }
    Ok(v)
}

fn weight(field: &str, v: Option<f64>, default: f64) -> Result<f64, ConfigError> {
    let v = v.unwrap_or(default);
    if !(v.is_finite() && (0.0..=MAX_WEIGHT).contains(&v)) {
        return err(field, format!("must be in [0, {MAX_WEIGHT}]"));
    }
    Ok(v)
}

fn usize_of(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

pub(super) fn prefix(p: RawPrefix) -> Result<Prefix, ConfigError> {
    let block_bytes = match (p.block_bytes, p.block_tokens) {
        (Some(_), Some(_)) => {
            return err(
                "endpoints.prefix.block_tokens",
                "give either block_bytes or block_tokens, not both",
            )
        }
        (None, Some(t)) => bounded(
            "endpoints.prefix.block_tokens",
            Some(t),
            0,
            MIN_BLOCK_BYTES / BYTES_PER_TOKEN,
            MAX_BLOCK_BYTES / BYTES_PER_TOKEN,
        )?
        .saturating_mul(BYTES_PER_TOKEN),
        (b, None) => bounded(
            "endpoints.prefix.block_bytes",
            b,
            DEFAULT_BLOCK_BYTES,
            MIN_BLOCK_BYTES,
            MAX_BLOCK_BYTES,
        )?,
    };
    let max_blocks = bounded(
        "endpoints.prefix.max_blocks",
        p.max_blocks,
        DEFAULT_MAX_BLOCKS,
        1,
        MAX_MAX_BLOCKS,
    )?;
    let index_entries = bounded(
        "endpoints.prefix.index_entries",
        p.index_entries,
        DEFAULT_INDEX_ENTRIES,
        MIN_INDEX_ENTRIES,
        MAX_INDEX_ENTRIES,
    )?;
    let min_match_blocks = bounded(
        "endpoints.prefix.min_match_blocks",
        p.min_match_blocks,
        1,
        1,
        max_blocks,
    )?;
    Ok(Prefix {
        block_bytes: usize_of(block_bytes),
        max_blocks: usize_of(max_blocks),
        index_entries: usize_of(index_entries),
        weight: weight("endpoints.prefix.weight", p.weight, DEFAULT_WEIGHT)?,
        load_weight: weight(
            "endpoints.prefix.load_weight",
            p.load_weight,
            DEFAULT_LOAD_WEIGHT,
        )?,
        min_match_blocks: usize_of(min_match_blocks),
        seed: p.seed.unwrap_or(DEFAULT_SEED),
    })
}
