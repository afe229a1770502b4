//! What an admitted request holds: its charges, so that real usage can be reconciled later.
//! Settling goes through [`crate::Engine::commit`] and [`crate::Engine::cancel`].

use std::sync::atomic::{AtomicU64, Ordering};

use smallvec::SmallVec;

use crate::clock::Now;
use crate::gcra;
use crate::limit::{LimitKind, TOMBSTONE};
use crate::quota;
use crate::store::Store;

/// One admitted charge on one cell.
pub struct Charge<S: Store> {
    pub(crate) cell: S::Cell,
    /// The limit as it was when charged (a later policy change does not alter the refund).
    pub(crate) kind: LimitKind,
    /// Index into the policy's dimensions (a policy has at most `MAX_DIMENSIONS`).
    pub(crate) dimension: u16,
    /// Index of the key (in the request's keys) this charge is for.
    pub(crate) key_index: u16,
    pub(crate) amount: u64,
    /// Rate: when the charge would drain if it had been made on an empty bucket (its time plus
    /// its cost): refunds never give back more than is undrained by that measure. Quota: the
    /// period it was charged in.
    pub(crate) mark: u64,
    /// Concurrency: the store's record of the unit held (see `Store::hold`).
    pub(crate) lease: Option<S::Lease>,
}

/// Applies `update` to `cell` with a compare-and-swap loop; false when the cell was reclaimed.
/// A refund then has nothing to give back (whatever the cell held expired); a charge must look
/// the key up again (see `Engine::force_charge`).
pub(crate) fn update(cell: &AtomicU64, update: impl Fn(u64) -> u64) -> bool {
    let mut current = cell.load(Ordering::Acquire);
    while current != TOMBSTONE {
        match cell.compare_exchange_weak(current, update(current), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(actual) => current = actual,
        }
    }
    false
}

/// Charges `n` unconditionally (usage learned after the fact); false when the cell was reclaimed.
pub(crate) fn add(cell: &AtomicU64, kind: LimitKind, now: Now, n: u64) -> bool {
    match kind {
        LimitKind::Rate(p) => update(cell, |tat| gcra::force(tat, now.monotonic_ns, n, &p)),
        LimitKind::Quota(q) => {
            let index = q.period.index(now.wall_ns);
            update(cell, |state| quota::force(state, index, n))
        }
        LimitKind::Concurrency { .. } => true,
    }
}

impl<S: Store> Charge<S> {
    /// Returns `n` of this charge's amount (for a concurrency cap: releases the slot).
    pub(crate) fn give_back(&self, now: Now, n: u64) {
        match self.kind {
            LimitKind::Rate(p) => {
                update(&self.cell, |tat| gcra::refund(tat, now.monotonic_ns, n, self.mark, &p));
            }
            LimitKind::Concurrency { .. } => S::release(&self.cell, self.lease.as_ref()),
            LimitKind::Quota(q) => {
                let index = q.period.index(now.wall_ns);
                update(&self.cell, |state| quota::refund(state, index, self.mark, n));
            }
        }
    }

    /// Brings this charge to `used` (refunding or charging the difference). Returns usage that
    /// could not be charged because the cell was reclaimed meanwhile (the caller charges it to
    /// the key's current cell).
    pub(crate) fn reconcile(&self, now: Now, used: u64) -> u64 {
        if used > self.amount {
            let extra = used - self.amount;
            if !add(&self.cell, self.kind, now, extra) {
                return extra;
            }
        } else if used < self.amount {
            self.give_back(now, self.amount - used);
        }
        0
    }
}

/// An admitted request's charges. Dropping an unsettled reservation keeps the charges as
/// made and releases its concurrency slots, so a forgotten reservation never leaks capacity.
pub struct Reservation<S: Store> {
    // Two inline: a reservation is moved several times on its way into Python, so it is kept
    // small; calls over more limits spill to the heap.
    pub(crate) charges: SmallVec<[Charge<S>; 2]>,
    pub(crate) settled: bool,
}

impl<S: Store> Reservation<S> {
    pub fn is_settled(&self) -> bool {
        self.settled
    }

    /// The amount reserved in `dimension` (the largest over keys).
    pub fn reserved(&self, dimension: usize) -> u64 {
        self.charges
            .iter()
            .filter(|c| c.dimension as usize == dimension)
            .map(|c| c.amount)
            .max()
            .unwrap_or(0)
    }

}

impl<S: Store> Drop for Reservation<S> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        for charge in &self.charges {
            if let LimitKind::Concurrency { .. } = charge.kind {
                // Releasing a slot needs no clock.
                S::release(&charge.cell, charge.lease.as_ref());
            }
        }
    }
}

impl<S: Store> std::fmt::Debug for Reservation<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("charges", &self.charges.len())
            .field("settled", &self.settled)
            .finish()
    }
}
