//! The lock-free hash table of cells: open addressing with linear probing over slots that
//! never move, each holding one (scope, key) and its cell.
//!
//! # A slot's life
//!
//! Every slot has a state word: `phase | owner pid | hash tag | pins`, where a LIVE slot, which
//! has no owner, keeps the number of its life in the pid bits (invariant 3). The phases are
//!
//! ```text
//!   FREE ──claim (CAS, pins = 0)──▶ CLAIMING(pid) ──key written──▶ PUBLISHED(pid) ──unique──▶ LIVE
//!     ▲                                  │                              │                        │
//!     └──────── owner dead ──────────────┴──── duplicate / owner dead ──┘   cell TOMBSTONE ─────┘
//! ```
//!
//! Invariants, kept by the code below:
//!
//! 1. **One slot per key.** At most one slot is LIVE for a key. An inserter claims the first
//!    free slot of the key's probe window, writes the key, publishes it, then looks at every other
//!    slot in the window: a LIVE copy of the key wins (the inserter gives its slot back); a
//!    PUBLISHED copy closer to home wins; a PUBLISHED copy farther from home is waited for until
//!    it goes LIVE (it wins) or gives up. Because each inserter publishes before it looks, of any
//!    two racing inserters at least one sees the other (all of this is `SeqCst`).
//! 2. **Lookups never miss a live slot.** A key lives within `reach[home]` slots of its home, and
//!    `reach` only grows, raised before the claim. Lookups scan the whole reach, never stopping
//!    at a free slot, so freeing a slot can break no probe chain.
//! 3. **A handle's slot keeps its key.** Every handle pins its slot (the low bits of the state
//!    word). A slot can be freed while pinned, but claimed again only once FREE with no pins, so
//!    the key bytes and the cell a handle points at belong to its key for as long as it lives.
//!    The one exception is `update_unpinned`, a decision's fast path, which takes no pin: it
//!    compares the key bytes of a LIVE slot, then writes the cell with one compare-and-swap over
//!    the state and cell words together, which fails if the slot left the life it was found in.
//!    Each life as LIVE carries a new number in the owner-pid bits (a LIVE slot has no owner),
//!    so a slot reclaimed and given to another key meanwhile shows a different state word, short
//!    of a new key with the same 16-bit tag drawing the same 22-bit number and a cell holding
//!    the very value read. A denial it reaches is checked the same way, by reading the state
//!    word again. Anything unusual (no LIVE copy, a tombstone, another life) takes the pinned path.
//! 4. **Reclaiming is the tombstone protocol.** An expired LIVE cell is swapped for TOMBSTONE with
//!    a CAS (a racing update fails its own CAS instead), and only then is the slot freed. A LIVE
//!    slot whose cell is TOMBSTONE is a half-done reclaim that anyone holding a pin may finish.
//! 5. **No step leaves a lock.** Every transition is one CAS. A claim or publish whose owner
//!    was killed is freed by the next process that finds it and sees the owner's pid is gone;
//!    pins of a killed process are never given back, which keeps that one slot from being
//!    reused (a bounded leak of one slot per handle held at the moment of death).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

use crate::clock::Now;
use crate::error::{CoreError, Result};
use crate::limit::{CellKind, TOMBSTONE};

use crate::store::Update;

use super::head_cas;
use super::process::{self, Patience, Waited};

/// Key bytes held in a short slot; longer keys go to the long table.
pub(crate) const SHORT_KEY_BYTES: usize = SHORT_KEY_WORDS * 8;
const SHORT_KEY_WORDS: usize = 5;
const LONG_KEY_WORDS: usize = 32;
/// A key lives at most this many slots past its home.
const MAX_PROBE: usize = 256;

#[repr(C, align(64))]
pub(crate) struct Slot<const W: usize> {
    state: AtomicU64,
    cell: AtomicU64,
    /// Of this slot as a home: how far past it keys of this home have ever been placed.
    reach: AtomicU32,
    /// `scope id << 8 | key length`.
    shape: AtomicU32,
    key: [AtomicU64; W],
}

/// One cache line: state, cell, reach, shape and up to 40 bytes of key.
pub(crate) type ShortSlot = Slot<SHORT_KEY_WORDS>;
/// Five cache lines, for keys of 41 to 256 bytes.
pub(crate) type LongSlot = Slot<LONG_KEY_WORDS>;

const _: () = assert!(std::mem::size_of::<ShortSlot>() == 64);
const _: () = assert!(std::mem::size_of::<LongSlot>() == 320);

/// Every slot begins with these two words, whatever its size: handles point at them.
#[repr(C)]
pub(crate) struct SlotHead {
    pub state: AtomicU64,
    pub cell: AtomicU64,
}

mod word {
    pub const PIN_BITS: u32 = 24;
    pub const PIN_MASK: u64 = (1 << PIN_BITS) - 1;
    /// Refuse new pins past this, far below the field's limit, so racing pins cannot carry.
    pub const PIN_LIMIT: u64 = 1 << 23;
    const TAG_SHIFT: u32 = 24;
    const PID_SHIFT: u32 = 40;
    const PHASE_SHIFT: u32 = 62;
    pub const FREE: u64 = 0;
    pub const CLAIMING: u64 = 1;
    pub const PUBLISHED: u64 = 2;
    pub const LIVE: u64 = 3;

    #[inline]
    pub fn make(phase: u64, pid: u32, tag: u64, pins: u64) -> u64 {
        (phase << PHASE_SHIFT) | ((pid as u64) << PID_SHIFT) | (tag << TAG_SHIFT) | pins
    }
    #[inline]
    pub fn phase(s: u64) -> u64 {
        s >> PHASE_SHIFT
    }
    #[inline]
    pub fn pid(s: u64) -> u32 {
        ((s >> PID_SHIFT) & ((1 << super::process::PID_BITS) - 1)) as u32
    }
    #[inline]
    pub fn tag(s: u64) -> u64 {
        (s >> TAG_SHIFT) & 0xFFFF
    }
    #[inline]
    pub fn pins(s: u64) -> u64 {
        s & PIN_MASK
    }
    /// Everything but the pins: what a waiter watches for a change.
    #[inline]
    pub fn identity(s: u64) -> u64 {
        s >> PIN_BITS
    }
}
use word::{CLAIMING, FREE, LIVE, PUBLISHED};

/// A number for a slot's new life as LIVE (see invariant 3), in the bits of an owner's pid.
fn incarnation() -> u32 {
    static LIVES: AtomicU32 = AtomicU32::new(0);
    let n = LIVES.fetch_add(1, SeqCst);
    (process::pid().wrapping_mul(0x9E37_79B9) ^ n.wrapping_mul(0x85EB_CA6B)) & ((1 << process::PID_BITS) - 1)
}

#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let full = (a as u128).wrapping_mul(b as u128);
    (full as u64) ^ ((full >> 64) as u64)
}

/// A fixed 64-bit mixer (part of the layout: every process must hash alike).
#[inline]
pub(crate) fn mix(x: u64) -> u64 {
    folded_multiply(x ^ 0x243F_6A88_85A3_08D3, 0x9E37_79B9_7F4A_7C15)
}

/// A key as the table compares it: scope id, length and bytes read as zero-padded
/// little-endian words. It borrows the bytes: a copy of up to 256 bytes per lookup cost more
/// than the rest of the lookup.
pub(crate) struct Key<'a> {
    shape: u32,
    /// The bytes that fill whole words.
    whole: &'a [u8],
    /// The last, partial word (0 when there is none).
    tail: u64,
    pub(crate) hash: u64,
}

impl<'a> Key<'a> {
    /// `bytes` is at most 256 bytes long (the engine allows 255).
    #[inline]
    pub(crate) fn new(scope_id: u32, bytes: &'a [u8], seed: u64, mask: u64) -> Key<'a> {
        debug_assert!(bytes.len() <= LONG_KEY_WORDS * 8 && bytes.len() <= 255);
        let shape = (scope_id << 8) | bytes.len() as u32;
        let (whole, rest) = bytes.split_at(bytes.len() & !7);
        let tail = rest.iter().rev().fold(0, |word, &byte| word << 8 | byte as u64);
        let mut key = Key {
            shape,
            whole,
            tail,
            hash: 0,
        };
        let mut hash = seed ^ (shape as u64).wrapping_mul(0xA076_1D64_78BD_642F);
        for w in 0..key.word_count() {
            hash = folded_multiply(hash ^ key.word(w), 0xE703_7ED1_A0B4_28DB);
        }
        key.hash = mix(hash) & mask;
        key
    }

    /// Word `w` of the key, `w < word_count()`.
    #[inline]
    fn word(&self, w: usize) -> u64 {
        match self.whole.get(w * 8..w * 8 + 8) {
            Some(bytes) => u64::from_le_bytes(bytes.try_into().expect("eight bytes")),
            None => self.tail,
        }
    }

    #[inline]
    fn word_count(&self) -> usize {
        ((self.shape & 0xFF) as usize).div_ceil(8)
    }

    #[inline]
    fn tag(&self) -> u64 {
        self.hash & 0xFFFF
    }

    pub(crate) fn is_long(&self) -> bool {
        (self.shape & 0xFF) as usize > SHORT_KEY_BYTES
    }
}

/// One live entry, as read for inspection.
pub(crate) struct RawEntry {
    pub scope_id: u32,
    pub key: Vec<u8>,
    pub value: u64,
    pub pins: u64,
}

/// Where the LIVE copy of a key is (pinned), or why there is none.
pub(crate) enum Outcome {
    Found(usize),
    /// No slot free within the key's probe window.
    Full,
}

enum Verdict {
    Unique,
    /// Another slot holds the key, LIVE; it is pinned for the caller.
    Existing(usize),
    /// A copy closer to home is being published: give ours up and look again.
    Retry,
}

/// A view of one table (short or long slots) inside a mapping that outlives it.
pub(crate) struct Table<const W: usize> {
    slots: *const Slot<W>,
    len: usize,
    window: usize,
    live: *const AtomicU64,
}

// SAFETY: the table is shared memory accessed only through atomics; the mapping it points into
// is owned by the store that owns this view (and by every handle), so it outlives every use.
unsafe impl<const W: usize> Send for Table<W> {}
// SAFETY: as above.
unsafe impl<const W: usize> Sync for Table<W> {}

impl<const W: usize> Table<W> {
    /// # Safety
    /// `slots` must point at `len` zero-initialised-or-valid slots and `live` at a counter, both
    /// inside a mapping that outlives the table.
    pub(crate) unsafe fn new(slots: *const Slot<W>, len: usize, live: *const AtomicU64) -> Self {
        Table {
            slots,
            len,
            window: MAX_PROBE.min(len),
            live,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn slot(&self, i: usize) -> &Slot<W> {
        debug_assert!(i < self.len);
        // SAFETY: i < len, and the slots stay mapped for the table's lifetime (see `new`).
        unsafe { &*self.slots.add(i) }
    }

    /// How far past `home` its keys may lie. The word comes from the file, so it is held to the
    /// probe window here: a damaged reach can make a lookup slower, never read past the table.
    #[inline]
    fn reach(&self, home: usize) -> usize {
        (self.slot(home).reach.load(SeqCst) as usize).min(self.window)
    }

    /// Whether `i` names a slot of this table (indexes read from the file are checked with it).
    pub(crate) fn holds(&self, i: usize) -> bool {
        i < self.len
    }

    /// The state and cell words of slot `i`, for a handle.
    pub(crate) fn head(&self, i: usize) -> *const SlotHead {
        (self.slot(i) as *const Slot<W>).cast()
    }

    pub(crate) fn live_count(&self) -> u64 {
        // SAFETY: `live` points into the mapping (see `new`).
        unsafe { &*self.live }.load(SeqCst)
    }

    fn live(&self) -> &AtomicU64 {
        // SAFETY: as above.
        unsafe { &*self.live }
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        ((hash as u128 * self.len as u128) >> 64) as usize
    }

    #[inline]
    fn at(&self, home: usize, distance: usize) -> usize {
        let i = home + distance;
        if i >= self.len {
            i - self.len
        } else {
            i
        }
    }

    pub(crate) fn unpin(&self, i: usize) {
        self.slot(i).state.fetch_sub(1, SeqCst);
    }

    #[inline]
    fn same_key(&self, slot: &Slot<W>, key: &Key) -> bool {
        slot.shape.load(SeqCst) == key.shape && (0..key.word_count()).all(|w| slot.key[w].load(SeqCst) == key.word(w))
    }

    /// Pins slot `i` if it holds `key` (LIVE or PUBLISHED); returns the state word seen.
    fn pin_if_key(&self, i: usize, key: &Key) -> Result<Option<u64>> {
        let slot = self.slot(i);
        let seen = slot.state.fetch_add(1, SeqCst);
        if word::pins(seen) >= word::PIN_LIMIT {
            self.unpin(i);
            return Err(CoreError::State(format!(
                "slot {i} of the shared table has {} handles on it; release reservations",
                word::pins(seen)
            )));
        }
        let phase = word::phase(seen);
        if (phase == LIVE || phase == PUBLISHED) && word::tag(seen) == key.tag() && self.same_key(slot, key) {
            Ok(Some(seen))
        } else {
            self.unpin(i);
            Ok(None)
        }
    }

    /// The pinned LIVE slot of `key`, if any. With `wait`, a copy being published is waited
    /// for; without, it counts as absent (it is not there yet).
    fn search(&self, key: &Key, wait: bool, patience: &mut Patience) -> Result<Option<usize>> {
        'again: loop {
            let home = self.home(key.hash);
            let reach = self.reach(home);
            for distance in 0..reach {
                let i = self.at(home, distance);
                let s = self.slot(i).state.load(SeqCst);
                let phase = word::phase(s);
                if word::tag(s) != key.tag() || !(phase == LIVE || phase == PUBLISHED) {
                    continue;
                }
                let Some(seen) = self.pin_if_key(i, key)? else {
                    continue;
                };
                if word::phase(seen) == LIVE {
                    if self.slot(i).cell.load(SeqCst) != TOMBSTONE {
                        return Ok(Some(i));
                    }
                    self.finish_reclaim(i);
                    self.unpin(i);
                } else {
                    self.unpin(i);
                    if wait {
                        self.wait_while(i, seen, patience)?;
                        continue 'again;
                    }
                }
            }
            return Ok(None);
        }
    }

    /// The LIVE slot of `key` and the state word it showed, found without pinning it.
    #[inline]
    fn locate_unpinned(&self, key: &Key) -> Option<(usize, u64)> {
        let home = self.home(key.hash);
        let reach = self.reach(home);
        for distance in 0..reach {
            let i = self.at(home, distance);
            let slot = self.slot(i);
            let s = slot.state.load(SeqCst);
            if word::phase(s) == LIVE && word::tag(s) == key.tag() && self.same_key(slot, key) {
                return Some((i, s));
            }
        }
        None
    }

    /// Applies `step` to the cell of `key` as `Store::update_cell` does, without pinning its
    /// slot (invariant 3). `None` when that cannot be done here: no LIVE copy of the key, a
    /// reclaim under way, a slot that changed lives, or no double-width compare-and-swap. The
    /// caller then takes the pinned path.
    #[inline]
    pub(crate) fn update_unpinned<R>(&self, key: &Key, step: &mut impl FnMut(u64) -> Update<R>) -> Option<R> {
        if !head_cas::supported() {
            return None;
        }
        let (i, mut seen) = self.locate_unpinned(key)?;
        let slot = self.slot(i);
        let mut value = slot.cell.load(SeqCst);
        loop {
            if value == TOMBSTONE {
                return None;
            }
            match step(value) {
                // The value judged was this key's if the slot is still in the same life.
                Update::Keep(result) => {
                    return (word::identity(slot.state.load(SeqCst)) == word::identity(seen)).then_some(result)
                }
                Update::Write(next, result) => {
                    // SAFETY: slot heads are 64-byte aligned and mapped for the table's life.
                    match unsafe { head_cas::compare_exchange(self.head(i), [seen, value], [seen, next]) } {
                        Ok(()) => return Some(result),
                        // Pins taken or given back by others: the same life, look again.
                        Err([state, cell]) if word::identity(state) == word::identity(seen) => {
                            seen = state;
                            value = cell;
                        }
                        Err(_) => return None,
                    }
                }
            }
        }
    }

    /// The LIVE slot of `key`, pinned, without creating it.
    pub(crate) fn find(&self, key: &Key) -> Result<Option<usize>> {
        self.search(key, false, &mut Patience::new())
    }

    /// The LIVE slot of `key`, pinned, created (cell 0) when absent. Expired entries met on the
    /// way are reclaimed; `kind_of` tells a scope id's cell kind.
    pub(crate) fn find_or_insert(
        &self,
        key: &Key,
        now: Now,
        kind_of: &dyn Fn(u32) -> Option<CellKind>,
    ) -> Result<Outcome> {
        let mut patience = Patience::new();
        loop {
            if let Some(i) = self.search(key, true, &mut patience)? {
                return Ok(Outcome::Found(i));
            }
            let Some((mine, distance)) = self.claim(key, now, kind_of) else {
                return Ok(Outcome::Full);
            };
            let slot = self.slot(mine);
            slot.shape.store(key.shape, SeqCst);
            for w in 0..key.word_count() {
                slot.key[w].store(key.word(w), SeqCst);
            }
            slot.cell.store(0, SeqCst);
            self.advance(mine, CLAIMING, PUBLISHED, 0);
            match self.verify(key, mine, distance, &mut patience) {
                Ok(Verdict::Unique) => {
                    self.advance(mine, PUBLISHED, LIVE, 1);
                    self.live().fetch_add(1, SeqCst);
                    return Ok(Outcome::Found(mine));
                }
                Ok(Verdict::Existing(theirs)) => {
                    self.advance(mine, PUBLISHED, FREE, 0);
                    return Ok(Outcome::Found(theirs));
                }
                Ok(Verdict::Retry) => self.advance(mine, PUBLISHED, FREE, 0),
                Err(e) => {
                    self.advance(mine, PUBLISHED, FREE, 0);
                    return Err(e);
                }
            }
        }
    }

    /// Moves our own slot from phase `from` to `to`, keeping the pins others hold (plus `pin`).
    /// Only the owner moves a claimed slot while it lives, so this cannot fail but by pins moving.
    fn advance(&self, i: usize, from: u64, to: u64, pin: u64) {
        let slot = self.slot(i);
        let mut s = slot.state.load(SeqCst);
        while word::phase(s) == from && word::pid(s) == process::pid() {
            let next = match to {
                FREE => word::pins(s),
                LIVE => word::make(LIVE, incarnation(), word::tag(s), word::pins(s) + pin),
                _ => word::make(to, word::pid(s), word::tag(s), word::pins(s) + pin),
            };
            match slot.state.compare_exchange(s, next, SeqCst, SeqCst) {
                Ok(_) => return,
                Err(actual) => s = actual,
            }
        }
    }

    /// Claims the first free slot in the key's window, reclaiming expired or abandoned ones.
    fn claim(&self, key: &Key, now: Now, kind_of: &dyn Fn(u32) -> Option<CellKind>) -> Option<(usize, usize)> {
        let home = self.home(key.hash);
        let claim = word::make(CLAIMING, process::pid(), key.tag(), 0);
        for distance in 0..self.window {
            let i = self.at(home, distance);
            let slot = self.slot(i);
            let mut s = slot.state.load(SeqCst);
            match word::phase(s) {
                LIVE => {
                    self.reclaim_if_expired(i, now, kind_of);
                    s = slot.state.load(SeqCst);
                }
                // Passed by every claim: the one-syscall check (a zombie's is freed later).
                CLAIMING | PUBLISHED if !process::exists(word::pid(s)) => {
                    self.free_abandoned(i, s);
                    s = slot.state.load(SeqCst);
                }
                _ => {}
            }
            if s != FREE {
                continue;
            }
            // Raised before the claim, so a lookup that can see the claim also scans this far.
            self.slot(home).reach.fetch_max(distance as u32 + 1, SeqCst);
            if slot.state.compare_exchange(FREE, claim, SeqCst, SeqCst).is_ok() {
                return Some((i, distance));
            }
        }
        None
    }

    /// Frees LIVE slot `i` if its cell expired and no handle is held on it (a fresh cell reads
    /// 0, which is "expired", between its creation and its first charge). Pins it meanwhile, so
    /// that its scope and cell stay the ones judged.
    fn reclaim_if_expired(&self, i: usize, now: Now, kind_of: &dyn Fn(u32) -> Option<CellKind>) {
        let slot = self.slot(i);
        let seen = slot.state.fetch_add(1, SeqCst);
        if word::phase(seen) == LIVE && word::pins(seen) == 0 {
            let value = slot.cell.load(SeqCst);
            let expired = value == TOMBSTONE
                || kind_of(slot.shape.load(SeqCst) >> 8).is_some_and(|kind| kind.is_expired(value, now))
                    && slot.cell.compare_exchange(value, TOMBSTONE, SeqCst, SeqCst).is_ok();
            if expired {
                self.finish_reclaim(i);
            }
        }
        self.unpin(i);
    }

    /// Completes a reclaim whose cell is already TOMBSTONE. The caller holds a pin on `i`, so
    /// the slot cannot meanwhile be freed and claimed by another key.
    fn finish_reclaim(&self, i: usize) {
        let slot = self.slot(i);
        let mut s = slot.state.load(SeqCst);
        while word::phase(s) == LIVE && slot.cell.load(SeqCst) == TOMBSTONE {
            match slot.state.compare_exchange(s, word::pins(s), SeqCst, SeqCst) {
                Ok(_) => {
                    self.live().fetch_sub(1, SeqCst);
                    return;
                }
                Err(actual) => s = actual,
            }
        }
    }

    /// Frees a CLAIMING or PUBLISHED slot whose owner died, if it still shows state `seen`.
    fn free_abandoned(&self, i: usize, seen: u64) {
        let slot = self.slot(i);
        let mut s = slot.state.load(SeqCst);
        while word::identity(s) == word::identity(seen) {
            match slot.state.compare_exchange(s, word::pins(s), SeqCst, SeqCst) {
                Ok(_) => return,
                Err(actual) => s = actual,
            }
        }
    }

    /// Waits until slot `i` no longer shows `seen` (its owner finished the step), freeing it
    /// if the owner died.
    fn wait_while(&self, i: usize, seen: u64, patience: &mut Patience) -> Result<()> {
        let slot = self.slot(i);
        loop {
            if word::identity(slot.state.load(SeqCst)) != word::identity(seen) {
                return Ok(());
            }
            let owner = word::pid(seen);
            let waited =
                patience.pause(|| format!("slot {i} of the shared table has been held half-written by pid {owner}"))?;
            if matches!(waited, Waited::Suspect) && !process::is_alive(owner) {
                self.free_abandoned(i, seen);
                return Ok(());
            }
        }
    }

    /// Looks for other copies of `key` after ours (at `distance` from home) was published.
    fn verify(&self, key: &Key, mine: usize, distance: usize, patience: &mut Patience) -> Result<Verdict> {
        let home = self.home(key.hash);
        let reach = self.reach(home);
        for d in 0..reach {
            let i = self.at(home, d);
            if i == mine {
                continue;
            }
            loop {
                let s = self.slot(i).state.load(SeqCst);
                if word::tag(s) != key.tag() {
                    break;
                }
                match word::phase(s) {
                    // Its key is not readable yet: wait until it is published (or abandoned).
                    CLAIMING => self.wait_while(i, s, patience)?,
                    LIVE | PUBLISHED => {
                        let Some(seen) = self.pin_if_key(i, key)? else {
                            break;
                        };
                        if word::phase(seen) == LIVE {
                            if self.slot(i).cell.load(SeqCst) != TOMBSTONE {
                                return Ok(Verdict::Existing(i));
                            }
                            self.finish_reclaim(i);
                            self.unpin(i);
                            break;
                        }
                        self.unpin(i);
                        if d < distance {
                            return Ok(Verdict::Retry);
                        }
                        self.wait_while(i, seen, patience)?;
                    }
                    _ => break,
                }
            }
        }
        Ok(Verdict::Unique)
    }

    /// Every LIVE entry (scope id, key bytes, cell value), each read under a pin.
    pub(crate) fn entries(&self, visit: &mut dyn FnMut(RawEntry)) {
        for i in 0..self.len {
            if word::phase(self.slot(i).state.load(SeqCst)) == LIVE {
                if let Some(entry) = self.entry_at(i) {
                    visit(entry);
                }
            }
        }
    }

    /// Slot `i`'s entry, if it is LIVE.
    pub(crate) fn entry_at(&self, i: usize) -> Option<RawEntry> {
        let slot = self.slot(i);
        let seen = slot.state.fetch_add(1, SeqCst);
        let mut entry = None;
        if word::phase(seen) == LIVE && word::pins(seen) < word::PIN_LIMIT {
            let value = slot.cell.load(SeqCst);
            let shape = slot.shape.load(SeqCst);
            let len = (shape & 0xFF) as usize;
            let mut key = Vec::with_capacity(len.div_ceil(8) * 8);
            for w in 0..len.div_ceil(8).min(W) {
                key.extend_from_slice(&slot.key[w].load(SeqCst).to_le_bytes());
            }
            key.truncate(len);
            if value != TOMBSTONE {
                entry = Some(RawEntry {
                    scope_id: shape >> 8,
                    key,
                    value,
                    pins: word::pins(seen),
                });
            }
        }
        self.unpin(i);
        entry
    }

    /// The cell of a pinned slot.
    #[cfg(test)]
    pub(crate) fn cell(&self, i: usize) -> &AtomicU64 {
        &self.slot(i).cell
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A heap-backed table for unit tests (the layout is the same as in a mapping).
    ///
    /// The slots and the live counter are held as raw pointers from `Box::into_raw`, as a
    /// mapping is: a `Vec` or `Box` field would be retagged as unique whenever the fixture
    /// moves, which invalidates the table's pointers into it (Stacked Borrows, caught by miri).
    pub(crate) struct Owned<const W: usize> {
        slots: *mut [Slot<W>],
        live: *mut AtomicU64,
        pub table: Table<W>,
    }

    pub(crate) fn owned<const W: usize>(len: usize) -> Owned<W> {
        // SAFETY: an all-zero slot is a FREE slot of atomics.
        let slots: Box<[Slot<W>]> = (0..len).map(|_| unsafe { std::mem::zeroed() }).collect();
        let slots = Box::into_raw(slots);
        let live = Box::into_raw(Box::new(AtomicU64::new(0)));
        // SAFETY: both allocations are freed only by `Owned::drop`, after the last use of the
        // table, which is borrowed from the same `Owned`.
        let table = unsafe { Table::new(slots.cast::<Slot<W>>(), len, live) };
        Owned { slots, live, table }
    }

    impl<const W: usize> Drop for Owned<W> {
        fn drop(&mut self) {
            // SAFETY: both came from `Box::into_raw` in `owned` and are freed once, here; the
            // table field, dropped next, holds no drop glue that touches them.
            unsafe {
                drop(Box::from_raw(self.slots));
                drop(Box::from_raw(self.live));
            }
        }
    }

    const NOW: Now = Now {
        monotonic_ns: 1_000,
        wall_ns: 0,
    };

    fn rate(_: u32) -> Option<CellKind> {
        Some(CellKind::Rate)
    }

    fn insert<const W: usize>(table: &Table<W>, key: &Key) -> usize {
        match table.find_or_insert(key, NOW, &rate).unwrap() {
            Outcome::Found(i) => i,
            Outcome::Full => panic!("full"),
        }
    }

    /// The packing and hash are part of the layout: every process must compute them alike.
    #[test]
    fn keys_pack_into_zero_padded_little_endian_words() {
        // Under miri, every length near a word boundary and a few between (all 256 take minutes).
        let lengths = (0..=255usize).filter(|len| !cfg!(miri) || len % 8 <= 1 || len % 8 == 7 || len % 37 == 0);
        for len in lengths {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            let key = Key::new(3, &bytes, 0x5EED, u64::MAX);
            let mut words = [0u64; LONG_KEY_WORDS];
            let mut hash = 0x5EED ^ (((3u32 << 8) | len as u32) as u64).wrapping_mul(0xA076_1D64_78BD_642F);
            for (w, chunk) in bytes.chunks(8).enumerate() {
                let mut buf = [0u8; 8];
                buf[..chunk.len()].copy_from_slice(chunk);
                words[w] = u64::from_le_bytes(buf);
                hash = folded_multiply(hash ^ words[w], 0xE703_7ED1_A0B4_28DB);
            }
            assert!(
                (0..LONG_KEY_WORDS).all(|w| w >= key.word_count() || key.word(w) == words[w]),
                "{len} bytes"
            );
            assert_eq!(key.hash, mix(hash), "{len} bytes");
            assert_eq!(key.word_count(), len.div_ceil(8));
        }
    }

    #[test]
    fn colliding_keys_get_their_own_cells() {
        let owned = owned::<SHORT_KEY_WORDS>(64);
        let table = &owned.table;
        // Mask 0: every key hashes to slot 0 with tag 0.
        let names: Vec<String> = (0..40).map(|n| format!("k{n}")).collect();
        let keys: Vec<Key> = names.iter().map(|name| Key::new(1, name.as_bytes(), 7, 0)).collect();
        for (n, key) in keys.iter().enumerate() {
            // A value in the future: an empty (0) rate cell counts as expired and is reclaimed.
            table.cell(insert(table, key)).store(n as u64 + 2000, SeqCst);
        }
        for (n, key) in keys.iter().enumerate() {
            let i = table.find(key).unwrap().unwrap();
            assert_eq!(table.cell(i).load(SeqCst), n as u64 + 2000);
            assert_eq!(insert(table, key), i, "a second insert finds the first");
        }
        // Same bytes in another scope is another key.
        let other_scope = Key::new(2, b"k0", 7, 0);
        assert!(table.find(&other_scope).unwrap().is_none());
    }

    #[test]
    fn a_full_window_is_reported_and_expired_slots_are_reused() {
        let owned = owned::<SHORT_KEY_WORDS>(8);
        let table = &owned.table;
        let names: Vec<String> = (0..8).map(|n| format!("k{n}")).collect();
        let keys: Vec<Key> = names.iter().map(|name| Key::new(1, name.as_bytes(), 7, 0)).collect();
        for key in &keys {
            let i = insert(table, key);
            table.cell(i).store(5_000, SeqCst); // TAT in the future: live
            table.unpin(i);
        }
        let extra = Key::new(1, b"extra", 7, 0);
        assert!(matches!(
            table.find_or_insert(&extra, NOW, &rate).unwrap(),
            Outcome::Full
        ));
        // One expires: its slot is reclaimed (tombstoned first) and reused.
        let i3 = table.find(&keys[3]).unwrap().unwrap();
        table.cell(i3).store(10, SeqCst);
        table.unpin(i3);
        let i = insert(table, &extra);
        assert_eq!(i, i3);
        assert_eq!(table.cell(i).load(SeqCst), 0);
        assert!(table.find(&keys[3]).unwrap().is_none());
        assert_eq!(table.live_count(), 8);
    }

    #[test]
    fn a_held_slot_is_not_reclaimed_until_released() {
        let owned = owned::<SHORT_KEY_WORDS>(8);
        let table = &owned.table;
        let old = Key::new(1, b"old", 7, 0);
        let i = insert(table, &old); // keep the pin, like a reservation holding a handle
        table.cell(i).store(10, SeqCst); // expired
        for n in 0..7 {
            let j = insert(table, &Key::new(1, format!("n{n}").as_bytes(), 7, 0));
            table.cell(j).store(5_000, SeqCst);
            table.unpin(j);
        }
        // The expired slot is held by a handle: it is left alone, so the table is full.
        let new = Key::new(1, b"new", 7, 0);
        assert!(matches!(table.find_or_insert(&new, NOW, &rate).unwrap(), Outcome::Full));
        assert_eq!(table.cell(i).load(SeqCst), 10, "the handle's cell is untouched");
        // Released, it is reclaimed (tombstoned first) and takes the new key.
        table.unpin(i);
        assert_eq!(insert(table, &new), i);
        assert!(table.find(&old).unwrap().is_none());
    }

    #[test]
    fn an_unpinned_update_writes_the_live_cell_and_leaves_no_pin() {
        let owned = owned::<SHORT_KEY_WORDS>(8);
        let table = &owned.table;
        let key = Key::new(1, b"key", 7, 0);
        assert_eq!(
            table.update_unpinned(&key, &mut |v| Update::Write(v + 1, v)),
            None,
            "absent: pinned path"
        );
        let i = insert(table, &key);
        table.cell(i).store(5_000, SeqCst);
        table.unpin(i);
        if !head_cas::supported() {
            // Without the double-width compare-and-swap (an old CPU, or miri) every update is
            // sent to the pinned path, and touches neither the cell nor the pins.
            assert_eq!(table.update_unpinned(&key, &mut |v| Update::Write(v + 1, v)), None);
            assert_eq!(table.update_unpinned(&key, &mut |v| Update::<u64>::Keep(v)), None);
            assert_eq!(table.cell(i).load(SeqCst), 5_000);
            assert_eq!(word::pins(table.slot(i).state.load(SeqCst)), 0);
            return;
        }
        assert_eq!(
            table.update_unpinned(&key, &mut |v| Update::Write(v + 1, v)),
            Some(5_000)
        );
        assert_eq!(
            table.update_unpinned(&key, &mut |v| Update::<u64>::Keep(v)),
            Some(5_001)
        );
        assert_eq!(table.cell(i).load(SeqCst), 5_001);
        assert_eq!(word::pins(table.slot(i).state.load(SeqCst)), 0);
        table.cell(i).store(TOMBSTONE, SeqCst);
        assert_eq!(
            table.update_unpinned(&key, &mut |v| Update::Write(v + 1, v)),
            None,
            "a reclaim: pinned path"
        );
    }

    /// Between the look and the write, the slot is reclaimed and given to another key with the
    /// same tag, no pins and the very cell value read: the write and a denial must both fail.
    #[test]
    fn an_unpinned_update_never_lands_on_the_next_life_of_its_slot() {
        if !head_cas::supported() {
            return;
        }
        let owned = owned::<SHORT_KEY_WORDS>(1);
        let table = &owned.table;
        // Mask 0: both keys hash to slot 0 with tag 0.
        let (first, second) = (Key::new(1, b"first", 7, 0), Key::new(1, b"second", 7, 0));
        let expired = 10;
        let i = insert(table, &first);
        table.cell(i).store(expired, SeqCst);
        table.unpin(i);
        let hand_over = |value: u64, to: &Key, from: &Key| {
            let j = insert(table, to);
            assert_eq!(j, i, "the one slot is reclaimed for the new key");
            assert!(table.find(from).unwrap().is_none());
            table.cell(j).store(value, SeqCst);
            table.unpin(j);
        };
        let written = table.update_unpinned(&first, &mut |value| {
            hand_over(value, &second, &first);
            Update::Write(value + 100, ())
        });
        assert_eq!(written, None);
        assert_eq!(table.cell(i).load(SeqCst), expired, "the new key's cell is untouched");
        let kept = table.update_unpinned(&second, &mut |value| {
            hand_over(value, &first, &second);
            Update::Keep(value)
        });
        assert_eq!(kept, None, "a value judged in another life is not answered");
    }

    #[test]
    fn racing_inserts_of_one_key_agree_on_one_slot() {
        let owned = owned::<SHORT_KEY_WORDS>(128);
        let table = &owned.table;
        for round in 0..if cfg!(miri) { 8 } else { 300 } {
            // Fill some slots, free some, so that claims land at different distances.
            let name = format!("race{round}");
            let key = Key::new(1, name.as_bytes(), 7, 0);
            let found: Vec<usize> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4).map(|_| s.spawn(|| insert(table, &key))).collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(found.iter().all(|&i| i == found[0]), "round {round}: {found:?}");
            table
                .cell(found[0])
                .store(if round % 5 == 0 { 5_000 } else { 10 }, SeqCst);
            for &i in &found {
                table.unpin(i);
            }
        }
    }
}
