//! Quotas: an amount per calendar period (day, week, month) that resets at the boundary.
//!
//! State is one `u64`: the low 48 bits hold the amount used, the high 16 bits the period
//! index modulo 2^16. A cell from an earlier period reads as zero used.

use crate::calendar::Period;

const USED_BITS: u32 = 48;
const USED_MASK: u64 = (1 << USED_BITS) - 1;
/// The largest amount a cell can hold ($281M in micro-dollars). One below the mask, so that no
/// packed value is ever `TOMBSTONE` (all ones).
pub const MAX_QUOTA: u64 = USED_MASK - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaParams {
    pub limit: u64,
    pub period: Period,
}

#[inline]
fn tag(period_index: u64) -> u64 {
    period_index & 0xFFFF
}

/// Amount used in the period containing `wall_ns`.
#[inline]
pub fn used(state: u64, period_index: u64) -> u64 {
    if state >> USED_BITS == tag(period_index) {
        state & USED_MASK
    } else {
        0
    }
}

#[inline]
pub fn pack(period_index: u64, used: u64) -> u64 {
    (tag(period_index) << USED_BITS) | used.min(MAX_QUOTA)
}

/// `Some(new_state)` when `n` more fits in the period, else `None`.
#[inline]
pub fn decide(state: u64, period_index: u64, n: u64, p: &QuotaParams) -> Option<u64> {
    let used = used(state, period_index);
    (used.saturating_add(n) <= p.limit).then(|| pack(period_index, used + n))
}

/// Gives back `n` charged in period `charged_in`; a refund after the period rolled over is a no-op.
#[inline]
pub fn refund(state: u64, period_index: u64, charged_in: u64, n: u64) -> u64 {
    if period_index != charged_in || state >> USED_BITS != tag(period_index) {
        return state;
    }
    pack(period_index, (state & USED_MASK).saturating_sub(n))
}

/// Adds `n` unconditionally (real usage above the reservation).
#[inline]
pub fn force(state: u64, period_index: u64, n: u64) -> u64 {
    pack(period_index, used(state, period_index).saturating_add(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_and_rolls_over() {
        let p = QuotaParams {
            limit: 100,
            period: Period::Day,
        };
        let s = decide(0, 5, 60, &p).unwrap();
        assert_eq!(used(s, 5), 60);
        assert_eq!(decide(s, 5, 41, &p), None);
        let s = decide(s, 5, 40, &p).unwrap();
        assert_eq!(used(s, 5), 100);
        // Next period starts empty.
        assert_eq!(used(s, 6), 0);
        assert_eq!(used(decide(s, 6, 100, &p).unwrap(), 6), 100);
    }

    #[test]
    fn refunds_stay_in_their_period() {
        let s = pack(9, 50);
        assert_eq!(used(refund(s, 9, 9, 20), 9), 30);
        assert_eq!(refund(s, 10, 9, 20), s);
        assert_eq!(used(force(s, 9, 500), 9), 550);
    }
}
