//! The Generic Cell Rate Algorithm as pure functions of (state, now, request).
//!
//! State is one `u64`: the theoretical arrival time (TAT), in monotonic nanoseconds, at which
//! the bucket would be empty again if nothing else arrived. Each unit costs `emission_ns`;
//! a request is admitted when, after adding its cost, the TAT lies no more than
//! `tolerance_ns = burst * emission_ns` ahead of now. Invariant: over any window of length W,
//! the admitted amount is at most `burst + W / emission_ns` (and `emission_ns` is rounded up,
//! so at most `burst + rate * W`).

use crate::error::{CoreError, Result};
use crate::rate::Rate;

/// A rate limit compiled to integer nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateParams {
    pub emission_ns: u64,
    pub burst: u64,
    pub tolerance_ns: u64,
    /// How a refund comes back (see [`refund`]): false, only what of its own charge has not
    /// drained; true, whole, as far as the bucket has room (a provider's token bucket).
    pub whole_refunds: bool,
}

/// Largest tolerance accepted: keeps `now + tolerance + cost` far from `u64::MAX`.
const MAX_TOLERANCE_NS: u64 = 1 << 62;

/// The latest TAT ever stored (292 years after boot): far below `TOMBSTONE`, and far enough
/// below `u64::MAX` that adding a tolerance or a cost to it cannot overflow.
pub const MAX_TAT: u64 = 1 << 63;

impl RateParams {
    /// `burst` defaults to the whole quota of one period (a 500/min limit may admit 500 at once).
    pub fn new(rate: Rate, burst: Option<u64>) -> Result<RateParams> {
        let exact_ns = rate.period_ns as f64 / rate.amount;
        if exact_ns < 1.0 {
            return Err(CoreError::Config(format!(
                "rate of {} per {} ns is too high: at most one unit per nanosecond",
                rate.amount, rate.period_ns
            )));
        }
        let emission_ns = exact_ns.ceil() as u64;
        let burst = match burst {
            Some(0) => return Err(CoreError::Config("burst must be at least 1".into())),
            Some(b) => b,
            None => (rate.amount.floor() as u64).max(1),
        };
        let tolerance_ns = burst
            .checked_mul(emission_ns)
            .filter(|t| *t <= MAX_TOLERANCE_NS)
            .ok_or_else(|| {
                CoreError::Config(format!(
                    "burst {burst} at this rate spans more than 146 years; choose a smaller burst"
                ))
            })?;
        Ok(RateParams {
            emission_ns,
            burst,
            tolerance_ns,
            whole_refunds: false,
        })
    }

    /// The same limit with refunds that come back whole (see [`refund`]).
    pub fn with_whole_refunds(self) -> RateParams {
        RateParams {
            whole_refunds: true,
            ..self
        }
    }

    /// Cost of `n` units in nanoseconds (saturating: only forced charges exceed the burst).
    #[inline]
    pub fn cost_ns(&self, n: u64) -> u64 {
        n.saturating_mul(self.emission_ns)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateOutcome {
    /// Store `new_tat`; the request may proceed after `delay_ns` (0 unless waiting was allowed).
    Admit { new_tat: u64, delay_ns: u64 },
    /// Not now: the same request is admitted `retry_after_ns` from now, if nothing else arrives.
    Deny { retry_after_ns: u64 },
}

/// Decides `n` units (1 ≤ n ≤ burst) at `now`, admitting it if it fits within `max_wait_ns`.
#[inline]
pub fn decide(tat: u64, now: u64, n: u64, p: &RateParams, max_wait_ns: u64) -> RateOutcome {
    debug_assert!(n >= 1 && n <= p.burst);
    let new_tat = tat.max(now).saturating_add(p.cost_ns(n)).min(MAX_TAT);
    let allow_at = new_tat.saturating_sub(p.tolerance_ns);
    if allow_at <= now {
        RateOutcome::Admit { new_tat, delay_ns: 0 }
    } else if allow_at - now <= max_wait_ns {
        RateOutcome::Admit {
            new_tat,
            delay_ns: allow_at - now,
        }
    } else {
        RateOutcome::Deny {
            retry_after_ns: allow_at - now,
        }
    }
}

/// Units that would be admitted right now.
#[inline]
pub fn remaining(tat: u64, now: u64, p: &RateParams) -> u64 {
    let used_ns = tat.saturating_sub(now);
    p.tolerance_ns.saturating_sub(used_ns) / p.emission_ns
}

/// Nanoseconds until the bucket is full again.
#[inline]
pub fn reset_after(tat: u64, now: u64) -> u64 {
    tat.saturating_sub(now)
}

/// Gives back `n` units of a charge that would be fully drained at `charge_end` (the time it
/// was made plus its cost).
///
/// By default only the part of the charge that has not drained yet (`charge_end - now`) comes
/// back: a unit that already drained freed its capacity, and returning it again would
/// over-admit. This also makes a refund against a cell that expired (and was perhaps reused) a
/// no-op. It is exact for one charge at a time; with several in flight each is assumed to have
/// drained alone, so refunds under concurrency come back short (never long).
///
/// With `whole_refunds` the refund comes back whole, as far as the bucket has room (what is
/// undrained of every charge, `tat - now`): the semantics of a provider's token bucket, which
/// charges a call's estimate and adjusts it to the real usage at the end. A limit that mirrors
/// such a provider keeps pace with it; past the provider, a refund of a charge that already
/// drained may admit up to its size more than `burst + rate * T`.
#[inline]
pub fn refund(tat: u64, now: u64, n: u64, charge_end: u64, p: &RateParams) -> u64 {
    let bound = if p.whole_refunds { tat } else { charge_end };
    let undrained = p.cost_ns(n).min(bound.saturating_sub(now));
    tat.saturating_sub(undrained)
}

/// Units charged and not yet drained at `now` (above the burst after forced charges).
#[inline]
pub fn undrained(tat: u64, now: u64, p: &RateParams) -> u64 {
    tat.saturating_sub(now) / p.emission_ns
}

/// Charges `n` units unconditionally (usage above the reservation, learned after the fact).
#[inline]
pub fn force(tat: u64, now: u64, n: u64, p: &RateParams) -> u64 {
    tat.max(now).saturating_add(p.cost_ns(n)).min(MAX_TAT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(rate: &str, burst: Option<u64>) -> RateParams {
        RateParams::new(Rate::parse(rate).unwrap(), burst).unwrap()
    }

    #[test]
    fn burst_then_steady_rate() {
        let p = params("10/s", None);
        let mut tat = 0;
        let now = 1_000_000_000;
        for _ in 0..10 {
            match decide(tat, now, 1, &p, 0) {
                RateOutcome::Admit { new_tat, .. } => tat = new_tat,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            decide(tat, now, 1, &p, 0),
            RateOutcome::Deny {
                retry_after_ns: 100_000_000
            }
        );
        assert!(matches!(
            decide(tat, now + 100_000_000, 1, &p, 0),
            RateOutcome::Admit { .. }
        ));
    }

    #[test]
    fn waiting_admits_with_a_delay() {
        let p = params("1/s", None);
        let tat = 2_000_000_000; // one unit queued beyond now
        assert_eq!(
            decide(tat, 1_000_000_000, 1, &p, 5_000_000_000),
            RateOutcome::Admit {
                new_tat: 3_000_000_000,
                delay_ns: 1_000_000_000
            }
        );
    }

    #[test]
    fn fractional_rates_round_the_interval_up() {
        let p = params("7/s", None);
        assert_eq!(p.emission_ns, 142_857_143);
        assert_eq!(p.burst, 7);
        // The whole burst fits at once even though 7 * 142_857_143 > 1 s.
        assert!(matches!(decide(0, 5, 7, &p, 0), RateOutcome::Admit { .. }));
    }

    #[test]
    fn refund_returns_only_undrained_cost() {
        let p = params("1/s", Some(10));
        let now = 100_000_000_000;
        let charge_end = now + 3_000_000_000;
        // Fully undrained: all three units come back.
        assert_eq!(refund(charge_end, now, 3, charge_end, &p), now);
        // Two seconds later only one unit is still undrained.
        assert_eq!(
            refund(charge_end, now + 2_000_000_000, 3, charge_end, &p),
            charge_end - 1_000_000_000
        );
        // Long expired: nothing to give back.
        assert_eq!(refund(7, now, 3, charge_end - 10_000_000_000, &p), 7);
    }

    #[test]
    fn whole_refunds_come_back_as_far_as_the_bucket_has_room() {
        let p = params("1/s", Some(10)).with_whole_refunds();
        let now = 100_000_000_000;
        // Eight charges of three made together: the last one's own end is long past its
        // made-alone end, and still all of it comes back.
        let tat = now + 24_000_000_000;
        let made_alone_end = now + 3_000_000_000;
        assert_eq!(
            refund(tat, now + 2_000_000_000, 3, made_alone_end, &p),
            tat - 3_000_000_000
        );
        // Never past a full bucket.
        assert_eq!(refund(now + 1_000_000_000, now, 3, made_alone_end, &p), now);
        assert_eq!(refund(7, now, 3, made_alone_end, &p), 7);
    }

    #[test]
    fn rejects_impossible_params() {
        assert!(RateParams::new(Rate::parse("2G/s").unwrap(), None).is_err());
        assert!(RateParams::new(Rate::parse("1/day").unwrap(), Some(0)).is_err());
        assert!(RateParams::new(Rate::parse("1/day").unwrap(), Some(u64::MAX / 2)).is_err());
    }
}
