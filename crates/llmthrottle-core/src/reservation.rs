//! What an admitted request holds: its charges, so that real usage can be reconciled later.
//! Settling goes through [`crate::Engine::commit`] and [`crate::Engine::cancel`].
//!
//! A charge on a rate or quota limit keeps no handle on its cell: settling looks the key up
//! again. That is safe because a store reclaims only expired cells, and an expired cell has
//! nothing of the charge left to give back (each refund is bounded by what of its own charge is
//! still undrained, measured from `mark`), so a refund that finds a newer cell for the key gives
//! back nothing. Holding a handle per charge cost a reference count taken and dropped per cell
//! per decision (on shared memory, a pin on the slot as well) and made a reservation several
//! times larger. Only a unit of a concurrency cap keeps its handle, in `held`, so it is released
//! where it was taken.

use smallvec::SmallVec;

use crate::clock::Now;
use crate::gcra;
use crate::limit::{LimitKind, TOMBSTONE};
use crate::quota;
use crate::store::{Store, Update};

/// One admitted charge: which limit of the reservation's policy, on which of its keys.
#[derive(Debug, Clone, Copy)]
pub struct Charge {
    /// The rule and the limit's position in it, in the policy the reservation was made under
    /// (a later policy change does not alter the refund).
    pub(crate) rule: u16,
    pub(crate) limit: u16,
    /// Index into the policy's dimensions (a policy has at most `MAX_DIMENSIONS`).
    pub(crate) dimension: u16,
    /// Index of the key (in the request's keys) this charge is for.
    pub(crate) key_index: u16,
    pub(crate) amount: u64,
    /// Rate: when the charge would drain if it had been made on an empty bucket (its time plus
    /// its cost): refunds never give back more than is undrained by that measure. Quota: the
    /// period it was charged in.
    pub(crate) mark: u64,
}

/// One unit of a concurrency cap, held through a handle on its cell.
pub(crate) struct Held<S: Store> {
    pub(crate) cell: S::Cell,
    /// The store's record of the unit (see `Store::hold`).
    pub(crate) lease: Option<S::Lease>,
}

/// The step (for [`Store::update_cell`] or [`compare_and_swap`]) that charges `n`
/// unconditionally: usage learned after the fact. It returns false when the cell was
/// reclaimed, and the charge must look the key up again (see `Engine::force_charge`).
#[inline]
pub(crate) fn add(kind: LimitKind, now: Now, n: u64) -> impl FnMut(u64) -> Update<bool> {
    move |current| match kind {
        _ if current == TOMBSTONE => Update::Keep(false),
        LimitKind::Rate(p) => Update::Write(gcra::force(current, now.monotonic_ns, n, &p), true),
        LimitKind::Quota(q) => Update::Write(quota::force(current, q.period.index(now.wall_ns), n), true),
        LimitKind::Concurrency { .. } => Update::Keep(true),
    }
}

/// The step that gives back `n` of `charge` (made under `kind`): nothing when the cell was
/// reclaimed (whatever it held expired) or is a newer one (see the module's note).
#[inline]
pub(crate) fn refund(kind: LimitKind, charge: &Charge, now: Now, n: u64) -> impl FnMut(u64) -> Update<()> + '_ {
    move |current| match kind {
        _ if current == TOMBSTONE => Update::Keep(()),
        LimitKind::Rate(p) => Update::Write(gcra::refund(current, now.monotonic_ns, n, charge.mark, &p), ()),
        LimitKind::Quota(q) => Update::Write(quota::refund(current, q.period.index(now.wall_ns), charge.mark, n), ()),
        LimitKind::Concurrency { .. } => Update::Keep(()),
    }
}

/// An admitted request's charges. Dropping an unsettled reservation keeps the charges as
/// made and releases its concurrency slots, so a forgotten reservation never leaks capacity.
pub struct Reservation<S: Store> {
    pub(crate) charges: SmallVec<[Charge; 2]>,
    /// Units of concurrency caps, released on settling or drop (empty without such caps).
    pub(crate) held: Vec<Held<S>>,
    /// The policy version it was made under.
    pub(crate) policy_version: u32,
    /// The store's generation when it was made (see `Store::generation`).
    pub(crate) generation: u32,
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

    /// How many keys settling needs (one more than the highest key index charged).
    pub(crate) fn keys_needed(&self) -> usize {
        self.charges.iter().map(|c| c.key_index as usize + 1).max().unwrap_or(0)
    }

    /// Gives back every concurrency unit still held.
    pub(crate) fn release_held(&mut self) {
        for held in self.held.drain(..) {
            S::release(&held.cell, held.lease.as_ref());
        }
    }
}

/// An empty reservation with nothing to settle, for [`crate::Engine::acquire_into`] to fill.
impl<S: Store> Default for Reservation<S> {
    fn default() -> Self {
        Reservation {
            charges: SmallVec::new(),
            held: Vec::new(),
            policy_version: 0,
            generation: 0,
            settled: true,
        }
    }
}

impl<S: Store> Drop for Reservation<S> {
    #[inline]
    fn drop(&mut self) {
        if !self.held.is_empty() {
            self.release_held();
        }
    }
}

impl<S: Store> std::fmt::Debug for Reservation<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("charges", &self.charges)
            .field("held", &self.held.len())
            .field("policy_version", &self.policy_version)
            .field("settled", &self.settled)
            .finish()
    }
}
