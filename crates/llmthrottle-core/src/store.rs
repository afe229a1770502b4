//! Where limiter state lives. The GCRA math never sees a store; a store never sees the math.

use std::ops::Deref;
use std::sync::atomic::AtomicU64;

use crate::clock::Now;
use crate::error::Result;
use crate::limit::CellKind;

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

    /// The scope holding the state of the limit named `label`, whose cells are of `kind`.
    fn scope(&self, label: &str, kind: CellKind) -> Result<Self::Scope>;

    /// The cell of `key` in `scope`, created empty (value 0) when absent.
    fn cell(&self, scope: &Self::Scope, key: &str, now: Now) -> Result<Self::Cell>;

    /// The cell of `key` if it exists; never creates one.
    fn find(&self, scope: &Self::Scope, key: &str) -> Option<Self::Cell>;

    /// Calls `visit` with every live key of `scope` and its value.
    fn for_each(&self, scope: &Self::Scope, visit: &mut dyn FnMut(&str, u64));
}
