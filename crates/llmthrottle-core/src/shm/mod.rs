//! The shared-memory store: one limiter state for every process on the host.
//!
//! A table file (by default `/dev/shm/llmthrottle-<name>`) is mapped by every process that
//! opens the same name. It holds a header ([`header`]), a registry of limit labels
//! ([`scopes`]), the concurrency lease records ([`lease`]) and two lock-free hash tables of
//! cells ([`table`]): one-cache-line slots for keys of up to 40 bytes, five-line slots for
//! longer ones. Every update is one compare-and-swap, so a process killed at any instruction
//! leaves no lock behind; see each file for the invariants it keeps.
//!
//! Designs tried and dropped: hashing the limit label into each slot (a 64-bit hash is not
//! exact); a single slot size for all keys (255-byte keys would make 1M keys cost 300+ MB);
//! tombstone markers that end probe chains (chains then fill with markers and lookups of absent
//! keys scan ever further); a per-table mutex for inserts (a killed holder stalls everyone).

mod file;
mod head_cas;
mod header;
mod lease;
mod process;
mod scopes;
mod table;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use crate::clock::{Clock, Now, SystemClock};
use crate::error::{CoreError, Result};
use crate::limit::{key_too_long, CellKind, MAX_KEY_BYTES, TOMBSTONE};
use crate::store::{compare_and_swap, Hold, Store, Update};

use self::file::{FileSpec, Mapping};
use self::header::Layout;
use self::lease::{Leases, SlotRef, Slots};
use self::scopes::{ScopeEntry, Scopes};
use self::table::{Key, LongSlot, Outcome, ShortSlot, SlotHead, Table};

/// Who may open the table file besides its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileMode {
    /// `0600`: processes of the same user only.
    #[default]
    Owner,
    /// `0660`: also processes of the file's group.
    Group,
}

impl FileMode {
    fn bits(self) -> libc::mode_t {
        match self {
            FileMode::Owner => 0o600,
            FileMode::Group => 0o660,
        }
    }
}

/// How to open a shared table; [`SharedStore::open`] covers the common case.
#[derive(Debug, Clone)]
pub struct SharedOptions {
    /// Keys the table is sized for (it holds about 1.5x as many before it reports full).
    /// Only the creator's sizes count: later processes attach whatever was created.
    pub capacity: usize,
    /// Of those, keys longer than 40 bytes (they take five times the memory); `None`: a
    /// sixteenth of `capacity`.
    pub long_key_capacity: Option<usize>,
    /// The table file; `None` for `/dev/shm/llmthrottle-<name>`.
    pub path: Option<PathBuf>,
    pub mode: FileMode,
    /// Concurrency units that can be held at once, over all processes.
    pub lease_capacity: usize,
    /// Tests only: narrows every key hash, to force collisions.
    #[doc(hidden)]
    pub hash_mask: u64,
}

impl Default for SharedOptions {
    fn default() -> Self {
        SharedOptions {
            capacity: SharedStore::DEFAULT_CAPACITY,
            long_key_capacity: None,
            path: None,
            mode: FileMode::Owner,
            lease_capacity: SharedStore::DEFAULT_LEASE_CAPACITY,
            hash_mask: u64::MAX,
        }
    }
}

/// A limit's namespace in a shared table: its registry id.
#[derive(Debug, Clone)]
pub struct SharedScope {
    id: u32,
    kind: CellKind,
}

impl SharedScope {
    pub fn kind(&self) -> CellKind {
        self.kind
    }
}

/// One live entry of a shared table, for `llmthrottle state inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEntry {
    /// The limit's label as the policy builds it: namespace, layer, rule pattern and
    /// `kind:dimension#n`, separated by `\x1f`.
    pub scope: String,
    pub kind: CellKind,
    pub key: String,
    /// The raw cell: a TAT in monotonic ns (rate), calls in flight (concurrency), or a packed
    /// period and amount (quota).
    pub value: u64,
    /// Handles currently held on the entry, by all processes.
    pub pins: u64,
}

/// One concurrency unit held (or being taken or given back), for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedLeaseInfo {
    pub pid: u32,
    pub alive: bool,
    /// `pending`, `held`, `releasing`, `reaping`, `orphan` or `resetting`.
    pub phase: &'static str,
    pub scope: Option<String>,
    pub key: Option<String>,
}

/// Sizes and use of a shared table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedStats {
    pub path: PathBuf,
    pub capacity: u64,
    pub long_key_capacity: u64,
    pub short_slots: u64,
    pub long_slots: u64,
    /// Approximate live entries (short, long).
    pub live: (u64, u64),
    pub scopes: usize,
    pub lease_capacity: u64,
    pub file_bytes: u64,
    pub table_id: u64,
}

struct Shared {
    mapping: Mapping,
    path: PathBuf,
    name: String,
    created: bool,
    hash_seed: u64,
    hash_mask: u64,
    scopes: Scopes,
    leases: Leases,
    short: Table<{ table::SHORT_KEY_BYTES / 8 }>,
    long: Table<32>,
    /// Monotonic ns of this process's last scan for dead holders (they are throttled).
    last_reap_ns: AtomicU64,
}

/// The [`Store`] over a memory-mapped table shared by every process that opens the same name.
#[derive(Clone)]
pub struct SharedStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("name", &self.shared.name)
            .field("path", &self.shared.path)
            .finish()
    }
}

/// Names become file names: a conservative alphabet, no separators, nothing hidden.
fn validate_name(name: &str) -> Result<()> {
    if crate::policy::is_plain_name(name, 200) && !name.starts_with('.') {
        Ok(())
    } else {
        Err(CoreError::Config(format!(
            "shared state name {name:?} must be 1-200 characters of letters, digits, '_', '-' or '.', \
             not starting with '.' (it becomes a file name; use path= to choose a directory)"
        )))
    }
}

impl SharedStore {
    pub const DEFAULT_CAPACITY: usize = 65_536;
    pub const DEFAULT_LEASE_CAPACITY: usize = 16_384;

    /// Opens the table `name`, creating it if no process has yet: `capacity` keys, at `path`
    /// (default `/dev/shm/llmthrottle-<name>`), readable and writable by `mode`.
    pub fn open(name: &str, capacity: usize, path: Option<PathBuf>, mode: FileMode) -> Result<SharedStore> {
        SharedStore::open_with(
            name,
            &SharedOptions {
                capacity,
                path,
                mode,
                ..SharedOptions::default()
            },
        )
    }

    pub fn open_with(name: &str, options: &SharedOptions) -> Result<SharedStore> {
        let layout = Layout::new(
            options.capacity as u64,
            options.long_key_capacity.map(|c| c as u64),
            options.lease_capacity as u64,
        )?;
        SharedStore::open_file(
            name,
            options.path.clone(),
            options.mode,
            Some(layout),
            options.hash_mask,
        )
    }

    /// Attaches an existing table, never creating one (for inspection tools).
    pub fn attach(name: &str, path: Option<PathBuf>) -> Result<SharedStore> {
        SharedStore::open_file(name, path, FileMode::Owner, None, u64::MAX)
    }

    /// Removes the table file (processes that have it mapped keep using their copy until they
    /// reopen). Returns whether there was one.
    pub fn remove(name: &str, path: Option<PathBuf>) -> Result<bool> {
        let path = SharedStore::resolve_path(name, path)?;
        file::remove(&path)
    }

    /// Where the table `name` lives by default.
    pub fn default_path(name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        let dir = Path::new("/dev/shm");
        if !dir.is_dir() {
            return Err(CoreError::State(
                "this host has no /dev/shm; pass path= to put the shared table elsewhere".into(),
            ));
        }
        Ok(dir.join(format!("llmthrottle-{name}")))
    }

    fn resolve_path(name: &str, path: Option<PathBuf>) -> Result<PathBuf> {
        match path {
            Some(path) => {
                validate_name(name)?;
                if path.as_os_str().is_empty() || path.file_name().is_none() {
                    return Err(CoreError::Config(format!(
                        "path {:?} must name a file, not a directory",
                        path.display()
                    )));
                }
                Ok(path)
            }
            None => SharedStore::default_path(name),
        }
    }

    fn open_file(
        name: &str,
        path: Option<PathBuf>,
        mode: FileMode,
        create: Option<Layout>,
        hash_mask: u64,
    ) -> Result<SharedStore> {
        process::watch_forks();
        let path = SharedStore::resolve_path(name, path)?;
        let spec = FileSpec {
            path: &path,
            mode: mode.bits(),
            create,
            hash_mask,
        };
        let (mapping, created) = file::open(&spec)?;
        let header = mapping.header();
        let base = mapping.base();
        // SAFETY: the header was validated against the file's size, so every region lies inside
        // the mapping, which the `Shared` built here owns for as long as these views live.
        let (scopes, leases, short, long) = unsafe {
            (
                Scopes::new(base.add(header.scope_offset as usize) as *const ScopeEntry),
                Leases::new(
                    base.add(header.lease_offset as usize) as *const AtomicU64,
                    header.lease_records as usize,
                ),
                Table::new(
                    base.add(header.short_offset as usize) as *const ShortSlot,
                    header.short_slots as usize,
                    &header.short_live,
                ),
                Table::new(
                    base.add(header.long_offset as usize) as *const LongSlot,
                    header.long_slots as usize,
                    &header.long_live,
                ),
            )
        };
        let (hash_seed, hash_mask) = (header.hash_seed, header.hash_mask);
        Ok(SharedStore {
            shared: Arc::new(Shared {
                mapping,
                path,
                name: name.to_owned(),
                created,
                hash_seed,
                hash_mask,
                scopes,
                leases,
                short,
                long,
                last_reap_ns: AtomicU64::new(0),
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Whether this call created the table (rather than attaching another process's).
    pub fn created(&self) -> bool {
        self.shared.created
    }

    /// The keys the table was sized for by its creator.
    pub fn capacity(&self) -> u64 {
        self.shared.mapping.header().capacity
    }

    /// A random id of the table instance (equal in every process attached to the same table).
    pub fn table_id(&self) -> u64 {
        self.shared.mapping.header().table_id
    }

    pub fn stats(&self) -> SharedStats {
        let header = self.shared.mapping.header();
        SharedStats {
            path: self.shared.path.clone(),
            capacity: header.capacity,
            long_key_capacity: header.long_key_capacity,
            short_slots: header.short_slots,
            long_slots: header.long_slots,
            live: (self.shared.short.live_count(), self.shared.long.live_count()),
            scopes: self.shared.scopes.count(),
            lease_capacity: header.lease_records,
            file_bytes: header.file_bytes,
            table_id: header.table_id,
        }
    }

    /// The file's regions as byte ranges: the header (and within it the fields naming the host
    /// it was made on), the limit registry, the lease records and the two slot tables. For tools
    /// that examine, or deliberately damage, a table file (the fuzz targets in `fuzz/`).
    #[doc(hidden)]
    pub fn regions(&self) -> Vec<(&'static str, std::ops::Range<u64>)> {
        let header = self.shared.mapping.header();
        let host_start = std::mem::offset_of!(header::Header, boot_id) as u64;
        let host_end = std::mem::offset_of!(header::Header, pid_namespace) as u64 + 8;
        vec![
            ("header", 0..header.scope_offset),
            ("header.host", host_start..host_end),
            ("scopes", header.scope_offset..header.lease_offset),
            ("leases", header.lease_offset..header.short_offset),
            ("short", header.short_offset..header.long_offset),
            ("long", header.long_offset..header.file_bytes),
        ]
    }

    /// Every live entry of every limit.
    pub fn entries(&self) -> Vec<SharedEntry> {
        let shared = &self.shared;
        let mut entries = Vec::new();
        let mut visit = |raw: table::RawEntry| {
            let (Some(scope), Some(kind)) = (shared.scopes.label(raw.scope_id), shared.scopes.kind(raw.scope_id))
            else {
                return;
            };
            entries.push(SharedEntry {
                scope,
                kind,
                key: String::from_utf8_lossy(&raw.key).into_owned(),
                value: raw.value,
                pins: raw.pins,
            });
        };
        shared.short.entries(&mut visit);
        shared.long.entries(&mut visit);
        entries
    }

    /// Every concurrency lease record in use.
    pub fn leases(&self) -> Vec<SharedLeaseInfo> {
        let shared = &self.shared;
        let mut names: Vec<(SlotRef, Option<(String, String)>)> = Vec::new();
        shared
            .leases
            .records()
            .into_iter()
            .map(|(pid, phase, at)| {
                let name = match names.iter().find(|(s, _)| *s == at) {
                    Some((_, name)) => name.clone(),
                    None => {
                        let name = self.describe(at);
                        names.push((at, name.clone()));
                        name
                    }
                };
                SharedLeaseInfo {
                    pid,
                    alive: process::is_alive(pid),
                    phase,
                    scope: name.as_ref().map(|n| n.0.clone()),
                    key: name.map(|n| n.1),
                }
            })
            .collect()
    }

    /// The (scope label, key) of a slot, if it is live.
    fn describe(&self, at: SlotRef) -> Option<(String, String)> {
        if !self.shared.holds(at) {
            return None;
        }
        let raw = if at.long {
            self.shared.long.entry_at(at.index as usize)
        } else {
            self.shared.short.entry_at(at.index as usize)
        }?;
        let label = self.shared.scopes.label(raw.scope_id)?;
        Some((label, String::from_utf8_lossy(&raw.key).into_owned()))
    }

    /// Gives back the concurrency units of processes that died; returns how many.
    /// (Denied acquisitions do this for their own cell; tools may call it for all.)
    pub fn reap(&self) -> u64 {
        self.shared.leases.reap_all(&*self.shared)
    }
}

impl Shared {
    fn head(&self, at: SlotRef) -> *const SlotHead {
        if at.long {
            self.long.head(at.index as usize)
        } else {
            self.short.head(at.index as usize)
        }
    }

    /// The pinned LIVE slot of `key`, without creating it.
    fn locate(&self, key: &Key) -> Option<(usize, bool)> {
        let found = if key.is_long() {
            self.long.find(key)
        } else {
            self.short.find(key)
        };
        found.ok().flatten().map(|i| (i, key.is_long()))
    }

    fn full_error(&self, long: bool) -> CoreError {
        let header = self.mapping.header();
        let (kind, live, slots, option, sized_for) = if long {
            let live = self.long.live_count();
            (
                "keys longer than 40 bytes",
                live,
                self.long.len(),
                "long_key_capacity",
                header.long_key_capacity,
            )
        } else {
            (
                "keys",
                self.short.live_count(),
                self.short.len(),
                "capacity",
                header.capacity,
            )
        };
        CoreError::State(format!(
            "shared state {:?} is full: about {live} live {kind} in {slots} slots (sized for {option}={sized_for}) \
             and none free where this key may go; run `llmthrottle state reset {}` and open it with a larger \
             {option}= (e.g. {option}={})",
            self.name,
            self.name,
            sized_for.saturating_mul(2)
        ))
    }
}

impl Slots for Shared {
    fn holds(&self, at: SlotRef) -> bool {
        if at.long {
            self.long.holds(at.index as usize)
        } else {
            self.short.holds(at.index as usize)
        }
    }

    fn cell(&self, at: SlotRef) -> &AtomicU64 {
        // SAFETY: slot heads point into the mapping this struct owns.
        unsafe { &(*self.head(at)).cell }
    }

    fn unpin(&self, at: SlotRef) {
        // SAFETY: as above.
        unsafe { &(*self.head(at)).state }.fetch_sub(1, SeqCst);
    }
}

/// A handle on one cell of a shared table: keeps the mapping alive and the slot pinned.
pub struct SharedCell {
    shared: Arc<Shared>,
    head: *const SlotHead,
    at: SlotRef,
    fork_generation: u32,
}

// SAFETY: `head` points into the mapping owned by `shared`; it is only used through atomics.
unsafe impl Send for SharedCell {}
// SAFETY: as above.
unsafe impl Sync for SharedCell {}

/// What a handle inherited through `fork()` reads in the child: a reclaimed cell, so that
/// nothing the child does through it touches the parent's state (the engine looks keys up again,
/// refunds are no-ops). Never written: every writer checks for TOMBSTONE first.
static INHERITED: AtomicU64 = AtomicU64::new(TOMBSTONE);

impl SharedCell {
    fn new(shared: &Arc<Shared>, at: SlotRef) -> SharedCell {
        SharedCell {
            shared: Arc::clone(shared),
            head: shared.head(at),
            at,
            fork_generation: process::fork_generation(),
        }
    }

    #[inline]
    fn is_inherited(&self) -> bool {
        self.fork_generation != process::fork_generation()
    }
}

impl Deref for SharedCell {
    type Target = AtomicU64;

    #[inline]
    fn deref(&self) -> &AtomicU64 {
        if self.is_inherited() {
            return &INHERITED;
        }
        // SAFETY: the slot is pinned by this handle and mapped for as long as `shared` lives.
        unsafe { &(*self.head).cell }
    }
}

impl Drop for SharedCell {
    fn drop(&mut self) {
        if !self.is_inherited() {
            self.shared.unpin(self.at);
        }
    }
}

/// The record of one concurrency unit held by this process.
#[derive(Debug)]
pub struct SharedLease {
    record: u32,
    fork_generation: u32,
}

impl SharedStore {
    /// `key` as the table compares it in `scope`; `None` for a key too long for a slot (see
    /// `key_too_long`). Not a `Result`: moving a key out of one cost a quarter of a look-up.
    #[inline(always)]
    fn key<'k>(&self, scope: &SharedScope, key: &'k str) -> Option<Key<'k>> {
        let shared = &self.shared;
        (key.len() <= MAX_KEY_BYTES).then(|| Key::new(scope.id, key.as_bytes(), shared.hash_seed, shared.hash_mask))
    }

    /// The slot of `key`, created empty when absent, pinned: the caller unpins it.
    #[inline]
    fn pin(&self, key: &Key, now: Now) -> Result<SlotRef> {
        let shared = &self.shared;
        let kind_of = |id: u32| shared.scopes.kind(id);
        let long = key.is_long();
        let outcome = if long {
            shared.long.find_or_insert(key, now, &kind_of)?
        } else {
            shared.short.find_or_insert(key, now, &kind_of)?
        };
        match outcome {
            Outcome::Found(i) => Ok(SlotRef { long, index: i as u32 }),
            Outcome::Full => Err(shared.full_error(long)),
        }
    }

    /// Applies `step` to the cell of pinned slot `at`, then unpins it.
    #[inline]
    fn update_pinned<R>(&self, at: SlotRef, step: impl FnMut(u64) -> Update<R>) -> R {
        let result = compare_and_swap(self.shared.cell(at), step);
        self.shared.unpin(at);
        result
    }

    /// The slot of `key` if it exists, pinned: the caller unpins it.
    fn pinned(&self, key: &Key) -> Option<SlotRef> {
        let (i, long) = self.shared.locate(key)?;
        Some(SlotRef { long, index: i as u32 })
    }

    /// `Table::update_unpinned` in the table `key` belongs in.
    #[inline]
    fn update_unpinned<R>(&self, key: &Key, step: &mut impl FnMut(u64) -> Update<R>) -> Option<R> {
        if key.is_long() {
            self.shared.long.update_unpinned(key, step)
        } else {
            self.shared.short.update_unpinned(key, step)
        }
    }
}

impl Store for SharedStore {
    type Scope = SharedScope;
    type Cell = SharedCell;
    type Lease = SharedLease;
    /// Nothing to keep: a look-up takes no lock.
    type Session<'a> = ();

    #[inline]
    fn session(&self) {}

    fn scope(&self, label: &str, kind: CellKind) -> Result<SharedScope> {
        let id = self.shared.scopes.register(label, kind)?;
        Ok(SharedScope { id, kind })
    }

    #[inline]
    fn cell(&self, _: &mut (), scope: &SharedScope, key: &str, now: Now) -> Result<SharedCell> {
        let at = self.pin(&self.key(scope, key).ok_or_else(|| key_too_long(key))?, now)?;
        Ok(SharedCell::new(&self.shared, at))
    }

    /// A key's LIVE slot is updated without a pin (see the table's invariant 3): a pin and its
    /// release were two locked instructions per cell, twice the cost of the update itself.
    /// Otherwise the slot is pinned for the length of the update only: a decision holds no
    /// handle, so it takes no reference on the mapping and leaves no pin behind if its process
    /// dies later.
    #[inline]
    fn update_cell<R>(
        &self,
        _: &mut (),
        scope: &SharedScope,
        key: &str,
        now: Now,
        mut step: impl FnMut(u64) -> Update<R>,
    ) -> Result<R> {
        let Some(key) = self.key(scope, key) else {
            return Err(key_too_long(key));
        };
        if let Some(result) = self.update_unpinned(&key, &mut step) {
            return Ok(result);
        }
        let at = self.pin(&key, now)?;
        Ok(self.update_pinned(at, step))
    }

    #[inline]
    fn update_existing_cell<R>(
        &self,
        _: &mut (),
        scope: &SharedScope,
        key: &str,
        mut step: impl FnMut(u64) -> Update<R>,
    ) -> Option<R> {
        let key = self.key(scope, key)?;
        if let Some(result) = self.update_unpinned(&key, &mut step) {
            return Some(result);
        }
        let at = self.pinned(&key)?;
        Some(self.update_pinned(at, step))
    }

    #[inline]
    fn generation(&self) -> u32 {
        process::fork_generation()
    }

    fn value(&self, _: &mut (), scope: &SharedScope, key: &str) -> Option<u64> {
        let at = self.pinned(&self.key(scope, key)?)?;
        Some(SharedCell::new(&self.shared, at).load(SeqCst))
    }

    fn for_each(&self, scope: &SharedScope, visit: &mut dyn FnMut(&str, u64)) {
        let mut each = |raw: table::RawEntry| {
            if raw.scope_id == scope.id {
                visit(&String::from_utf8_lossy(&raw.key), raw.value);
            }
        };
        self.shared.short.entries(&mut each);
        self.shared.long.entries(&mut each);
    }

    fn hold(&self, cell: &SharedCell, max: u64) -> Result<Hold<SharedLease>> {
        if cell.is_inherited() {
            return Ok(Hold::Reclaimed);
        }
        let shared = &self.shared;
        let Some(record) = shared.leases.begin(cell.at).or_else(|| {
            shared.leases.reap_all(&**shared);
            shared.leases.begin(cell.at)
        }) else {
            return Err(shared.leases.full_error());
        };
        let mut reaped = false;
        let mut current = cell.load(SeqCst);
        loop {
            if current == TOMBSTONE {
                shared.leases.abandon(record);
                return Ok(Hold::Reclaimed);
            }
            if current >= max {
                // Full: perhaps of units whose holders died. Look once, throttled per process.
                if !reaped && shared.may_reap() && shared.leases.reap(cell.at, &**shared) > 0 {
                    reaped = true;
                    current = cell.load(SeqCst);
                    continue;
                }
                shared.leases.abandon(record);
                return Ok(Hold::Full);
            }
            match cell.compare_exchange(current, current + 1, SeqCst, SeqCst) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        shared.leases.confirm(record, cell.at);
        Ok(Hold::Held {
            lease: Some(SharedLease {
                record,
                fork_generation: process::fork_generation(),
            }),
            count: current + 1,
        })
    }

    fn release(cell: &SharedCell, lease: Option<&SharedLease>) {
        match lease {
            // Made before a fork: the unit is the parent's to give back.
            Some(lease) if lease.fork_generation != process::fork_generation() => {}
            Some(lease) => cell.shared.leases.release(lease.record, cell.at, cell),
            None => {}
        }
    }
}

impl Shared {
    /// At most one scan for dead holders per millisecond per process: a denial is common under
    /// load, and a scan reads the whole lease table.
    fn may_reap(&self) -> bool {
        let now = SystemClock.now().monotonic_ns;
        let last = self.last_reap_ns.load(SeqCst);
        now.saturating_sub(last) >= 1_000_000 && self.last_reap_ns.compare_exchange(last, now, SeqCst, SeqCst).is_ok()
    }
}
