//! A value that is replaced rarely and read on every decision, read with one plain load.
//!
//! Every version ever stored stays allocated until the `Versioned` itself is dropped, so a
//! reader holding `&T` can never see it freed, and a read needs no atomic read-modify-write.
//! `arc_swap` was tried first: its guard costs two locked instructions per read, about a tenth
//! of an uncontended decision. The price is memory: a policy is kept for every replacement
//! (a reload, or a `set_limits`), a few hundred bytes to a few KB each, until the limiter goes.

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

pub struct Versioned<T> {
    current: AtomicPtr<Version<T>>,
    /// Owns every version, as pointers from `Box::into_raw` freed by `drop`: a version's
    /// address never changes when the list grows. (Not `Box`es: moving a `Box` asserts it is
    /// the only pointer to its version, which `current` and every reader's `&T` are not; miri
    /// reports that as undefined behaviour under Stacked Borrows.)
    versions: Mutex<Vec<*mut Version<T>>>,
}

struct Version<T> {
    /// Its place in `versions`: 0 for the first, counting up.
    index: u32,
    value: T,
}

// SAFETY: readers get `&T` from any thread (T: Sync); `store` moves a T in from any thread and
// every T is dropped by whichever thread drops the `Versioned` (T: Send).
unsafe impl<T: Send + Sync> Sync for Versioned<T> {}
// SAFETY: moving a `Versioned` to another thread moves every boxed T with it (T: Send); the
// raw `current` pointer points into those boxes and moves with them.
unsafe impl<T: Send + Sync> Send for Versioned<T> {}

impl<T> Versioned<T> {
    pub fn new(value: T) -> Self {
        let first = Box::into_raw(Box::new(Version { index: 0, value }));
        Self {
            current: AtomicPtr::new(first),
            versions: Mutex::new(vec![first]),
        }
    }

    /// The latest version.
    #[inline]
    pub fn load(&self) -> &T {
        &self.latest().value
    }

    /// The latest version and its index (0 for the first, counting up).
    #[inline]
    pub fn load_indexed(&self) -> (u32, &T) {
        let latest = self.latest();
        (latest.index, &latest.value)
    }

    /// The version numbered `index` (the latest without taking the lock), if there is one.
    #[inline]
    pub fn get(&self, index: u32) -> Option<&T> {
        let latest = self.latest();
        if latest.index == index {
            return Some(&latest.value);
        }
        let versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: every pointer in `versions` is a live allocation that only `drop` frees, and
        // `self` outlives the returned borrow; versions are never written after `store`.
        versions
            .get(index as usize)
            .map(|&version| unsafe { &(*version).value })
    }

    #[inline]
    fn latest(&self) -> &Version<T> {
        // SAFETY: `current` always points at a version owned by `versions`, which only `drop`
        // frees, and `self` outlives the returned borrow.
        unsafe { &*self.current.load(Ordering::Acquire) }
    }

    /// Makes `value` the latest version; readers of earlier versions keep theirs.
    pub fn store(&self, value: T) {
        let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        let index = u32::try_from(versions.len()).expect("fewer than 2^32 versions");
        let version = Box::into_raw(Box::new(Version { index, value }));
        versions.push(version);
        self.current.store(version, Ordering::Release);
    }

    /// How many versions are held (the first and every replacement).
    pub fn versions(&self) -> usize {
        self.versions.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl<T> Drop for Versioned<T> {
    fn drop(&mut self) {
        let versions = self.versions.get_mut().unwrap_or_else(|e| e.into_inner());
        for version in versions.drain(..) {
            // SAFETY: each came from `Box::into_raw` and is freed once, here; `&mut self` means
            // no reader holds a borrow of any version.
            drop(unsafe { Box::from_raw(version) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_keeps_its_version_across_replacements() {
        let value = Versioned::new(String::from("first"));
        let before = value.load();
        for i in 0..100 {
            value.store(format!("version {i}"));
        }
        assert_eq!(before, "first");
        assert_eq!(value.load(), "version 99");
        assert_eq!(value.versions(), 101);
        assert_eq!(value.load_indexed().0, 100);
        assert_eq!(value.get(0).map(String::as_str), Some("first"));
        assert_eq!(value.get(100).map(String::as_str), Some("version 99"));
        assert_eq!(value.get(101), None);
    }

    #[test]
    fn readers_on_other_threads_see_a_whole_version() {
        let value = std::sync::Arc::new(Versioned::new(vec![0u64; 64]));
        let reader = {
            let value = value.clone();
            std::thread::spawn(move || {
                for _ in 0..if cfg!(miri) { 300 } else { 100_000 } {
                    let v = value.load();
                    assert!(v.iter().all(|x| *x == v[0]), "a torn version");
                }
            })
        };
        for i in 1..if cfg!(miri) { 30 } else { 1_000u64 } {
            value.store(vec![i; 64]);
        }
        reader.join().unwrap();
    }
}
