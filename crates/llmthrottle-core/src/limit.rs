//! Kinds of limit and the state each keeps in its cell.

use crate::calendar::Period;
use crate::clock::Now;
use crate::gcra::RateParams;
use crate::quota::{self, QuotaParams};

/// A cell holding this value was reclaimed by a store sweep: look the key up again.
///
/// A sweep swaps an expired value for `TOMBSTONE` with a compare-and-swap before it frees the
/// cell, so an update racing with the sweep fails its own compare-and-swap instead of writing
/// into a cell that is about to belong to nobody (or to another key).
pub const TOMBSTONE: u64 = u64::MAX;

/// Longest key accepted, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 255;

/// The error for a key longer than [`MAX_KEY_BYTES`].
#[cold]
pub(crate) fn key_too_long(key: &str) -> crate::error::CoreError {
    crate::error::CoreError::InvalidInput(format!(
        "key is {} bytes long; at most {MAX_KEY_BYTES} bytes are allowed",
        key.len()
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// GCRA: an amount per period with a burst.
    Rate(RateParams),
    /// At most `max` calls in flight; released by commit or cancel.
    Concurrency { max: u64 },
    /// At most `limit` per calendar period.
    Quota(QuotaParams),
}

/// What a store must know about a cell to tell whether it expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CellKind {
    Rate,
    Concurrency,
    Quota(Period),
}

impl LimitKind {
    pub fn cell_kind(&self) -> CellKind {
        match self {
            LimitKind::Rate(_) => CellKind::Rate,
            LimitKind::Concurrency { .. } => CellKind::Concurrency,
            LimitKind::Quota(q) => CellKind::Quota(q.period),
        }
    }

    /// The most one request can ever be granted.
    pub fn capacity(&self) -> u64 {
        match self {
            LimitKind::Rate(p) => p.burst,
            LimitKind::Concurrency { max } => *max,
            LimitKind::Quota(q) => q.limit,
        }
    }
}

impl CellKind {
    /// A short tag naming the state layout, part of every limit's identity in a store.
    pub fn tag(&self) -> String {
        match self {
            CellKind::Rate => "rate".into(),
            CellKind::Concurrency => "concurrency".into(),
            CellKind::Quota(Period::Day) => "quota.day".into(),
            CellKind::Quota(Period::Week) => "quota.week".into(),
            CellKind::Quota(Period::Month) => "quota.month".into(),
            CellKind::Quota(Period::Fixed(ns)) => format!("quota.{ns}ns"),
        }
    }

    /// True when the cell holds nothing that a future decision depends on.
    #[inline]
    pub fn is_expired(&self, value: u64, now: Now) -> bool {
        match self {
            CellKind::Rate => value <= now.monotonic_ns,
            CellKind::Concurrency => value == 0,
            // Judged only with a real wall-clock reading: at "time 0" every period looks old.
            CellKind::Quota(period) => now.knows_wall() && quota::used(value, period.index(now.wall_ns)) == 0,
        }
    }
}
