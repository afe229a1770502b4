//! The in-process store: a concurrent hash map per scope, from key to a reference-counted
//! atomic cell.
//!
//! Looking a key up takes no lock: the map (papaya) reads under an epoch guard, which also keeps
//! a cell removed meanwhile readable until the guard is dropped. Every decision is then a
//! compare-and-swap on the cell. Expired cells are swept (tombstoned, then removed) whenever a
//! scope has doubled in size since the last sweep, so memory follows the live keys; a caller
//! holding a cell that was swept sees the tombstone and looks the key up again.
//!
//! Tried and dropped: 16 shards of `RwLock<HashMap>`. Taking and releasing a read lock are two
//! locked instructions per cell, more than the cell's own compare-and-swap, and picking the
//! shard hashed each key twice.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use foldhash::fast::RandomState;

use crate::clock::Now;
use crate::error::Result;
use crate::limit::{CellKind, TOMBSTONE};
use crate::store::{compare_and_swap, Store, Update};

const FIRST_SWEEP_AT: usize = 4096;

type Map = papaya::HashMap<Box<str>, Arc<AtomicU64>, RandomState>;

pub struct LocalScope {
    kind: CellKind,
    map: Map,
    len: AtomicUsize,
    sweep_at: AtomicUsize,
}

#[derive(Default)]
pub struct LocalStore {
    scopes: RwLock<std::collections::HashMap<String, Arc<LocalScope>>>,
    /// Shared by the maps of every scope, so that one guard covers a whole decision.
    collector: Arc<seize::Collector>,
}

impl LocalStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of live cells over all scopes (for tests and status).
    pub fn len(&self) -> usize {
        let scopes = self.scopes.read().unwrap_or_else(|e| e.into_inner());
        scopes.values().map(|s| s.len.load(Ordering::Relaxed)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl LocalScope {
    /// The cell of `key`, inserted empty unless a racing caller got there first; inserting
    /// may start a sweep.
    fn insert(&self, key: &str, now: Now) -> Arc<AtomicU64> {
        let map = self.map.pin();
        let cell = loop {
            match map.try_insert(key.into(), Arc::new(AtomicU64::new(0))) {
                Ok(cell) => break Arc::clone(cell),
                Err(taken) if taken.current.load(Ordering::Acquire) != TOMBSTONE => {
                    return Arc::clone(taken.current);
                }
                // Swept, and about to be removed: remove it here and insert again.
                Err(taken) => {
                    let swept = taken.current;
                    let _ = map.remove_if(key, |_, cell| Arc::ptr_eq(cell, swept));
                }
            }
        };
        let len = self.len.fetch_add(1, Ordering::Relaxed) + 1;
        if len >= self.sweep_at.load(Ordering::Relaxed) {
            self.sweep(now);
        }
        cell
    }

    /// Removes every expired cell; a cell updated concurrently fails the tombstone swap and stays.
    fn sweep(&self, now: Now) {
        let map = self.map.pin();
        map.retain(|_, cell| {
            let value = cell.load(Ordering::Acquire);
            let reclaim = self.kind.is_expired(value, now)
                && cell
                    .compare_exchange(value, TOMBSTONE, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
            !reclaim
        });
        let live = map.len();
        self.len.store(live, Ordering::Relaxed);
        self.sweep_at
            .store((live * 2).max(FIRST_SWEEP_AT), Ordering::Relaxed);
    }
}

impl Store for LocalStore {
    type Scope = Arc<LocalScope>;
    type Cell = Arc<AtomicU64>;
    /// Units held by a process die with it: nothing to record.
    type Lease = ();
    /// An epoch guard of the collector every scope's map shares: a look-up inside it enters
    /// the epoch by bumping a count instead of with a locked instruction.
    type Session<'a> = papaya::LocalGuard<'a>;

    #[inline]
    fn session(&self) -> papaya::LocalGuard<'_> {
        self.collector.enter()
    }

    fn scope(&self, label: &str, kind: CellKind) -> Result<Arc<LocalScope>> {
        let mut scopes = self.scopes.write().unwrap_or_else(|e| e.into_inner());
        let scope = scopes.entry(label.to_owned()).or_insert_with(|| {
            Arc::new(LocalScope {
                kind,
                map: papaya::HashMap::builder()
                    .hasher(RandomState::default())
                    .shared_collector(Arc::clone(&self.collector))
                    .build(),
                len: AtomicUsize::new(0),
                sweep_at: AtomicUsize::new(FIRST_SWEEP_AT),
            })
        });
        Ok(Arc::clone(scope))
    }

    #[inline]
    fn cell(&self, scope: &Arc<LocalScope>, key: &str, now: Now) -> Result<Arc<AtomicU64>> {
        match self.find(scope, key) {
            Some(cell) => Ok(cell),
            None => Ok(scope.insert(key, now)),
        }
    }

    /// Runs `step` on the cell under the map's guard: no reference count to take and drop, as
    /// `cell` needs.
    #[inline]
    fn update_cell<R>(
        &self,
        scope: &Arc<LocalScope>,
        key: &str,
        now: Now,
        step: impl FnMut(u64) -> Update<R>,
    ) -> Result<R> {
        {
            let guard = scope.map.guard();
            if let Some(cell) = scope.map.get(key, &guard) {
                return Ok(compare_and_swap(cell, step));
            }
        }
        Ok(compare_and_swap(&scope.insert(key, now), step))
    }

    #[inline]
    fn update_existing_cell<R>(
        &self,
        scope: &Arc<LocalScope>,
        key: &str,
        step: impl FnMut(u64) -> Update<R>,
    ) -> Option<R> {
        let guard = scope.map.guard();
        scope.map.get(key, &guard).map(|cell| compare_and_swap(cell, step))
    }

    fn find(&self, scope: &Arc<LocalScope>, key: &str) -> Option<Arc<AtomicU64>> {
        scope.map.pin().get(key).cloned()
    }

    fn for_each(&self, scope: &Arc<LocalScope>, visit: &mut dyn FnMut(&str, u64)) {
        for (key, cell) in scope.map.pin().iter() {
            let value = cell.load(Ordering::Acquire);
            if value != TOMBSTONE {
                visit(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_reclaims_only_expired_cells() {
        let store = LocalStore::new();
        let scope = store.scope("r", CellKind::Rate).unwrap();
        let now = Now {
            monotonic_ns: 1000,
            wall_ns: 0,
        };
        let held = store.cell(&scope, "busy", now).unwrap();
        held.store(5000, Ordering::SeqCst); // TAT in the future: still live
        let stale = store.cell(&scope, "idle", now).unwrap();
        stale.store(10, Ordering::SeqCst); // TAT in the past: expired
        scope.sweep(now);
        assert_eq!(held.load(Ordering::SeqCst), 5000);
        assert_eq!(stale.load(Ordering::SeqCst), TOMBSTONE);
        assert!(store.find(&scope, "idle").is_none());
        assert!(store.find(&scope, "busy").is_some());
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn growth_triggers_sweeps() {
        let store = LocalStore::new();
        let scope = store.scope("r", CellKind::Rate).unwrap();
        let now = Now {
            monotonic_ns: 1000,
            wall_ns: 0,
        };
        for i in 0..100_000 {
            store.cell(&scope, &format!("k{i}"), now).unwrap();
        }
        // Every cell is empty (expired), so sweeps keep the table small.
        assert!(store.len() < 2 * FIRST_SWEEP_AT, "{}", store.len());
    }
}
