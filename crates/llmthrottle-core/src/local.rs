//! The in-process store: sharded hash maps from key to a reference-counted atomic cell.
//!
//! Readers take a shard's read lock only to find or insert a cell; every decision is a
//! compare-and-swap on the cell itself. Expired cells are swept (tombstoned, then removed)
//! whenever a scope has doubled in size since the last sweep, so memory follows the live keys.
//! A key is hashed once: bits of the hash the table does not use pick the shard.
//!
//! Tried and dropped: a lock-free map (papaya), which saved the read lock's two locked
//! instructions per cell on a hot key, but kept each entry behind two more pointers, so with
//! 100k keys a decision cost 30-40% more in cache misses.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use foldhash::fast::RandomState;

use crate::clock::Now;
use crate::error::Result;
use crate::limit::{CellKind, TOMBSTONE};
use crate::store::{compare_and_swap, Store, Update};

const SHARDS: usize = 16;
const FIRST_SWEEP_AT: usize = 4096;

type Map = hashbrown::HashTable<(Box<str>, Arc<AtomicU64>)>;
type Shard = RwLock<Map>;

pub struct LocalScope {
    kind: CellKind,
    hasher: RandomState,
    shards: Box<[Shard]>,
    len: AtomicUsize,
    sweep_at: AtomicUsize,
}

#[derive(Default)]
pub struct LocalStore {
    scopes: RwLock<HashMap<String, Arc<LocalScope>>>,
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
    #[inline]
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The shard of a key's `hash`, by bits that the table's bucket index (the low bits) and
    /// control byte (the top seven) leave alone.
    #[inline]
    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[(hash >> 40) as usize % SHARDS]
    }

    /// The cell of `key` (whose hash is `hash`) in a shard's `map`.
    #[inline]
    fn get<'m>(map: &'m Map, hash: u64, key: &str) -> Option<&'m Arc<AtomicU64>> {
        map.find(hash, |(k, _)| **k == *key).map(|(_, cell)| cell)
    }

    /// The map of the shard of `hash`, read-locked.
    #[inline]
    fn read(&self, hash: u64) -> RwLockReadGuard<'_, Map> {
        self.shard(hash).read().unwrap_or_else(|e| e.into_inner())
    }

    /// The cell of `key`, inserted empty unless a racing caller got there first; inserting
    /// may start a sweep.
    fn insert(&self, key: &str, now: Now) -> Arc<AtomicU64> {
        let hash = self.hash(key);
        let cell = {
            let mut map = self.shard(hash).write().unwrap_or_else(|e| e.into_inner());
            if let Some(cell) = Self::get(&map, hash, key) {
                return Arc::clone(cell);
            }
            let cell = Arc::new(AtomicU64::new(0));
            map.insert_unique(hash, (key.into(), Arc::clone(&cell)), |(k, _)| self.hash(k));
            cell
        };
        let len = self.len.fetch_add(1, Ordering::Relaxed) + 1;
        if len >= self.sweep_at.load(Ordering::Relaxed) {
            self.sweep(now);
        }
        cell
    }

    /// Removes every expired cell; a cell updated concurrently fails the tombstone swap and stays.
    fn sweep(&self, now: Now) {
        let mut live = 0;
        for shard in self.shards.iter() {
            let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
            map.retain(|(_, cell)| {
                let value = cell.load(Ordering::Acquire);
                let reclaim = self.kind.is_expired(value, now)
                    && cell
                        .compare_exchange(value, TOMBSTONE, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok();
                !reclaim
            });
            live += map.len();
        }
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

    fn scope(&self, label: &str, kind: CellKind) -> Result<Arc<LocalScope>> {
        let mut scopes = self.scopes.write().unwrap_or_else(|e| e.into_inner());
        let scope = scopes.entry(label.to_owned()).or_insert_with(|| {
            Arc::new(LocalScope {
                kind,
                hasher: RandomState::default(),
                shards: (0..SHARDS).map(|_| Shard::default()).collect(),
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

    /// Runs `step` under the shard's read lock, which keeps a sweep from freeing the cell:
    /// no reference count to take and drop, as `cell` needs.
    #[inline]
    fn update_cell<R>(
        &self,
        scope: &Arc<LocalScope>,
        key: &str,
        now: Now,
        step: impl FnMut(u64) -> Update<R>,
    ) -> Result<R> {
        let hash = scope.hash(key);
        {
            let map = scope.read(hash);
            if let Some(cell) = LocalScope::get(&map, hash, key) {
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
        let hash = scope.hash(key);
        LocalScope::get(&scope.read(hash), hash, key).map(|cell| compare_and_swap(cell, step))
    }

    fn find(&self, scope: &Arc<LocalScope>, key: &str) -> Option<Arc<AtomicU64>> {
        let hash = scope.hash(key);
        LocalScope::get(&scope.read(hash), hash, key).cloned()
    }

    fn for_each(&self, scope: &Arc<LocalScope>, visit: &mut dyn FnMut(&str, u64)) {
        for shard in scope.shards.iter() {
            let map = shard.read().unwrap_or_else(|e| e.into_inner());
            for (key, cell) in map.iter() {
                let value = cell.load(Ordering::Acquire);
                if value != TOMBSTONE {
                    visit(key, value);
                }
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
