//! The scope registry: every limit's label, interned once per table, so that a slot names its
//! scope with a small id instead of the label (which can be long) or a hash of it (not exact).
//!
//! Entries are filled in order and never freed: EMPTY → CLAIMING(pid) → LIVE. A registrant
//! walks from the first entry, waiting on each CLAIMING one until it is LIVE (or its owner is
//! found dead, when it goes back to EMPTY), and claims the first EMPTY entry. So two processes
//! registering one label always meet on the same entry: a label is registered at most once.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use crate::calendar::Period;
use crate::error::{CoreError, Result};
use crate::limit::CellKind;

use super::process::{self, Patience, Waited};

pub(crate) const SCOPE_ENTRIES: usize = 1024;
pub(crate) const SCOPE_ENTRY_BYTES: usize = 1024;
const LABEL_WORDS: usize = (SCOPE_ENTRY_BYTES - 32) / 8;
/// Longest label (namespace, rule pattern, kind and dimension) a table can hold.
pub(crate) const MAX_LABEL_BYTES: usize = LABEL_WORDS * 8;

const EMPTY: u64 = 0;
const CLAIMING: u64 = 1 << 62;
const LIVE: u64 = 2 << 62;

#[repr(C, align(64))]
pub(crate) struct ScopeEntry {
    state: AtomicU64,
    kind: AtomicU64,
    period_ns: AtomicU64,
    len: AtomicU64,
    label: [AtomicU64; LABEL_WORDS],
}

const _: () = assert!(std::mem::size_of::<ScopeEntry>() == SCOPE_ENTRY_BYTES);

fn encode(kind: CellKind) -> (u64, u64) {
    match kind {
        CellKind::Rate => (1, 0),
        CellKind::Concurrency => (2, 0),
        CellKind::Quota(Period::Day) => (3, 0),
        CellKind::Quota(Period::Week) => (4, 0),
        CellKind::Quota(Period::Month) => (5, 0),
        CellKind::Quota(Period::Fixed(ns)) => (6, ns),
    }
}

fn decode(code: u64, period_ns: u64) -> Option<CellKind> {
    Some(match code {
        1 => CellKind::Rate,
        2 => CellKind::Concurrency,
        3 => CellKind::Quota(Period::Day),
        4 => CellKind::Quota(Period::Week),
        5 => CellKind::Quota(Period::Month),
        6 if period_ns > 0 => CellKind::Quota(Period::Fixed(period_ns)),
        _ => return None,
    })
}

fn pack(label: &[u8]) -> Vec<u64> {
    label
        .chunks(8)
        .map(|chunk| {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            u64::from_le_bytes(buf)
        })
        .collect()
}

pub(crate) struct Scopes {
    entries: *const ScopeEntry,
}

// SAFETY: shared memory accessed only through atomics, inside a mapping that outlives the view.
unsafe impl Send for Scopes {}
// SAFETY: as above.
unsafe impl Sync for Scopes {}

impl Scopes {
    /// # Safety
    /// `entries` must point at SCOPE_ENTRIES entries inside a mapping that outlives this view.
    pub(crate) unsafe fn new(entries: *const ScopeEntry) -> Self {
        Scopes { entries }
    }

    fn entry(&self, index: usize) -> &ScopeEntry {
        debug_assert!(index < SCOPE_ENTRIES);
        // SAFETY: index is in range and the entries stay mapped (see `new`).
        unsafe { &*self.entries.add(index) }
    }

    fn matches(&self, entry: &ScopeEntry, kind: (u64, u64), words: &[u64], len: usize) -> bool {
        entry.kind.load(SeqCst) == kind.0
            && entry.period_ns.load(SeqCst) == kind.1
            && entry.len.load(SeqCst) == len as u64
            && words.iter().enumerate().all(|(i, w)| entry.label[i].load(SeqCst) == *w)
    }

    /// The id (1-based) of the scope `label` of `kind`, registering it if new.
    pub(crate) fn register(&self, label: &str, kind: CellKind) -> Result<u32> {
        if label.len() > MAX_LABEL_BYTES {
            return Err(CoreError::Config(format!(
                "limit label {label:?} is {} bytes; shared state holds at most {MAX_LABEL_BYTES} \
                 (shorten the namespace or the rule pattern)",
                label.len()
            )));
        }
        let words = pack(label.as_bytes());
        let code = encode(kind);
        let mut patience = Patience::new();
        let mut index = 0;
        while index < SCOPE_ENTRIES {
            let entry = self.entry(index);
            let state = entry.state.load(SeqCst);
            match state & (3 << 62) {
                EMPTY if state != EMPTY => {
                    // No process writes such a word: the file was damaged.
                    return Err(CoreError::State(format!(
                        "limit registry entry {index} of the shared table is damaged (state {state:#x}); \
                         run `llmthrottle state reset NAME` to start afresh"
                    )));
                }
                EMPTY => {
                    let claim = CLAIMING | process::pid() as u64;
                    if entry.state.compare_exchange(EMPTY, claim, SeqCst, SeqCst).is_ok() {
                        entry.kind.store(code.0, SeqCst);
                        entry.period_ns.store(code.1, SeqCst);
                        entry.len.store(label.len() as u64, SeqCst);
                        for (i, w) in words.iter().enumerate() {
                            entry.label[i].store(*w, SeqCst);
                        }
                        entry.state.store(LIVE, SeqCst);
                        return Ok(index as u32 + 1);
                    }
                }
                CLAIMING => {
                    let owner = (state & 0xFFFF_FFFF) as u32;
                    let waited = patience.pause(|| {
                        format!("limit registry entry {index} of the shared table has been half-written by pid {owner}")
                    })?;
                    if matches!(waited, Waited::Suspect) && !process::is_alive(owner) {
                        // Never published, so nobody walked past it: as if never claimed.
                        let _ = entry.state.compare_exchange(state, EMPTY, SeqCst, SeqCst);
                    }
                }
                _ => {
                    if self.matches(entry, code, &words, label.len()) {
                        return Ok(index as u32 + 1);
                    }
                    index += 1;
                }
            }
        }
        Err(CoreError::State(format!(
            "the shared table's limit registry is full ({SCOPE_ENTRIES} distinct limits); \
             run `llmthrottle state reset NAME` to start afresh"
        )))
    }

    /// The kind of scope `id`, if registered.
    pub(crate) fn kind(&self, id: u32) -> Option<CellKind> {
        let entry = self.live_entry(id)?;
        decode(entry.kind.load(SeqCst), entry.period_ns.load(SeqCst))
    }

    /// The label of scope `id`, if registered.
    pub(crate) fn label(&self, id: u32) -> Option<String> {
        let entry = self.live_entry(id)?;
        let len = (entry.len.load(SeqCst) as usize).min(MAX_LABEL_BYTES);
        let mut bytes = Vec::with_capacity(len + 8);
        for w in 0..len.div_ceil(8) {
            bytes.extend_from_slice(&entry.label[w].load(SeqCst).to_le_bytes());
        }
        bytes.truncate(len);
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn live_entry(&self, id: u32) -> Option<&ScopeEntry> {
        let index = (id as usize).checked_sub(1).filter(|i| *i < SCOPE_ENTRIES)?;
        let entry = self.entry(index);
        (entry.state.load(SeqCst) == LIVE).then_some(entry)
    }

    /// Number of registered scopes.
    pub(crate) fn count(&self) -> usize {
        (0..SCOPE_ENTRIES)
            .take_while(|&i| self.entry(i).state.load(SeqCst) != EMPTY)
            .count()
    }
}
