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
    current: AtomicPtr<T>,
    /// Owns every version; boxed, so a version's address never changes when the list grows.
    versions: Mutex<Vec<Box<T>>>,
}

// SAFETY: readers get `&T` from any thread (T: Sync); `store` moves a T in from any thread and
// every T is dropped by whichever thread drops the `Versioned` (T: Send).
unsafe impl<T: Send + Sync> Sync for Versioned<T> {}
unsafe impl<T: Send + Sync> Send for Versioned<T> {}

impl<T> Versioned<T> {
    pub fn new(value: T) -> Self {
        let mut first = Box::new(value);
        let current = AtomicPtr::new(&mut *first as *mut T);
        Self {
            current,
            versions: Mutex::new(vec![first]),
        }
    }

    /// The latest version.
    #[inline]
    pub fn load(&self) -> &T {
        // SAFETY: `current` always points into a box owned by `versions`, which frees nothing
        // before `self` is dropped, and `self` outlives the returned borrow.
        unsafe { &*self.current.load(Ordering::Acquire) }
    }

    /// Makes `value` the latest version; readers of earlier versions keep theirs.
    pub fn store(&self, value: T) {
        let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        let mut boxed = Box::new(value);
        self.current.store(&mut *boxed as *mut T, Ordering::Release);
        versions.push(boxed);
    }

    /// How many versions are held (the first and every replacement).
    pub fn versions(&self) -> usize {
        self.versions.lock().unwrap_or_else(|e| e.into_inner()).len()
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
    }

    #[test]
    fn readers_on_other_threads_see_a_whole_version() {
        let value = std::sync::Arc::new(Versioned::new(vec![0u64; 64]));
        let reader = {
            let value = value.clone();
            std::thread::spawn(move || {
                for _ in 0..100_000 {
                    let v = value.load();
                    assert!(v.iter().all(|x| *x == v[0]), "a torn version");
                }
            })
        };
        for i in 1..1_000u64 {
            value.store(vec![i; 64]);
        }
        reader.join().unwrap();
    }
}
