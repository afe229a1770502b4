//! The Python exception hierarchy, created here and mapped from `llmthrottle_core::CoreError`.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use pyo3::PyErrArguments;

create_exception!(
    llmthrottle,
    LlmthrottleError,
    PyException,
    "Base class of every error raised by llmthrottle."
);
create_exception!(
    llmthrottle,
    RateLimited,
    LlmthrottleError,
    "A limit denied the call; retry after `retry_after` seconds (`limited_by` names the limit)."
);
create_exception!(
    llmthrottle,
    BudgetExceeded,
    LlmthrottleError,
    "A spending budget has no room for the call's worst-case cost."
);
create_exception!(
    llmthrottle,
    StateError,
    LlmthrottleError,
    "The limiter state store cannot be used (full table, foreign or incompatible file, I/O error)."
);

/// Declares an exception class that is both a `LlmthrottleError` (for callers that catch
/// everything the library raises) and a builtin (`ValueError` or `TypeError`, for callers that
/// validate input). `create_exception!` takes one base, so the class is made by calling
/// `type(name, bases, namespace)` once, and kept.
macro_rules! two_based_error {
    ($name:ident, $builtin:ty, $doc:literal) => {
        #[doc = $doc]
        pub struct $name;

        impl $name {
            pub fn type_object(py: Python<'_>) -> &Bound<'_, PyType> {
                static TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
                TYPE.get_or_init(py, || {
                    make_two_based(py, stringify!($name), py.get_type::<$builtin>(), $doc)
                        .expect("creating an exception class")
                })
                .bind(py)
            }

            pub fn new_err<A: PyErrArguments + Send + Sync + 'static>(args: A) -> PyErr {
                Python::attach(|py| PyErr::from_type(Self::type_object(py).clone(), args))
            }
        }
    };
}

two_based_error!(
    ExceedsCapacity,
    PyValueError,
    "The request can never be admitted: it asks for more than a limit's burst allows."
);
two_based_error!(
    ConfigError,
    PyValueError,
    "A limit, rate string, budget or policy file is malformed."
);
two_based_error!(
    InvalidInput,
    PyValueError,
    "An argument is out of range: negative, NaN, infinite, too large, or an empty or oversized key."
);

two_based_error!(
    InvalidType,
    PyTypeError,
    "An argument of the wrong type: an amount that is not a number, a key that is not a string."
);

fn make_two_based(py: Python<'_>, name: &str, builtin: Bound<'_, PyType>, doc: &str) -> PyResult<Py<PyType>> {
    let bases = PyTuple::new(py, [py.get_type::<LlmthrottleError>(), builtin])?;
    let namespace = PyDict::new(py);
    namespace.set_item("__module__", "llmthrottle")?;
    namespace.set_item("__doc__", doc)?;
    let class = py.get_type::<PyType>().call1((name, bases, namespace))?;
    Ok(class.cast_into::<PyType>()?.unbind())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("LlmthrottleError", py.get_type::<LlmthrottleError>())?;
    m.add("RateLimited", py.get_type::<RateLimited>())?;
    m.add("ExceedsCapacity", ExceedsCapacity::type_object(py))?;
    m.add("BudgetExceeded", py.get_type::<BudgetExceeded>())?;
    m.add("ConfigError", ConfigError::type_object(py))?;
    m.add("InvalidInput", InvalidInput::type_object(py))?;
    m.add("InvalidType", InvalidType::type_object(py))?;
    m.add("StateError", py.get_type::<StateError>())?;
    Ok(())
}

/// Maps the core's error onto the exception hierarchy.
pub fn to_py(error: llmthrottle_core::CoreError) -> PyErr {
    use llmthrottle_core::CoreError;
    match error {
        CoreError::Config(message) => ConfigError::new_err(message),
        CoreError::InvalidInput(message) => InvalidInput::new_err(message),
        CoreError::ExceedsCapacity {
            ref key,
            ref dimension,
            requested,
            capacity,
        } => Python::attach(|py| {
            let scale = llmthrottle_core::units_per_api_unit(dimension);
            let message = if scale == 1 {
                error.to_string()
            } else {
                format!(
                    "{dimension}={} for key {key:?} can never be admitted: the limit allows at most {} at once",
                    requested as f64 / scale as f64,
                    capacity as f64 / scale as f64
                )
            };
            let err = ExceedsCapacity::new_err(message);
            let value = err.value(py);
            let _ = value.setattr("key", key);
            let _ = value.setattr("dimension", dimension);
            if scale == 1 {
                let _ = value.setattr("requested", requested);
                let _ = value.setattr("capacity", capacity);
            } else {
                let _ = value.setattr("requested", requested as f64 / scale as f64);
                let _ = value.setattr("capacity", capacity as f64 / scale as f64);
            }
            err
        }),
        CoreError::State(message) => StateError::new_err(message),
        CoreError::AlreadySettled => LlmthrottleError::new_err(error.to_string()),
    }
}

/// Runs `f`, turning a panic into an exception so that no Rust panic ever reaches Python.
#[inline]
pub fn guard<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(LlmthrottleError::new_err(format!(
                "internal error in llmthrottle (please report): {message}"
            )))
        }
    }
}
