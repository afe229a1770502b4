//! Who holds the units of concurrency caps, so that a process killed mid-call gives its units
//! back instead of leaking them forever.
//!
//! A lease record is one word, `phase | pid | slot`, one per unit held. The count itself stays
//! in the cell (the engine reads it), so taking a unit is two atomic steps, and a process can die
//! between them. The phases make every such moment safe:
//!
//! ```text
//!  take:     FREE ─▶ PENDING(pid) ─[count+1]─▶ HELD(pid)
//!  give:     HELD ─▶ RELEASING(pid) ─[count-1]─▶ FREE
//!  reap:     HELD(dead) ─▶ REAPING(me) ─[count-1]─▶ FREE
//!  unknown:  PENDING / RELEASING / REAPING / RESETTING of a dead pid ─▶ ORPHAN (may hold a unit)
//!  reset:    ORPHAN ─▶ RESETTING(me) ─[count := 0 if nothing else holds the cell]─▶ FREE
//! ```
//!
//! Invariants:
//! - Every unit in a count has a non-FREE record (written before the count goes up, freed only
//!   after it went down), so a record-less cell holds no live unit.
//! - A HELD record of a dead pid holds exactly one unit: it is given back at once.
//! - An ORPHAN may or may not hold one (its owner died between a record step and a count step):
//!   it is never guessed at, which would over-admit or leak. Instead, once a cell has orphans and
//!   no record of a live process, every unit in it is an orphan's, so the count is set to zero;
//!   that compare-and-swap fails if any process took or gave a unit meanwhile. The cost is a leak
//!   of at most one unit per orphan, until the first moment no live process holds that cell.
//! - Each non-FREE record stands for one pin its holder took on the cell's slot; whoever frees a
//!   dead holder's record drops that pin for it.

use std::cell::Cell as ThreadCell;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Mutex;

use crate::error::CoreError;
use crate::limit::TOMBSTONE;

use super::process;

pub(crate) const LEASE_RECORD_BYTES: usize = 8;

const FREE: u64 = 0;
const PENDING: u64 = 1;
const HELD: u64 = 2;
const RELEASING: u64 = 3;
const REAPING: u64 = 4;
const ORPHAN: u64 = 5;
const RESETTING: u64 = 6;

/// A slot of the short or long table, as a lease names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SlotRef {
    pub long: bool,
    pub index: u32,
}

fn make(phase: u64, pid: u32, at: SlotRef) -> u64 {
    (phase << 61) | ((at.long as u64) << 60) | ((pid as u64) << 32) | at.index as u64
}

fn phase(w: u64) -> u64 {
    w >> 61
}

fn pid(w: u64) -> u32 {
    ((w >> 32) & ((1 << process::PID_BITS) - 1)) as u32
}

fn slot(w: u64) -> SlotRef {
    SlotRef {
        long: (w >> 60) & 1 == 1,
        index: w as u32,
    }
}

pub(crate) fn phase_name(w: u64) -> &'static str {
    match phase(w) {
        PENDING => "pending",
        HELD => "held",
        RELEASING => "releasing",
        REAPING => "reaping",
        ORPHAN => "orphan",
        RESETTING => "resetting",
        _ => "free",
    }
}

/// What the lease table needs of the slot table.
pub(crate) trait Slots {
    /// Whether `at` names a slot of the table: a record read from the file may name any.
    fn holds(&self, at: SlotRef) -> bool;
    fn cell(&self, at: SlotRef) -> &AtomicU64;
    fn unpin(&self, at: SlotRef);
}

thread_local! {
    static CURSOR: ThreadCell<usize> = const { ThreadCell::new(usize::MAX) };
}

pub(crate) struct Leases {
    records: *const AtomicU64,
    len: usize,
    /// Resets of one process never run at once (their records look alike: same pid).
    resetting: Mutex<()>,
}

// SAFETY: shared memory accessed only through atomics, inside a mapping that outlives the view.
unsafe impl Send for Leases {}
// SAFETY: as above.
unsafe impl Sync for Leases {}

/// Takes one away from a count, never below zero, leaving a reclaimed (TOMBSTONE) cell alone.
fn decrement(cell: &AtomicU64) {
    let mut current = cell.load(SeqCst);
    while current != TOMBSTONE && current > 0 {
        match cell.compare_exchange(current, current - 1, SeqCst, SeqCst) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

impl Leases {
    /// # Safety
    /// `records` must point at `len` records inside a mapping that outlives this view.
    pub(crate) unsafe fn new(records: *const AtomicU64, len: usize) -> Self {
        Leases {
            records,
            len,
            resetting: Mutex::new(()),
        }
    }

    fn record(&self, r: usize) -> &AtomicU64 {
        debug_assert!(r < self.len);
        // SAFETY: r < len and the records stay mapped (see `new`).
        unsafe { &*self.records.add(r) }
    }

    /// Writes a PENDING record for a unit about to be taken on `at`; `None` when all are in use.
    pub(crate) fn begin(&self, at: SlotRef) -> Option<u32> {
        let pending = make(PENDING, process::pid(), at);
        let start = CURSOR.with(|c| {
            let mut start = c.get();
            if start >= self.len {
                // Spread threads and processes over the table so they rarely race for a record.
                start = (super::table::mix(process::pid() as u64 ^ (c as *const ThreadCell<usize> as u64)) as usize)
                    % self.len;
            }
            start
        });
        for step in 0..self.len {
            let r = (start + step) % self.len;
            let record = self.record(r);
            if record.load(SeqCst) == FREE && record.compare_exchange(FREE, pending, SeqCst, SeqCst).is_ok() {
                CURSOR.with(|c| c.set(r + 1));
                return Some(r as u32);
            }
        }
        None
    }

    /// The unit was taken: the record now holds it.
    pub(crate) fn confirm(&self, r: u32, at: SlotRef) {
        self.record(r as usize).store(make(HELD, process::pid(), at), SeqCst);
    }

    /// The unit was not taken after all.
    pub(crate) fn abandon(&self, r: u32) {
        self.record(r as usize).store(FREE, SeqCst);
    }

    /// Gives back the unit record `r` holds on `cell`.
    pub(crate) fn release(&self, r: u32, at: SlotRef, cell: &AtomicU64) {
        let record = self.record(r as usize);
        let me = process::pid();
        if record
            .compare_exchange(make(HELD, me, at), make(RELEASING, me, at), SeqCst, SeqCst)
            .is_err()
        {
            return; // not ours (any more): nothing to give back
        }
        decrement(cell);
        record.store(FREE, SeqCst);
    }

    /// Gives back the units that dead processes held on `at`; returns how many came back.
    pub(crate) fn reap(&self, at: SlotRef, slots: &dyn Slots) -> u64 {
        let me = process::pid();
        let mut alive: Vec<(u32, bool)> = Vec::new();
        let mut is_alive = |pid: u32| match alive.iter().find(|(p, _)| *p == pid) {
            Some(&(_, known)) => known,
            None => {
                let known = process::is_alive(pid);
                alive.push((pid, known));
                known
            }
        };
        let (mut given, mut orphans, mut busy) = (0u64, 0, 0);
        for r in 0..self.len {
            let record = self.record(r);
            let w = record.load(SeqCst);
            if w == FREE || slot(w) != at {
                continue;
            }
            if phase(w) == ORPHAN {
                orphans += 1;
                continue;
            }
            if is_alive(pid(w)) {
                busy += 1;
                continue;
            }
            if phase(w) == HELD {
                if record
                    .compare_exchange(w, make(REAPING, me, at), SeqCst, SeqCst)
                    .is_ok()
                {
                    decrement(slots.cell(at));
                    record.store(FREE, SeqCst);
                    slots.unpin(at);
                    given += 1;
                } else {
                    busy += 1;
                }
            } else if record.compare_exchange(w, make(ORPHAN, 0, at), SeqCst, SeqCst).is_ok() {
                orphans += 1;
            } else {
                busy += 1;
            }
        }
        if orphans > 0 && busy == 0 {
            // Saturating here and in `reap_all`: a reset gives back whatever count the cell held,
            // and a damaged cell can hold any number.
            given = given.saturating_add(self.reset(at, slots));
        }
        given
    }

    /// Sets the count of `at` to zero if only orphans hold it (see the module comment).
    fn reset(&self, at: SlotRef, slots: &dyn Slots) -> u64 {
        let _one_at_a_time = self.resetting.lock().unwrap_or_else(|e| e.into_inner());
        let mine = make(RESETTING, process::pid(), at);
        let orphan = make(ORPHAN, 0, at);
        let claimed: Vec<usize> = (0..self.len)
            .filter(|&r| self.record(r).compare_exchange(orphan, mine, SeqCst, SeqCst).is_ok())
            .collect();
        if claimed.is_empty() {
            return 0;
        }
        let others = || {
            (0..self.len).any(|r| {
                let w = self.record(r).load(SeqCst);
                w != FREE && slot(w) == at && w != mine
            })
        };
        let cell = slots.cell(at);
        let mut given = None;
        if !others() {
            let value = cell.load(SeqCst);
            if !others() {
                if value == TOMBSTONE || value == 0 {
                    given = Some(0);
                } else if cell.compare_exchange(value, 0, SeqCst, SeqCst).is_ok() {
                    given = Some(value);
                }
            }
        }
        for &r in &claimed {
            if given.is_some() {
                self.record(r).store(FREE, SeqCst);
                slots.unpin(at);
            } else {
                self.record(r).store(orphan, SeqCst);
            }
        }
        given.unwrap_or(0)
    }

    /// Reaps every slot that has a record of a dead process or an orphan; returns units given back.
    pub(crate) fn reap_all(&self, slots: &dyn Slots) -> u64 {
        let mut suspects: Vec<SlotRef> = Vec::new();
        let mut alive: Vec<(u32, bool)> = Vec::new();
        for r in 0..self.len {
            let w = self.record(r).load(SeqCst);
            if w == FREE {
                continue;
            }
            if !slots.holds(slot(w)) {
                // No process writes such a record: the file was damaged. It holds no unit.
                let _ = self.record(r).compare_exchange(w, FREE, SeqCst, SeqCst);
                continue;
            }
            let dead = phase(w) == ORPHAN
                || match alive.iter().find(|(p, _)| *p == pid(w)) {
                    Some(&(_, known)) => !known,
                    None => {
                        let known = process::is_alive(pid(w));
                        alive.push((pid(w), known));
                        !known
                    }
                };
            if dead {
                suspects.push(slot(w));
            }
        }
        suspects.sort();
        suspects.dedup();
        suspects
            .iter()
            .map(|&at| self.reap(at, slots))
            .fold(0, u64::saturating_add)
    }

    /// Every non-free record: (pid, phase name, slot).
    pub(crate) fn records(&self) -> Vec<(u32, &'static str, SlotRef)> {
        (0..self.len)
            .map(|r| self.record(r).load(SeqCst))
            .filter(|&w| w != FREE)
            .map(|w| (pid(w), phase_name(w), slot(w)))
            .collect()
    }

    pub(crate) fn full_error(&self) -> CoreError {
        CoreError::State(format!(
            "all {} concurrency leases of the shared table are in use (calls in flight across every \
             process); reset it and open it with a larger lease_capacity=",
            self.len
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OneCell {
        cell: AtomicU64,
        pins: AtomicU64,
    }

    impl Slots for OneCell {
        fn holds(&self, at: SlotRef) -> bool {
            at == AT
        }
        fn cell(&self, _: SlotRef) -> &AtomicU64 {
            &self.cell
        }
        fn unpin(&self, _: SlotRef) {
            self.pins.fetch_sub(1, SeqCst);
        }
    }

    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    const AT: SlotRef = SlotRef { long: false, index: 3 };

    fn leases(records: &[AtomicU64]) -> Leases {
        // SAFETY: the records outlive the view in every test below.
        unsafe { Leases::new(records.as_ptr(), records.len()) }
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "spawns a process for a dead pid and asks the kernel about it (kill), which miri cannot"
    )]
    fn held_units_of_a_dead_process_come_back_at_once() {
        let records: Vec<AtomicU64> = (0..16).map(|_| AtomicU64::new(0)).collect();
        let leases = leases(&records);
        let dead = dead_pid();
        // Two units held by a dead process, one by us.
        records[1].store(make(HELD, dead, AT), SeqCst);
        records[5].store(make(HELD, dead, AT), SeqCst);
        let mine = leases.begin(AT).unwrap();
        leases.confirm(mine, AT);
        let cell = OneCell {
            cell: AtomicU64::new(3),
            pins: AtomicU64::new(3),
        };
        assert_eq!(leases.reap(AT, &cell), 2);
        assert_eq!(cell.cell.load(SeqCst), 1);
        assert_eq!(cell.pins.load(SeqCst), 1);
        leases.release(mine, AT, &cell.cell);
        assert_eq!(cell.cell.load(SeqCst), 0);
        assert!(leases.records().is_empty());
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "spawns a process for a dead pid and asks the kernel about it (kill), which miri cannot"
    )]
    fn orphans_are_reset_only_when_no_live_process_holds_the_cell() {
        let records: Vec<AtomicU64> = (0..16).map(|_| AtomicU64::new(0)).collect();
        let leases = leases(&records);
        let dead = dead_pid();
        // Died between writing PENDING and raising the count (count 1: it did raise it)...
        records[2].store(make(PENDING, dead, AT), SeqCst);
        // ...and we hold one unit: the orphan cannot be told apart, so it stays.
        let mine = leases.begin(AT).unwrap();
        leases.confirm(mine, AT);
        let cell = OneCell {
            cell: AtomicU64::new(2),
            pins: AtomicU64::new(2),
        };
        assert_eq!(leases.reap(AT, &cell), 0);
        assert_eq!(
            cell.cell.load(SeqCst),
            2,
            "never guessed at while a live holder is there"
        );
        assert_eq!(phase(records[2].load(SeqCst)), ORPHAN);
        leases.release(mine, AT, &cell.cell);
        assert_eq!(cell.cell.load(SeqCst), 1);
        // Now only the orphan is left: the count goes to zero.
        assert_eq!(leases.reap(AT, &cell), 1);
        assert_eq!(cell.cell.load(SeqCst), 0);
        assert_eq!(cell.pins.load(SeqCst), 1);
        assert!(leases.records().is_empty());
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "spawns a process for a dead pid and asks the kernel about it (kill), which miri cannot"
    )]
    fn an_orphan_that_never_raised_the_count_costs_nothing() {
        let records: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
        let leases = leases(&records);
        records[0].store(make(RELEASING, dead_pid(), AT), SeqCst);
        let cell = OneCell {
            cell: AtomicU64::new(0),
            pins: AtomicU64::new(1),
        };
        assert_eq!(leases.reap_all(&cell), 0);
        assert_eq!(cell.cell.load(SeqCst), 0);
        assert_eq!(cell.pins.load(SeqCst), 0);
        assert!(leases.records().is_empty());
        // A record naming a slot the table does not have (a damaged file) is dropped, not followed.
        records[1].store(
            make(
                HELD,
                dead_pid(),
                SlotRef {
                    long: true,
                    index: 0x7FFF_FFFF,
                },
            ),
            SeqCst,
        );
        assert_eq!(leases.reap_all(&cell), 0);
        assert!(leases.records().is_empty());
        // All records in use: begin says so.
        for _ in 0..4 {
            assert!(leases.begin(AT).is_some());
        }
        assert!(leases.begin(AT).is_none());
    }
}
