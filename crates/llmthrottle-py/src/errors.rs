//! The Python exception hierarchy, created here and mapped from `llmthrottle_core::CoreError`.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;

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
    ExceedsCapacity,
    PyValueError,
    "The request can never be admitted: it asks for more than a limit's burst allows."
);
create_exception!(
    llmthrottle,
    BudgetExceeded,
    LlmthrottleError,
    "A spending budget has no room for the call's worst-case cost."
);
create_exception!(
    llmthrottle,
    ConfigError,
    PyValueError,
    "A limit, rate string, budget or policy file is malformed."
);
create_exception!(
    llmthrottle,
    StateError,
    LlmthrottleError,
    "The limiter state store cannot be used (full table, foreign or incompatible file, I/O error)."
);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("LlmthrottleError", py.get_type::<LlmthrottleError>())?;
    m.add("RateLimited", py.get_type::<RateLimited>())?;
    m.add("ExceedsCapacity", py.get_type::<ExceedsCapacity>())?;
    m.add("BudgetExceeded", py.get_type::<BudgetExceeded>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("StateError", py.get_type::<StateError>())?;
    // ExceedsCapacity and ConfigError are ValueErrors for callers that validate input, and
    // llmthrottle errors for callers that catch everything the library raises.
    Ok(())
}

/// Maps the core's error onto the exception hierarchy.
pub fn to_py(error: llmthrottle_core::CoreError) -> PyErr {
    use llmthrottle_core::CoreError;
    match error {
        CoreError::Config(message) => ConfigError::new_err(message),
        CoreError::InvalidInput(message) => PyValueError::new_err(message),
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
