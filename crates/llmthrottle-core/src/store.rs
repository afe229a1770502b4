//! Where limiter state lives. The GCRA math never sees a store; a store never sees the math.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::Now;
use crate::error::Result;
use crate::limit::{CellKind, TOMBSTONE};

/// What [`Store::hold`] did.
#[derive(Debug)]
pub enum Hold<L> {
    /// One unit taken; `count` units are held now. `lease` records who holds it, if the store
    /// keeps such records.
    Held { lease: Option<L>, count: u64 },
    /// The cap is reached.
    Full,
    /// The cell was reclaimed (it holds TOMBSTONE): look the key up again.
    Reclaimed,
}

/// What a step of [`Store::update_cell`] makes of a cell's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update<R> {
    /// Replace the value with this one; the update returns `R` once the write lands.
    Write(u64, R),
    /// Leave the value as it is and return `R`.
    Keep(R),
}

/// Runs `step` on `cell` with a compare-and-swap loop: each retry sees the latest value.
#[inline]
pub fn compare_and_swap<R>(cell: &AtomicU64, mut step: impl FnMut(u64) -> Update<R>) -> R {
    let mut current = cell.load(Ordering::Acquire);
    loop {
        match step(current) {
            Update::Keep(result) => return result,
            Update::Write(next, result) => {
                match cell.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return result,
                    Err(actual) => current = actual,
                }
            }
        }
    }
}

/// A table of cells, one `AtomicU64` per (limit, key), updated only by compare-and-swap.
///
/// A store may reclaim a cell whose value is expired for its kind, but only by swapping the
/// value for [`crate::limit::TOMBSTONE`] first; callers that read a tombstone look the key up
/// again. Cells stay valid memory for as long as a `Cell` handle is held.
pub trait Store: Send + Sync + 'static {
    /// A limit's namespace in the store, resolved once per policy.
    type Scope: Send + Sync + 'static;
    /// A handle on one cell.
    type Cell: Deref<Target = AtomicU64> + Send + Sync + 'static;
    /// A record of one unit of a concurrency cap held by this process (see [`Store::hold`]).
    type Lease: Send + Sync + 'static;
    /// What the store keeps between the look-ups of one decision, so that they share their
    /// bookkeeping (the in-process store holds on to a shard's read lock, which covers every
    /// cell of a key). `()` when a store keeps nothing.
    type Session<'a>
    where
        Self: 'a;

    /// Opens a session for one decision (or one settling); the engine drops it at the end.
    fn session(&self) -> Self::Session<'_>;

    /// The scope holding the state of the limit named `label`, whose cells are of `kind`.
    fn scope(&self, label: &str, kind: CellKind) -> Result<Self::Scope>;

    /// The cell of `key` in `scope`, created empty (value 0) when absent.
    fn cell(&self, session: &mut Self::Session<'_>, scope: &Self::Scope, key: &str, now: Now) -> Result<Self::Cell>;

    /// Applies `step` to the value of `key`'s cell in `scope` (created empty when absent) until
    /// it keeps the value or its write lands by compare-and-swap, and returns what that last
    /// run of `step` returned: what a decision on a rate or quota limit needs, with no handle
    /// to take and give back. `step` may run several times (each run on a newer value), so it
    /// must only compute. It also sees [`TOMBSTONE`], and then must keep it (the cell was
    /// reclaimed: look the key up again).
    fn update_cell<R>(
        &self,
        session: &mut Self::Session<'_>,
        scope: &Self::Scope,
        key: &str,
        now: Now,
        step: impl FnMut(u64) -> Update<R>,
    ) -> Result<R>;

    /// Like [`Store::update_cell`], but for a cell that exists: `None` when it does not (a
    /// refund never creates a cell: an absent one has nothing to give back).
    fn update_existing_cell<R>(
        &self,
        session: &mut Self::Session<'_>,
        scope: &Self::Scope,
        key: &str,
        step: impl FnMut(u64) -> Update<R>,
    ) -> Option<R>;

    /// Which copy of the state this process sees: a store shared with a forked parent
    /// returns a new value in the child, so that a reservation the child inherited is not
    /// settled a second time against the parent's cells. A store private to its process
    /// (the child has its own copy) keeps the default.
    #[inline]
    fn generation(&self) -> u32 {
        0
    }

    /// The value of `key`'s cell if the cell exists (it may be [`TOMBSTONE`]); never creates one.
    fn value(&self, session: &mut Self::Session<'_>, scope: &Self::Scope, key: &str) -> Option<u64>;

    /// Calls `visit` with every live key of `scope` and its value.
    fn for_each(&self, scope: &Self::Scope, visit: &mut dyn FnMut(&str, u64));

    /// Takes one unit of the concurrency cap `max` on `cell` (a count of calls in flight).
    ///
    /// A store shared between processes overrides this to record who holds the unit, so that
    /// the units of a process that dies come back. The default records nothing: right for a
    /// store that lives and dies with its process.
    fn hold(&self, cell: &Self::Cell, max: u64) -> Result<Hold<Self::Lease>> {
        Ok(compare_and_swap(cell, |current| match current {
            TOMBSTONE => Update::Keep(Hold::Reclaimed),
            _ if current >= max => Update::Keep(Hold::Full),
            _ => Update::Write(
                current + 1,
                Hold::Held {
                    lease: None,
                    count: current + 1,
                },
            ),
        }))
    }

    /// Gives back one unit taken by [`Store::hold`]; a reclaimed cell has nothing to give back.
    /// (No `&self`: a reservation dropped without a store at hand releases through its cell.)
    fn release(cell: &Self::Cell, lease: Option<&Self::Lease>) {
        let _ = lease;
        compare_and_swap(cell, |current| match current {
            TOMBSTONE => Update::Keep(()),
            _ => Update::Write(current.saturating_sub(1), ()),
        })
    }
}
