//! `Limiter.try_acquire`, the hot path, with a hand-written vectorcall entry point.
//!
//! PyO3 gives a method that takes `**kwargs` the tuple-and-dict calling convention, so every
//! call packed its arguments into a tuple and every keyword into a fresh dict: about a fifth of
//! a decision. This entry reads the arguments where the interpreter left them (`args` and the
//! `kwnames` tuple) and installs itself on the native `Limiter` type in place of a
//! `#[pymethods]` one. Everything after the parsing is `Limiter::decide`.

use std::ffi::CStr;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::convert;
use crate::errors::guard;
use crate::limiter::{Amounts, Limiter};

const NAME: &CStr = c"try_acquire";

/// The signature line (read by `inspect.signature`) and the docstring.
const DOC: &CStr = c"try_acquire($self, key, /, requests=None, tokens=None, *, max_wait=0.0, **amounts)
--

Decides at once, never blocking. Returns a `Reservation` (a truthy `Decision`) when
admitted, a falsy `Decision` when not. `key` is a str or a list of str (all-or-nothing
over every key). Amounts: `requests` (default 1), `tokens`, and any other dimension by
name. With `max_wait` > 0, a request that fits within that many seconds is admitted
now, behind earlier ones, and its `delay` says how long to wait before the call.";

/// Puts `try_acquire` on `limiter_type` (the native `Limiter`).
pub fn install(limiter_type: &Bound<'_, PyType>) -> PyResult<()> {
    let py = limiter_type.py();
    // The interpreter keeps a pointer to the definition for as long as the type lives: the
    // process, since the type is never unloaded.
    let definition: &'static mut ffi::PyMethodDef = Box::leak(Box::new(ffi::PyMethodDef {
        ml_name: NAME.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: try_acquire,
        },
        ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        ml_doc: DOC.as_ptr(),
    }));
    let type_ptr = limiter_type.as_type_ptr();
    // SAFETY: the GIL is held; `definition` is 'static; a new reference or NULL comes back.
    let descriptor = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(type_ptr, definition))? };
    // The type may be immutable to Python code, so the entry goes into its dict directly,
    // followed by the call that tells the interpreter its method caches are stale.
    // SAFETY: `tp_dict` of a ready type is a dict; the GIL is held.
    unsafe {
        let dict = (*type_ptr).tp_dict;
        if dict.is_null() {
            return Err(PyTypeError::new_err("the Limiter type has no dict"));
        }
        if ffi::PyDict_SetItemString(dict, NAME.as_ptr(), descriptor.as_ptr()) != 0 {
            return Err(PyErr::fetch(py));
        }
        ffi::PyType_Modified(type_ptr);
    }
    Ok(())
}

unsafe extern "C" fn try_acquire(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: the interpreter calls a method with the GIL held.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: the method descriptor admits only instances of the type it was made for, and
    // `args` holds the positional arguments followed by one value per keyword name.
    let result = guard(|| unsafe { parse_and_decide(py, slf, args, nargsf, kwnames) });
    match result {
        Ok(object) => object.into_ptr(),
        Err(error) => {
            error.restore(py);
            std::ptr::null_mut()
        }
    }
}

#[inline(always)]
unsafe fn parse_and_decide<'py>(
    py: Python<'py>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Py<PyAny>> {
    // SAFETY: the method descriptor was made for the native `Limiter` type (see `install`),
    // and the interpreter checks that `self` is an instance of it before calling; `slf` is a
    // borrowed reference that the caller keeps alive through the call.
    let slf = unsafe { Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<Limiter>() };
    // SAFETY: `PyVectorcall_NARGS` only masks the offset flag out of `nargsf`; it reads no
    // memory.
    let nargs = unsafe { ffi::PyVectorcall_NARGS(nargsf as usize) } as usize;
    // SAFETY: `args` holds `nargs` positional values followed by one per keyword name, all
    // borrowed references that live through the call; every caller passes `i` below
    // `nargs + len(kwnames)` (checked against `nargs` and the keyword count below).
    let arg = |i: usize| unsafe { Bound::from_borrowed_ptr(py, *args.add(i)) };
    if nargs == 0 {
        return Err(PyTypeError::new_err(
            "try_acquire() missing 1 required positional argument: 'key'",
        ));
    }
    if nargs > 3 {
        return Err(PyTypeError::new_err(format!(
            "try_acquire() takes at most 3 positional arguments ({nargs} given)"
        )));
    }
    let key = arg(0);
    // An explicit None means "not given", as in the signature's defaults.
    let given = |value: Bound<'py, PyAny>| (!value.is_none()).then_some(value);
    let mut requests = if nargs > 1 { given(arg(1)) } else { None };
    let mut tokens = if nargs > 2 { given(arg(2)) } else { None };
    let mut max_wait_ns = 0;
    let keywords = if kwnames.is_null() {
        0
    } else {
        // SAFETY: a non-NULL `kwnames` of a vectorcall is a tuple of str, borrowed for the call.
        unsafe { ffi::PyTuple_GET_SIZE(kwnames) as usize }
    };
    // Keywords that name neither `requests`, `tokens` nor `max_wait`: other dimensions, as
    // (name, value); the common calls have none.
    let mut named: smallvec::SmallVec<[(Bound<'py, PyAny>, Bound<'py, PyAny>); 4]> = smallvec::SmallVec::new();
    for k in 0..keywords {
        // SAFETY: `k` is below the tuple's size, read just above, and the tuple (which owns
        // its items) outlives the call.
        let name = unsafe { Bound::from_borrowed_ptr(py, ffi::PyTuple_GET_ITEM(kwnames, k as _)) };
        let value = arg(nargs + k);
        let known = keyword(&name);
        match known {
            Keyword::Requests | Keyword::Tokens if nargs > known as usize => {
                return Err(PyTypeError::new_err(format!(
                    "try_acquire() got multiple values for argument {}",
                    name.repr()?
                )));
            }
            Keyword::Requests => requests = given(value),
            Keyword::Tokens => tokens = given(value),
            Keyword::MaxWait => {
                max_wait_ns = convert::seconds_to_ns(value.extract::<f64>()?, "max_wait")?;
            }
            Keyword::Other => named.push((name, value)),
        }
    }
    let this = slf.get();
    let dimensions = this.dimensions.load();
    let mut amounts = Amounts::new();
    // Borrowed, not moved: moving the list into an iterator copied it whole on every call.
    let named = named.iter().map(|(name, value)| (name.clone(), value.clone()));
    Limiter::amounts(dimensions, requests.as_ref(), tokens.as_ref(), named, &mut amounts)?;
    Limiter::decide(&slf, &key, &amounts, max_wait_ns)
}

/// The keywords `try_acquire` knows by name; the discriminant of `Requests` and `Tokens` is
/// their position after `key`.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Keyword {
    Requests = 1,
    Tokens = 2,
    MaxWait,
    Other,
}

#[inline]
fn keyword(name: &Bound<'_, PyAny>) -> Keyword {
    // Keyword names written in a call are interned strings: one pointer comparison each.
    let py = name.py();
    let interned = name.as_ptr();
    if interned == pyo3::intern!(py, "tokens").as_ptr() {
        return Keyword::Tokens;
    }
    if interned == pyo3::intern!(py, "requests").as_ptr() {
        return Keyword::Requests;
    }
    if interned == pyo3::intern!(py, "max_wait").as_ptr() {
        return Keyword::MaxWait;
    }
    let mut len: ffi::Py_ssize_t = 0;
    // SAFETY: keyword names are str objects (the interpreter rejects any other in a call);
    // the GIL is held, and `len` is a live local the call writes.
    let data = unsafe { ffi::PyUnicode_AsUTF8AndSize(name.as_ptr(), &mut len) };
    if data.is_null() {
        // Not valid UTF-8: no dimension has such a name; let the lookup report it.
        // SAFETY: the GIL is held; clearing the error the failed conversion set is all it does.
        unsafe { ffi::PyErr_Clear() };
        return Keyword::Other;
    }
    // SAFETY: `data` is non-NULL and points at `len` bytes of UTF-8 that the interpreter
    // caches in the str object, alive as long as `name`, which outlives this borrow.
    match unsafe { std::slice::from_raw_parts(data as *const u8, len as usize) } {
        b"requests" => Keyword::Requests,
        b"tokens" => Keyword::Tokens,
        b"max_wait" => Keyword::MaxWait,
        _ => Keyword::Other,
    }
}
