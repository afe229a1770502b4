//! The in-process store: per scope, a sharded hash table whose entries hold a key and its
//! atomic cell inline.
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
//! An entry keeps its key's bytes (up to 22 of them; longer keys are boxed) and its cell in the
//! table itself, so a look-up among many keys misses the cache on the table alone, not also on
//! a key string and a cell elsewhere. A cell that must outlive the lock (a concurrency unit
//! held by a reservation) moves into an `Arc` the first time a handle on it is asked for.
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

type Map = hashbrown::HashTable<Entry>;

/// Longest key kept inline in an entry.
const INLINE_KEY_BYTES: usize = 22;

/// A key's bytes, inline when short.
enum EntryKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY_BYTES] },
    Boxed(Box<str>),
}

impl EntryKey {
    fn new(key: &str) -> Self {
        match key.len() {
            len @ 0..=INLINE_KEY_BYTES => {
                let mut bytes = [0; INLINE_KEY_BYTES];
                bytes[..len].copy_from_slice(key.as_bytes());
                EntryKey::Inline { len: len as u8, bytes }
            }
            _ => EntryKey::Boxed(key.into()),
        }
    }

    #[inline]
    fn as_str(&self) -> &str {
        match self {
            // SAFETY: the bytes were copied from a `str`, whole.
            EntryKey::Inline { len, bytes } => unsafe { std::str::from_utf8_unchecked(&bytes[..*len as usize]) },
            EntryKey::Boxed(key) => key,
        }
    }
}

/// One key's cell in a scope.
struct Entry {
    key: EntryKey,
    value: AtomicU64,
    /// Where the cell lives once a handle on it was asked for (`value` is then unused).
    handle: Option<Arc<AtomicU64>>,
}

impl Entry {
    #[inline]
    fn cell(&self) -> &AtomicU64 {
        self.handle.as_deref().unwrap_or(&self.value)
    }
}

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

/// A shard's table, read-locked for as long as this lives.
struct ShardRead<'s> {
    map: &'s Map,
    _own: Option<RwLockReadGuard<'s, ()>>,
}

impl std::ops::Deref for ShardRead<'_> {
    type Target = Map;

    fn deref(&self) -> &Map {
        self.map
    }
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
    /// The entry of `key` (whose hash is `hash`) in one of the scope's tables.
    #[inline]
    fn get<'m>(map: &'m Map, hash: u64, key: &str) -> Option<&'m Entry> {
        map.find(hash, |entry| entry.key.as_str() == key)
    }

    /// A handle on `key`'s cell, which moves into an `Arc` (under the write lock, so no reader
    /// is using the inline one) the first time one is asked for; created empty when absent.
    fn handle(&self, session: &mut LocalSession<'_>, key: &str, hash: u64, now: Now) -> Arc<AtomicU64> {
        if let Some(handle) = Self::get(&self.read(session, shard_of(hash)), hash, key).and_then(|e| e.handle.clone()) {
            return handle;
        }
        self.insert(session, key, hash, now, |entry| {
            let value = entry.value.load(Ordering::Acquire);
            Arc::clone(entry.handle.get_or_insert_with(|| Arc::new(AtomicU64::new(value))))
        })
    }

    /// The table of shard `i`, under that shard's read lock: the one `session` holds when it
    /// is that lock, else taken and left in the session for the next look-up. (For a session
    /// of another store than the scope's, a lock of its own, given up with the result.)
    #[inline]
    fn read<'s>(&'s self, session: &'s mut LocalSession<'_>, i: usize) -> ShardRead<'s> {
        // SAFETY: called only below, once shard `i`'s lock is held for reading, for as long as
        // the result lives (it holds the guard, or borrows the session that does); writers
        // change the table only under that lock's write side.
        let table = || unsafe { &*self.tables[i].get() };
        if !std::ptr::eq(session.shards, &*self.shards) {
            let guard = self.shards.locks[i].read().unwrap_or_else(|e| e.into_inner());
            return ShardRead {
                map: table(),
                _own: Some(guard),
            };
        }
        if session.held.as_ref().is_none_or(|(held, _)| *held != i) {
            // The previous lock goes first: a session never holds two.
            session.held = None;
            let guard = session.shards.locks[i].read().unwrap_or_else(|e| e.into_inner());
            session.held = Some((i, guard));
        }
        ShardRead {
            map: table(),
            _own: None,
        }
    }

    /// Runs `with` on `key`'s entry under its shard's write lock, the entry inserted empty
    /// unless a racing caller got there first; inserting may start a sweep. Gives up the
    /// session's read lock first: the insert writes.
    fn insert<R>(
        &self,
        session: &mut LocalSession<'_>,
        key: &str,
        hash: u64,
        now: Now,
        with: impl FnOnce(&mut Entry) -> R,
    ) -> R {
        session.held = None;
        let i = shard_of(hash);
        let (result, full) = {
            let _write = self.shards.locks[i].write().unwrap_or_else(|e| e.into_inner());
            // SAFETY: shard `i`'s lock is held for writing.
            let map = unsafe { &mut *self.tables[i].get() };
            if let Some(entry) = map.find_mut(hash, |entry| entry.key.as_str() == key) {
                return with(entry);
            }
            let (entry, full) = self.add(map, hash, key);
            (with(entry), full)
        };
        if full {
            self.sweep(now);
        }
        result
    }

    /// Adds `key`'s empty entry to `map` (its shard locked for writing) and counts it while the
    /// lock is held, so that no sweep can remove it uncounted. Also says whether the scope has
    /// doubled since the last sweep: the caller then sweeps, once the lock is given up.
    fn add<'m>(&self, map: &'m mut Map, hash: u64, key: &str) -> (&'m mut Entry, bool) {
        let entry = Entry {
            key: EntryKey::new(key),
            value: AtomicU64::new(0),
            handle: None,
        };
        let entry = map
            .insert_unique(hash, entry, |e| self.shards.hash(e.key.as_str()))
            .into_mut();
        let len = self.len.fetch_add(1, Ordering::Relaxed) + 1;
        (entry, len >= self.sweep_at.load(Ordering::Relaxed))
    }

    /// Removes every expired cell; a cell updated concurrently fails the tombstone swap and stays.
    fn sweep(&self, now: Now) {
        let mut removed = 0;
        for (lock, table) in self.shards.locks.iter().zip(&self.tables) {
            let _write = lock.write().unwrap_or_else(|e| e.into_inner());
            // SAFETY: this table's shard lock is held for writing.
            let map = unsafe { &mut *table.get() };
            let before = map.len();
            map.retain(|entry| {
                let cell = entry.cell();
                let value = cell.load(Ordering::Acquire);
                let reclaim = self.kind.is_expired(value, now)
                    && cell
                        .compare_exchange(value, TOMBSTONE, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok();
                !reclaim
            });
            removed += before - map.len();
        }
        // Less what was removed, not set to a total: inserts made meanwhile into shards this
        // sweep had passed are counted too.
        let live = self.len.fetch_sub(removed, Ordering::Relaxed).saturating_sub(removed);
        self.sweep_at.store((live * 2).max(FIRST_SWEEP_AT), Ordering::Relaxed);
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
    fn cell(
        &self,
        session: &mut LocalSession<'_>,
        scope: &Arc<LocalScope>,
        key: &str,
        now: Now,
    ) -> Result<Arc<AtomicU64>> {
        Ok(scope.handle(session, key, scope.shards.hash(key), now))
    }

    /// Runs `step` under the shard's read lock, which keeps a sweep from removing the entry
    /// and a growing table from moving it.
    #[inline]
    fn update_cell<R>(
        &self,
        session: &mut LocalSession<'_>,
        scope: &Arc<LocalScope>,
        key: &str,
        now: Now,
        step: impl FnMut(u64) -> Update<R>,
    ) -> Result<R> {
        let hash = scope.shards.hash(key);
        {
            let map = scope.read(session, shard_of(hash));
            if let Some(entry) = LocalScope::get(&map, hash, key) {
                return Ok(compare_and_swap(entry.cell(), step));
            }
        }
        Ok(scope.insert(session, key, hash, now, |entry| compare_and_swap(entry.cell(), step)))
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
        let map = scope.read(session, shard_of(hash));
        LocalScope::get(&map, hash, key).map(|entry| compare_and_swap(entry.cell(), step))
    }

    fn value(&self, session: &mut LocalSession<'_>, scope: &Arc<LocalScope>, key: &str) -> Option<u64> {
        let hash = scope.shards.hash(key);
        let map = scope.read(session, shard_of(hash));
        LocalScope::get(&map, hash, key).map(|entry| entry.cell().load(Ordering::Acquire))
    }

    /// `visit` runs under a shard's read lock: it must not call back into the store.
    fn for_each(&self, scope: &Arc<LocalScope>, visit: &mut dyn FnMut(&str, u64)) {
        let mut session = self.session();
        for i in 0..SHARDS {
            for entry in scope.read(&mut session, i).iter() {
                let value = entry.cell().load(Ordering::Acquire);
                if value != TOMBSTONE {
                    visit(entry.key.as_str(), value);
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
        let held = store.cell(&mut store.session(), &scope, "busy", now).unwrap();
        held.store(5000, Ordering::SeqCst); // TAT in the future: still live
        let stale = store.cell(&mut store.session(), &scope, "idle", now).unwrap();
        stale.store(10, Ordering::SeqCst); // TAT in the past: expired
        scope.sweep(now);
        assert_eq!(held.load(Ordering::SeqCst), 5000);
        assert_eq!(stale.load(Ordering::SeqCst), TOMBSTONE);
        assert!(store.value(&mut store.session(), &scope, "idle").is_none());
        assert_eq!(store.value(&mut store.session(), &scope, "busy"), Some(5000));
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
        let (a, b) = (
            store.scope("a", CellKind::Rate).unwrap(),
            store.scope("b", CellKind::Rate).unwrap(),
        );
        let shard = |key: &str| shard_of(store.shards.hash(key));
        let first = "k0".to_string();
        let same_shard = (1..)
            .map(|i| format!("k{i}"))
            .find(|k| shard(k) == shard(&first))
            .unwrap();
        let other_shard = (1..)
            .map(|i| format!("k{i}"))
            .find(|k| shard(k) != shard(&first))
            .unwrap();
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
        assert_eq!(other.value(&mut other.session(), &foreign, "key"), Some(7));
    }

    #[test]
    fn keys_inline_and_boxed_are_told_apart_and_a_handle_keeps_the_cell() {
        let store = LocalStore::new();
        let scope = store.scope("r", CellKind::Rate).unwrap();
        let mut session = store.session();
        // Lengths around the inline limit, and multi-byte characters across it.
        let keys: Vec<String> = (1..=40)
            .map(|n| "k".repeat(n))
            .chain((1..=12).map(|n| "é".repeat(n)))
            .collect();
        for (i, key) in keys.iter().enumerate() {
            store
                .update_cell(&mut session, &scope, key, now(), |_| Update::Write(i as u64 + 1, ()))
                .unwrap();
        }
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(store.value(&mut session, &scope, key), Some(i as u64 + 1), "{key}");
        }
        let mut seen = Vec::new();
        store.for_each(&scope, &mut |key, _| seen.push(key.to_owned()));
        seen.sort();
        let mut expected = keys.clone();
        expected.sort();
        assert_eq!(seen, expected);
        // A handle takes over the cell with its value; updates through the table reach it.
        let key = &keys[30];
        let handle = store.cell(&mut session, &scope, key, now()).unwrap();
        assert_eq!(handle.load(Ordering::SeqCst), 31);
        store
            .update_cell(&mut session, &scope, key, now(), |v| Update::Write(v + 1, ()))
            .unwrap();
        assert_eq!(handle.load(Ordering::SeqCst), 32);
        handle.store(40, Ordering::SeqCst);
        assert_eq!(store.value(&mut session, &scope, key), Some(40));
        assert!(Arc::ptr_eq(
            &handle,
            &store.cell(&mut session, &scope, key, now()).unwrap()
        ));
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "100,000 inserts take too long under miri; sweeping itself is checked there by sweep_reclaims_only_expired_cells"
    )]
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
