//! The in-process store: per scope, a sharded hash table from key to a reference-counted
//! atomic cell.
//!
//! Readers take a shard's read lock only to find or insert a cell; every decision is a
//! compare-and-swap on the cell itself. The shard locks belong to the store, not to a scope:
//! lock `i` guards shard `i` of every scope's table, and a key's shard is picked by its hash
//! alone, so all the cells of one key (one per limit) lie behind one lock. A decision's
//! session keeps the read lock it took for the next look-up, so a key with several limits
//! pays for one lock and one hash, not one per limit. Expired cells are swept (tombstoned,
//! then removed) whenever a scope has doubled in size since the last sweep, so memory follows
//! the live keys.
//!
//! Tried and dropped: a lock-free map (papaya), which saved the read lock's two locked
//! instructions per cell on a hot key, but kept each entry behind two more pointers, so with
//! 100k keys a decision cost 30-40% more in cache misses.

use std::cell::UnsafeCell;
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

/// The shard locks and the key hasher of one store, shared by all its scopes.
struct Shards {
    locks: [RwLock<()>; SHARDS],
    hasher: RandomState,
}

impl Shards {
    #[inline]
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }
}

/// The shard of a key's `hash`, by bits that a table's bucket index (the low bits) and control
/// byte (the top seven) leave alone.
#[inline]
fn shard_of(hash: u64) -> usize {
    (hash >> 40) as usize % SHARDS
}

pub struct LocalScope {
    kind: CellKind,
    shards: Arc<Shards>,
    /// Table `i` is read only under `shards.locks[i]` held for reading, and changed only
    /// under it held for writing.
    tables: [UnsafeCell<Map>; SHARDS],
    len: AtomicUsize,
    sweep_at: AtomicUsize,
}

// SAFETY: the tables are reached only under their shard's lock (see `tables`).
unsafe impl Sync for LocalScope {}

pub struct LocalStore {
    scopes: RwLock<HashMap<String, Arc<LocalScope>>>,
    shards: Arc<Shards>,
}

impl Default for LocalStore {
    fn default() -> Self {
        LocalStore {
            scopes: RwLock::default(),
            shards: Arc::new(Shards {
                locks: std::array::from_fn(|_| RwLock::new(())),
                hasher: RandomState::default(),
            }),
        }
    }
}

/// A decision's session on a [`LocalStore`]: the shard read lock taken last, kept for the
/// next look-up (the next limit of the same key is in the same shard).
pub struct LocalSession<'a> {
    shards: &'a Shards,
    held: Option<(usize, RwLockReadGuard<'a, ()>)>,
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
    /// The cell of `key` (whose hash is `hash`) in one of the scope's tables.
    #[inline]
    fn get<'m>(map: &'m Map, hash: u64, key: &str) -> Option<&'m Arc<AtomicU64>> {
        map.find(hash, |(k, _)| **k == *key).map(|(_, cell)| cell)
    }

    /// Runs `with` on the table of shard `i` under that shard's read lock: the one `session`
    /// holds when it is that lock, else taken and left in the session for the next look-up.
    /// (A session of another store than the scope's takes the lock just for `with`.)
    #[inline]
    fn read<R>(&self, session: &mut LocalSession<'_>, i: usize, with: impl FnOnce(&Map) -> R) -> R {
        let table = |_: &RwLockReadGuard<'_, ()>| {
            // SAFETY: the caller holds shard `i`'s lock for reading.
            unsafe { &*self.tables[i].get() }
        };
        if !std::ptr::eq(session.shards, &*self.shards) {
            let guard = self.shards.locks[i].read().unwrap_or_else(|e| e.into_inner());
            return with(table(&guard));
        }
        if session.held.as_ref().is_none_or(|(held, _)| *held != i) {
            // The previous lock goes first: a session never holds two.
            session.held = None;
            let guard = session.shards.locks[i].read().unwrap_or_else(|e| e.into_inner());
            session.held = Some((i, guard));
        }
        let (_, guard) = session.held.as_ref().expect("just taken");
        with(table(guard))
    }

    /// The cell of `key`, inserted empty unless a racing caller got there first; inserting
    /// may start a sweep. Gives up the session's read lock first: the insert writes.
    fn insert(&self, session: &mut LocalSession<'_>, key: &str, hash: u64, now: Now) -> Arc<AtomicU64> {
        session.held = None;
        let i = shard_of(hash);
        let cell = {
            let _write = self.shards.locks[i].write().unwrap_or_else(|e| e.into_inner());
            // SAFETY: shard `i`'s lock is held for writing.
            let map = unsafe { &mut *self.tables[i].get() };
            if let Some(cell) = Self::get(map, hash, key) {
                return Arc::clone(cell);
            }
            let cell = Arc::new(AtomicU64::new(0));
            map.insert_unique(hash, (key.into(), Arc::clone(&cell)), |(k, _)| self.shards.hash(k));
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
        for (lock, table) in self.shards.locks.iter().zip(&self.tables) {
            let _write = lock.write().unwrap_or_else(|e| e.into_inner());
            // SAFETY: this table's shard lock is held for writing.
            let map = unsafe { &mut *table.get() };
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
    type Session<'a> = LocalSession<'a>;

    #[inline]
    fn session(&self) -> LocalSession<'_> {
        LocalSession {
            shards: &self.shards,
            held: None,
        }
    }

    fn scope(&self, label: &str, kind: CellKind) -> Result<Arc<LocalScope>> {
        let mut scopes = self.scopes.write().unwrap_or_else(|e| e.into_inner());
        let scope = scopes.entry(label.to_owned()).or_insert_with(|| {
            Arc::new(LocalScope {
                kind,
                shards: Arc::clone(&self.shards),
                tables: std::array::from_fn(|_| UnsafeCell::new(Map::new())),
                len: AtomicUsize::new(0),
                sweep_at: AtomicUsize::new(FIRST_SWEEP_AT),
            })
        });
        Ok(Arc::clone(scope))
    }

    #[inline]
    fn cell(&self, session: &mut LocalSession<'_>, scope: &Arc<LocalScope>, key: &str, now: Now) -> Result<Arc<AtomicU64>> {
        let hash = scope.shards.hash(key);
        match scope.read(session, shard_of(hash), |map| LocalScope::get(map, hash, key).cloned()) {
            Some(cell) => Ok(cell),
            None => Ok(scope.insert(session, key, hash, now)),
        }
    }

    /// Runs `step` under the shard's read lock, which keeps a sweep from freeing the cell:
    /// no reference count to take and drop, as `cell` needs.
    #[inline]
    fn update_cell<R>(
        &self,
        session: &mut LocalSession<'_>,
        scope: &Arc<LocalScope>,
        key: &str,
        now: Now,
        mut step: impl FnMut(u64) -> Update<R>,
    ) -> Result<R> {
        let hash = scope.shards.hash(key);
        let found = scope.read(session, shard_of(hash), |map| {
            LocalScope::get(map, hash, key).map(|cell| compare_and_swap(cell, &mut step))
        });
        match found {
            Some(result) => Ok(result),
            None => Ok(compare_and_swap(&scope.insert(session, key, hash, now), step)),
        }
    }

    #[inline]
    fn update_existing_cell<R>(
        &self,
        session: &mut LocalSession<'_>,
        scope: &Arc<LocalScope>,
        key: &str,
        step: impl FnMut(u64) -> Update<R>,
    ) -> Option<R> {
        let hash = scope.shards.hash(key);
        scope.read(session, shard_of(hash), |map| {
            LocalScope::get(map, hash, key).map(|cell| compare_and_swap(cell, step))
        })
    }

    fn find(&self, session: &mut LocalSession<'_>, scope: &Arc<LocalScope>, key: &str) -> Option<Arc<AtomicU64>> {
        let hash = scope.shards.hash(key);
        scope.read(session, shard_of(hash), |map| LocalScope::get(map, hash, key).cloned())
    }

    fn for_each(&self, scope: &Arc<LocalScope>, visit: &mut dyn FnMut(&str, u64)) {
        let mut session = self.session();
        for i in 0..SHARDS {
            scope.read(&mut session, i, |map| {
                for (key, cell) in map.iter() {
                    let value = cell.load(Ordering::Acquire);
                    if value != TOMBSTONE {
                        visit(key, value);
                    }
                }
            });
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
        let held = store.cell(&mut store.session(), &scope, "busy", now).unwrap();
        held.store(5000, Ordering::SeqCst); // TAT in the future: still live
        let stale = store.cell(&mut store.session(), &scope, "idle", now).unwrap();
        stale.store(10, Ordering::SeqCst); // TAT in the past: expired
        scope.sweep(now);
        assert_eq!(held.load(Ordering::SeqCst), 5000);
        assert_eq!(stale.load(Ordering::SeqCst), TOMBSTONE);
        assert!(store.find(&mut store.session(), &scope, "idle").is_none());
        assert!(store.find(&mut store.session(), &scope, "busy").is_some());
        assert_eq!(store.len(), 1);
    }

    fn now() -> Now {
        Now {
            monotonic_ns: 1000,
            wall_ns: 0,
        }
    }

    #[test]
    fn a_session_keeps_one_read_lock_and_gives_it_up_to_insert() {
        let store = LocalStore::new();
        let (a, b) = (store.scope("a", CellKind::Rate).unwrap(), store.scope("b", CellKind::Rate).unwrap());
        let shard = |key: &str| shard_of(store.shards.hash(key));
        let first = "k0".to_string();
        let same_shard = (1..).map(|i| format!("k{i}")).find(|k| shard(k) == shard(&first)).unwrap();
        let other_shard = (1..).map(|i| format!("k{i}")).find(|k| shard(k) != shard(&first)).unwrap();
        let add = |by: u64| move |v: u64| Update::Write(v + by, v + by);
        let mut session = store.session();
        // Inserts (which write-lock the shard the session reads) and look-ups, in both scopes.
        for key in [&first, &same_shard, &other_shard, &first] {
            store.update_cell(&mut session, &a, key, now(), add(1)).unwrap();
            store.update_cell(&mut session, &b, key, now(), add(10)).unwrap();
        }
        // The last look-ups found their cells: the session still holds their shard.
        assert_eq!(session.held.as_ref().map(|(i, _)| *i), Some(shard(&first)));
        assert_eq!(store.update_existing_cell(&mut session, &a, &first, add(0)), Some(2));
        assert_eq!(store.update_existing_cell(&mut session, &b, &first, add(0)), Some(20));
        assert_eq!(store.update_existing_cell(&mut session, &b, "absent", add(0)), None);
        // While the session holds a shard, a writer on it waits; once it ends, the writer runs.
        let held = session.held.as_ref().unwrap().0;
        let writer_key = (1..).map(|i| format!("w{i}")).find(|k| shard(k) == held).unwrap();
        std::thread::scope(|threads| {
            let writer = threads.spawn(|| store.cell(&mut store.session(), &a, &writer_key, now()).unwrap());
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!writer.is_finished(), "the insert waits for the session's read lock");
            drop(session);
            writer.join().unwrap();
        });
        assert_eq!(store.len(), 7);
    }

    #[test]
    fn a_scope_of_another_store_takes_its_own_lock() {
        let (store, other) = (LocalStore::new(), LocalStore::new());
        let foreign = other.scope("r", CellKind::Rate).unwrap();
        let mut session = store.session();
        let set = |value: u64| move |_: u64| Update::Write(value, ());
        store.update_cell(&mut session, &foreign, "key", now(), set(7)).unwrap();
        assert!(session.held.is_none(), "nothing of the other store is kept");
        assert_eq!(other.find(&mut other.session(), &foreign, "key").unwrap().load(Ordering::SeqCst), 7);
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
            store.cell(&mut store.session(), &scope, &format!("k{i}"), now).unwrap();
        }
        // Every cell is empty (expired), so sweeps keep the table small.
        assert!(store.len() < 2 * FIRST_SWEEP_AT, "{}", store.len());
    }
}
