//! The first page of a shared table: what it is, which build laid it out, on which boot and
//! for which pid namespace it was made, and where its regions start.
//!
//! Everything but the two live counters is written once, by the creator, before the file
//! appears under its name, and never changes after; attachers validate it all before they
//! touch anything else, so a foreign, truncated or older file is refused instead of misread.

use std::sync::atomic::AtomicU64;

use crate::error::{CoreError, Result};

use super::lease::LEASE_RECORD_BYTES;
use super::scopes::{SCOPE_ENTRIES, SCOPE_ENTRY_BYTES};
use super::table::{LongSlot, ShortSlot};

pub(crate) const MAGIC: [u8; 8] = *b"LLMTHRTL";
/// Bump on any change to the header, a slot, a state word, the hash or a lease record.
pub(crate) const LAYOUT_VERSION: u32 = 2;
pub(crate) const HEADER_BYTES: usize = 4096;
const REGION_ALIGN: u64 = 4096;

/// Slots per key the table is sized for: linear probing stays short at two-thirds load.
const SLOTS_PER_KEY: (u64, u64) = (3, 2);
/// By default, one key in this many is expected to be longer than a short slot holds.
const KEYS_PER_LONG_KEY: u64 = 16;
pub(crate) const MAX_CAPACITY: u64 = 1 << 31;
pub(crate) const MAX_LEASES: u64 = 1 << 24;

#[repr(C)]
pub(crate) struct Header {
    pub magic: [u8; 8],
    pub layout_version: u32,
    pub header_bytes: u32,
    pub short_slot_bytes: u32,
    pub long_slot_bytes: u32,
    pub scope_entry_bytes: u32,
    pub lease_record_bytes: u32,
    pub capacity: u64,
    pub long_key_capacity: u64,
    pub short_slots: u64,
    pub long_slots: u64,
    pub lease_records: u64,
    pub scope_entries: u64,
    pub scope_offset: u64,
    pub lease_offset: u64,
    pub short_offset: u64,
    pub long_offset: u64,
    pub file_bytes: u64,
    pub boot_id: [u8; 16],
    /// Inode of the creator's pid namespace (0 when unknown).
    pub pid_namespace: u64,
    pub hash_seed: u64,
    /// All-ones in production; tests narrow it to force hash collisions.
    pub hash_mask: u64,
    /// Random, names this table instance (a re-created table gets a new one).
    pub table_id: u64,
    pub created_wall_ns: u64,
    pub creator_pid: u64,
    /// Approximate live entries (a process killed mid-update may leave them off by one).
    pub short_live: AtomicU64,
    pub long_live: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_BYTES);

/// Sizes and offsets of every region, computed from the requested sizes alone, so that an
/// attacher can check a header against what this build would have laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub capacity: u64,
    pub long_key_capacity: u64,
    pub short_slots: u64,
    pub long_slots: u64,
    pub lease_records: u64,
    pub scope_offset: u64,
    pub lease_offset: u64,
    pub short_offset: u64,
    pub long_offset: u64,
    pub file_bytes: u64,
}

fn align(n: u64) -> u64 {
    n.div_ceil(REGION_ALIGN) * REGION_ALIGN
}

impl Layout {
    /// `long_key_capacity`: keys of more than 40 bytes the table is sized for (`None`: a
    /// sixteenth of `capacity`).
    pub(crate) fn new(capacity: u64, long_key_capacity: Option<u64>, lease_records: u64) -> Result<Layout> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(CoreError::Config(format!(
                "capacity must be between 1 and {MAX_CAPACITY} keys, not {capacity}"
            )));
        }
        let long_key_capacity = long_key_capacity.unwrap_or((capacity / KEYS_PER_LONG_KEY).max(1));
        if long_key_capacity == 0 || long_key_capacity > MAX_CAPACITY {
            return Err(CoreError::Config(format!(
                "long key capacity must be between 1 and {MAX_CAPACITY} keys, not {long_key_capacity}"
            )));
        }
        if lease_records == 0 || lease_records > MAX_LEASES {
            return Err(CoreError::Config(format!(
                "lease capacity must be between 1 and {MAX_LEASES}, not {lease_records}"
            )));
        }
        let slots_for = |keys: u64| (keys * SLOTS_PER_KEY.0).div_ceil(SLOTS_PER_KEY.1).max(8);
        let (short_slots, long_slots) = (slots_for(capacity), slots_for(long_key_capacity));
        let scope_offset = HEADER_BYTES as u64;
        let lease_offset = align(scope_offset + SCOPE_ENTRIES as u64 * SCOPE_ENTRY_BYTES as u64);
        let short_offset = align(lease_offset + lease_records * LEASE_RECORD_BYTES as u64);
        let long_offset = align(short_offset + short_slots * std::mem::size_of::<ShortSlot>() as u64);
        let file_bytes = align(long_offset + long_slots * std::mem::size_of::<LongSlot>() as u64);
        Ok(Layout {
            capacity,
            long_key_capacity,
            short_slots,
            long_slots,
            lease_records,
            scope_offset,
            lease_offset,
            short_offset,
            long_offset,
            file_bytes,
        })
    }
}

/// What this process is: compared with a header to tell whether the table is usable here.
pub(crate) struct Host {
    pub boot_id: [u8; 16],
    pub pid_namespace: u64,
}

impl Host {
    pub(crate) fn current() -> Host {
        Host {
            boot_id: boot_id(),
            pid_namespace: pid_namespace(),
        }
    }
}

/// The kernel's random id of this boot; cells hold `CLOCK_MONOTONIC` times, which restart at boot.
fn boot_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        let hex: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        for (i, pair) in hex.chunks(2).take(16).enumerate() {
            let digits = std::str::from_utf8(pair).unwrap_or("0");
            id[i] = u8::from_str_radix(digits, 16).unwrap_or(0);
        }
    }
    id
}

fn pid_namespace() -> u64 {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .and_then(|link| {
            let text = link.to_string_lossy().into_owned();
            let digits: String = text.chars().filter(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or(0)
}

pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: the buffer is valid for 8 writable bytes.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == 8 {
        return u64::from_ne_bytes(bytes);
    }
    // No getrandom: time and pid are unique enough for a seed that only spreads keys.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    super::table::mix(now ^ ((super::process::pid() as u64) << 32))
}

/// Why an existing file cannot be attached.
pub(crate) enum Refusal {
    /// From an earlier boot: its times are meaningless now, so it is safe to replace.
    EarlierBoot,
    /// Anything else: the message says what and what to do.
    Unusable(String),
}

impl Header {
    pub(crate) fn write_new(&mut self, layout: &Layout, host: &Host, hash_mask: u64) {
        self.magic = MAGIC;
        self.layout_version = LAYOUT_VERSION;
        self.header_bytes = HEADER_BYTES as u32;
        self.short_slot_bytes = std::mem::size_of::<ShortSlot>() as u32;
        self.long_slot_bytes = std::mem::size_of::<LongSlot>() as u32;
        self.scope_entry_bytes = SCOPE_ENTRY_BYTES as u32;
        self.lease_record_bytes = LEASE_RECORD_BYTES as u32;
        self.capacity = layout.capacity;
        self.long_key_capacity = layout.long_key_capacity;
        self.short_slots = layout.short_slots;
        self.long_slots = layout.long_slots;
        self.lease_records = layout.lease_records;
        self.scope_entries = SCOPE_ENTRIES as u64;
        self.scope_offset = layout.scope_offset;
        self.lease_offset = layout.lease_offset;
        self.short_offset = layout.short_offset;
        self.long_offset = layout.long_offset;
        self.file_bytes = layout.file_bytes;
        self.boot_id = host.boot_id;
        self.pid_namespace = host.pid_namespace;
        self.hash_seed = random_u64();
        self.hash_mask = hash_mask;
        self.table_id = random_u64();
        self.created_wall_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        self.creator_pid = super::process::pid() as u64;
    }

    /// Checks every field against this build and host; `file_bytes` is the file's real size.
    pub(crate) fn validate(&self, file_bytes: u64, host: &Host) -> std::result::Result<Layout, Refusal> {
        let unusable = |why: String| Refusal::Unusable(why);
        if self.magic != MAGIC {
            return Err(unusable(
                "it is not an llmthrottle shared table (wrong magic bytes); remove it or choose another name".into(),
            ));
        }
        if self.layout_version != LAYOUT_VERSION {
            return Err(unusable(format!(
                "it was laid out by another llmthrottle version (layout {}, this build reads layout {LAYOUT_VERSION}); \
                 stop every process using it, then run `llmthrottle state reset NAME`",
                self.layout_version
            )));
        }
        // Same version, so the sizes must agree; a mismatch is corruption or a hand-made file.
        let sizes = (
            self.header_bytes as usize,
            self.short_slot_bytes as usize,
            self.long_slot_bytes as usize,
            self.scope_entry_bytes as usize,
            self.lease_record_bytes as usize,
            self.scope_entries as usize,
        );
        let expected_sizes = (
            HEADER_BYTES,
            std::mem::size_of::<ShortSlot>(),
            std::mem::size_of::<LongSlot>(),
            SCOPE_ENTRY_BYTES,
            LEASE_RECORD_BYTES,
            SCOPE_ENTRIES,
        );
        let corrupt = || {
            unusable(
                "its header is corrupt (sizes disagree with its layout version); run `llmthrottle state reset NAME`"
                    .into(),
            )
        };
        if sizes != expected_sizes {
            return Err(corrupt());
        }
        let layout =
            Layout::new(self.capacity, Some(self.long_key_capacity), self.lease_records).map_err(|_| corrupt())?;
        let recorded = Layout {
            capacity: self.capacity,
            long_key_capacity: self.long_key_capacity,
            short_slots: self.short_slots,
            long_slots: self.long_slots,
            lease_records: self.lease_records,
            scope_offset: self.scope_offset,
            lease_offset: self.lease_offset,
            short_offset: self.short_offset,
            long_offset: self.long_offset,
            file_bytes: self.file_bytes,
        };
        if recorded != layout {
            return Err(corrupt());
        }
        if file_bytes < layout.file_bytes {
            return Err(unusable(format!(
                "it is truncated: {file_bytes} bytes where its header needs {}; run `llmthrottle state reset NAME`",
                layout.file_bytes
            )));
        }
        if self.boot_id != host.boot_id {
            return Err(Refusal::EarlierBoot);
        }
        if self.pid_namespace != 0 && host.pid_namespace != 0 && self.pid_namespace != host.pid_namespace {
            return Err(unusable(
                "it was created in another pid namespace (another container?); processes sharing a table \
                 must see each other's pids, so give each namespace its own table"
                    .into(),
            ));
        }
        Ok(layout)
    }
}
