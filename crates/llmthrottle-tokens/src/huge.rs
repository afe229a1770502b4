//! A fixed-size array backed by transparent huge pages where the OS allows it.
//!
//! The vocabulary tables are a few MB of randomly probed slots; with 4 KB pages nearly every
//! probe also misses the TLB. Asking for 2 MB pages (`MADV_HUGEPAGE`; Linux's default THP mode
//! is "madvise") removes most of those misses. Elsewhere this is a plain aligned allocation.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ops::{Deref, DerefMut};

const HUGE_PAGE: usize = 2 << 20;

pub(crate) struct HugeSlice<T: Copy> {
    ptr: *mut T,
    len: usize,
    layout: Layout,
}

// SAFETY: HugeSlice owns its elements like a Box<[T]>.
unsafe impl<T: Copy + Send> Send for HugeSlice<T> {}
// SAFETY: shared access only reads, like &[T].
unsafe impl<T: Copy + Sync> Sync for HugeSlice<T> {}

impl<T: Copy> HugeSlice<T> {
    /// `len` copies of `value`.
    pub(crate) fn filled(len: usize, value: T) -> Self {
        let bytes = (len.max(1) * std::mem::size_of::<T>()).max(1);
        let align = if bytes >= HUGE_PAGE {
            HUGE_PAGE
        } else {
            std::mem::align_of::<T>()
        };
        let size = bytes.next_multiple_of(align);
        let layout = Layout::from_size_align(size, align).expect("valid layout");
        // SAFETY: size is non-zero.
        let ptr = unsafe { alloc(layout) } as *mut T;
        if ptr.is_null() {
            handle_alloc_error(layout);
        }
        #[cfg(target_os = "linux")]
        if align == HUGE_PAGE {
            // SAFETY: the range is our own fresh allocation; the advice is only a hint.
            unsafe { libc::madvise(ptr.cast(), size, libc::MADV_HUGEPAGE) };
        }
        for i in 0..len {
            // SAFETY: i < len and the allocation holds len elements.
            unsafe { ptr.add(i).write(value) };
        }
        HugeSlice { ptr, len, layout }
    }
}

impl<T: Copy> Deref for HugeSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: ptr holds len initialised elements for the lifetime of self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<T: Copy> DerefMut for HugeSlice<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in deref, and &mut self is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<T: Copy> Drop for HugeSlice<T> {
    fn drop(&mut self) {
        // SAFETY: allocated in `filled` with this layout.
        unsafe { dealloc(self.ptr.cast(), self.layout) };
    }
}
