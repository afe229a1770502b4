//! One compare-and-swap over a slot's first two words, its state and its cell, together.
//!
//! A decision that updates a cell without pinning its slot uses it to make its write conditional
//! on the slot still being in the life it was found in (see `Table::update_unpinned`). Where the
//! instruction is missing, `supported` is false and every update takes the pinned path.
//!
//! The words are also read and written one at a time, by 64-bit atomics: on x86-64 a locked
//! 16-byte compare-and-swap is atomic with respect to those (the two words share a cache line:
//! a slot starts one). Rust has no stable 128-bit atomic, so the instruction is written here.
//!
//! `portable-atomic`'s `AtomicU128` was weighed and not taken, because of what it does where the
//! instruction is not a compile-time target feature (it is not, for `x86_64-unknown-linux-gnu`
//! wheels): it detects the instruction at run time and, without it, falls back to a table of
//! locks (its default `fallback` feature) kept in each process's own memory. A lock private to
//! a process excludes nothing in another process mapping the same table, and a lock placed in
//! the mapping would be left held by a process killed inside it (invariant 5 of `table.rs`).
//! Without `fallback` the type does not exist on that target at all; requiring the feature at
//! compile time would drop CPUs the rest of llmthrottle supports. `is_lock_free()` could gate
//! it as `supported()` gates this, at the cost of a dependency and an indirect call per update
//! on the hot path, for the same one instruction. So: this function, `supported()` detected at
//! run time, and the pinned path (64-bit atomics only) wherever it is false, under miri too.

use super::table::SlotHead;

/// True when this CPU has the instruction (every x86-64 CPU of the last fifteen years does).
/// Never under miri, which runs no inline assembly: there every update takes the pinned path.
#[inline]
pub(crate) fn supported() -> bool {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        std::arch::is_x86_feature_detected!("cmpxchg16b")
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    {
        false
    }
}

/// Replaces `[state, cell]` of `head` by `new` if they are `expected`; otherwise returns what
/// they are. Only to be called when `supported()`.
///
/// # Safety
/// `head` points at a live slot head, 16-byte aligned.
#[inline]
pub(crate) unsafe fn compare_exchange(
    head: *const SlotHead,
    expected: [u64; 2],
    new: [u64; 2],
) -> Result<(), [u64; 2]> {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        let (state, cell): (u64, u64);
        // SAFETY: the caller's contract, and `supported()`. `rbx` cannot be named as an
        // operand, so the new state's word passes through another register and `rbx` is
        // restored. The address is pinned to `rsi`: left to the allocator, it may be given
        // `rbx` itself, which the exchange would overwrite.
        unsafe {
            std::arch::asm!(
                "xchg {new_state}, rbx",
                "lock cmpxchg16b xmmword ptr [rsi]",
                "mov rbx, {new_state}",
                in("rsi") head,
                new_state = inout(reg) new[0] => _,
                in("rcx") new[1],
                inout("rax") expected[0] => state,
                inout("rdx") expected[1] => cell,
                options(nostack),
            );
        }
        if [state, cell] == expected {
            Ok(())
        } else {
            Err([state, cell])
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    {
        let _ = (head, expected, new);
        unreachable!("compare_exchange without supported()")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

    use super::*;

    #[test]
    fn swaps_both_words_only_when_both_match() {
        if !supported() {
            return;
        }
        #[repr(C, align(64))]
        struct Line(SlotHead);
        let line = Line(SlotHead {
            state: AtomicU64::new(1),
            cell: AtomicU64::new(2),
        });
        let head = &line.0 as *const SlotHead;
        // SAFETY: `head` is aligned and lives through the calls.
        unsafe {
            assert_eq!(compare_exchange(head, [1, 3], [9, 9]), Err([1, 2]), "cell differs");
            assert_eq!(compare_exchange(head, [4, 2], [9, 9]), Err([1, 2]), "state differs");
            assert_eq!(compare_exchange(head, [1, 2], [1, 7]), Ok(()));
        }
        assert_eq!((line.0.state.load(SeqCst), line.0.cell.load(SeqCst)), (1, 7));
    }
}
