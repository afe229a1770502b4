//! A per-thread memo of the token counts of short pieces.
//!
//! Counting is bound by memory latency: the vocabulary tables (several MB) do not fit in L2, so
//! each lookup of a piece, and each of the lookups a merge makes, waits on a cache miss. Text
//! is Zipfian (a few thousand distinct words make most of it) and repeats its rare words
//! (identifiers in code, names in prose): on a mixed corpus ~14% of o200k pieces need merging and
//! two thirds of those are repeats. A direct-mapped table small enough for L2 (a new piece simply
//! evicts the old one in its slot) answers most pieces in one cheap probe. Counts are a pure
//! function of (encoding, piece), so a stale entry is impossible.

use std::cell::RefCell;

use crate::vocab::{pack, SHORT_MAX};

const SLOTS: usize = 65536;

pub(crate) struct CountCache {
    keys: Box<[(u64, u64)]>,
    /// `count | len << 8 | encoding tag << 16`; 0 is empty (a cached piece has len >= 2).
    values: Box<[u32]>,
}

thread_local! {
    static CACHE: RefCell<CountCache> = RefCell::new(CountCache {
        keys: vec![(0, 0); SLOTS].into_boxed_slice(),
        values: vec![0; SLOTS].into_boxed_slice(),
    });
}

/// Runs `f` with this thread's cache.
pub(crate) fn with_cache<R>(f: impl FnOnce(&mut CountCache) -> R) -> R {
    CACHE.with(|cache| f(&mut cache.borrow_mut()))
}

impl CountCache {
    /// The count of `piece` under the encoding `tag` (1..=255), computed by `count` on a miss.
    #[inline(always)]
    pub(crate) fn get_or_insert(&mut self, tag: u8, piece: &[u8], count: impl FnOnce() -> usize) -> usize {
        if piece.len() > SHORT_MAX {
            return count();
        }
        let key = pack(piece);
        let meta = (piece.len() as u32) << 8 | (tag as u32) << 16;
        let mixed = (key.0 ^ key.1.rotate_left(31) ^ meta as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let slot = (mixed >> (64 - SLOTS.trailing_zeros())) as usize;
        let value = self.values[slot];
        if value & !0xFF == meta && self.keys[slot] == key {
            return (value & 0xFF) as usize;
        }
        let n = count();
        // Pieces of at most 16 bytes have at most 16 tokens, so the count fits its 8 bits.
        self.keys[slot] = key;
        self.values[slot] = meta | n as u32;
        n
    }
}
