//! Builds the `Reservation` that `try_acquire` returns in the object's own memory, and keeps
//! that memory for the next one when the object is released.
//!
//! A decision and its reservation are a few hundred bytes that the engine writes field by field.
//! Moving them into a Python object afterwards (PyO3 moves a value into the object it allocates,
//! through one more temporary) cost more than the decision's arithmetic, because each copy reads
//! back data still on its way out of the store buffer. So the object is allocated first, its two
//! parts get their empty values, and the engine writes its answer straight into them.
//!
//! Where the parts lie inside the object is PyO3's business, not a documented layout. It is
//! measured once, on the first `Reservation` that PyO3 builds itself, and used only when the
//! object holds nothing but the two parts after the object header (no borrow flag, thread
//! checker, `__dict__` or weak-reference slot taking room), which the type's size tells. When
//! that check fails, every result is built through PyO3 instead, as before.

use std::mem::{align_of, size_of};
use std::sync::OnceLock;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::PyTypeInfo;

use crate::decision::{Decision, Reservation};
use crate::state::AnyReservation;

/// Offsets of the two parts of a native `Reservation` object, from the object's address.
struct Layout {
    decision: usize,
    reservation: usize,
}

static LAYOUT: OnceLock<Option<Layout>> = OnceLock::new();

/// Learns the layout from `sample`, a `Reservation` built by PyO3 (the first one only).
pub(crate) fn learn(sample: &Bound<'_, Reservation>) {
    LAYOUT.get_or_init(|| {
        let object = sample.as_ptr() as usize;
        let decision = sample.as_super().get() as *const Decision as usize - object;
        let reservation = sample.get() as *const Reservation as usize - object;
        // SAFETY: an object's type pointer is valid while the object lives.
        let basic_size = unsafe { (*ffi::Py_TYPE(sample.as_ptr())).tp_basicsize } as usize;
        let round_up = |n: usize, to: usize| n.div_ceil(to) * to;
        let only_the_parts = decision == round_up(size_of::<ffi::PyObject>(), align_of::<Decision>())
            && reservation == round_up(decision + size_of::<Decision>(), align_of::<Reservation>())
            && basic_size == reservation + size_of::<Reservation>();
        only_the_parts.then_some(Layout { decision, reservation })
    });
}

/// A new `Reservation` object whose parts hold their empty values, for the engine to fill.
/// Dropping it releases the object (and whatever its parts hold by then).
pub(crate) struct Fresh<'py> {
    object: Bound<'py, Reservation>,
    decision: *mut Decision,
    reservation: *mut Reservation,
}

impl<'py> Fresh<'py> {
    /// The object for `limiter`'s answer on `keys`, its reservation made by `empty`, or `None`
    /// until the layout is known (or when it does not allow building in place).
    #[inline]
    pub(crate) fn new(
        limiter: &Bound<'py, crate::limiter::Limiter>,
        keys: &Bound<'py, PyAny>,
        empty: impl Fn() -> AnyReservation + Copy,
    ) -> PyResult<Option<Self>> {
        let Some(Some(layout)) = LAYOUT.get() else {
            return Ok(None);
        };
        let py = limiter.py();
        let type_ptr = Reservation::type_object_raw(py);
        // SAFETY: the GIL is held; a recycled object is given its type and one reference, as
        // `tp_alloc` does for a new one (zeroed, or NULL with an exception set).
        let (object, recycled) = unsafe {
            match RECYCLED.take(py) {
                Some(object) => (ffi::PyObject_Init(object, type_ptr), true),
                None => (
                    (*type_ptr).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc)(type_ptr, 0),
                    false,
                ),
            }
        };
        if object.is_null() {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: the layout was measured on an object of this very type, and the object is
        // ours alone until returned; after these two writes it is fully initialised, so its
        // deallocator may run (nothing between the allocation and here can fail or unwind).
        unsafe {
            let decision_at = object.byte_add(layout.decision).cast::<Decision>();
            let reservation_at = object.byte_add(layout.reservation).cast::<Reservation>();
            // Written in place (a value built first and then copied would cost what this
            // module saves).
            decision_at.write(Decision {
                decision: Default::default(),
                limiter: limiter.clone().unbind(),
                keys: keys.clone().unbind(),
            });
            reservation_at.write(Reservation {
                inner: std::sync::Mutex::new(empty()),
            });
            // `tp_alloc` tracked a new object for the cycle collector; a recycled one was
            // untracked when released, and is tracked again now that its contents are valid.
            if recycled {
                ffi::PyObject_GC_Track(object.cast());
            }
            Ok(Some(Fresh {
                object: Bound::from_owned_ptr(py, object).cast_into_unchecked(),
                decision: decision_at,
                reservation: reservation_at,
            }))
        }
    }

    /// The two parts, for the engine to write into.
    #[inline]
    pub(crate) fn parts(&mut self) -> (&mut Decision, &mut AnyReservation) {
        // SAFETY: nobody else has seen the object yet, so these are the only references; the
        // `&mut self` borrow keeps them from outliving `self` or being taken twice.
        unsafe {
            let reservation = &mut *self.reservation;
            let inner = reservation.inner.get_mut().unwrap_or_else(|e| e.into_inner());
            (&mut *self.decision, inner)
        }
    }

    /// The finished object.
    #[inline]
    pub(crate) fn into_object(self) -> Py<PyAny> {
        self.object.into_any().unbind()
    }
}

/// How many released `Reservation` objects are kept for reuse.
const RECYCLED_MAX: usize = 64;

/// The memory of `Reservation` objects released since, for the next ones: allocating an object
/// and freeing it (with the collector's bookkeeping of a type PyO3 makes collectable) cost a
/// tenth of a decision. Built only for an interpreter with a GIL, which serialises every
/// access; a free-threaded build leaves the type's `tp_free` alone and never keeps anything.
struct Recycled {
    objects: std::cell::UnsafeCell<[*mut ffi::PyObject; RECYCLED_MAX]>,
    len: std::cell::Cell<usize>,
}

// SAFETY: every access holds the GIL, on an interpreter where that serialises threads (the
// type's `tp_free`, the only way in, is installed only on such builds; see `register`).
unsafe impl Sync for Recycled {}

static RECYCLED: Recycled = Recycled {
    objects: std::cell::UnsafeCell::new([std::ptr::null_mut(); RECYCLED_MAX]),
    len: std::cell::Cell::new(0),
};

impl Recycled {
    /// A released object's memory, if one is kept.
    #[inline]
    fn take(&self, _attached: Python<'_>) -> Option<*mut ffi::PyObject> {
        if cfg!(Py_GIL_DISABLED) {
            return None;
        }
        let len = self.len.get();
        if len == 0 {
            return None;
        }
        self.len.set(len - 1);
        // SAFETY: the GIL is held (see the type); `len - 1` is below `RECYCLED_MAX`.
        Some(unsafe { (*self.objects.get())[len - 1] })
    }

    /// Keeps `object`'s memory, unless the list is full. False: free it.
    #[inline]
    fn keep(&self, object: *mut ffi::PyObject) -> bool {
        let len = self.len.get();
        if len == RECYCLED_MAX {
            return false;
        }
        // SAFETY: as in `take`.
        unsafe { (*self.objects.get())[len] = object };
        self.len.set(len + 1);
        true
    }
}

/// The `tp_free` of `Reservation`: its instances' memory goes back to `RECYCLED` when there is
/// room, to the interpreter otherwise.
#[cfg(not(Py_GIL_DISABLED))]
unsafe extern "C" fn release(object: *mut std::ffi::c_void) {
    let object = object.cast::<ffi::PyObject>();
    // SAFETY: the interpreter calls `tp_free` with the GIL held, on an object whose contents
    // have been dropped and which the collector no longer tracks.
    unsafe {
        let py = Python::assume_attached();
        if ffi::Py_TYPE(object) != Reservation::type_object_raw(py) || !RECYCLED.keep(object) {
            ffi::PyObject_GC_Del(object.cast());
        }
    }
}

/// Whether admitted results are built in place: `None` before the first admission (which
/// teaches the layout), then `True`, or `False` when the layout does not allow it. Tests
/// check it so that a PyO3 upgrade that changes the layout is noticed, not silently slower.
#[pyfunction]
fn _results_built_in_place() -> Option<bool> {
    LAYOUT.get().map(Option::is_some)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    #[cfg(not(Py_GIL_DISABLED))]
    {
        let type_ptr = Reservation::type_object_raw(m.py());
        // SAFETY: the GIL is held; the type was just made and has no instance yet.
        unsafe { (*type_ptr).tp_free = Some(release) };
    }
    m.add_function(wrap_pyfunction!(_results_built_in_place, m)?)
}
